"""Runs as the commands see them: writing a prepared run (`create`), driving it here or in the background
(`drive`, `detach`), stopping it with or without a live controller (`stop`), and describing it (`listing`,
`describe`, `log_lines`, `check`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from planner.errors import InputError

from .. import config as configmod
from .. import home as homes
from .. import inbound
from ..clock import SYSTEM, Clock
from ..cloud import registry
from ..errors import LedgerError, RunError
from ..money import calls, results
from ..money.ledger import FINAL
from ..units import printable
from . import handover, progress, teardown
from .driver import Driver
from .prepare import Prepared
from .request import Request, policy_for


def create(p: Prepared, home: Path, clock: Clock = SYSTEM) -> None:
    """Write the run: its ledger row (the pool made if new), then its directory and request.json."""
    led = homes.ledger(home, clock)
    try:
        pool_cap = led.ensure_pool(p.pool, p.cap_cny, clock.now(), f"created by run {p.request.run_id}")
        if pool_cap < p.cap_cny:  # lowered by someone else since the cap was printed: the printed one must hold
            raise InputError(f"pool {p.pool!r}'s cap changed to {pool_cap} CNY since this run's cap "
                             f"({p.cap_cny} CNY) was shown; nothing was launched",
                             f"run again, or raise it with `budget pool set-cap {p.pool} {p.cap_cny}`")
        p.run_dir.mkdir(parents=True, exist_ok=False)
        p.request.save(p.run_dir / "request.json")
        (p.run_dir / "out").mkdir()
        rec = p.recommendation
        led.create_run(id=p.request.run_id, pool=p.pool, plan=p.plan.name, plan_path=p.request.plan_path,
                       provider=p.request.provider, offer=f"{rec.provider}:{rec.instance_type}",
                       quantization=p.request.quantization, spot=int(p.request.spot), cap_cny=p.cap_cny,
                       estimate_cny=rec.cost_cny, estimate_s=rec.time.total_s, dir=str(p.run_dir),
                       created_at=clock.now())
    finally:
        led.close()


def drive(run_id: str, home: Path, on_progress=lambda _: None, resume: bool = False, clock: Clock = SYSTEM) -> str:
    """Run the controller for a created run, in this process (`resume`: one whose controller died, from the
    state it persisted)."""
    run_dir = homes.directory(home, run_id)
    if not (run_dir / "request.json").exists() and (run_dir / "compare.json").exists():
        raise RunError(f"run {run_id} is a `budget compare` run: a hosted model asked from this machine, no instance "
                       "to drive", "run the same `budget compare` command again: it resumes a run it did not finish")
    led = homes.ledger(home, clock)
    try:
        if resume:  # refused before its request is read: an imported notebook's run has none, and is ended
            run = homes.resolve(led, run_id)
            if run["state"] in FINAL:
                raise RunError(f"run {run_id} is already {run['state']}", "see `budget status " + run_id + "`")
            if handover.handed_over(run):
                raise RunError(f"run {run_id} runs unattended: its instance finishes alone",
                               f"collect it with `budget status {run_id}`")
            if homes.controller_alive(run) and run["controller_pid"] != os.getpid():
                raise RunError(f"run {run_id} still has a controller (pid {run['controller_pid']})",
                               f"watch it with `budget logs {run_id} -f`")
        req = Request.load(run_dir / "request.json")
    except BaseException:
        led.close()
        raise
    try:
        if resume:
            led.update_run(run_id, stop_requested=0)
            (run_dir / "STOP").unlink(missing_ok=True)
        if req.provider in registry.RUNNERS:  # tasks on a cluster (runner/scaleout): a detached run's or a new one
            from ..scaleout import resume as cluster_run

            return cluster_run.resume(led, homes.resolve(led, run_id), on_progress, clock)
        provider = registry.make(req.provider, configmod.load(home), home, region=req.offer.get("region"), clock=clock)
        return Driver(led, provider, req, run_dir, clock, on_progress).run(resume=resume)
    except Exception:
        run = led.run(run_id)
        if run and run["state"] == "created":  # failed before the driver took over
            led.update_run(run_id, state="failed", phase="failed", reason="provider setup failed",
                           finished_at=clock.now())
        raise
    finally:
        led.close()


def check(run_id: str, home: Path, state: str) -> None:
    """A run that did not finish is an error for the shell (exit 1), its results kept."""
    if state == "done":
        return
    led = homes.ledger(home)
    try:
        run = led.run(run_id)
    finally:
        led.close()
    raise RunError(f"run {run_id} stopped ({run['reason']}) after {run['samples_done']} of {run['samples_total']} "
                   f"samples; they are kept in {run['dir']}/out",
                   "raise --yuan for a new run" if run["reason"] == "budget" else "start a new run for the rest")


def detach(run_id: str, home: Path, resume: bool = False) -> int:
    """Start a controller for the run in the background (it survives this shell); returns its pid."""
    run_dir = homes.directory(home, run_id)
    with open(run_dir / "controller.out", "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "runner.cli", "drive", run_id, *(["--resume"] if resume else [])],
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                             env=dict(os.environ, BUDGET_HOME=str(home)))
    return p.pid


def listing(home: Path) -> list[dict]:
    """Every run, newest first, with its spend and whether a controller is driving it."""
    led = homes.ledger(home)
    try:
        return [dict(r, spent_cny=led.spent_run(r["id"]), controller_alive=homes.controller_alive(r))
                for r in led.runs()]
    finally:
        led.close()


def describe(home: Path, run_id: str | None, clock: Clock = SYSTEM) -> dict:
    """One run (the newest when None) with its money, instances, tasks and events."""
    led = homes.ledger(home, clock)
    try:
        run = homes.resolve(led, run_id)
        if handover.handed_over(run) and run["state"] not in FINAL:
            handover.reconcile(led, run, home, clock)  # the cloud says where it is; settled once it is gone
            run = homes.resolve(led, run["id"])
        return {**run, "controller_alive": homes.controller_alive(run), "spent_cny": led.spent_run(run["id"]),
                "pool_spent_cny": led.spent_pool(run["pool"]), "pool_cap_cny": led.pool_cap(run["pool"]),
                "instances": [vars(i) for i in led.instances(run["id"])], "tasks": results.tasks(led, run["id"]),
                "events": led.events(run["id"]),
                "replicas": [r.model_dump() for r in inbound.status(Path(run["dir"]) / "out").replicas]}
    finally:
        led.close()


def log_lines(home: Path, run_id: str, follow: bool, clock: Clock = SYSTEM):
    """The controller's and the worker's log lines, tagged; with `follow`, until the run ends."""
    led = homes.ledger(home)
    try:
        run = homes.resolve(led, run_id)
        files = [Path(run["dir"]) / "controller.log", Path(run["dir"]) / "out" / "worker.log"]
        offsets = dict.fromkeys(files, 0)
        while True:
            for f in files:
                if f.exists() and f.stat().st_size > offsets[f]:
                    with open(f, encoding="utf-8", errors="replace", newline="") as fh:  # a \r is shown too
                        fh.seek(offsets[f])
                        chunk = fh.read()
                        offsets[f] = fh.tell()
                    # the instance wrote worker.log (and errors quoted in controller.log): escaped, never raw
                    yield from (f"[{f.stem}] {printable(line)}" for line in chunk.split("\n") if line)
            if not follow or led.run(run["id"])["state"] in FINAL:
                return
            clock.sleep(1)
    finally:
        led.close()


def stop(run_id: str, home: Path, wait_s: float = 300, clock: Clock = SYSTEM) -> dict:
    """Ask the run's controller to stop (it keeps finished results and tears down). If no controller is
    alive, tear down here: fetch what the worker finished, terminate every live instance, settle. Works
    without request.json, and from the run directory alone when the ledger cannot be read."""
    try:
        led = homes.ledger(home, clock)
    except LedgerError as e:
        return teardown.without_ledger(run_id, homes.directory(home, run_id), home, e.message, clock)
    try:
        run = homes.resolve(led, run_id)
        ended_before = run["state"] in FINAL
        if ended_before and not led.instances(run_id=run["id"], live=True):
            return run
        led.update_run(run["id"], stop_requested=1)
        if Path(run["dir"]).is_dir():
            Path(run["dir"], "STOP").touch()
        if not ended_before and homes.controller_alive(run) and run["controller_pid"] != os.getpid():
            # wait on the run and on its controller's life: a controller that dies meanwhile is taken over at once
            end = clock.monotonic() + wait_s
            while clock.monotonic() < end and (now := led.run(run["id"]))["state"] not in FINAL:
                if not homes.controller_alive(now):
                    led.event(run["id"], "stop", "the controller died while stopping the run: taken over")
                    break
                clock.sleep(0.5)
            if led.run(run["id"])["state"] in FINAL and not led.instances(run_id=run["id"], live=True):
                return led.run(run["id"])
        if run["provider"] in registry.RUNNERS:  # tasks on a cluster (runner/scaleout), no instance to terminate
            from ..scaleout import stopping

            return stopping.stop(led, run, home, clock, ended_before)
        live = led.instances(run_id=run["id"], live=True)
        provider, policy = _provider_for(run, home, live, clock) if live else (None, None)
        for cid in calls.open_calls(led, run["id"]):  # metered calls its dead controller had in flight
            calls.bill_bound(led, cid, clock.now(), "its controller died during the call (budget stop)")
        for inst in live:
            def event(kind, detail, i=inst.id):
                led.event(run["id"], kind, f"{detail} (budget stop)", i)
            teardown.end(led, provider, inst, how="stop", run_dir=Path(run["dir"]), policy=policy, event=event,
                         clock=clock, fetch_lines=True)
        if not ended_before:  # a run that already ended (e.g. failed to terminate) keeps its verdict
            done, total = progress.count(Path(run["dir"]), run["id"])
            led.update_run(run["id"], state="stopped", phase="stopped", reason="user", finished_at=clock.now(),
                           samples_done=done, samples_total=total)
        return led.run(run["id"])
    finally:
        led.close()


def _provider_for(run: dict, home: Path, live: list, clock: Clock):
    """The run's provider and guard policy: from request.json, else from the ledger's rows and the config."""
    cfg = configmod.load(home)
    try:
        req = Request.load(Path(run["dir"]) / "request.json")
    except RunError:
        req = None
    region = req.offer.get("region") if req else (live[0].region if live else None)
    provider = registry.make(run["provider"], cfg, home, region=region, clock=clock)
    return provider, req.policy_obj if req else policy_for(cfg, provider)

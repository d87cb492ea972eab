"""Runs as the commands see them: choosing what to launch (`prepare`), driving it (`drive`, also the
entry of a detached controller), stopping it (`stop`), and describing it (`describe`)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from planner import names
from planner.catalog import Catalog
from planner.errors import InputError
from planner.models import EvalPlan, Recommendation

from . import calibrate, jobs, unattended
from . import config as configmod
from .cloud.local import same_process
from .errors import LedgerError, RunError
from .money import pools, recovery
from .money.ledger import Ledger
from .orchestrate import (
    FINAL,
    Orchestrator,
    Request,
    held_samples,
    make_provider,
    new_run_id,
    policy_for,
    ssh_wait_for,
    take_last_lines,
    terminate_instance,
)

PROVIDERS = ("local", "aws", "ssh")


@dataclass
class Prepared:
    request: Request
    plan: EvalPlan
    recommendation: Recommendation
    cap: pools.RunCap
    run_dir: Path

    @property
    def cap_cny(self) -> Decimal:
        return self.cap.cap_cny

    @property
    def pool(self) -> str:
        return self.cap.pool


def directory(home: Path, run_id: str) -> Path:
    """$BUDGET_HOME/runs/<run id>; an id that is not a plain name (it came from a command line) is refused."""
    try:
        names.check(run_id, "run id")
    except ValueError as e:
        raise InputError(str(e), "see `budget status` for run ids") from None
    return home / "runs" / run_id


def ledger(home: Path) -> Ledger:
    """The spend ledger - refused when it is missing or empty while run directories exist: a lost ledger
    must never reset the budget (`budget ledger rebuild` restores it from the run directories)."""
    path = home / "ledger.db"
    on_disk = recovery.run_dirs(home)
    if on_disk and not path.exists():
        raise LedgerError(f"{path} is missing but {len(on_disk)} run(s) are in {home / 'runs'}: starting an empty "
                          "ledger would forget their spend", recovery.HINT)
    led = Ledger(path)
    if on_disk and not led.runs(1):
        led.close()
        raise LedgerError(f"{path} holds no runs but {len(on_disk)} run(s) are in {home / 'runs'} (was it truncated "
                          "or replaced?): their spend would be forgotten", recovery.HINT)
    return led


MIN_FREE_BYTES = 256 * 2**20  # results, logs and the ledger of a run; below this a launch is a gamble


def writable(home: Path) -> None:
    """Refuse a $BUDGET_HOME that cannot take a run's records (read-only, full) before anything launches: a
    controller that cannot write its ledger cannot account for an instance it started."""
    import shutil
    import tempfile

    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".write-test-") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        free = shutil.disk_usage(home).free
    except OSError as e:
        raise InputError(f"BUDGET_HOME {home} cannot be written ({e.strerror or e}): nothing was launched",
                         "point BUDGET_HOME at a writable folder") from None
    if free < MIN_FREE_BYTES:
        raise InputError(f"BUDGET_HOME {home} has {free / 2**20:.0f} MiB free (a run needs {MIN_FREE_BYTES >> 20} MiB "
                         "for results, logs and the ledger): nothing was launched",
                         "free some space, or point BUDGET_HOME at another disk")


def controller_alive(run: dict) -> bool:
    """Whether the run's controller process still runs - the same process, not a reuse of its pid."""
    return same_process(run.get("controller_pid"), run.get("controller_start"))


def prepare(plan: EvalPlan, plan_path: Path, catalog: Catalog, home: Path, *, provider, yuan: Decimal | None,
            pool: str, offer_id: str | None, spot: bool, quant: str | None, price_yuan_h: Decimal | None,
            limit: int | None, batch_size, model_path: Path | None, remote_python: str | None,
            unattended: bool = False) -> Prepared:
    """Pick the offer and quantization (the planner's choice unless given), the cap it runs under, the
    job, and the request a controller drives. Nothing is written yet."""
    from planner.optimize import optimize

    prov, provider = provider, provider.name
    writable(home)
    cfg = configmod.load(home)
    led = ledger(home)
    try:
        cap = pools.run_cap(led, pool, yuan, plan.budget_yuan)
    finally:
        led.close()
    if unattended:
        check_unattended(provider, home)
    if provider == "aws" and price_yuan_h is not None:
        raise InputError("--price-yuan-hour does not apply to aws: EC2 bills its own price",
                         "refresh the catalog's prices with `budget prices import` instead")
    if provider == "ssh":
        offer_id = offer_id or cfg.ssh.offer
        price_yuan_h = price_yuan_h if price_yuan_h is not None else cfg.ssh.price_yuan_per_hour
        if offer_id is None:
            raise InputError("an SSH host needs its offer (GPU and price) to plan the run",
                             "pass --offer ID (see `budget prices list`) or set ssh.offer in $BUDGET_HOME/config.yaml")
    if provider == "local" and price_yuan_h is None:
        price_yuan_h = cfg.local.price_yuan_per_hour
    offers = catalog.offers
    if offer_id:
        offers = [o for o in offers if o.id == offer_id or o.id.startswith(offer_id + "@")]
        if not offers:
            raise InputError(f"no offer {offer_id!r} in the catalog", "see `budget prices list` for offer ids")
        if provider == "aws" and any(o.provider != "aws" for o in offers):
            raise InputError(f"offer {offer_id} is not an EC2 instance type", "pick one from "
                             "`budget prices list --provider aws`, or run it with --provider ssh")
    elif provider == "aws":  # in the region we will launch in, when one is configured
        offers = [o for o in offers if o.provider == "aws" and (not prov.region or o.region == prov.region)]
    if price_yuan_h is not None:  # the price the run is billed at is the one it is planned and estimated at
        offers = [o.model_copy(update={"price": price_yuan_h, "currency": "CNY",
                                       "spot_price": price_yuan_h if spot else None}) for o in offers]
    cat = dataclasses.replace(catalog, offers=offers)
    spec = catalog.model(plan.model)
    spot_only = True if spot else (None if provider == "local" else False)
    cal = calibrate.calibration(home)
    result = optimize(plan, spec, cat, cap.cap_cny, spot=spot_only, quantizations=[quant] if quant else None, top=6,
                      calibration=cal)
    rec = result.report.recommendation
    if rec is None and result.rows:
        # the plan costs more than the cap: run it anyway if the user agrees - the guard stops it when
        # the money ends and the finished samples are kept (render.run_estimate says so before asking)
        rec = optimize(plan, spec, cat, Decimal(10) ** 12, spot=spot_only,
                       quantizations=[quant] if quant else None, top=1, calibration=cal).report.recommendation
    if rec is None:
        raise result.shortfall(plan.name, spec.name)
    offer = next(o for o in offers if (o.provider, o.instance_type, o.region) == (rec.provider, rec.instance_type,
                                                                                    rec.region))
    if provider == "local":  # it runs on this machine's CPU, not on the offer's GPU: estimate it there
        rec = _on_this_machine(rec, offer, plan, catalog, home, cal)
    price, original = rec.price_cny_per_hour, rec.price_original_per_hour
    if provider == "local":  # simulated: the chosen offer's billing rule at the chosen (or given) price
        offer = offer.model_copy(update={"provider": "local", "instance_type": f"{rec.provider}:{rec.instance_type}",
                                         "price": price, "currency": "CNY", "spot_price": None})
        original = price
    run_id = new_run_id(plan.name)
    run_dir = directory(home, run_id)
    job = jobs.build(plan, plan_path, catalog, home, quantization=rec.quantization, model_path=model_path,
                     limit=limit, batch_size=batch_size, run_id=run_id)
    policy = policy_for(cfg, prov)
    req = Request(run_id=run_id, plan_path=str(plan_path), provider=provider, offer=offer.model_dump(mode="json"),
                  quantization=rec.quantization, spot=rec.spot, price_cny_h=str(price), price_original_h=str(original),
                  job=job, policy={**dataclasses.asdict(policy), "reserve_cny": str(policy.reserve_cny)},
                  remote_python=remote_python, model_path=str(model_path) if model_path else None,
                  ssh_wait_s=ssh_wait_for(cfg, prov), bootstrap_timeout_s=cfg.run.bootstrap_timeout_s,
                  unattended=unattended, fallbacks=_fallbacks(result.report, rec, offers) if rec.spot else [])
    return Prepared(req, plan, rec, cap, run_dir)


def _on_this_machine(rec, offer, plan: EvalPlan, catalog: Catalog, home: Path, cal):
    """`rec` with the time and cost of running on this machine (its CPU profile, calibrated where `budget
    calibrate` fitted it), billed under the offer's rule at its price."""
    from decimal import ROUND_CEILING

    from planner.optimize import CENT, billed_seconds

    t, said = calibrate.run_time(plan, catalog, home, "local", rec.gpu, 1, rec.quantization, False, cal)
    billed = billed_seconds(t.total_s, offer.billing_increment_s, offer.billing_minimum_s)
    cost = (rec.price_cny_per_hour * Decimal(billed) / 3600).quantize(CENT, rounding=ROUND_CEILING)  # as optimize
    return rec.model_copy(update={"time": t, "hours": round(t.total_s / 3600, 3), "billed_hours": round(billed / 3600, 4),
                                  "cost_cny": cost, "notes": list(rec.notes) + [
        said or "estimated on this machine's CPU profile (uncalibrated: `budget calibrate` after a local run fits it)"]})


def check_unattended(provider: str, home: Path) -> None:
    """--unattended is for aws with a results bucket (the instance uploads there): refused otherwise, before
    anything is asked of a cloud."""
    if provider != "aws":
        raise InputError(f"--unattended works with --provider aws only (not {provider}): its instance uploads to S3",
                         "use --provider aws, or --detach (a background controller on this machine)")
    if not configmod.load(home).aws.results_bucket:
        raise InputError("--unattended needs --provider aws and aws.results_bucket: the instance uploads its results "
                         "to S3 and powers itself off, with no controller",
                         "set aws.results_bucket in $BUDGET_HOME/config.yaml (a bucket you own)")


def _fallbacks(report, rec, offers) -> list[dict]:
    """For a spot run whose offer the cloud has no capacity for at a relaunch: the planner's next cheapest
    offers of the same provider and quantization, in its order, each with the price it would be billed at."""
    out = []
    for alt in report.alternatives:
        if (alt.provider, alt.instance_type, alt.region) == (rec.provider, rec.instance_type, rec.region) or \
                alt.provider != rec.provider or alt.quantization != rec.quantization or alt.spot != rec.spot:
            continue
        offer = next((o for o in offers if (o.provider, o.instance_type, o.region) ==
                      (alt.provider, alt.instance_type, alt.region)), None)
        if offer is not None:
            out.append({"offer": offer.model_dump(mode="json"), "price_cny_h": str(alt.price_cny_per_hour),
                        "price_original_h": str(alt.price_original_per_hour)})
    return out[:3]


def preflight(provider: str, home: Path):
    """The provider, after checking what can be checked before asking the user to spend: its
    configuration (an SSH host, key and known_hosts), AWS credentials."""
    if provider not in PROVIDERS:
        raise InputError(f"unknown provider {provider!r}", "use --provider local, aws or ssh")
    p = make_provider(provider, configmod.load(home), home)
    if hasattr(p, "preflight"):
        p.preflight()
    return p


def create(p: Prepared, home: Path) -> None:
    """Write the run: its ledger row (the pool made if new), then its directory and request.json."""
    led = ledger(home)
    try:
        pool_cap = led.ensure_pool(p.pool, p.cap_cny, time.time(), f"created by run {p.request.run_id}")
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
                       created_at=time.time())
    finally:
        led.close()


def drive(run_id: str, home: Path, on_progress=lambda _: None, resume: bool = False) -> str:
    """Run the controller for a created run, in this process (`resume`: one whose controller died)."""
    run_dir = directory(home, run_id)
    req = Request.load(run_dir / "request.json")
    led = ledger(home)
    try:
        provider = make_provider(req.provider, configmod.load(home), home, region=req.offer.get("region"))
        if resume:
            run = resolve(led, run_id)
            if run["state"] in FINAL:
                raise RunError(f"run {run_id} is already {run['state']}", "see `budget status " + run_id + "`")
            if controller_alive(run) and run["controller_pid"] != os.getpid():
                raise RunError(f"run {run_id} still has a controller (pid {run['controller_pid']})",
                               f"watch it with `budget logs {run_id} -f`")
            led.update_run(run_id, stop_requested=0)
            (run_dir / "STOP").unlink(missing_ok=True)
        return Orchestrator(led, provider, req, run_dir, on_progress).execute(resume=resume)
    except Exception:
        run = led.run(run_id)
        if run and run["state"] == "created":  # failed before the orchestrator took over
            led.update_run(run_id, state="failed", phase="failed", reason="provider setup failed",
                           finished_at=time.time())
        raise
    finally:
        led.close()


def check(run_id: str, home: Path, state: str) -> None:
    """A run that did not finish is an error for the shell (exit 1), its results kept."""
    if state == "done":
        return
    led = ledger(home)
    try:
        run = led.run(run_id)
    finally:
        led.close()
    raise RunError(f"run {run_id} stopped ({run['reason']}) after {run['samples_done']} of {run['samples_total']} "
                   f"samples; they are kept in {run['dir']}/out",
                   "raise --yuan for a new run" if run["reason"] == "budget" else "start a new run for the rest")


def detach(run_id: str, home: Path, resume: bool = False) -> int:
    """Start a controller for the run in the background (it survives this shell); returns its pid."""
    run_dir = directory(home, run_id)
    with open(run_dir / "controller.out", "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "runner.cli", "drive", run_id, *(["--resume"] if resume else [])],
                             stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                             env=dict(os.environ, BUDGET_HOME=str(home)))
    return p.pid


def resolve(led: Ledger, run_id: str | None) -> dict:
    if run_id is None:
        runs = led.runs(1)
        if not runs:
            raise InputError("no runs yet", "start one with `budget run PLAN`")
        return runs[0]
    found = led.find_runs(run_id)
    if len(found) != 1:
        raise InputError(f"no run {run_id!r}" if not found else
                         f"{run_id!r} matches {len(found)} runs: {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}",
                         "see `budget status` for run ids (a unique prefix is enough)")
    return led.run(found[0])


def listing(home: Path) -> list[dict]:
    """Every run, newest first, with its spend and whether a controller is driving it."""
    led = ledger(home)
    try:
        return [dict(r, spent_cny=led.spent_run(r["id"]), controller_alive=controller_alive(r))
                for r in led.runs()]
    finally:
        led.close()


def describe(home: Path, run_id: str | None) -> dict:
    """One run (the newest when None) with its money, instances, tasks and events."""
    led = ledger(home)
    try:
        run = resolve(led, run_id)
        if run["phase"] == unattended.PHASE and run["state"] not in FINAL:
            unattended.reconcile(led, run, home)  # the cloud and S3 say where it is; settled once it is gone
            run = resolve(led, run["id"])
        return {**run, "controller_alive": controller_alive(run), "spent_cny": led.spent_run(run["id"]),
                "pool_spent_cny": led.spent_pool(run["pool"]), "pool_cap_cny": led.pool_cap(run["pool"]),
                "instances": [vars(i) for i in led.instances(run["id"])], "tasks": led.tasks(run["id"]),
                "events": led.events(run["id"])}
    finally:
        led.close()


def log_lines(home: Path, run_id: str, follow: bool):
    """The controller's and the worker's log lines, tagged; with `follow`, until the run ends."""
    led = ledger(home)
    try:
        run = resolve(led, run_id)
        files = [Path(run["dir"]) / "controller.log", Path(run["dir"]) / "out" / "worker.log"]
        offsets = dict.fromkeys(files, 0)
        while True:
            for f in files:
                if f.exists() and f.stat().st_size > offsets[f]:
                    with open(f, encoding="utf-8", errors="replace") as fh:
                        fh.seek(offsets[f])
                        chunk = fh.read()
                        offsets[f] = fh.tell()
                    yield from (f"[{f.stem}] {line}" for line in chunk.splitlines())
            if not follow or led.run(run["id"])["state"] in FINAL:
                return
            time.sleep(1)
    finally:
        led.close()


def stop(run_id: str, home: Path, wait_s: float = 300) -> dict:
    """Ask the run's controller to stop (it keeps finished results and tears down). If no controller is
    alive, tear down here: fetch what the worker finished, terminate every live instance, settle. Works
    without request.json, and from the run directory alone when the ledger cannot be read."""
    try:
        led = ledger(home)
    except LedgerError as e:
        return recovery.stop_without_ledger(run_id, home, e.message)
    try:
        run = resolve(led, run_id)
        ended_before = run["state"] in FINAL
        if ended_before and not led.instances(run_id=run["id"], live=True):
            return run
        led.update_run(run["id"], stop_requested=1)
        if Path(run["dir"]).is_dir():
            Path(run["dir"], "STOP").touch()
        if not ended_before and controller_alive(run) and run["controller_pid"] != os.getpid():
            end = time.monotonic() + wait_s
            while time.monotonic() < end and led.run(run["id"])["state"] not in FINAL:
                time.sleep(0.5)
            if led.run(run["id"])["state"] in FINAL and not led.instances(run_id=run["id"], live=True):
                return led.run(run["id"])
        live = led.instances(run_id=run["id"], live=True)
        provider, policy = _provider_for(run, home, live)
        for inst in live:
            def event(kind, detail, i=inst.id):
                led.event(run["id"], kind, f"{detail} (budget stop)", i)
            take_last_lines(provider, inst.provider_id, run["id"], Path(run["dir"]), policy, event)
            terminate_instance(led, provider, inst.id, run["id"], policy, event)
        if not ended_before:  # a run that already ended (e.g. failed to terminate) keeps its verdict
            held, _ = held_samples(Path(run["dir"]))
            led.update_run(run["id"], state="stopped", phase="stopped", reason="user", finished_at=time.time(),
                           samples_done=max(held, run["samples_done"]))
        return led.run(run["id"])
    finally:
        led.close()


def _provider_for(run: dict, home: Path, live: list):
    """The run's provider and guard policy: from request.json, else from the ledger's rows and the config."""
    cfg = configmod.load(home)
    try:
        req = Request.load(Path(run["dir"]) / "request.json")
    except RunError:
        req = None
    region = req.offer.get("region") if req else (live[0].region if live else None)
    provider = make_provider(run["provider"], cfg, home, region=region)
    return provider, req.policy_obj if req else policy_for(cfg, provider)

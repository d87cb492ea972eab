"""`budget stop` and `budget status` of a ray run, and what `budget resume` settles of a dead controller's run. A
live controller is asked through the run's stop_requested flag (run/commands.py waits on it; the controller stops
every task through the lease actor). With no live controller:
connect to the cluster address kept in the run directory (ray.json), tell the run's lease actor to stop every
task, give them the teardown allowance to end, take the lines it holds (through lines.py), then kill it - and
settle every task still live in the ledger at the end the actor saw, else at min(now, lease + teardown): never
past the bound its lease set, never before it could have ended. Without a cluster to reach (or a Ray that was
started on this machine for the run and died with its controller) it settles from the ledger alone."""

from __future__ import annotations

import json
import time
from pathlib import Path

from planner.errors import GpuBudgetError

from .. import home as homes
from ..clock import SYSTEM, Clock
from ..money import results
from ..money.guard import Policy
from ..run import progress
from ..run.request import Request
from ..units import iso, printable
from . import lines

WAIT_STEP_S = 0.5


def _policy(run_dir: Path) -> Policy:
    try:
        return Request.load(run_dir / "request.json").policy_obj
    except GpuBudgetError:
        return Policy()


def said(run_dir: Path) -> dict:
    try:
        doc = json.loads((run_dir / "ray.json").read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _from_cluster(run: dict, run_dir: Path, job: dict | None, policy: Policy, clock: Clock) -> tuple[dict, str]:
    """(what the lease actor knew of each task - its `ended` time among it -, what happened in words)."""
    address = said(run_dir).get("address")
    if not address:
        return {}, "its Ray was started on this machine for the run and ended with its controller"
    from .cluster import RayCluster

    cl = RayCluster(address)
    try:
        cl.connect()
        if not cl.attach(run["id"]):
            return {}, f"its lease actor is gone from {address} (its tasks stopped by their leases)"
        cl.stop("user")
        end = clock.monotonic() + policy.teardown_s
        info: dict = {}
        merger = lines.Merger(run_dir / "out", job) if job else None
        cursor, poll_s = 0, float(said(run_dir).get("poll_s") or 1)
        while True:  # every line it holds (a pull is bounded), until its tasks are gone or the teardown passed
            got = cl.pull(cursor) or {}
            if merger is not None and isinstance(got.get("lines"), list):
                merger.add(x for x in got["lines"] if isinstance(x, tuple | list) and len(x) == 2)
            more = isinstance(got.get("cursor"), int) and got["cursor"] > cursor
            cursor = got["cursor"] if more else cursor
            info = got.get("tasks") if isinstance(got.get("tasks"), dict) else info
            running = [k for k, t in info.items() if isinstance(t, dict) and t.get("ended") is None
                       and time.time() - float(t.get("seen") or 0) <= 3 * poll_s]
            if (not more and (not running or clock.monotonic() >= end)) or clock.monotonic() >= end + policy.teardown_s:
                break
            if not more:
                clock.sleep(WAIT_STEP_S)
        return info, f"its lease actor on {address} stopped its tasks and was ended"
    except GpuBudgetError as e:
        return {}, f"the cluster could not be reached ({e.message[:120]}): settled from the ledger alone"
    finally:
        cl.close()


def settle(led, run: dict, clock: Clock = SYSTEM, by: str = "budget stop", ended_before: bool = False) -> dict | None:
    """What a dead controller left of a ray run, ended: its tasks stopped through the lease actor where the cluster
    can be reached, the lines the actor holds written, the actor ended, every live task settled (at the end the
    actor saw, else at min(now, lease + teardown)). Returns the run's job (None without a directory)."""
    run_dir = Path(run["dir"])
    policy = _policy(run_dir)
    held = results.held_lines(run)
    job = held[1] if held else None
    live = led.instances(run_id=run["id"], live=True)
    info, how = _from_cluster(run, run_dir, job, policy, clock) if live or not ended_before else ({}, "")
    if how:
        led.event(run["id"], "stop", f"{how} ({by})")
    now = clock.now()
    for inst in live:
        bound = inst.lease_until + policy.teardown_s
        seen = info.get(f"i{inst.id}") if isinstance(info.get(f"i{inst.id}"), dict) else {}
        ended = seen.get("ended")
        at = float(ended) if isinstance(ended, int | float) else min(now, bound)
        led.settle(inst.id, max(at, inst.started_at), "stopped")
        led.event(run["id"], "settled", f"shard task i{inst.id} settled at {iso(at)} ({by})", inst.id)
    return job


def stop(led, run: dict, home: Path, clock: Clock = SYSTEM, ended_before: bool = False) -> dict:
    """Stop a ray run whose controller is gone: `settle`, then the run marked stopped (user) - a run that had ended
    keeps its verdict."""
    run_dir = Path(run["dir"])
    job = settle(led, run, clock, "budget stop", ended_before)
    now = clock.now()
    if not ended_before:
        if job:
            results.record_tasks(led, run["id"], run_dir / "out", job)
        done, total = progress.count(run_dir, run["id"])
        led.update_run(run["id"], state="stopped", phase="stopped", reason="user", finished_at=now,
                       samples_done=done, samples_total=total)
    return led.run(run["id"])


def shard_rows(home: Path, doc: dict, clock: Clock = SYSTEM) -> list[dict]:
    """Each task of a ray run for `budget status RUN`: shard, node, state, spend, when it ran."""
    led = homes.ledger(home, clock)
    try:
        rows = []
        for i in doc.get("instances") or []:
            rows.append({"task": f"i{i['id']}", "shard": i.get("provider_id") or "-",
                         "node": printable(str(i.get("address") or "-"))[:16], "state": i["state"],
                         "spent_cny": led.spent_instance(i["id"]), "price_cny_h": i["price_cny_h"],
                         "started_at": i["started_at"], "ended_at": i.get("ended_at")})
        return rows
    finally:
        led.close()

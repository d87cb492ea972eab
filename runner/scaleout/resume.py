"""A ray run driven from its directory: the background controller of `budget run --provider ray --detach` (a
created run: nothing to take over), and `budget resume RUN`, a new controller for a run whose controller died
(kill -9, a laptop that slept past the leases). Ray ended the tasks the dead driver owned, or their leases did;
what they pushed to the lease actor after the last pull is written and each task is settled as `budget stop`
settles it (stopping.settle), the old actor ended. Then the run goes on under its own ledger row and cap, on the cluster in ray.json: a new lease
actor holding every line the run has written (each shard's task starts after them: no finished sample is run or
paid for twice), the shards its tasks finished left out, the others queued. `budget resume RUN --detach` drives
it in the background like any run. A run whose lease actor cannot be made fails if nothing ever ran, else
stays as it was (resumable)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path

from planner.errors import GpuBudgetError
from planner.models import Offer

from .. import inbound
from ..clock import SYSTEM, Clock
from ..errors import RunError
from ..run.request import Request
from . import stopping
from .cluster import RPC_S, RayCluster
from .controller import Controller, Setup

WRITTEN_CAP = 256 << 20  # the run's result lines handed to the new actor (lease.HELD_CAP holds at most twice this)


def setup_of(run: dict, req: Request) -> Setup:
    """The run's Setup as launch.prepare made it, from request.json and ray.json (this machine's own files)."""
    run_dir = Path(run["dir"])
    said = stopping.said(run_dir)
    try:
        kind = said["kind"]
        if kind not in ("gpu", "cpu"):
            raise ValueError(kind)
        return Setup(run_id=run["id"], run_dir=run_dir, job=req.job, shards=int(said["shards"]),
                     slots=int(said["slots"]), kind=kind, offer=Offer(**req.offer),
                     price_cny_h=Decimal(req.price_cny_h), price_original_h=Decimal(req.price_original_h),
                     policy=req.policy_obj, grace_s=float(said["grace_s"]), poll_s=float(said["poll_s"]))
    except (KeyError, TypeError, ValueError, InvalidOperation, GpuBudgetError) as e:
        raise RunError(f"run {run['id']}'s ray.json does not say how the run was split ({type(e).__name__}: {e})",
                       f"settle it with `budget stop {run['id']}` and start a new run") from None


def written(out: Path, job: dict) -> dict[str, list[str]]:
    """The result lines the run has written, per task, as text (each passed inbound when it was written)."""
    found, size = {}, 0
    for t in job.get("tasks") or []:
        name = t.get("name")
        if not isinstance(name, str) or not inbound.task_of(f"{name}.jsonl"):
            continue
        try:
            data = (out / "results" / f"{name}.jsonl").read_bytes()
        except OSError:
            continue
        for raw in data.decode("utf-8", "replace").splitlines():
            size += len(raw)
            if raw and size <= WRITTEN_CAP:
                found.setdefault(name, []).append(raw)
    return found


def resume(led, run: dict, on_progress=lambda _: None, clock: Clock = SYSTEM,
           cluster: RayCluster | None = None) -> str:
    """Settle what a dead controller left (a run driven before), then drive the rest of the run; its final state."""
    req = Request.load(Path(run["dir"]) / "request.json")
    s = setup_of(run, req)
    fresh = run["state"] == "created"
    if not fresh:
        stopping.settle(led, run, clock, by="budget resume")
    before = led.instances(run_id=run["id"])
    address = stopping.said(s.run_dir).get("address")
    cl = cluster or RayCluster(address)
    try:
        cl.connect()
        end = clock.monotonic() + RPC_S
        while cl.attach(s.run_id) and clock.monotonic() < end:  # the old actor's name is free once it is gone
            clock.sleep(0.2)
        cl.actor = None
        have = written(s.run_dir / "out", s.job)
        c = Controller(led, cl, s, clock, on_progress, before=before)
        if not fresh:
            c.event("resume", f"taken over: {len(c.done)} of {s.shards} shard(s) done, "
                    f"{sum(len(v) for v in have.values())} line(s) written; shards {c.queue} to run")
        try:
            cl.start(s.run_id, [t["name"] for t in s.job["tasks"]], s.policy.lease_s, s.grace_s, s.poll_s, preload=have)
        except Exception as e:  # noqa: BLE001 - Ray's own errors: nothing was admitted
            c.log.close()
            why = f"the run's lease actor could not be made on the cluster ({type(e).__name__}: {str(e).strip()[:150]})"
            if fresh:
                led.update_run(s.run_id, state="failed", phase="failed", finished_at=clock.now(), reason=why)
            raise RunError(why + "; nothing was admitted", "check the cluster (`ray status` on its head)" + (
                "" if fresh else f", then `budget resume {s.run_id}` again")) from None
        return c.run()
    finally:
        cl.close()

"""The unattended mode (`budget run --provider aws --unattended`): a run that needs no controller after its
worker starts - the laptop may sleep or be switched off.

At hand-over the controller (1) extends the instance's lease to the hard deadline the budget can pay (the
guard's longest lease: cap left - reserve - teardown, under the billing rule), which the instance's
watchdog enforces alone; (2) leaves the instance presigned S3 PUT URLs, one per output file, valid until
that deadline - no cloud credential is ever on the instance; (3) exits. The watchdog uploads the worker's
output files as they grow (every `aws.upload_every_s`) and once more at the end, then powers the instance
off (it terminates: InstanceInitiatedShutdownBehavior) - when the plan is done, or at the deadline.

Later, `budget status RUN` reconciles: the instance's real state from the cloud, the results from S3 into
the run directory, and - once the instance is gone - the ledger settled (to the time EC2 reports, never
past the deadline + teardown) and the run finished as its summary says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import config as configmod
from .. import inbound
from ..clock import SYSTEM, Clock
from ..cloud import registry
from ..cloud.base import GONE_STATES
from ..money import results
from ..money.ledger import Ledger
from ..units import duration, iso
from . import progress, teardown
from .instance import OnInstance
from .messages import GuardStop, HandedOver
from .request import Request

PHASE = "handed-over"
LEGACY_PHASE = "unattended"  # what runs handed over before this name was used say
# the guard finds the longest lease the money pays, up to this: S3 signs URLs for at most 7 days, and the
# uploads must outlive the deadline by the teardown and an hour
LONG = 7 * 86400.0 - 2 * 3600


def outputs(job: dict) -> list[str]:
    """The worker's output files (relative to out/) the instance uploads."""
    return [*inbound.DOCS, *inbound.LOGS, *(f"results/{t['name']}.jsonl" for t in job["tasks"])]


def hand_over(led: Ledger, provider, req: Request, iid: int, on: OnInstance, now: float,
              event) -> HandedOver | GuardStop:
    """Give the running instance its deadline (the longest lease the budget pays) and its upload URLs."""
    policy = req.policy_obj
    d = led.tick(iid, now, dataclasses.replace(policy, lease_s=LONG))
    if not d.go:
        return GuardStop(why="the budget pays no deadline past the next tick")
    deadline = led.instance(iid).lease_until
    expires = min(7 * 86400, int(deadline - now + policy.teardown_s + 3600))  # past the last upload
    urls = provider.upload_urls(req.run_id, outputs(req.job), expires)
    on.session.put_bytes("".join(f"{rel} {url}\n" for rel, url in urls).encode(), "upload_urls", 0o600)
    on.session.put_bytes(f"{int(provider.upload_every_s)}\n".encode(), "upload_every")
    on.write_lease(deadline)
    led.update_run(req.run_id, phase=PHASE, controller_pid=None, controller_start=None)
    event(PHASE, f"deadline {iso(deadline)} (what the budget pays, enforced by the instance's watchdog); "
          f"results to {provider.results_prefix(req.run_id)} every {duration(provider.upload_every_s)}; "
          f"the instance powers itself off when done. `budget status {req.run_id}` collects them")
    return HandedOver()


def handed_over(run: dict) -> bool:
    return run["phase"] in (PHASE, LEGACY_PHASE)


def reconcile(led: Ledger, run: dict, home: Path, clock: Clock = SYSTEM) -> dict:
    """Bring a handed-over run up to date: results from the provider's uploads; once its instance is gone, the
    ledger settled (to the time the provider reports, never past the deadline + teardown) and the run
    finished as its summary says. Returns what it did (for `budget status`)."""
    now = clock.now()
    run_dir = Path(run["dir"])
    req = Request.load(run_dir / "request.json")
    live = led.instances(run_id=run["id"], live=True)
    region = live[0].region if live else req.offer.get("region") or None
    provider = registry.make(req.provider, configmod.load(home), home, region, clock)
    got = provider.download_results(run["id"], run_dir / "out")
    if not live:
        return {"downloaded": got, "state": run["state"]}
    inst = live[0]
    info = provider.status(inst.provider_id) if inst.provider_id else None
    if info is not None and info.launched_at and info.launched_at != inst.launched_at:
        led.set_instance(inst.id, launched_at=info.launched_at)  # the cloud's own launch time
        inst = led.instance(inst.id)
    if info is not None and info.state not in GONE_STATES:
        return {"downloaded": got, "state": "running", "instance": info.state}
    reported = provider.ended_at(inst.provider_id) if inst.provider_id else None

    def note(kind: str, detail: str) -> None:
        led.event(run["id"], kind, detail, inst.id)
    teardown.end(led, provider, inst, how="gone", run_dir=run_dir, policy=req.policy_obj, event=note, clock=clock,
                 at=reported if reported is not None else now)
    end = led.instance(inst.id).ended_at
    summary = inbound.summary(run_dir / "out")
    results.record_tasks(led, run["id"], run_dir / "out", req.job)
    done, total = progress.count(run_dir, run["id"])
    if summary.complete and done >= total:  # its word that it finished, and every planned line held here
        state, reason = "done", ""
    elif summary.stopped:
        # the watchdog stops the worker (a stop file) only at the deadline: the budget ran out
        state, reason = "stopped", "budget" if summary.stopped == "stop_file" else summary.stopped
    else:
        state, reason = "failed", summary.error or ("the instance ended without a summary" if not summary.complete
                                                    else f"it said it finished, but {done} of {total} samples came back")
    led.update_run(run["id"], state=state, phase=state, reason=reason, finished_at=end, samples_done=done,
                   samples_total=total)
    led.event(run["id"], "reconciled", f"{inst.provider_id} ended {iso(end)}; {done} samples from S3; {state}",
              inst.id)
    return {"downloaded": got, "state": state, "ended_at": end}

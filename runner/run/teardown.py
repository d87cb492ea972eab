"""THE one way an instance's life ends, whoever ends it - a run that is done, stopped, capped or failed, the
cloud taking a spot instance, `budget stop` with or without a controller (or a ledger), an unattended
instance found gone, `budget sweep`:

    1. its last lines: the worker is asked to stop (it flushes) and what it finished is fetched - over the
       run's session, or one opened for the purpose while its disk can still be read;
    2. its billing ended: terminated (a launch whose answer was lost is found by its run tag first), or
       taken as ended where it ended by itself or was taken away;
    3. settled in the ledger - never below what the provider can bill: an instance still running when it is
       terminated is billed to the terminate, lease or not; one that ended alone, to its lease + teardown at
       most (its watchdog's bound).

A provider error while terminating leaves the instance live in the ledger and is raised: `budget stop` retries."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from planner.errors import GpuBudgetError, InputError

from .. import inbound
from ..clock import SYSTEM, Clock
from ..cloud import registry
from ..errors import NotReadyError
from ..inbound import fetch
from ..money.guard import Policy
from ..money.journal import JOURNAL
from ..money.ledger import Instance, Ledger
from ..units import iso, money
from . import progress

EventFn = Callable[[str, str], None]


def end(led: Ledger, provider, inst: Instance, *, how: str, run_dir: Path, policy: Policy, event: EventFn,
        clock: Clock = SYSTEM, session=None, fetch_lines: bool = False, reached: bool = True,
        at: float | None = None) -> Decimal:
    """End `inst` (a ledger row) and settle it; returns what it cost. `how`: done (the worker finished: fetch
    without stopping it), stop (ask the worker to stop, fetch, terminate), reclaimed (the cloud took it, by
    `at`: nothing to fetch or terminate), gone (it ended by itself, by `at` as the provider says), swept
    (terminate, nothing to fetch). What ended without us is billed to `at`, but never past lease + teardown:
    by then its watchdog had powered it off. `fetch_lines`: the worker ran there, so its last lines are worth
    fetching. `reached`: a session was ever opened on it (a rented host never reached ran nothing of ours)."""
    if fetch_lines and how in ("done", "stop"):
        last_lines(provider, inst.provider_id, inst.run_id, run_dir, policy, event, clock, session, stop=how != "done")
    current = led.instance(inst.id)
    if current.ended_at is not None:  # settled before (a retry, a second way out): nothing is billed twice
        return led.spent_instance(inst.id)
    if how in ("reclaimed", "gone"):  # it ended without us: when it did, never past its lease + teardown
        end = billing_end(current, at if at is not None else clock.now(), policy)
        spent = led.settle(inst.id, end, "reclaimed" if how == "reclaimed" else "terminated")
        if how == "gone" and current.provider_id:
            _tidy(provider, current.provider_id, event)
        return spent
    if provider.caps.rented and not reached:
        # nothing of ours ran there, so there is nothing to stop and nothing to bill to this run (its platform
        # bills the user whatever we do)
        spent = led.settle(inst.id, None, "failed")
        event("settled", "the host was never reached: nothing ran there, nothing charged to this run")
        return spent
    if current.provider_id is None:  # the launch's answer was lost (or the launch made nothing)
        return _unanswered(led, provider, current, policy, event, clock)
    return _terminate(led, provider, current, policy, event)


def _unanswered(led: Ledger, provider, inst: Instance, policy: Policy, event: EventFn, clock: Clock) -> Decimal:
    """An intent with no instance id: the launch failed, was never sent, or its answer was lost. What the tool
    launched is found by its run tag in any state - ended ones included - and ended and billed as any other.
    None found: a rented host launched nothing; a provider that still lists every instance it made since the
    intent (caps.finds_ended_s) made none; past that, one may have run and ended unseen - billed to its boot
    lease + teardown, the most its boot guard let it run. Never 0 for what may have billed."""
    known = {i.provider_id for i in led.instances(run_id=inst.run_id) if i.provider_id}
    found = registry.lost_launch(provider, inst.run_id, known)
    while found is None and clock.now() - inst.started_at < provider.caps.lists_after_s:
        clock.sleep(5)  # a cloud lists a new instance a little after its launch: not there yet is not "none made"
        found = registry.lost_launch(provider, inst.run_id, known)
    if found is not None:
        _record(lambda: led.set_instance(inst.id, provider_id=found.provider_id))
        _record(lambda: event("found", f"{found.provider_id} ({found.state}) by its run tag: the launch's answer "
                              "was lost"))
        return _terminate(led, provider, led.instance(inst.id), policy, event)
    if provider.caps.rented or clock.now() - inst.started_at <= provider.caps.finds_ended_s:
        return led.settle(inst.id, None, "failed")  # the launch made nothing
    spent = led.settle(inst.id, inst.lease_until + policy.teardown_s, "terminated")
    event("settled", f"no instance of the run is found any more, though its launch may have made one: billed to "
          f"its boot lease + teardown, {money(spent)} CNY")
    return spent


def _terminate(led: Ledger, provider, inst: Instance, policy: Policy, event: EventFn) -> Decimal:
    pid = inst.provider_id
    _record(lambda: led.set_instance(inst.id, state="stopping"))
    _record(lambda: event("terminating", pid))
    try:
        running = provider.status(pid).state in ("pending", "running")
        ended = provider.terminate(pid)
        reported = None if running else provider.ended_at(pid)
    except GpuBudgetError as e:
        why = e.message
        _record(lambda: event("terminate", f"failed: {why}"))
        raise
    # still running when we terminated it: it billed until now, lease or not (its watchdog may have died
    # with everything else) - the ledger never records less than the provider bills. Ended before: when the
    # provider says it did, else no later than its lease + teardown (its watchdog's bound)
    spent = led.settle(inst.id, ended if running else reported if reported is not None
                       else billing_end(led.instance(inst.id), ended, policy))
    event("terminated", f"{pid}; {money(spent)} CNY")
    if not provider.caps.stop_command:
        event("billing", f"{pid} has no stop command: the platform keeps billing it after this run "
              "(set ssh.stop_command)")
    return spent


def _tidy(provider, pid: str, event: EventFn) -> None:
    """What an instance that ended by itself leaves (EC2: its run's security group; a stopped instance's disk)
    goes the way of every terminate - safe to repeat on what is gone. A failure leaves it to `budget sweep`."""
    try:
        provider.terminate(pid)
    except GpuBudgetError as e:
        why = e.message
        _record(lambda: event("terminate", f"{pid} ended by itself; tidying after it failed ({why}): `budget sweep` "
                              "finds what it left"))


def _record(write: Callable[[], None]) -> None:
    """A bookkeeping write on the way to a terminate: a full disk or a locked ledger must not keep the
    instance running - terminate first; the settle after it raises if the ledger still cannot take it."""
    try:
        write()
    except sqlite3.Error:
        pass


def billing_end(inst: Instance, terminated_at: float, policy: Policy) -> float:
    """When billing ended: at the terminate, or earlier if the instance's watchdog already ended it at
    its lease (it powers off within the teardown allowance; the ledger never bills past that)."""
    return min(terminated_at, inst.lease_until + policy.teardown_s)


def last_lines(provider, pid: str | None, run_id: str, run_dir: Path, policy: Policy, event: EventFn,
               clock: Clock = SYSTEM, session=None, stop: bool = True) -> None:
    """What the worker finished, fetched before its instance goes: over `session`, and - when there is none
    or it broke - over one opened now while the instance's disk can still be read (running, or a local
    instance its watchdog powered off). Bounded by the teardown allowance; a failure is an event saying how
    many finished samples were left there."""
    why = ""
    for given in ([session] if session is not None else []) + [None]:
        own = None
        try:
            if given is None:
                given = own = _reopen(provider, pid, run_id, policy, clock)
                if given is None:
                    break
            if stop:
                given.put_bytes(b"", "out/STOP")
                end = clock.monotonic() + min(policy.tick_s, policy.teardown_s / 4)
                while clock.monotonic() < end and not (given.read("worker.exit") or b"").strip():
                    clock.sleep(0.2)
            for what, why in fetch(given, "out", run_dir / "out", progress.tasks_of(run_dir) or None).bad:
                event("untrusted", f"the instance sent a bad {what}: {why}; not taken")
            return
        except GpuBudgetError as e:
            why = e.message
        finally:
            if own is not None:
                own.close()
    if why:
        fetch_failed(run_dir, why, event)


def _reopen(provider, pid: str | None, run_id: str, policy: Policy, clock: Clock):
    """A session on an instance whose disk can still be read (running, or a local instance its watchdog powered
    off), retried while it does not answer yet - for a quarter of the teardown allowance; None when it is gone."""
    end = clock.monotonic() + policy.teardown_s / 4
    while True:
        if pid is None or provider.status(pid).state not in ("pending", "running", "stopped"):
            return None
        try:
            return provider.session(pid, run_id, timeout_s=min(10.0, policy.teardown_s / 4))
        except NotReadyError:
            if clock.monotonic() >= end:
                raise
            clock.sleep(1.0)


def fetch_failed(run_dir: Path, why: str, event: EventFn) -> None:
    """The event for a final fetch that could not finish: how many samples are here, how many were left."""
    held, claimed = progress.held(run_dir), _claimed(run_dir)
    left = f"; {claimed - held} finished samples left on the instance" if claimed > held else ""
    event("fetch", f"final fetch failed: {why}; {held} samples fetched{left}")


def _claimed(run_dir: Path) -> int:
    """How many samples the worker's last fetched status said were done (only to say what a failed fetch left)."""
    return sum(t.done for t in inbound.status(run_dir / "out").tasks.values())


def without_ledger(run_id: str, run_dir: Path, home: Path, why: str, clock: Clock = SYSTEM) -> dict:
    """`budget stop` when the ledger cannot be read: the run directory says which provider and offer, the
    provider finds the run's instances by tag; fetch, terminate, and journal the settlement in the run
    directory (a later `budget ledger rebuild` takes it in)."""
    from .. import config as configmod
    from ..money.ledger import HINT
    from .request import Request

    try:
        req = Request.load(run_dir / "request.json")
    except GpuBudgetError:
        raise InputError(f"the ledger cannot be read ({why}) and {run_dir} has no readable request.json: the run's "
                         "provider is unknown", "give the full run id; " + HINT) from None
    provider = registry.make(req.provider, configmod.load(home), home, region=req.offer.get("region"), clock=clock)
    policy = req.policy_obj

    def event(kind: str, detail: str) -> None:
        with open(run_dir / "controller.log", "a", encoding="utf-8") as f:
            f.write(f"{iso(clock.now())} {kind}: {detail} (budget stop, ledger unreadable)\n")

    ended = []
    for pid in registry.find_by_run(provider, run_id):
        last_lines(provider, pid, run_id, run_dir, policy, event, clock)
        at = provider.terminate(pid)
        event("terminated", pid)
        ended.append((pid, at))
    with open(run_dir / JOURNAL, "a", encoding="utf-8") as f:
        for pid, at in ended:
            f.write(json.dumps({"at": clock.now(), "terminated": {"provider_id": pid, "at": at}}) + "\n")
    return {"id": run_id, "state": "stopped",
            "reason": f"user; the ledger cannot be read, so this stop is recorded in {run_dir} - run `budget ledger "
                      f"rebuild` ({len(ended)} instance(s) terminated)"}

"""The life of a run, as a table: `step(state, event) -> (state, effects)`. Pure - no I/O, no clock:
every event carries the time it happened (`at`) and the facts it brings (a guard verdict read from the
ledger in its own transaction, a probe's answer, a launch's instance id); every effect is a request the
driver performs through its ports (runner/run/effects.py) and answers with at most one event.

    created --admitted--> admitted --launched--> booting --connected, armed--> armed --bootstrap-done-->
      (push) --pushed--> pushed --started--> running --worker-exited--> tearing-down --torn-down--> ended
    running --probe dead|hung--> reviving --started--> running
    running --error (ssh)--> [is the instance there?] --still-there--> reconnecting --connected--> running
                                                      --reclaimed (spot)--> relaunching
    running --notice (spot)--> relaunching --attempt-ended--> created (the next attempt, same or next offer)
    running --handed-over--> handed-over            (unattended: the instance finishes alone)
    any live phase --guard-stop | stop-requested | interrupted | error--> tearing-down
    (start, resume) in a persisted phase --> it goes on from there (resuming: reattach, inspect, re-arm)

`TABLE` holds every (phase, event kind) pair the machine accepts; any other pair is a bug and ends the run
as failed (never silently ignored). tests/runner/test_machine.py exercises every pair."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from planner.errors import GpuBudgetError

from ..units import duration
from ..errors import BootstrapError, RemoteError, RunError, WorkerError
from ..money.guard import Policy
from . import liveness
from .liveness import Watch
from .messages import (
    EXIT_DONE, EXIT_STOPPED, Abandon, Admit, AdmitRefused, Admitted, Arm, Armed, AttemptEnded, Bootstrap,
    BootstrapDone, CheckInstance, Connect, Connected, Disconnect, Effect, Ending, Event, Exited, Failed, Found, Gone,
    Guard, GuardGo, HandedOver, HandOver, Inspect, Inspected, Launch, Launched, LaunchRefused, Leave, NoteLaunch,
    Notice, Poll, PollBootstrap, Polled, Push, Pushed, Reattach, RestartWorker, Start, Started, StartWorker,
    Teardown, Tick, TornDown, WriteLease
)

PHASES = ("created", "admitted", "booting", "armed", "pushed", "running", "reconnecting", "reviving",
          "relaunching", "resuming", "tearing-down", "handed-over", "ended")
FINAL_PHASES = ("handed-over", "ended")  # the controller's part is over
RECONNECT_WAIT_S = 300.0  # the longest a lost session is waited for before the run gives up
REFUSED_S = 5.0  # how long a machine that is up before the run (a rented host) may refuse connections


# ---------------------------------------------------------------------------------------------- values

@dataclass(frozen=True)
class Rules:
    """What a run's request fixes for its whole life."""

    policy: Policy
    spot: bool = False
    unattended: bool = False
    ssh_wait_s: float = 600.0
    refused_s: float | None = None  # a refused connection ends the wait this soon (None: waited on as silence is)
    bootstrap_timeout_s: float = 3600.0
    bootstrap: bool = True        # the instance needs bootstrap.sh (not this machine, no ready Python given)
    offers: int = 1               # the request's own offer and its fallbacks
    stale_s: float = 60.0         # liveness: how long a silent heartbeat is tolerated
    restarts: int = liveness.RESTARTS
    max_relaunches: int = 3       # new instances a spot run gets after the cloud took one, before it gives up


@dataclass(frozen=True)
class State:
    phase: str = "created"
    attempt: int = 0              # this instance's attempt (0: the first; a relaunch adds one)
    offer: int = 0                # which of the request's offers it runs on (0: its own, then fallbacks)
    iid: int | None = None        # the ledger's instance row
    pid: str | None = None        # the provider's instance id
    reached: bool = False         # a session was opened on this instance at least once
    session: bool = False         # a session is open now
    worker: bool = False          # the worker was started on this instance
    deadline: float | None = None  # when the current wait (a session, the bootstrap) gives up
    note: str = ""                # why the current wait is still waiting
    refused: bool = False         # ... because the host refused the connection
    lease_capped: bool = False    # the last guard verdict could not extend the lease by a whole lease
    watch: Watch = Watch()
    leave: str = ""               # relaunching: how the current instance is left (reclaimed | moved)
    back: str = "running"         # reconnecting: the phase a new session goes back to
    ending: Ending | None = None


# ---------------------------------------------------------------------------------------------- the table

Result = tuple[State, list[Effect]]
Handler = Callable[[State, Event, Rules], Result]


def _end(s: State, state: str, reason: str = "", error: GpuBudgetError | None = None) -> Result:
    ending = Ending(state, reason if reason or error is None else error.message, error)
    return replace(s, phase="tearing-down", ending=ending, deadline=None, note="", refused=False), [Teardown(ending)]


def _fail(s: State, e: Event, r: Rules) -> Result:
    return _end(s, "failed", error=e.error)


def _guard_go(s: State, e: GuardGo, r: Rules) -> Result:
    p = r.policy
    capped = e.lease_until < e.at + p.lease_s - p.tick_s
    return replace(s, lease_capped=capped), ([WriteLease(e.lease_until)] if s.session else [])


def _waiting(s: State, e: Event, r: Rules) -> Result:
    """Not there yet (no session, bootstrap still running): remember why; the guard ticks meanwhile. A host
    that is up before the run and refuses the connection is down: its wait ends `refused_s` after that."""
    refused = getattr(e, "refused", False) and r.refused_s is not None
    if refused and s.deadline is not None:
        s = replace(s, deadline=min(s.deadline, e.at + r.refused_s))
    return replace(s, note=getattr(e, "why", s.note), refused=refused), [Guard()]


def _wait_tick(poll: Effect, timeout: Callable[[State, Rules], GpuBudgetError]) -> Handler:
    def handle(s: State, e: Tick, r: Rules) -> Result:
        if s.deadline is not None and e.at >= s.deadline:
            return _end(s, "failed", error=timeout(s, r))
        return s, [poll]
    return handle


def _unreachable(s: State, r: Rules) -> GpuBudgetError:
    wait = r.ssh_wait_s if s.phase == "booting" else min(r.ssh_wait_s, RECONNECT_WAIT_S)
    if s.refused:
        wait = min(wait, r.refused_s)
    return RemoteError(f"cannot reach {s.pid} over SSH within {duration(wait)}: {s.note or 'no answer'}",
                       "check the instance in the provider's console; raise run.ssh_wait_s for slow boots")


def _bootstrap_late(s: State, r: Rules) -> GpuBudgetError:
    return BootstrapError(f"bootstrap.sh did not finish within {duration(r.bootstrap_timeout_s)}",
                          "pass --remote-python PATH if the instance already has a ready Python")


# created: waiting for the guard to admit an instance
def _start_created(s: State, e: Start, r: Rules) -> Result:
    return s, [Admit()]


def _admitted(s: State, e: Admitted, r: Rules) -> Result:
    return replace(s, phase="admitted", iid=e.iid), [Launch()]


def _admit_refused(s: State, e: AdmitRefused, r: Rules) -> Result:
    # a relaunch the money cannot pay ends the run as the budget's stop; a first launch is refused outright
    return _end(s, "stopped", "budget") if s.attempt else _end(s, "failed", error=e.error)


# admitted: the intent is recorded; the launch call
def _start_admitted(s: State, e: Start, r: Rules) -> Result:
    return s, [Launch()]


def _launched(s: State, e: Launched, r: Rules) -> Result:
    s = replace(s, phase="booting", pid=e.pid, deadline=e.at + r.ssh_wait_s, note="", refused=False)
    return s, [NoteLaunch(e.pid, e.address, e.launched_at), Connect()]


def _launch_refused(s: State, e: LaunchRefused, r: Rules) -> Result:
    if s.attempt and s.offer + 1 < r.offers:  # a relaunch the cloud has no capacity for: the next cheapest offer
        return (replace(s, phase="created", offer=s.offer + 1, iid=None, pid=None),
                [Abandon(s.iid, e.error.message if e.error else ""), Admit()])
    return _end(s, "failed", error=e.error)


# booting / reconnecting / resuming: waiting for a session
def _connected(s: State, e: Connected, r: Rules) -> Result:
    s = replace(s, session=True, reached=True, deadline=None, note="", refused=False)
    if s.phase == "reconnecting":  # where the session broke: the worker runs on, or the setup is done again
        return replace(s, phase=s.back), {"armed": [Bootstrap()], "pushed": [StartWorker()]}.get(s.back, [])
    if s.phase == "resuming":
        return s, [Inspect()]
    return s, [Arm()]


def _armed(s: State, e: Armed, r: Rules) -> Result:
    if s.phase == "resuming" and s.worker:
        return replace(s, phase="running"), [Guard()]
    deadline = e.at + r.bootstrap_timeout_s if r.bootstrap else None
    return replace(s, phase="armed", deadline=deadline), [Bootstrap()]


def _bootstrap_done(s: State, e: BootstrapDone, r: Rules) -> Result:
    if e.rc != 0:
        return _end(s, "failed", error=BootstrapError(
            f"bootstrap.sh exited {e.rc} on the instance: {e.last or '(no output)'}",
            "fix the instance's Python (or pass --remote-python PATH to one that can import torch, transformers, "
            "accelerate, bitsandbytes)"))
    return replace(s, deadline=None, note="", refused=False), [Push()]


def _pushed(s: State, e: Pushed, r: Rules) -> Result:
    return replace(s, phase="pushed"), [StartWorker()]


def _started(s: State, e: Started, r: Rules) -> Result:
    return replace(s, phase="running", worker=True), ([HandOver()] if r.unattended else [])


# running
def _probe(s: State, e: Polled, r: Rules) -> Result:
    verdict, watch = liveness.verdict(s.watch, e.probe, e.beat, e.at, r.stale_s)
    s = replace(s, watch=watch)
    if verdict == "ok":
        return s, [Guard()]
    what = ("its process is gone and it left no exit code" if verdict == "dead"
            else f"its heartbeat has not moved for {duration(r.stale_s)}")
    if not liveness.may_restart(watch, r.restarts):
        return _end(s, "failed", error=WorkerError(
            f"the worker stopped working ({what}) after {watch.restarted} restart(s)",
            "see the run's out/worker.log; finished samples are kept in its out/ directory"))
    watch = liveness.restarted(watch, e.at)
    return (replace(s, phase="reviving", watch=watch),
            [RestartWorker(kill=verdict == "hung", why=what, nth=watch.restarted, of=r.restarts)])


def _exited(s: State, e: Exited, r: Rules) -> Result:
    if e.code == EXIT_DONE:
        return _end(s, "done")
    if e.code == EXIT_STOPPED:
        if e.fired:  # its watchdog stopped it at the lease a moment before our own tick could
            return _end(s, "stopped", "budget" if s.lease_capped else "lease")
        return _end(s, "stopped", e.stopped or "worker")
    return _end(s, "failed", error=WorkerError(f"the worker failed (exit {e.code}): {e.error or 'no output'}",
                                               "see the run's out/worker.log; finished samples are kept in its "
                                               "out/ directory"))


def _notice(s: State, e: Notice, r: Rules) -> Result:
    if not r.spot:
        return _end(s, "stopped", "worker")
    return replace(s, phase="relaunching", leave="moved"), [Leave("moved", e.text[:200])]


def _lost(s: State, e: Failed, r: Rules) -> Result:
    """A session error while the worker runs: the worker runs on, detached - unless the cloud took the
    instance. Ask the provider which."""
    if isinstance(e.error, RemoteError):
        return s, [CheckInstance(e.error.message)]
    return _end(s, "failed", error=e.error)


def _gone(s: State, e: Gone, r: Rules) -> Result:
    """The instance is not running any more. A spot run's cloud took it: go on on a new one. Any other ended
    on its own (its watchdog at the lease, someone in the console): the run fails, its samples kept."""
    if r.spot and s.phase != "booting":
        return replace(s, phase="relaunching", leave="reclaimed", session=False), \
            [Disconnect(), Leave("reclaimed", f"{s.pid} is {e.state}")]
    return _end(s, "failed", error=RemoteError(f"{s.pid} is {e.state}", "a spot instance may have been reclaimed, "
                                               "or the instance's watchdog ended it at its lease; fetched samples "
                                               "are kept"))


def _present(s: State, e: Event, r: Rules) -> Result:
    wait = min(r.ssh_wait_s, RECONNECT_WAIT_S)
    back = s.phase if s.phase in ("armed", "pushed") else "running"
    return (replace(s, phase="reconnecting", session=False, deadline=e.at + wait, note="", refused=False, back=back),
            [Disconnect(), Connect()])


def _handed_over(s: State, e: HandedOver, r: Rules) -> Result:
    return replace(s, phase="handed-over", session=False), [Disconnect()]


# relaunching: the current instance is left, then the next attempt
def _attempt_ended(s: State, e: AttemptEnded, r: Rules) -> Result:
    nxt = s.attempt + 1
    if nxt > r.max_relaunches:
        return _end(replace(s, iid=None), "failed", error=RunError(
            f"the instance was taken away {nxt} times; not launching another",
            "finished samples are kept in the run's out/ directory; run again (on-demand: without --spot)"))
    return State(phase="created", attempt=nxt, offer=s.offer, lease_capped=s.lease_capped), [Admit()]


# resuming: `budget resume` of a run whose controller died
def _start_resuming(s: State, e: Start, r: Rules) -> Result:
    return replace(s, phase="resuming", session=False, deadline=None, note="", refused=False), [Reattach()]


def _found(s: State, e: Found, r: Rules) -> Result:
    return replace(s, iid=e.iid, pid=e.pid, deadline=e.at + min(r.ssh_wait_s, RECONNECT_WAIT_S)), [Connect()]


def _inspected(s: State, e: Inspected, r: Rules) -> Result:
    if e.fired:
        return _end(s, "failed", error=RunError(f"{s.pid}: its watchdog stopped it when the lease ran out",
                                                "the samples fetched before are in the run's out/ directory; start "
                                                "a new run for the rest"))
    return replace(s, worker=e.worker), [Arm()]


def _start_relaunching(s: State, e: Start, r: Rules) -> Result:
    return s, [Leave(s.leave or "moved", "resumed")]


def _start_tearing_down(s: State, e: Start, r: Rules) -> Result:
    return s, [Teardown(s.ending or Ending("failed", "resumed while tearing down"))]


# tearing-down
def _torn_down(s: State, e: TornDown, r: Rules) -> Result:
    ending = s.ending or Ending("failed")
    if e.stuck is not None:
        reason = f"could not terminate {s.pid}: {e.stuck.message}"
        ending = Ending("failed", reason, RunError(f"{reason}; it may still be billing", "retry with `budget stop "
                                                   "RUN`, or terminate it in the provider's console"))
    return replace(s, phase="ended", ending=ending, session=False), []


WAITING = {"booting": Connect(), "reconnecting": Connect(), "resuming": Connect(), "armed": PollBootstrap()}
TIMEOUTS = {"booting": _unreachable, "reconnecting": _unreachable, "resuming": _unreachable,
            "armed": _bootstrap_late}
GUARDED = ("booting", "armed", "running", "reconnecting", "resuming")  # an instance exists and the guard ticks
LIVE = tuple(p for p in PHASES if p not in FINAL_PHASES)


def _table() -> dict[tuple[str, str], Handler]:
    t: dict[tuple[str, str], Handler] = {}
    for phase in LIVE:
        if phase != "tearing-down":
            t[(phase, "interrupted")] = lambda s, e, r: _end(s, "stopped", "interrupted")
            t[(phase, "error")] = _fail
    for phase in GUARDED:
        t[(phase, "guard-go")] = _guard_go
        t[(phase, "guard-stop")] = lambda s, e, r: _end(s, "stopped", "budget")
        t[(phase, "stop-requested")] = lambda s, e, r: _end(s, "stopped", "user")
    for phase, poll in WAITING.items():
        t[(phase, "tick")] = _wait_tick(poll, TIMEOUTS[phase])
        t[(phase, "not-ready")] = _waiting
    t.update({
        ("created", "start"): _start_created,
        ("created", "admitted"): _admitted,
        ("created", "admit-refused"): _admit_refused,
        ("admitted", "start"): _start_admitted,
        ("admitted", "admit-refused"): _admit_refused,
        ("admitted", "launched"): _launched,
        ("admitted", "launch-refused"): _launch_refused,
        ("booting", "start"): _start_resuming,
        ("booting", "connected"): _connected,
        ("booting", "reclaimed"): _gone,
        ("booting", "armed"): _armed,
        ("armed", "start"): _start_resuming,
        ("armed", "bootstrap-done"): _bootstrap_done,
        ("armed", "pushed"): _pushed,
        ("armed", "error"): _lost,
        ("armed", "reclaimed"): _gone,
        ("armed", "still-there"): _present,
        ("pushed", "start"): _start_resuming,
        ("pushed", "started"): _started,
        ("pushed", "error"): _lost,
        ("pushed", "reclaimed"): _gone,
        ("pushed", "still-there"): _present,
        ("running", "start"): _start_resuming,
        ("running", "tick"): lambda s, e, r: (s, [Poll()]),
        ("running", "probe"): _probe,
        ("running", "worker-exited"): _exited,
        ("running", "notice"): _notice,
        ("running", "error"): _lost,
        ("running", "reclaimed"): _gone,
        ("running", "still-there"): _present,
        ("running", "handed-over"): _handed_over,
        ("reconnecting", "start"): _start_resuming,
        ("reconnecting", "connected"): _connected,
        ("reconnecting", "reclaimed"): _gone,
        ("reviving", "start"): _start_resuming,
        ("reviving", "started"): lambda s, e, r: (replace(s, phase="running"), []),
        ("reviving", "error"): _lost,
        ("reviving", "reclaimed"): _gone,
        ("reviving", "still-there"): _present,
        ("relaunching", "start"): _start_relaunching,
        ("relaunching", "attempt-ended"): _attempt_ended,
        ("resuming", "start"): _start_resuming,
        ("resuming", "found"): _found,
        ("resuming", "connected"): _connected,
        ("resuming", "reclaimed"): _gone,
        ("resuming", "inspected"): _inspected,
        ("resuming", "armed"): _armed,
        ("tearing-down", "start"): _start_tearing_down,
        ("tearing-down", "torn-down"): _torn_down,
        ("tearing-down", "interrupted"): _start_tearing_down,  # a second Ctrl-C: the teardown goes on
    })
    return t


TABLE = _table()


def step(state: State, event: Event, rules: Rules) -> Result:
    """The next state and what to do, for `event` in `state` (see the module doc). A pair the table does not
    hold is a bug of ours: the run ends as failed, torn down like any other."""
    handler = TABLE.get((state.phase, event.kind))
    if handler is None:
        if state.phase in FINAL_PHASES:
            return state, []
        if state.phase == "tearing-down":  # whatever came in, the teardown still has to happen
            return _start_tearing_down(state, event, rules)
        return _end(state, "failed", error=RunError(f"internal: {event.kind} while {state.phase}",
                                                    "rerun with --debug and report it; the instance was terminated"))
    return handler(state, event, rules)

"""What a run's state machine hears and what it asks: the events the driver feeds `machine.step` (each with
the time it happened and the facts it brings) and the effects `step` asks the driver to perform (each
answered by at most one event). Plain frozen values, named by their `kind`: the table in machine.py is keyed
by (phase, event kind)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from planner.errors import GpuBudgetError

from .liveness import RESTARTS

EXIT_DONE, EXIT_STOPPED = 0, 3  # the worker's exit codes (runner/worker/run.py)


@dataclass(frozen=True)
class Ending:
    """How the run ends: done | stopped | failed, why, and the error raised after the teardown."""

    state: str
    reason: str = ""
    error: GpuBudgetError | None = None


# ---------------------------------------------------------------------------------------------- events

@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = ""
    at: float = 0.0  # when it happened (the driver's clock)


def _event(kind: str):
    def wrap(cls):
        cls.kind = kind
        return dataclass(frozen=True)(cls)
    return wrap


@_event("start")
class Start(Event):
    resume: bool = False


@_event("tick")
class Tick(Event):
    pass


@_event("admitted")
class Admitted(Event):
    iid: int = 0


@_event("admit-refused")
class AdmitRefused(Event):
    error: GpuBudgetError | None = None


@_event("launched")
class Launched(Event):
    pid: str = ""
    address: str | None = None
    launched_at: float | None = None


@_event("launch-refused")
class LaunchRefused(Event):
    error: GpuBudgetError | None = None


@_event("connected")
class Connected(Event):
    pass


@_event("not-ready")
class NotReady(Event):
    why: str = ""
    refused: bool = False  # the host answered and refused the connection


@_event("armed")
class Armed(Event):
    pass


@_event("bootstrap-done")
class BootstrapDone(Event):
    rc: int = 0
    last: str = ""


@_event("pushed")
class Pushed(Event):
    pass


@_event("started")
class Started(Event):
    pass


@_event("probe")
class Polled(Event):
    probe: str = "alive"
    beat: str | None = None


@_event("worker-exited")
class Exited(Event):
    code: int = EXIT_DONE
    fired: bool = False           # the instance's watchdog stopped it at its lease
    stopped: str = ""             # why the worker says it stopped (status.json)
    error: str = ""               # what the worker says went wrong (or its last output)


@_event("notice")
class Notice(Event):
    text: str = ""


@_event("reclaimed")
class Gone(Event):
    state: str = "terminated"


@_event("still-there")
class Present(Event):
    pass


@_event("guard-go")
class GuardGo(Event):
    lease_until: float = 0.0


@_event("guard-stop")
class GuardStop(Event):
    why: str = ""


@_event("stop-requested")
class StopRequested(Event):
    pass


@_event("found")
class Found(Event):
    iid: int = 0
    pid: str = ""


@_event("inspected")
class Inspected(Event):
    fired: bool = False
    worker: bool = False


@_event("attempt-ended")
class AttemptEnded(Event):
    pass


@_event("handed-over")
class HandedOver(Event):
    pass


@_event("torn-down")
class TornDown(Event):
    stuck: GpuBudgetError | None = None


@_event("interrupted")
class Interrupted(Event):
    pass


@_event("error")
class Failed(Event):
    error: GpuBudgetError | None = None


# ---------------------------------------------------------------------------------------------- effects

@dataclass(frozen=True)
class Effect:
    """A request to the driver. `answers`: whether performing it yields an event (only the last effect of a
    list may: the event's step decides what comes next)."""

    kind: ClassVar[str] = ""
    answers: ClassVar[bool] = True


def _effect(kind: str, answers: bool = True):
    def wrap(cls):
        cls.kind, cls.answers = kind, answers
        return dataclass(frozen=True)(cls)
    return wrap


@_effect("admit")
class Admit(Effect):
    pass


@_effect("launch")
class Launch(Effect):
    pass


@_effect("note-launch", answers=False)
class NoteLaunch(Effect):
    pid: str = ""
    address: str | None = None
    launched_at: float | None = None


@_effect("abandon", answers=False)
class Abandon(Effect):
    """The provider refused this attempt's launch: its intent row settles at no charge."""

    iid: int = 0
    why: str = ""


@_effect("connect")
class Connect(Effect):
    pass


@_effect("disconnect", answers=False)
class Disconnect(Effect):
    pass


@_effect("arm")
class Arm(Effect):
    pass


@_effect("bootstrap")
class Bootstrap(Effect):
    pass


@_effect("poll-bootstrap")
class PollBootstrap(Effect):
    pass


@_effect("push")
class Push(Effect):
    pass


@_effect("start-worker")
class StartWorker(Effect):
    pass


@_effect("restart-worker")
class RestartWorker(Effect):
    kill: bool = False
    why: str = ""
    nth: int = 1
    of: int = RESTARTS


@_effect("poll")
class Poll(Effect):
    pass


@_effect("guard")
class Guard(Effect):
    pass


@_effect("write-lease", answers=False)
class WriteLease(Effect):
    until: float = 0.0


@_effect("check-instance")
class CheckInstance(Effect):
    why: str = ""


@_effect("leave")
class Leave(Effect):
    how: str = "moved"  # moved: we terminate it (after a notice); reclaimed: the cloud took it
    why: str = ""


@_effect("reattach")
class Reattach(Effect):
    pass


@_effect("inspect")
class Inspect(Effect):
    pass


@_effect("hand-over")
class HandOver(Effect):
    pass


@_effect("teardown")
class Teardown(Effect):
    ending: Ending = Ending("failed")

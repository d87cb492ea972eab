"""The one loop that drives a run: it performs the state machine's effects through the ports
(runner/run/effects.py), feeds each answer back to `machine.step`, and - when nothing is left to do - waits
on its `Clock` and feeds a tick. It is the only code of a run that sleeps, handles signals and holds the
fault-injection points. After every transition the state is persisted (state.json in the run directory, so
`budget resume` goes on from it) and written as an event row; the ledger's run row follows the phase.

Kill points (`GPUBUDGET_KILL_AT`, for the kill -9 tests): `<phase>` kills on entering a phase (after it is
persisted), `event:<kind>` on receiving an event before anything records it (`event:launched`: the launch's
answer is lost), `samples` on the first look at a running worker that has finished samples here."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from decimal import Decimal
from pathlib import Path

from planner.errors import GpuBudgetError

from .. import inbound
from ..clock import SYSTEM, Clock
from ..errors import RunError
from ..money.ledger import Ledger
from ..procs import proc_start
from ..units import iso
from . import machine as m
from . import messages as ev
from . import progress
from .effects import Effects
from .liveness import Watch, stale_after
from .machine import REFUSED_S, Rules, State
from .messages import Ending
from .request import Request, ready_python

STATE_FILE = "state.json"


def kill_point(point: str) -> None:
    """A real kill -9 of this controller at `point` when GPUBUDGET_KILL_AT names it (tests/runner/test_kill_matrix.py).
    Without the variable it costs one environment lookup."""
    if os.environ.get("GPUBUDGET_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def rules_for(req: Request, provider) -> Rules:
    return Rules(policy=req.policy_obj, spot=req.spot, unattended=req.unattended, ssh_wait_s=req.ssh_wait_s,
                 refused_s=REFUSED_S if provider.caps.rented else None,  # a cloud instance refuses while it boots
                 bootstrap_timeout_s=req.bootstrap_timeout_s,
                 bootstrap=ready_python(req, provider.caps) is None, offers=len(req.offers),
                 stale_s=stale_after(float(req.job.get("heartbeat_s", 10.0)), req.policy_obj.tick_s))


def pause_s(state: State, rules: Rules) -> float:
    """How long the driver waits before the next tick: a tick of a running worker, a short beat while a
    session or the bootstrap is awaited."""
    tick = rules.policy.tick_s
    if state.phase == "running":
        return tick * 0.8
    return min(1.0 if state.phase == "armed" else 2.0, tick)


class Driver:
    def __init__(self, led: Ledger, provider, req: Request, run_dir: Path, clock: Clock = SYSTEM,
                 on_progress: Callable[[dict], None] = lambda _: None, kill: Callable[[str], None] = kill_point):
        self.led, self.req, self.dir, self.clock = led, req, Path(run_dir), clock
        self.on_progress, self.kill = on_progress, kill
        self.rules = rules_for(req, provider)
        self.log = open(self.dir / "controller.log", "a", encoding="utf-8")
        self.effects = Effects(led, provider, req, self.dir, clock, self.event)
        self.state = State()
        self.queue: list[ev.Effect] = []
        self.trace: list[tuple[str, str]] = []  # (phase, event kind) pairs fed, in order

    # ------------------------------------------------------------------------------ bookkeeping

    def event(self, kind: str, detail: str = "") -> None:
        try:
            self.log.write(f"{iso(self.clock.now())} {kind}: {detail}\n")
            self.log.flush()
        except (OSError, ValueError):  # a full disk, a closed log: the ledger may still take it; a teardown goes on
            pass
        self.led.event(self.req.run_id, kind, detail, self.state.iid, at=self.clock.now())

    def progress(self) -> None:
        run = self.led.run(self.req.run_id)
        done, total = progress.count(self.dir, self.req.run_id)
        if (done, total) != (run["samples_done"], run["samples_total"]):
            self.led.update_run(self.req.run_id, samples_done=done, samples_total=total)
        status = inbound.status(self.dir / "out")  # the instance's word: shown, never counted
        decision = self.effects.decision
        self.on_progress({
            "run": self.req.run_id, "phase": self.state.phase, "done": done, "total": total,
            "task": status.task, "eta_s": status.eta_s,
            "spent_cny": self.led.spent_run(self.req.run_id), "cap_cny": Decimal(run["cap_cny"]),
            "committed_cny": decision.committed_cny if decision else None,
        })

    def persist(self) -> None:
        path = self.dir / STATE_FILE
        tmp = path.with_name(STATE_FILE + ".part")
        tmp.write_text(json.dumps(dump(self.state)), encoding="utf-8")
        tmp.replace(path)

    # ------------------------------------------------------------------------------ the loop

    def start(self, resume: bool = False) -> None:
        if resume:
            self.state = load(self.dir / STATE_FILE)
        self.led.update_run(self.req.run_id, controller_pid=os.getpid(), controller_start=proc_start(os.getpid()))
        self.feed(ev.Start(at=self.clock.now(), resume=resume))

    def feed(self, event: ev.Event) -> None:
        self.kill(f"event:{event.kind}")
        before = self.state
        self.trace.append((before.phase, event.kind))
        self.state, effects = m.step(before, event, self.rules)
        self.queue = list(effects)
        assert all(not e.answers for e in self.queue[:-1]), f"only the last effect may answer: {self.queue}"
        if self.state != before:
            self.persist()
        if self.state.phase != before.phase:
            self.entered(before.phase, event.kind)

    def entered(self, old: str, why: str) -> None:
        phase = self.state.phase
        if phase == "ended":
            ending = self.state.ending or Ending("failed")
            self.event(ending.state, ending.reason)  # the run's last event: how it ended
        else:
            if phase not in ("tearing-down", "handed-over"):  # those own the run row's state themselves
                self.led.update_run(self.req.run_id, phase=phase, state="running")
            self.event("phase", f"{phase} (from {old} on {why})")
        self.progress()
        self.kill(phase)

    def step(self) -> bool:
        """One effect performed, or one wait and a tick; False once the controller's part is over."""
        if self.state.phase in m.FINAL_PHASES:
            return False
        if not self.queue:
            self.clock.sleep(pause_s(self.state, self.rules))
            self.feed(ev.Tick(at=self.clock.now()))
            return True
        effect = self.queue.pop(0)
        try:
            answer = self.effects.perform(effect, self.state)
        except GpuBudgetError as e:
            answer = self._failed(e)
        except KeyboardInterrupt:
            answer = ev.Interrupted()
        except Exception as e:  # noqa: BLE001 - anything unexpected still tears down, then shows up with --debug
            err = RunError(f"run {self.req.run_id}: {e.__class__.__name__}: {e}",
                           "rerun with --debug for the traceback; the instance was terminated")
            err.__cause__ = e
            answer = self._failed(err)
        if answer is not None:
            self.feed(replace(answer, at=self.clock.now()))
            if isinstance(answer, ev.GuardGo):
                self.progress()
            if isinstance(answer, (ev.Polled, ev.Exited)) and progress.held(self.dir):
                self.kill("samples")
        return True

    def close(self) -> None:
        """Let go of the session and the log (the run itself goes on where it is)."""
        self.effects.on.close()
        self.log.close()

    def _failed(self, e: GpuBudgetError) -> ev.Event:
        if self.state.phase == "tearing-down":  # the teardown itself failed: never loop on it
            return ev.TornDown(stuck=e)
        return ev.Failed(error=e)

    def run(self, resume: bool = False) -> str:
        """Drive the run to its end (`resume`: go on from its persisted state); returns the run's state
        (`running` once handed over). Raises our errors after tearing down."""
        main = threading.current_thread() is threading.main_thread()
        old_int = signal.getsignal(signal.SIGINT)
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
        try:
            try:
                self.start(resume)
            except KeyboardInterrupt:
                self.feed(ev.Interrupted(at=self.clock.now()))
            while True:
                if main and self.state.phase == "tearing-down":  # a second Ctrl-C must not leave it running
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                try:
                    if not self.step():
                        break
                except KeyboardInterrupt:  # while waiting for the next tick
                    self.feed(ev.Interrupted(at=self.clock.now()))
        finally:
            if main:
                signal.signal(signal.SIGTERM, old_term)
                signal.signal(signal.SIGINT, old_int)
            self.close()
        if self.state.phase == "handed-over":
            return "running"
        ending = self.state.ending or Ending("failed")
        if ending.state == "failed" and ending.error is not None:
            raise ending.error
        return ending.state


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------- the persisted state

def dump(s: State) -> dict:
    doc = asdict(replace(s, ending=None, session=False))
    if s.ending is not None:
        e = s.ending.error
        doc["ending"] = {"state": s.ending.state, "reason": s.ending.reason,
                         "error": None if e is None else {"message": e.message, "hint": e.hint}}
    return doc


def load(path: Path) -> State:
    """The state a controller persisted; a run from before states were persisted goes on as running."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        ending = doc.pop("ending", None)
        watch = Watch(**doc.pop("watch", {}))
        state = State(**doc, watch=watch)
    except FileNotFoundError:
        return State(phase="running", worker=True)
    except (OSError, ValueError, TypeError) as e:
        raise RunError(f"{path}: cannot read the run's state ({e})", "stop it with `budget stop RUN`") from None
    if ending is not None:
        err = ending.get("error")
        state = replace(state, ending=Ending(ending["state"], ending.get("reason", ""),
                                             RunError(err["message"], err.get("hint", "")) if err else None))
    return state

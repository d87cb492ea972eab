"""A stateful property test of the whole run loop: hypothesis drives random sequences of faults - lost
launch answers, dropped and refused sessions, dead workers, spot notices and reclaims, stops, the controller
killed and resumed, cap changes, the clock jumping (a laptop asleep) - through the real driver, ledger and
state machine on the scripted cloud and its fake clock, and after every step checks what must always hold:

- settled spend <= the run's cap and the pool's cap (caps are only ever lowered to what is committed);
- no finished sample held twice, and none lost from an instance we terminated (its last lines come first);
- every instance still running is within its ledger lease + teardown (its watchdog ends it by then);
- no instance billed below what its provider bills: settled rows cost at least the provider's bill, and no
  row is settled while its instance still runs.

At the end of each sequence the run is driven out (or, if its controller is dead, resumed) and must end with
nothing running, every instance settled."""

from __future__ import annotations

import shutil
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runner.money.guard import committed
from runner.run import machine, teardown
from runner.run import messages as ev
from runner.run.driver import Driver
from tests.runner.scripted import Crash, Rig, Script, World, crash_at

pytestmark = pytest.mark.timeout(300)


def _home() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None, prefix="gpubudget-prop-"))


class RunUnderFaults(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.home = _home()
        self.rig = Rig(self.home, World(script=Script(boot_s=3, load_s=2, bootstrap_s=1)), samples=10, spot=True,
                       cap=Decimal(4), pool_cap=Decimal(6), price=Decimal(36), fallbacks=1)
        self.driver: Driver | None = None
        self.kill_next = ""
        self._resume(first=True)

    def _resume(self, first: bool = False) -> None:
        """A controller: the first, or `budget resume`'s after a death (unless the run already ended)."""
        if not first and self.rig.run_row()["state"] in ("done", "stopped", "failed"):
            self.driver = None
            return
        self.driver = self.rig.driver(kill=crash_at(self.kill_next) if self.kill_next else lambda _: None)
        self.kill_next = ""
        try:
            self.driver.start(resume=not first)
        except Crash:
            self.driver = None

    def _steps(self, n: int) -> None:
        for _ in range(n):
            if self.driver is None:
                return
            try:
                if not self.driver.step():
                    return
            except KeyboardInterrupt:  # what the driver's own loop does with Ctrl-C
                self.driver.feed(ev.Interrupted(at=self.rig.clock.now()))
            except Crash:
                self.driver = None
                return

    # ------------------------------------------------------------------ what happens

    @rule(n=st.integers(1, 40))
    def work(self, n):
        self._steps(n)

    @rule(phase=st.sampled_from(["booting", "armed", "pushed", "running", "reconnecting", "reviving", "relaunching"]))
    def work_until(self, phase):
        """On until the run is in `phase` (or it ends, or 400 steps pass)."""
        for _ in range(400):
            if self.driver is None or self.driver.state.phase in (phase, *machine.FINAL_PHASES):
                return
            self._steps(1)

    @rule(seconds=st.sampled_from([5, 30, 90, 400]))
    def controller_stalls(self, seconds):
        """The laptop sleeps: time passes with nobody ticking."""
        self.rig.clock.advance(seconds)

    @rule()
    def drop_sessions(self):
        self.rig.world.drop_sessions()

    @rule(n=st.integers(1, 4))
    def refuse_sessions(self, n):
        self.rig.world.script.refuse = n

    @rule()
    def kill_worker(self):
        for inst in self.rig.world.running():
            self.rig.world.kill_worker(inst.pid)

    @rule()
    def notice(self):
        for inst in self.rig.world.running():
            self.rig.world.script.notice_at[inst.number] = inst.done() + 1

    @rule()
    def reclaim(self):
        for inst in self.rig.world.running():
            self.rig.world.reclaim(inst.pid)

    @rule()
    def stop(self):
        self.rig.led.update_run(self.rig.run_id, stop_requested=1)

    @rule(n=st.integers(1, 2))
    def cloud_api_fails(self, n):
        self.rig.world.script.api_fails = n

    @rule()
    def ctrl_c(self):
        """Ctrl-C (or SIGTERM) between two steps: the driver's loop feeds it as it would from the signal."""
        if self.driver is not None and self.driver.state.phase not in machine.FINAL_PHASES:
            try:
                self.driver.feed(ev.Interrupted(at=self.rig.clock.now()))
            except Crash:
                self.driver = None

    @rule(point=st.sampled_from(["event:launched", "admitted", "booting", "armed", "pushed", "running", "samples",
                                 "reconnecting", "reviving", "relaunching", "tearing-down", "event:torn-down"]),
          fault=st.sampled_from(["kill -9", "ctrl-c", "drop sessions", "reclaim", "stop", "api fails", "cap"]))
    def when_the_run_reaches(self, point, fault):
        """A fault at an exact moment: the next time the controller reaches `point` (a phase it enters, an
        event it hears): its kill -9, Ctrl-C, sessions dropped, the instance reclaimed, a stop asked, the cloud's
        API failing, the pool's cap lowered to what is committed."""
        if self.driver is None:
            return
        actions = {"drop sessions": self.drop_sessions, "reclaim": self.reclaim, "stop": self.stop,
                   "api fails": lambda: self.cloud_api_fails(1),
                   "cap": lambda: self.lower_the_pool_cap(Decimal("0.01"))}

        def hook(where: str) -> None:
            if where != point:
                return
            self.driver.kill = lambda _: None  # once
            if fault == "kill -9":
                raise Crash(point)
            if fault == "ctrl-c":
                raise KeyboardInterrupt
            actions[fault]()
        self.driver.kill = hook

    @precondition(lambda self: self.driver is None)
    @rule(point=st.sampled_from(["", "event:launched", "booting"]))
    def resume(self, point):
        self.kill_next = point
        self._resume()

    @rule(margin=st.sampled_from([Decimal("0.01"), Decimal("0.3"), Decimal(1)]))
    def lower_the_pool_cap(self, margin):
        """The pool's cap is lowered - to what is committed now plus a margin (never below: that money is
        already promised to leases, so the property is about every later decision)."""
        led, policy = self.rig.led, self.rig.req.policy_obj
        with led.transaction():
            meters = [i.meter for i in led.instances(pool="p")]
            cap = min(led.pool_cap("p"), committed(meters, self.rig.clock.now(), policy) + margin)
            led.db.execute("UPDATE pools SET cap_cny=? WHERE name='p'", (str(cap),))

    # ------------------------------------------------------------------ what always holds

    @invariant()
    def spend_within_the_caps(self):
        led = self.rig.led
        assert led.spent_run(self.rig.run_id) <= Decimal(self.rig.run_row()["cap_cny"])
        assert led.spent_pool("p") <= led.pool_cap("p")

    @invariant()
    def no_sample_twice_and_none_lost_from_an_instance_we_terminated(self):
        ids = self.rig.held_ids()
        assert len(ids) == len(set(ids))
        for inst in self.rig.world.instances.values():
            if inst.ended_by == "terminate":
                assert inst.written <= set(ids), inst.pid

    @invariant()
    def every_running_instance_is_within_its_lease(self):
        rows = self.rig.led.instances(run_id=self.rig.run_id)
        now, teardown = self.rig.clock.now(), self.rig.req.policy_obj.teardown_s
        for inst in self.rig.world.running():
            [row] = [r for r in rows if (r.attempt, r.offer_index) == (inst.spec.attempt, inst.spec.offer_index)]
            assert row.ended_at is None, "settled in the ledger while the instance still bills"
            assert now <= max(row.lease_until, inst.spec.lease_until) + teardown

    @invariant()
    def no_instance_billed_below_its_providers_bill(self):
        for row in self.rig.led.instances(run_id=self.rig.run_id):
            inst = self.rig.world.instances.get(row.provider_id or "")
            if row.ended_at is not None and inst is not None and inst.state != "running":
                billable = row.price_cny_h * self.rig.world.billed(inst.pid, row.increment_s, row.minimum_s) / 3600
                assert self.rig.led.spent_instance(row.id) >= billable

    def _stop_what_is_left(self) -> None:
        """`budget stop` after a run that ended with an instance it could not terminate (the cloud's API down)."""
        self.rig.world.script.api_fails = 0
        for inst in self.rig.led.instances(run_id=self.rig.run_id, live=True):
            teardown.end(self.rig.led, self.rig.provider, inst, how="stop", run_dir=self.rig.dir,
                         policy=self.rig.req.policy_obj, event=lambda kind, detail: None, clock=self.rig.clock,
                         fetch_lines=True)

    def teardown(self):
        try:
            for _ in range(5):  # drive it out; a dead controller is resumed (as `budget resume` would)
                if self.driver is None:
                    self.kill_next = ""
                    self._resume()
                    if self.driver is None:
                        break
                self._steps(20_000)
                if self.driver is not None and self.driver.state.phase in ("ended", "handed-over"):
                    break
            if self.driver is not None:
                self.driver.close()
            run = self.rig.run_row()
            assert run["state"] in ("done", "stopped", "failed"), run
            self._stop_what_is_left()
            self.rig.check(done=run["state"] == "done")
        finally:
            self.rig.led.close()
            shutil.rmtree(self.home, ignore_errors=True)


TestRunUnderFaults = RunUnderFaults.TestCase
# 300 sequences in CI (about 15 s); HYPOTHESIS_PROFILE=thorough (tests/conftest.py) runs 3000. Every pair of the
# state table is driven on purpose in test_transitions.py; these sequences find what no one thought to try.
TestRunUnderFaults.settings = settings(max_examples=max(300, settings.default.max_examples), stateful_step_count=12,
                                       deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

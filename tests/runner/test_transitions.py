"""Every (phase, event) pair of the state machine's table, made to happen through the real driver, effects and
ledger on the scripted cloud and its fake clock: the run is brought into the phase the way a real run gets
there (a reclaim for relaunching, a killed worker for reviving, a broken session for reconnecting, a dead
controller for resuming) and, the moment it enters it, the world does what makes that event come next (a
Ctrl-C, a kill -9 then `budget resume`, the cloud's API failing, the cap cut to what is committed, a stop,
a reclaim, a dropped session ...). Each case then checks the pair was driven and that the run ended as every
run must (tests/runner/scripted.py Rig.check). The cases are the table's own keys: a pair added to the table
is a case here at once, and fails until a recipe makes it happen. Each runs in milliseconds."""

from __future__ import annotations

import copy
from dataclasses import replace
from decimal import Decimal

import pytest

from runner.errors import LedgerError
from runner.money.guard import committed
from runner.run import machine, teardown
from runner.run.driver import Driver
from tests.runner.scripted import CAPS, Crash, Rig, Script, World

pytestmark = pytest.mark.timeout(60)

# how a run gets into each phase (beyond the normal flow), as script settings and a first hook point
REACH = {
    "reviving": {"script": {"die_at": {0: 2}}},
    "relaunching": {"script": {"reclaim_at": {0: 2}}},
    "reconnecting": {"at": "samples", "do": "break sessions"},
    "resuming": {"crash_at": "samples"},
}


class Case:
    def __init__(self, home, phase: str, kind: str):
        self.phase, self.kind = phase, kind
        script = Script(boot_s=3, bootstrap_s=3, load_s=2, **copy.deepcopy(REACH.get(phase, {}).get("script", {})))
        unattended = kind == "handed-over"
        if kind == "launch-refused":
            script.reclaim_at, script.no_capacity = {0: 2}, {"g0.x"}
        if kind == "notice" or (phase, kind) == ("relaunching", "error"):
            script.notice_at, script.reclaim_at = {0: 2}, {}
        cap = Decimal("0.1") if (phase, kind) == ("created", "admit-refused") else Decimal(40)
        self.rig = Rig(home, World(script=script), samples=8, spot=True, fallbacks=1, cap=cap, unattended=unattended,
                       caps=replace(CAPS, uploads=True) if unattended else CAPS)
        self.fired = False
        self.cap_cut = False  # the cap was cut below what was committed: spend may end above it

    # ---------------------------------------------------------------- what the world does, when

    def hook(self, where: str) -> None:
        reach = REACH.get(self.phase, {})
        if reach.get("at") == where and reach.get("do") == "break sessions" and not self.fired:
            self.rig.world.drop_sessions()
            self.rig.world.script.refuse = 3
            return
        target = {("resuming", "reclaimed"): "event:found"}.get((self.phase, self.kind), self.phase)
        if self.phase == "created":  # the first phase is not entered: it is where a run starts
            target = "event:start"
        if where != target or self.fired:
            return
        self.fired = True
        self.provoke()

    def provoke(self) -> None:
        rig, kind = self.rig, self.kind
        world, script = rig.world, rig.world.script
        if kind == "interrupted":
            raise KeyboardInterrupt
        if kind == "start":
            raise Crash(self.phase)
        if kind == "error":  # (created's: the ledger refuses the intent - set up before the run starts)
            world.drop_sessions()
            script.api_fails = 2
        elif kind in ("guard-stop", "stop-requested"):
            if kind == "stop-requested":
                rig.led.update_run(rig.run_id, stop_requested=1)
            else:  # below what is committed: the next tick must stop it (the promised money may still be spent)
                self.cut_the_cap(to_spent=True)
            script.refuse = max(script.refuse, 2)  # a wait where the guard ticks
        elif kind in ("guard-go", "tick", "not-ready"):
            script.refuse = max(script.refuse, 2)
        elif kind == "reclaimed":
            for inst in world.running():
                world.reclaim(inst.pid)
        elif kind == "still-there":
            world.drop_sessions()
        elif kind == "admit-refused":  # the launch's renewal of its boot lease finds no money
            self.cut_the_cap(to_spent=True)

    def cut_the_cap(self, to_spent: bool = False) -> None:
        led = self.rig.led
        with led.transaction():
            meters = [i.meter for i in led.instances(pool="p")]
            cap = led.spent_pool("p") if to_spent else committed(meters, self.rig.clock.now(), self.rig.req.policy_obj)
            led.db.execute("UPDATE pools SET cap_cny=? WHERE name='p'", (str(cap),))
        self.cap_cut = to_spent

    # ---------------------------------------------------------------- the run

    def run(self) -> list[tuple[str, str]]:
        trace: list[tuple[str, str]] = []
        crash_first = REACH.get(self.phase, {}).get("crash_at")
        driver = self.driver(lambda where: self.first_life(where, crash_first))
        if (self.phase, self.kind) == ("created", "error"):
            self.ledger_fails_once()
        for _ in range(6):  # each life of a controller: the first, then `budget resume`s after a death
            try:
                driver.run(resume=bool(trace))
                trace += driver.trace
                break
            except Crash:
                trace += driver.trace
                driver.close()
                driver = self.driver(self.hook)
            except Exception:  # noqa: BLE001 - a run that failed is an ending like any other here
                trace += driver.trace
                break
        return trace

    def first_life(self, where: str, crash_first: str | None) -> None:
        if crash_first and where == crash_first:
            raise Crash(where)
        if not crash_first:
            self.hook(where)

    def driver(self, kill) -> Driver:
        return self.rig.driver(kill=kill)

    def ledger_fails_once(self) -> None:
        led, real = self.rig.led, self.rig.led.admit

        def admit(*a, **kw):
            led.admit = real
            raise LedgerError("the ledger could not take the intent (injected)", "retry")
        led.admit = admit


@pytest.mark.parametrize("pair", sorted(machine.TABLE), ids=lambda p: f"{p[0]}-{p[1]}")
def test_each_pair_happens_through_the_driver(fast_home, pair):
    phase, kind = pair
    case = Case(fast_home, phase, kind)
    trace = case.run()
    assert pair in trace, (pair, trace)
    if case.rig.run_row()["phase"] == "handed-over":
        return  # its instance finishes alone (test_lifecycle.py collects one)
    for inst in case.rig.led.instances(run_id=case.rig.run_id, live=True):  # `budget stop`, after a stuck end
        teardown.end(case.rig.led, case.rig.provider, inst, how="stop", run_dir=case.rig.dir,
                     policy=case.rig.req.policy_obj, event=lambda k, d: None, clock=case.rig.clock, fetch_lines=True)
    case.rig.check(within_caps=not case.cap_cut)

"""Whole runs driven in this process by the real driver, ledger and state machine, on the scripted cloud
(tests/runner/scripted.py) and its fake clock: hours of a run in milliseconds, and every fault at an exact
moment - a spot notice before or after the last sample, a reclaim mid-push, a worker dead and revived or dead
for good, the cap reached and a stop asked in each phase, the controller killed in each phase and resumed
from its persisted state, an unattended hand-over. Every test ends with `Rig.check`: nothing left running,
every instance settled no lower than the provider bills it, spend within the caps, no sample twice."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from runner.cloud import registry
from runner.errors import RemoteError
from runner.money.guard import committed
from runner.run import commands, handover
from runner.run.driver import STATE_FILE
from tests.runner.scripted import CAPS, Crash, Rig, Script, World, crash_at

pytestmark = pytest.mark.timeout(30)


def drive_until(driver, cond, steps: int = 5000) -> None:
    for _ in range(steps):
        if cond():
            return
        if not driver.step():
            break
    assert cond(), f"never reached (phase {driver.state.phase})"


def kinds(rig: Rig) -> list[str]:
    return [e["kind"] for e in rig.led.events(rig.run_id)]


def test_a_run_is_done_with_every_sample_once_and_nothing_left_running(fast_home):
    rig = Rig(fast_home, samples=30)
    assert rig.driver().run() == "done"
    rig.check(done=True)
    run = rig.run_row()
    assert (run["state"], run["samples_done"], run["samples_total"]) == ("done", 30, 30)
    k = kinds(rig)
    assert k.index("intent") < k.index("launched") < k.index("watchdog") < k.index("started") < \
        k.index("terminated") and k[-1] == "done"
    [inst] = rig.led.instances(run_id=rig.run_id)
    assert inst.state == "terminated" and inst.attempt == 0
    assert json.loads((rig.dir / STATE_FILE).read_text())["phase"] == "ended"


@pytest.mark.parametrize("at", [10, 20])
def test_a_spot_notice_moves_the_run_unless_the_worker_finished_first(fast_home, at):
    """The notice at sample 10 of 20: the worker flushes, the controller terminates the instance itself and
    goes on on a new one. At sample 20 (the last): the worker finishes first - no relaunch."""
    rig = Rig(fast_home, World(script=Script(notice_at={0: at})), samples=20, spot=True)
    assert rig.driver().run() == "done"
    rig.check(done=True)
    rows = rig.led.instances(run_id=rig.run_id)
    if at == 20:
        assert [r.state for r in rows] == ["terminated"] and "interrupted" not in kinds(rig)
    else:
        assert [r.state for r in rows] == ["terminated", "terminated"] and [r.attempt for r in rows] == [0, 1]
        assert "interrupted" in kinds(rig) and kinds(rig).count("launched") == 2
        assert rig.world.instances["i-0000"].ended < rig.world.instances["i-0001"].launched + 1  # ended by us first


def test_a_reclaim_mid_push_relaunches_and_the_samples_fetched_before_are_pushed_back(fast_home):
    """The first instance is taken at sample 8 (its disk with it); the second is taken while the worker and the
    fetched lines are pushed to it; the third finishes: every sample exactly once."""
    rig = Rig(fast_home, World(script=Script(reclaim_at={0: 8}, reclaim_on_push={1})), samples=20, spot=True)
    assert rig.driver().run() == "done"
    rig.check(done=True)
    rows = rig.led.instances(run_id=rig.run_id)
    assert [r.state for r in rows] == ["reclaimed", "reclaimed", "terminated"]
    assert kinds(rig).count("interrupted") == 2


def test_a_relaunch_without_capacity_moves_to_the_next_offer(fast_home):
    rig = Rig(fast_home, World(script=Script(reclaim_at={0: 5}, no_capacity={"g0.x"})), samples=12, spot=True,
              fallbacks=2)
    assert rig.driver().run() == "done"
    rig.check(done=True)
    rows = rig.led.instances(run_id=rig.run_id)
    assert [(r.state, r.instance_type, r.attempt, r.offer_index) for r in rows] == [
        ("reclaimed", "g0.x", 0, 0), ("failed", "g0.x", 1, 0), ("terminated", "g1.x", 1, 1)]
    assert "fallback" in kinds(rig)
    assert json.loads((rig.dir / "request.json").read_text())["offer"]["instance_type"] == "g0.x"  # never rewritten


def test_the_fourth_reclaim_gives_up_with_the_samples_kept(fast_home):
    rig = Rig(fast_home, World(script=Script(reclaim_at={0: 2, 1: 4, 2: 6, 3: 8})), samples=20, spot=True)
    with pytest.raises(Exception, match="taken away 4 times"):
        rig.driver().run()
    rig.check()
    assert rig.run_row()["state"] == "failed" and len(rig.held_ids()) >= 2


def test_a_dead_worker_is_revived_and_goes_on_after_its_samples(fast_home):
    rig = Rig(fast_home, World(script=Script(die_at={0: 6}, hang_at={0: 12})), samples=20)
    assert rig.driver().run() == "done"
    rig.check(done=True)
    restarts = [e["detail"] for e in rig.led.events(rig.run_id)
                if e["kind"] == "worker" and "restarting" in e["detail"]]
    assert len(restarts) == 2 and "no exit code" in restarts[0] and "heartbeat" in restarts[1]


def test_a_worker_that_keeps_dying_fails_the_run(fast_home):
    rig = Rig(fast_home, samples=50)
    d = rig.driver()
    d.start()
    for n in range(3):
        drive_until(d, lambda: d.state.phase == "running" and rig.world.running()[0].worker_alive
                    and rig.world.running()[0].done() > 2 * n + 2)
        rig.world.kill_worker(rig.world.running()[0].pid)
    drive_until(d, lambda: d.state.phase == "ended")
    rig.check()
    run = rig.run_row()
    assert run["state"] == "failed" and "after 2 restart(s)" in run["reason"] and 0 < run["samples_done"] < 50


def test_a_dropped_session_is_reconnected_and_the_run_completes(fast_home):
    rig = Rig(fast_home, World(script=Script(refuse=0)), samples=20)
    d = rig.driver()
    d.start()
    drive_until(d, lambda: d.state.phase == "running" and len(rig.held_ids()) >= 5)
    rig.world.drop_sessions()
    rig.world.script.refuse = 3  # the first attempts are refused too
    drive_until(d, lambda: d.state.phase == "ended")
    assert rig.run_row()["state"] == "done"
    rig.check(done=True)
    details = [f"{e['kind']}:{e['detail']}" for e in rig.led.events(rig.run_id)]
    assert any(x.startswith("ssh:lost") for x in details) and "ssh:reconnected" in details


@pytest.mark.parametrize("phase", ["booting", "armed", "running", "reconnecting", "resuming"])
def test_the_cap_reached_in_each_phase_stops_the_run_within_it(fast_home, phase):
    """Once the run is in `phase`, the pool's cap drops to what is committed now plus 1 CNY (a minute at the
    test's 60 CNY/h): the guard stops it at its next tick, and the final spend stays within that cap."""
    script = Script(boot_s=8, bootstrap_s=8, refuse=0)
    rig = Rig(fast_home, World(script=script), samples=200, price=Decimal(60), cap=Decimal(100))
    d = rig.driver()
    if phase == "resuming":
        rig.world.script.load_s = 0
        d = rig.driver(kill=crash_at("samples"))
        with pytest.raises(Crash):
            d.run()
        rig.world.script.refuse = 3
        d = rig.driver()
        d.start(resume=True)
    else:
        d.start()
    if phase == "reconnecting":
        drive_until(d, lambda: d.state.phase == "running" and len(rig.held_ids()) > 2)
        rig.world.drop_sessions()
        rig.world.script.refuse = 5
    drive_until(d, lambda: d.state.phase == phase)
    policy = rig.req.policy_obj
    with rig.led.transaction():
        cap = committed([i.meter for i in rig.led.instances(pool="p")], rig.clock.now(), policy) + 1
        rig.led.db.execute("UPDATE pools SET cap_cny=? WHERE name='p'", (str(cap),))
    drive_until(d, lambda: d.state.phase == "ended")
    run = rig.run_row()
    assert (run["state"], run["reason"]) == ("stopped", "budget")
    assert rig.led.spent_pool("p") <= cap
    rig.check()


@pytest.mark.parametrize("phase", ["created", "admitted", "booting", "armed", "pushed", "running", "reconnecting",
                                   "reviving", "relaunching", "resuming"])
def test_a_stop_asked_in_each_phase_ends_the_run_as_the_users_stop(fast_home, phase):
    rig = Rig(fast_home, World(script=Script(reclaim_at={0: 4})), samples=40, spot=True)
    d = rig.driver()
    if phase == "resuming":
        d = rig.driver(kill=crash_at("samples"))
        with pytest.raises(Crash):
            d.run()
        d = rig.driver()
        d.start(resume=True)
    else:
        d.start()
    if phase == "reconnecting":
        rig.world.script.reclaim_at.clear()
        drive_until(d, lambda: d.state.phase == "running" and len(rig.held_ids()) > 1)
        rig.world.drop_sessions()
    if phase == "reviving":
        rig.world.script.reclaim_at.clear()
        drive_until(d, lambda: d.state.phase == "running" and len(rig.held_ids()) > 1)
        rig.world.kill_worker(rig.world.running()[0].pid)
    drive_until(d, lambda: d.state.phase == phase)
    rig.led.update_run(rig.run_id, stop_requested=1)
    drive_until(d, lambda: d.state.phase == "ended")
    run = rig.run_row()
    assert (run["state"], run["reason"]) == ("stopped", "user")
    rig.check()


PHASES_TO_KILL = ["admitted", "event:launched", "booting", "armed", "pushed", "running", "samples", "reconnecting",
                  "reviving", "relaunching", "tearing-down"]


@pytest.mark.parametrize("point", PHASES_TO_KILL)
def test_the_controller_killed_in_each_phase_is_resumed_from_its_persisted_state(fast_home, point):
    """kill -9 at `point` (nothing after it runs: no teardown, no bookkeeping), then `budget resume`'s driver
    goes on from state.json: the run is done, one instance per attempt, every sample exactly once."""
    script = Script(reclaim_at={0: 6} if point == "relaunching" else {}, die_at={0: 4} if point == "reviving" else {})
    rig = Rig(fast_home, World(script=script), samples=16, spot=True)
    d = rig.driver(kill=crash_at(point))
    if point == "reconnecting":
        d.start()
        drive_until(d, lambda: d.state.phase == "running" and len(rig.held_ids()) > 2)
        rig.world.drop_sessions()
    with pytest.raises(Crash):
        d.run() if point != "reconnecting" else drive_until(d, lambda: False)
    assert rig.run_row()["state"] not in ("done", "stopped", "failed")
    rig.world.clock.advance(3)  # the controller is gone for a moment; the instance runs on
    assert rig.driver().run(resume=True) == "done"
    rig.check(done=True)
    rows = rig.led.instances(run_id=rig.run_id)
    assert len({(r.attempt, r.offer_index) for r in rows}) == len(rows)  # one instance per attempt
    assert len(rig.world.instances) == len(rows)


def test_killed_then_left_alone_the_watchdog_ends_it_and_budget_stop_settles_at_the_lease(fast_home, monkeypatch):
    """No command at all after the kill: the instance's watchdog stops the worker at its lease and powers off;
    a later `budget stop` (no controller) settles it at no more than lease + teardown, with the lines it
    finished fetched from its disk while it could."""
    rig = Rig(fast_home, samples=400)
    monkeypatch.setitem(registry.PROVIDERS, "scripted", registry.Entry("scripted", (), False, False, False,
                                                                       lambda cfg, home, region, clock: rig.provider))
    with pytest.raises(Crash):
        rig.driver(kill=crash_at("samples")).run()
    lease = rig.led.instances(run_id=rig.run_id)[0].lease_until
    rig.clock.advance(lease - rig.clock.now() + 120)
    assert not rig.world.running()  # its watchdog powered it off
    assert rig.world.instances["i-0000"].files.get("watchdog.fired")
    rig.led.update_run(rig.run_id, controller_pid=None)
    run = commands.stop(rig.run_id, fast_home, clock=rig.clock)
    assert (run["state"], run["reason"]) == ("stopped", "user")
    [inst] = rig.led.instances(run_id=rig.run_id)
    assert inst.ended_at <= lease + rig.req.policy_obj.teardown_s
    rig.check()


def test_an_unattended_run_is_handed_over_then_collected_once_its_instance_is_gone(fast_home, monkeypatch):
    from dataclasses import replace

    rig = Rig(fast_home, samples=20, unattended=True, caps=replace(CAPS, uploads=True))
    monkeypatch.setitem(registry.PROVIDERS, "scripted", registry.Entry("scripted", (), True, False, False,
                                                                       lambda cfg, home, region, clock: rig.provider))
    assert rig.driver().run() == "running"
    run = rig.run_row()
    assert (run["state"], run["phase"], run["controller_pid"]) == ("running", "handed-over", None)
    [inst] = rig.led.instances(run_id=rig.run_id)
    assert inst.lease_until > rig.clock.now() + 3600  # the deadline the budget pays, not a renewed lease
    files = rig.world.instances["i-0000"].files
    assert files["upload_urls"].count(b"https://uploads.test/") == 5 and b"AWS_SECRET" not in files["upload_urls"]
    assert handover.reconcile(rig.led, run, fast_home, rig.clock)["state"] == "running"  # still at work
    rig.clock.advance(60)
    doc = commands.describe(fast_home, rig.run_id, clock=rig.clock)
    assert (doc["state"], doc["samples_done"]) == ("done", 20)
    rig.check(done=True)
    assert "reconciled" in kinds(rig)


def test_an_unreachable_instance_fails_at_its_ssh_wait_and_is_terminated(fast_home):
    rig = Rig(fast_home, World(script=Script(refuse=10_000)), samples=5, ssh_wait_s=20)
    with pytest.raises(RemoteError, match="cannot reach i-0000 over SSH within 20 s"):
        rig.driver().run()
    rig.check()
    [inst] = rig.led.instances(run_id=rig.run_id)
    assert inst.state == "terminated" and rig.led.spent_run(rig.run_id) > 0  # it was up: billed its minimum


def test_a_rented_host_never_reached_is_settled_at_nothing(fast_home):
    from dataclasses import replace

    rig = Rig(fast_home, World(script=Script(refuse=10_000)), samples=5, ssh_wait_s=10,
              caps=replace(CAPS, rented=True))
    with pytest.raises(RemoteError):
        rig.driver().run()
    [inst] = rig.led.instances(run_id=rig.run_id)
    assert inst.state == "failed" and rig.led.spent_run(rig.run_id) == 0
    assert "terminating" not in kinds(rig) and kinds(rig)[-1] == "failed"


def test_a_bootstrap_that_fails_ends_the_run_and_terminates(fast_home):
    rig = Rig(fast_home, World(script=Script(bootstrap_rc=2)), samples=5)
    with pytest.raises(Exception, match="bootstrap.sh exited 2"):
        rig.driver().run()
    rig.check()
    assert rig.run_row()["state"] == "failed"


def test_a_terminate_that_fails_leaves_the_instance_live_and_budget_stop_retries(fast_home, monkeypatch):
    rig = Rig(fast_home, World(script=Script(terminate_fails=1)), samples=5)
    monkeypatch.setitem(registry.PROVIDERS, "scripted", registry.Entry("scripted", (), False, False, False,
                                                                       lambda cfg, home, region, clock: rig.provider))
    with pytest.raises(Exception, match="may still be billing"):
        rig.driver().run()
    [inst] = rig.led.instances(run_id=rig.run_id)
    assert inst.state == "stopping" and rig.run_row()["state"] == "failed"
    rig.led.update_run(rig.run_id, controller_pid=None)
    commands.stop(rig.run_id, fast_home, clock=rig.clock)
    rig.check(done=True)
    assert rig.led.instances(run_id=rig.run_id)[0].state == "terminated"


def test_the_budget_too_small_for_a_first_stretch_launches_nothing(fast_home):
    rig = Rig(fast_home, samples=5, cap=Decimal("0.5"))  # 60 s minimum at 36 CNY/h is 0.60 CNY
    with pytest.raises(Exception, match="not launching"):
        rig.driver().run()
    assert not rig.world.instances and rig.run_row()["state"] == "failed"
    rig.check()


def test_the_guard_stops_a_run_its_money_runs_out_on(fast_home):
    rig = Rig(fast_home, samples=5000, cap=Decimal(3), price=Decimal(36))
    assert rig.driver().run() == "stopped"
    run = rig.run_row()
    assert run["reason"] == "budget" and 0 < run["samples_done"] < 5000
    rig.check()
    assert rig.led.spent_run(rig.run_id) <= Decimal(3)



def test_an_instance_its_watchdog_ended_while_the_controller_slept_is_billed_to_its_lease(fast_home):
    """Found by the property test: the controller sleeps (a laptop lid) while the instance bootstraps; the
    lease lapses and the instance's watchdog powers it off. When the controller wakes it is billed to lease +
    teardown at most - not to the moment the controller noticed - and the spot run goes on on a new one."""
    rig = Rig(fast_home, World(script=Script(bootstrap_s=30)), samples=10, spot=True, cap=Decimal(4))
    d = rig.driver()
    d.start()
    drive_until(d, lambda: d.state.phase == "armed")
    first = rig.led.instances(run_id=rig.run_id)[0]
    rig.clock.advance(400)  # asleep
    drive_until(d, lambda: d.state.phase == "ended")
    ended = rig.led.instance(first.id)
    assert ended.state == "reclaimed" and ended.ended_at <= first.lease_until + rig.req.policy_obj.teardown_s
    rig.check()


def test_the_last_lines_come_over_a_new_session_when_the_old_one_broke(fast_home):
    """Found by the property test: the run's session breaks, the user stops the run and the instance refuses
    the first attempts: the teardown opens a new session (retried a while) and fetches every finished line
    before it terminates."""
    rig = Rig(fast_home, samples=200)
    d = rig.driver()
    d.start()
    drive_until(d, lambda: d.state.phase == "running" and len(rig.held_ids()) > 2)
    rig.world.drop_sessions()
    rig.led.update_run(rig.run_id, stop_requested=1)
    rig.world.script.refuse = 2
    drive_until(d, lambda: d.state.phase == "ended")
    assert rig.world.instances["i-0000"].written <= set(rig.held_ids())
    rig.check()


def test_an_ssh_hosts_wait_is_its_own(budget_home, tmp_path):
    """How long a new instance's session is waited for is the provider's own unless configured: a rented host
    that refuses is down (30 s), an EC2 instance boots (10 min), this machine is there at once."""
    from runner.config import load
    from tests.runner.conftest import write_config

    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("unused\n")
    known.write_text("")
    write_config(budget_home, ssh={"host": "127.0.0.1", "key": str(key), "known_hosts": str(known)})
    cfg = load(budget_home)
    assert registry.ssh_wait(cfg, registry.make("ssh", cfg, budget_home)) == 30.0
    assert registry.ssh_wait(cfg, registry.make("local", cfg, budget_home)) == 10.0
    write_config(budget_home, run={"ssh_wait_s": 7})
    cfg = load(budget_home)
    assert registry.ssh_wait(cfg, registry.make("ssh", cfg, budget_home)) == 7.0


def test_a_status_file_that_is_not_an_object_does_not_end_the_run(fast_home):
    """status.json written as `[1, 2]` by the instance (a fault audit's case): it is not taken (the last good one
    stays here, so it reads as a missed heartbeat), the refusal is an event - the run goes on and ends done."""
    rig = Rig(fast_home, samples=12)
    mangled = []

    def hook(where: str) -> None:
        if where == "samples" and not mangled:
            inst = rig.world.running()[0]
            inst._status = lambda now, **extra: inst.files.__setitem__("out/status.json", b"[1, 2]")
            inst.files["out/status.json"] = b"[1, 2]"
            mangled.append(inst.pid)
    assert rig.driver(kill=hook).run() == "done"
    assert mangled and isinstance(json.loads((rig.dir / "out" / "status.json").read_text()), dict)
    assert any(e["kind"] == "untrusted" and "status.json" in e["detail"] for e in rig.led.events(rig.run_id))
    rig.check(done=True)

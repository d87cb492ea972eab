"""No launch is billed at zero: the controller is killed the moment the launch call returns (its answer lost,
nothing recorded), the instance ends by itself (its boot guard: EC2's boot-time power-off, the local
provider's watchdog from the first moment), then `budget stop`. The instance is found by its run tag in any
state - ended ones included - and billed from its launch to its end under its billing rule; one the provider
no longer lists at all is billed to its boot lease + teardown (the most it could have run). A rented host
launched nothing and stays at zero; a launch the provider refused while it still lists everything made
nothing either. In-process on the scripted cloud; for real on the local provider and the aws test cloud."""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from runner.cloud import registry
from runner.procs import pid_alive as alive
from runner.run import commands
from tests.runner.conftest import caption_plan, db, spent, the_run, wait_until, write_config
from tests.runner.scripted import CAPS, Crash, Rig, Script, World, crash_at


def _as_provider(monkeypatch, rig: Rig) -> None:
    monkeypatch.setitem(registry.PROVIDERS, "scripted", registry.Entry("scripted", (), False, False, False,
                                                                       lambda cfg, home, region, clock: rig.provider))


def _launch_answer_lost(rig: Rig, monkeypatch) -> None:
    """kill -9 the moment the launch call returned: an instance exists that the ledger has no id for."""
    _as_provider(monkeypatch, rig)
    with pytest.raises(Crash):
        rig.driver(kill=crash_at("event:launched")).run()
    [row] = rig.led.instances(run_id=rig.run_id)
    assert row.provider_id is None and row.state == "intent" and rig.world.instances
    rig.led.update_run(rig.run_id, controller_pid=None)


def test_a_lost_launch_that_ended_by_itself_is_found_and_billed_to_its_end(fast_home, monkeypatch):
    rig = Rig(fast_home, samples=400)
    _launch_answer_lost(rig, monkeypatch)
    rig.clock.advance(1800)  # nobody looks: its boot guard powers it off
    inst = rig.world.instances["i-0000"]
    rig.world.advance()
    assert inst.state == "terminated" and inst.ended_by == "power-off"
    run = commands.stop(rig.run_id, fast_home, clock=rig.clock)
    assert run["state"] == "stopped"
    [row] = rig.led.instances(run_id=rig.run_id)
    assert row.provider_id == "i-0000" and row.state == "terminated"
    assert row.ended_at == pytest.approx(inst.ended)  # billed to its end, as the provider says, not to the stop
    billable = row.price_cny_h * rig.world.billed("i-0000", row.increment_s, row.minimum_s) / 3600
    assert rig.led.spent_run(rig.run_id) >= billable > 0
    rig.check()


def test_a_lost_launch_still_running_is_found_and_terminated(fast_home, monkeypatch):
    rig = Rig(fast_home, samples=400)
    _launch_answer_lost(rig, monkeypatch)
    rig.clock.advance(10)
    commands.stop(rig.run_id, fast_home, clock=rig.clock)
    [row] = rig.led.instances(run_id=rig.run_id)
    assert row.provider_id == "i-0000" and row.state == "terminated" and rig.led.spent_run(rig.run_id) > 0
    rig.check()


def test_a_lost_launch_the_provider_no_longer_lists_is_billed_to_its_boot_lease(fast_home, monkeypatch):
    """Past the time the provider lists ended instances (EC2: about an hour) it cannot say whether the launch
    made one: billed as if it ran to its boot lease + teardown - the most its boot guard let it run."""
    rig = Rig(fast_home, samples=400, caps=replace(CAPS, finds_ended_s=3600.0))
    _launch_answer_lost(rig, monkeypatch)
    rig.clock.advance(2 * 3600)
    del rig.world.instances["i-0000"]  # forgotten by the cloud
    commands.stop(rig.run_id, fast_home, clock=rig.clock)
    [row] = rig.led.instances(run_id=rig.run_id)
    assert row.ended_at == pytest.approx(row.lease_until + rig.req.policy_obj.teardown_s)
    assert rig.led.spent_run(rig.run_id) == row.meter.cost(row.ended_at) > 0
    assert row.state not in ("intent", "launching", "running", "stopping")


def test_a_rented_host_whose_launch_answer_was_lost_launched_nothing(fast_home, monkeypatch):
    """The rule is the provider's declared capability (`rented`: the machine existed before the run), not its
    name: nothing ran there, nothing is billed - however late the stop."""
    rig = Rig(fast_home, samples=400, caps=replace(CAPS, rented=True, finds_ended_s=0.0))
    _launch_answer_lost(rig, monkeypatch)
    del rig.world.instances["i-0000"]
    rig.clock.advance(2 * 3600)
    commands.stop(rig.run_id, fast_home, clock=rig.clock)
    [row] = rig.led.instances(run_id=rig.run_id)
    assert row.state == "failed" and rig.led.spent_run(rig.run_id) == 0


def test_a_launch_the_cloud_refused_is_billed_nothing(fast_home):
    """The launch call itself failed and the provider, which lists every instance it made, has none for the
    run: nothing was made, nothing billed (and nothing is left committed in the pool)."""
    from runner.money import pools

    rig = Rig(fast_home, World(script=Script(api_fails=1)), samples=5)
    with pytest.raises(Exception, match="scripted"):
        rig.driver().run()
    [row] = rig.led.instances(run_id=rig.run_id)
    assert row.state == "failed" and rig.led.spent_run(rig.run_id) == 0 and not rig.world.instances
    [pool] = pools.listing(rig.led)
    assert pool["committed_cny"] == 0 and pool["left_cny"] == pool["cap_cny"]


# ---------------------------------------------------------------------------------------------- for real

_FAST = {"tick_s": 1, "lease_s": 4, "teardown_s": 8, "ssh_wait_s": 2}


def _killed_at_launch(cli, home: Path, tmp_path: Path, monkeypatch, *extra: str) -> dict:
    plan = caption_plan(tmp_path, "lost", 50)
    monkeypatch.setenv("GPUBUDGET_KILL_AT", "event:launched")  # the detached controller inherits it
    code, _, err = cli("run", plan, "--yes", "--detach", "--batch-size", "1", *extra)
    assert code == 0, err
    monkeypatch.delenv("GPUBUDGET_KILL_AT")

    def dead() -> bool:
        pid = the_run(home)["controller_pid"]
        return bool(pid) and not alive(pid)
    wait_until(dead, 180, "the controller's death as the launch returned")
    [row] = db(home).execute("SELECT state, provider_id FROM instances").fetchall()
    assert tuple(row) == ("intent", None)  # the launch's answer was lost
    return the_run(home)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_lost_local_launch_its_boot_guard_ended_is_billed(cli, local_home, tmp_path, monkeypatch):
    write_config(local_home, run=_FAST)
    run = _killed_at_launch(cli, local_home, tmp_path, monkeypatch, "--provider", "local", "--yuan", "5")
    inst = local_home / "instances" / run["id"]
    lease = db(local_home).execute("SELECT lease_until FROM instances").fetchone()[0]
    wait_until(lambda: (inst / "POWEROFF").exists(), lease - time.time() + 60, "the boot guard's power-off")
    off = (inst / "POWEROFF").stat().st_mtime
    code, _, err = cli("stop", run["id"])
    assert code == 0, err
    [row] = db(local_home).execute("SELECT state, provider_id, started_at, ended_at FROM instances").fetchall()
    assert (row[0], row[1]) == ("terminated", f"local-{run['id']}")
    assert off - 1 <= row[3] <= lease + _FAST["teardown_s"] + 0.01  # to its power-off, within boot lease + teardown
    assert spent(local_home) > 0 and spent(local_home) <= Decimal(5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_lost_aws_launch_terminated_by_its_boot_power_off_is_billed(aws_cloud, cli, budget_home, tiny_model,
                                                                     tmp_path, monkeypatch):
    """The test cloud plays no boot-time shutdown: the instance is terminated through the EC2 API as its
    `shutdown -h +M` would (InstanceInitiatedShutdownBehavior=terminate). moto has no ClientToken: the
    instance is found by its run tag - after it ended."""
    run = _killed_at_launch(cli, budget_home, tmp_path, monkeypatch, "--provider", "aws", "--yuan", "20",
                            "--model-path", str(tiny_model))
    def ours() -> list[dict]:
        return [i for r in aws_cloud.ec2.describe_instances(Filters=[{"Name": "tag:gpubudget:run", "Values": [
            run["id"]]}])["Reservations"] for i in r["Instances"]]
    [inst] = ours()
    aws_cloud.ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    code, _, err = cli("stop", run["id"])
    assert code == 0, err
    [row] = db(budget_home).execute("SELECT state, provider_id, started_at, ended_at, price_cny_h, minimum_s "
                                    "FROM instances").fetchall()
    assert (row[0], row[1]) == ("terminated", inst["InstanceId"])
    assert [i["State"]["Name"] for i in ours()] == ["terminated"]
    # EC2 bills at least 60 s: so does the ledger
    assert spent(budget_home) >= Decimal(row[4]) * max(60, row[5]) / 3600 > 0
    assert spent(budget_home) <= Decimal(20)
    assert not [g for g in aws_cloud.ec2.describe_security_groups()["SecurityGroups"]
                if g["GroupName"] == f"gpubudget-{run['id']}"]  # nothing left for sweep


def test_a_rented_host_never_reached_leaves_nothing_committed(fast_home):
    """`budget pool list` after an SSH run whose host never answered: nothing spent, nothing live - and
    nothing committed (the minimum of a launch that made nothing is no reservation)."""
    from runner.money import pools

    rig = Rig(fast_home, World(script=Script(refuse=10_000)), samples=5, ssh_wait_s=10, caps=replace(CAPS, rented=True))
    with pytest.raises(Exception, match="cannot reach"):
        rig.driver().run()
    [pool] = pools.listing(rig.led)
    assert (pool["spent_cny"], pool["committed_cny"], pool["live_instances"]) == (0, 0, 0)
    assert pool["left_cny"] == pool["cap_cny"]


def test_a_lost_launch_the_cloud_does_not_list_yet_is_waited_for_not_settled_at_nothing(fast_home, monkeypatch):
    """EC2 lists a new instance a little after its launch: a `budget stop` moments after a lost launch answer
    that finds nothing yet looks again (on the clock) until the launch is `lists_after_s` old - it is found,
    terminated and billed, never settled at 0 while it runs."""
    rig = Rig(fast_home, samples=400, caps=replace(CAPS, lists_after_s=60.0))
    _launch_answer_lost(rig, monkeypatch)
    launched = rig.clock.now()
    listed = rig.provider.find
    monkeypatch.setattr(rig.provider, "find", lambda run_id: listed(run_id) if rig.clock.now() - launched > 20 else [])
    commands.stop(rig.run_id, fast_home, clock=rig.clock)
    [row] = rig.led.instances(run_id=rig.run_id)
    assert row.provider_id == "i-0000" and row.state == "terminated" and rig.led.spent_run(rig.run_id) > 0
    assert rig.clock.now() - launched < 60 + 30
    rig.check()

"""A real kill -9 of the controller (GPUBUDGET_KILL_AT makes the detached controller SIGKILL itself exactly
there; runner/run/driver.py names the points): afterwards exactly one instance per launch intent, nothing
left running once `budget stop` ran (or, with no command at all, once lease + teardown passed), the ledger's
spend within the cap and never below what the instance billed, and every sample the worker finished brought
back. Every phase of the kill matrix runs in-process on the scripted cloud (test_lifecycle.py); these are
the real processes: the local provider's, and moto's EC2 with sshd."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import pytest

from runner.procs import pid_alive as alive
from tests.runner.conftest import caption_plan, db, instance_pids, spent, the_run, wait_until, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]



def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _killed(cli, home: Path, tmp_path: Path, monkeypatch, step: str) -> dict:
    write_config(home, run={"tick_s": 1, "lease_s": 6, "teardown_s": 16, "ssh_wait_s": 2})
    plan = caption_plan(tmp_path, "matrix", 400)
    monkeypatch.setenv("GPUBUDGET_KILL_AT", step)  # the detached controller inherits it; this process does not act
    code, out, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes", "--detach", "--batch-size", "1")
    assert code == 0, err
    monkeypatch.delenv("GPUBUDGET_KILL_AT")
    wait_until(lambda: the_run(home)["controller_pid"] and not alive(the_run(home)["controller_pid"]), 120,
               f"the controller's death at {step}")
    run = the_run(home)
    assert run["state"] not in ("done", "stopped", "failed"), run  # it died; nobody recorded an end
    return run


def _check_after(home: Path, run: dict) -> None:
    rows = db(home).execute("SELECT state, ended_at, provider_id FROM instances").fetchall()
    assert len(rows) == 1  # exactly one instance per launch intent
    inst = home / "instances" / run["id"]
    assert not [p for p in instance_pids(run, home) if alive(p)]  # nothing of it runs
    assert rows[0][0] in ("terminated", "failed")
    money = spent(home)
    assert money <= Decimal(5)
    if (inst / "TERMINATED").exists() and rows[0][0] == "terminated" and not (inst / "POWEROFF").exists():
        # billed until the terminate: the ledger's end is not before it
        assert rows[0][1] >= float((inst / "TERMINATED").read_text()) - 0.01
    local = Path(run["dir"]) / "out" / "results" / "captions.jsonl"
    remote = inst / "out" / "results" / "captions.jsonl"
    assert _lines(local) == _lines(remote)  # every finished sample came back
    if run["phase"] == "running":
        assert _lines(local) > 0
    ids = [json.loads(x)["id"] for x in local.read_text().splitlines()] if local.exists() else []
    assert len(ids) == len(set(ids))


def test_kill_9_of_the_controller_then_budget_stop(cli, local_home, tmp_path, monkeypatch):
    run = _killed(cli, local_home, tmp_path, monkeypatch, "samples")
    code, out, err = cli("stop", run["id"])
    assert code == 0, err
    _check_after(local_home, run)


def test_kill_9_of_the_controller_then_nothing(cli, local_home, tmp_path, monkeypatch):
    """No command at all: the instance's watchdog stops the worker at its lease and powers off by lease +
    teardown; a later `budget stop` only settles it, at no more than that."""
    step = "samples"
    run = _killed(cli, local_home, tmp_path, monkeypatch, step)
    lease = db(local_home).execute("SELECT lease_until FROM instances").fetchone()[0]
    inst = local_home / "instances" / run["id"]
    wait_until(lambda: (inst / "POWEROFF").exists(), lease - time.time() + 60, "the watchdog's power-off")
    wait_until(lambda: not [p for p in instance_pids(run, local_home) if alive(p)], 60, "its processes to end")
    assert (inst / "watchdog.fired").exists()
    if (inst / "worker.exit").exists():  # absent: it outlived its grace and was killed
        assert (inst / "worker.exit").read_text().strip() == "3"  # asked to stop at the lease, it flushed
    code, _, err = cli("stop", run["id"])
    assert code == 0, err
    ended = db(local_home).execute("SELECT ended_at FROM instances").fetchone()[0]
    assert ended <= lease + 16 + 0.01  # billed to lease + teardown at most: it was off by then
    _check_after(local_home, run)


def _moto_ended_at(inst: dict) -> float:
    """When EC2 (moto) says the instance was terminated: 'User initiated (2026-11-28 12:00:00 GMT)'."""
    import datetime as dt
    import re

    m = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)", inst.get("StateTransitionReason", ""))
    assert m, inst.get("StateTransitionReason")
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC).timestamp()


def test_kill_9_of_the_controller_on_the_aws_test_cloud(aws_cloud, cli, budget_home, tiny_model, tmp_path,
                                                        monkeypatch):
    """The same on moto's EC2 + sshd, the launch's answer lost: `budget stop` finds the instance by its tag,
    terminates it and bills it at least until EC2 stopped billing."""
    step = "event:launched"
    plan = caption_plan(tmp_path, "matrix", 400)
    monkeypatch.setenv("GPUBUDGET_KILL_AT", step)
    code, out, err = cli("run", plan, "--provider", "aws", "--yuan", "20", "--yes", "--detach", "--batch-size", "1",
                         "--model-path", tiny_model)
    assert code == 0, err
    monkeypatch.delenv("GPUBUDGET_KILL_AT")
    def dead() -> bool:
        pid = the_run(budget_home)["controller_pid"]
        return bool(pid) and not alive(pid)
    wait_until(dead, 180, f"the controller's death at {step}")
    run = the_run(budget_home)
    code, out, err = cli("stop", run["id"])
    assert code == 0, err
    ours = [i for r in aws_cloud.ec2.describe_instances(Filters=[{"Name": "tag:gpubudget:run", "Values": [run["id"]]}])
            ["Reservations"] for i in r["Instances"]]
    assert len(ours) == 1 and ours[0]["State"]["Name"] == "terminated"  # one instance per intent, none left
    [row] = db(budget_home).execute("SELECT state, ended_at, provider_id FROM instances").fetchall()
    assert row[0] == "terminated" and row[2] == ours[0]["InstanceId"]
    assert row[1] >= _moto_ended_at(ours[0]) - 1  # the ledger bills at least until EC2 stopped billing
    assert spent(budget_home) <= Decimal(20)
    local = Path(run["dir"]) / "out" / "results" / "captions.jsonl"
    remote = aws_cloud.remote_dir / "runs" / run["id"] / "out" / "results" / "captions.jsonl"
    assert _lines(local) == _lines(remote)

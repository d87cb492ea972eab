"""Faults done for real on the local provider (real processes, kill -9, real files): a dead worker,
everything dead then `budget resume`. The README's fault table points here."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from runner.cloud.local import pid_alive as alive
from tests.runner.conftest import caption_plan, db, instance_pids, result_lines, spent, the_run, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _events(home: Path) -> list[tuple[str, str]]:
    return [(r["kind"], r["detail"]) for r in db(home).execute("SELECT kind, detail FROM events ORDER BY id")]


def _killpg(path: Path) -> None:
    os.killpg(int(path.read_text()), signal.SIGKILL)


def _ids(run: dict) -> list[str]:
    results = Path(run["dir"]) / "out" / "results" / "captions.jsonl"
    return [json.loads(x)["id"] for x in results.read_text().splitlines()]


def test_a_killed_worker_is_restarted_and_resume_rearms_the_watchdog(cli, local_home, tmp_path):
    """The audit: SIGKILL the worker's process group (no worker.exit) and the controller extended the lease
    on and on - 85 of 90 CNY spent, stuck at 19 samples. Now it notices and restarts it. Then worker,
    watchdog and controller are all killed: `budget resume` re-arms the watchdog before it extends anything,
    restarts the worker, and the run completes with every sample exactly once."""
    plan = caption_plan(tmp_path, "medium", 80)
    code, out, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes", "--detach", "--batch-size", "1")
    assert code == 0, err
    run_id = out.strip()
    inst = local_home / "instances" / run_id
    wait_until(lambda: result_lines(the_run(local_home)) > 0, 120, "results")
    first = (inst / "worker.pid").read_text()
    _killpg(inst / "worker.pid")
    wait_until(lambda: any(k == "worker" and "restarting" in d for k, d in _events(local_home)), 120, "a restart")
    restarts = [d for k, d in _events(local_home) if k == "worker" and "restarting" in d]
    assert len(restarts) == 1 and "no exit code" in restarts[0]
    wait_until(lambda: (inst / "worker.pid").read_text() != first and result_lines(the_run(local_home)) > 5, 120,
               "the restarted worker's results")

    os.kill(the_run(local_home)["controller_pid"], signal.SIGKILL)
    _killpg(inst / "worker.pid")
    _killpg(inst / "watchdog.pid")
    wait_until(lambda: not [p for p in instance_pids(the_run(local_home), local_home) if alive(p)], 60, "all dead")
    armed_before = sum(1 for k, _ in _events(local_home) if k == "watchdog")
    code, _, err = cli("resume", run_id)
    assert code == 0, err
    events = _events(local_home)
    kinds = [k for k, _ in events]
    assert sum(1 for k in kinds if k == "watchdog") == armed_before + 1
    reattaching = kinds.index("phase", max(i for i, (k, d) in enumerate(events) if d == "reattaching"))
    rearm = len(kinds) - 1 - kinds[::-1].index("watchdog")
    restart = max(i for i, (k, d) in enumerate(events) if k == "worker" and "restarting" in d)
    assert reattaching < rearm < kinds.index("reattached") < restart  # the guard first, then the worker
    run = the_run(local_home)
    assert (run["state"], run["samples_done"]) == ("done", 80)
    ids = _ids(run)
    assert len(ids) == len(set(ids)) == 80
    assert not [p for p in instance_pids(run, local_home) if alive(p)]


def _detached(cli, plan: Path) -> str:
    code, out, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes", "--detach", "--batch-size", "1")
    assert code == 0, err
    return out.strip()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_budget_stop_without_a_controller(cli, local_home, tmp_path):
    """The audit: `budget stop` with no live controller terminated without a final fetch (5 of 13 trials lost
    47-351 finished samples); it errored without request.json (the worker ran on); and a stale pid after a
    power-off made it killpg an unrelated process group. Here the controller is killed, the worker runs on,
    request.json is gone, and the controller's and the watchdog's pids now belong to a bystander."""
    import subprocess

    run_id = _detached(cli, caption_plan(tmp_path, "medium", 400))
    inst = local_home / "instances" / run_id
    wait_until(lambda: result_lines(the_run(local_home)) > 0, 120, "results")
    run = the_run(local_home)
    os.kill(run["controller_pid"], signal.SIGKILL)
    remote = inst / "out" / "results" / "captions.jsonl"
    local = Path(run["dir"]) / "out" / "results" / "captions.jsonl"
    held = _lines(local)
    # the orphaned worker runs on to its lease
    wait_until(lambda: _lines(remote) >= held + 10, 120, "the orphaned worker to finish more")
    _killpg(inst / "watchdog.pid")
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True, cwd=tmp_path)
    try:
        (inst / "watchdog.pid").write_text(f"{bystander.pid}\n")  # a pid reused after a power-off
        conn = db(local_home)
        conn.execute("UPDATE runs SET controller_pid=?", (bystander.pid,))  # so is the controller's
        conn.commit()
        (Path(run["dir"]) / "request.json").unlink()
        code, out, err = cli("stop", run_id)
        assert code == 0 and "stopped (user)" in out, err
        assert bystander.poll() is None  # untouched
    finally:
        bystander.kill()
        bystander.wait()
    assert _lines(local) == _lines(remote) >= held + 10  # every finished sample came back before the terminate
    ids = _ids(the_run(local_home))
    assert len(ids) == len(set(ids)) and the_run(local_home)["samples_done"] == len(ids)
    assert db(local_home).execute("SELECT state FROM instances").fetchone()[0] == "terminated"
    assert (inst / "TERMINATED").exists()
    assert not [p for p in instance_pids(the_run(local_home), local_home) if alive(p) and p != bystander.pid]


def test_a_lost_or_garbled_ledger_never_resets_the_budget(cli, local_home, tmp_path):
    """The audit: deleting or truncating ledger.db recreated it empty (a pool capped at 50 spent 83), and a
    garbled page made every command fail, `budget stop` included. Now: refused with the way back, stop
    works from the run directory, and the rebuilt ledger holds the same money to the cent."""
    code, _, err = cli("run", caption_plan(tmp_path, "short", 6), "--provider", "local", "--yuan", "5", "--yes")
    assert code == 0, err
    before = spent(local_home)
    assert before > 0
    ledger = local_home / "ledger.db"
    for damage in ("delete", "truncate"):
        if damage == "delete":
            ledger.unlink()
        else:
            ledger.write_bytes(b"")
        code, _, err = cli("status")
        assert code == 2 and ("is missing" in err or "holds no runs" in err) and "budget ledger rebuild" in err, err
        code, _, err = cli("run", caption_plan(tmp_path, "again", 6), "--provider", "local", "--yuan", "5", "--yes")
        assert code == 2 and "budget ledger rebuild" in err, err
        code, out, _ = cli("ledger", "check")
        assert code == 1 and "problem:" in out
        code, out, err = cli("ledger", "rebuild", "--yes")
        assert code == 0, err
        assert spent(local_home) == before  # the same money, to the cent
        code, out, _ = cli("ledger", "check")
        assert code == 0 and "ok" in out, out

    # a live run, then a garbled ledger: `budget stop` still fetches, terminates and records it
    run_id = _detached(cli, caption_plan(tmp_path, "medium", 400))

    def run_of():
        return dict(db(local_home).execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone())
    wait_until(lambda: result_lines(run_of()) > 0 and run_of()["controller_pid"], 120, "results")
    os.kill(run_of()["controller_pid"], signal.SIGKILL)
    data = bytearray(ledger.read_bytes())
    data[100:4096 * 3] = os.urandom(4096 * 3 - 100)  # the header's tail and the first pages
    ledger.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    code, out, err = cli("stop", run_id)
    assert code == 0 and "ledger cannot be read" in out, err
    assert (local_home / "instances" / run_id / "TERMINATED").exists()
    code, _, err = cli("ledger", "rebuild", "--yes")
    assert code == 0, err
    assert list(local_home.glob("ledger.db.broken-*"))  # the damaged file is kept
    rows = db(local_home).execute("SELECT state, ended_at FROM instances WHERE run_id=?", (run_id,)).fetchall()
    assert [r[0] for r in rows] == ["terminated"] and rows[0][1] is not None
    assert spent(local_home) > before


def test_a_ledger_that_cannot_be_written_does_not_keep_an_instance_running(tmp_path):
    """Disk full / locked ledger on the way out (the audit: the controller died on OperationalError before it
    terminated). A real SQLite lock held by another connection makes every write fail: the instance is
    terminated first, then the failure to record is raised."""
    import sqlite3
    from decimal import Decimal

    from planner.models import Offer
    from runner.cloud.base import LaunchSpec
    from runner.cloud.local import LocalProvider
    from runner.money.guard import Policy
    from runner.money.ledger import Ledger
    from runner.orchestrate import terminate_instance

    led = Ledger(tmp_path / "ledger.db")
    led.ensure_pool("p", Decimal(10), time.time())
    led.create_run(id="r", pool="p", plan="s", plan_path="x", provider="local", offer="o", quantization="nf4", spot=0,
                   cap_cny=Decimal(10), dir=str(tmp_path), created_at=time.time())
    offer = Offer(provider="local", instance_type="x", gpu="T4", gpu_count=1, price=Decimal(1), billing_increment_s=1,
                  billing_minimum_s=0)
    policy = Policy(tick_s=1, teardown_s=10, lease_s=60)
    _, iid = led.admit("r", offer=offer, price_cny_h=Decimal(36), price_original_h=Decimal(36), spot=False,
                       provider="local", now=time.time(), policy=policy)
    provider = LocalProvider(tmp_path / "home")
    info = provider.launch(LaunchSpec("r", offer, False, lease_until=time.time() + 60, grace_s=2))
    led.set_instance(iid, provider_id=info.provider_id, state="running")
    watchdog = provider.base / "r" / "watchdog.pid"
    wait_until(lambda: alive(int(watchdog.read_text())), 30, "the boot guard's watchdog")
    led.db.execute("PRAGMA busy_timeout=200")  # fail fast instead of waiting 30 s for the lock below
    other = sqlite3.connect(tmp_path / "ledger.db")
    other.execute("BEGIN EXCLUSIVE")  # nobody else may write now
    try:
        with pytest.raises(sqlite3.OperationalError):
            terminate_instance(led, provider, iid, "r", policy, lambda kind, detail: led.event("r", kind, detail, iid))
        assert (provider.base / "r" / "TERMINATED").exists()  # terminated before anything failed to record
        wait_until(lambda: not alive(int(watchdog.read_text())), 30, "the watchdog to end")
    finally:
        other.rollback()
        other.close()
    assert led.settle(iid, time.time()) >= 0 and led.instance(iid).state == "terminated"  # a retry records it
    led.close()

"""Faults done for real: `budget stop` of a local run whose controller was killed, with its request.json gone
and its pids reused by a bystander (real processes); a deleted, truncated and garbled ledger (a real SQLite
file; the runs on the scripted cloud, in this process); a ledger locked on the way out. Every fault of a
run's life is in test_lifecycle.py. The README's fault table points here."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from runner.cloud import registry
from runner.procs import pid_alive as alive
from tests.runner.conftest import caption_plan, db, instance_pids, result_lines, spent, the_run, wait_until
from tests.runner.scripted import Crash, Rig, World, crash_at

REPO = Path(__file__).resolve().parents[2]

slow = pytest.mark.slow


def _events(home: Path) -> list[tuple[str, str]]:
    return [(r["kind"], r["detail"]) for r in db(home).execute("SELECT kind, detail FROM events ORDER BY id")]


def _killpg(path: Path) -> None:
    os.killpg(int(path.read_text()), signal.SIGKILL)


def _ids(run: dict) -> list[str]:
    results = Path(run["dir"]) / "out" / "results" / "captions.jsonl"
    return [json.loads(x)["id"] for x in results.read_text().splitlines()]


def _detached(cli, plan: Path) -> str:
    code, out, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes", "--detach", "--batch-size", "1")
    assert code == 0, err
    return out.strip()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@slow
@pytest.mark.timeout(600)
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


def test_a_lost_or_garbled_ledger_never_resets_the_budget(cli, budget_home, monkeypatch):
    """The audit: deleting or truncating ledger.db recreated it empty (a pool capped at 50 spent 83), and a
    garbled page made every command fail, `budget stop` included. Now: refused with the way back, stop
    works from the run directory, and the rebuilt ledger holds the same money to the cent. (Runs on the
    scripted cloud, in this process; the ledger file and the damage are real.)"""
    world = World()
    done = Rig(budget_home, world, samples=6, run_id="done-run")
    monkeypatch.setitem(registry.PROVIDERS, "scripted", registry.Entry("scripted", (), False, False, False,
                                                                       lambda cfg, home, region, clock: done.provider))
    assert done.driver().run() == "done"
    before = spent(budget_home)
    assert before > 0
    done.led.close()
    ledger = budget_home / "ledger.db"
    for damage in ("delete", "truncate"):
        if damage == "delete":
            ledger.unlink()
        else:
            ledger.write_bytes(b"")
        code, _, err = cli("status")
        assert code == 2 and ("is missing" in err or "holds no runs" in err) and "budget ledger rebuild" in err, err
        code, _, err = cli("run", REPO / "plans" / "smoke.yaml", "--provider", "local", "--yuan", "5", "--yes")
        assert code == 2 and "budget ledger rebuild" in err, err
        code, out, _ = cli("ledger", "check")
        assert code == 1 and "problem:" in out
        code, out, err = cli("ledger", "rebuild", "--yes")
        assert code == 0, err
        assert spent(budget_home) == before  # the same money, to the cent
        code, out, _ = cli("ledger", "check")
        assert code == 0 and "ok" in out, out

    # a live run whose controller died, then a garbled ledger: `budget stop` still fetches, terminates, records
    live = Rig(budget_home, world, samples=400, run_id="live-run")
    with pytest.raises(Crash):
        live.driver(kill=crash_at("samples")).run()
    live.led.close()
    data = bytearray(ledger.read_bytes())
    data[100:4096 * 3] = os.urandom(4096 * 3 - 100)  # the header's tail and the first pages
    ledger.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    code, out, err = cli("stop", "live-run")
    assert code == 0 and "ledger cannot be read" in out, err
    assert not world.running() and world.instances["i-0001"].ended_by == "terminate"
    assert set(world.instances["i-0001"].written) <= set(live.held_ids())  # its last lines came first
    code, _, err = cli("ledger", "rebuild", "--yes")
    assert code == 0, err
    assert list(budget_home.glob("ledger.db.broken-*"))  # the damaged file is kept
    rows = db(budget_home).execute("SELECT state, ended_at FROM instances WHERE run_id='live-run'").fetchall()
    assert [r[0] for r in rows] == ["terminated"] and rows[0][1] is not None
    assert spent(budget_home) > before


def test_a_ledger_that_cannot_be_written_does_not_keep_an_instance_running(fast_home):
    """Disk full / locked ledger on the way out (the audit: the controller died on OperationalError before it
    terminated). A real SQLite lock held by another connection makes every write fail: the instance is
    terminated first, then the failure to record is raised; a retry records it."""
    import sqlite3

    from runner.run import teardown

    rig = Rig(fast_home, samples=400)
    with pytest.raises(Crash):
        rig.driver(kill=crash_at("samples")).run()
    [inst] = rig.led.instances(run_id=rig.run_id)
    rig.led.db.execute("PRAGMA busy_timeout=200")  # fail fast instead of waiting 30 s for the lock below
    other = sqlite3.connect(fast_home / "ledger.db")
    other.execute("BEGIN EXCLUSIVE")  # nobody else may write now
    try:
        with pytest.raises(sqlite3.OperationalError):
            teardown.end(rig.led, rig.provider, inst, how="stop", run_dir=rig.dir, policy=rig.req.policy_obj,
                         event=lambda kind, detail: rig.led.event(rig.run_id, kind, detail, inst.id), clock=rig.clock)
        assert not rig.world.running()  # terminated before anything failed to record
    finally:
        other.rollback()
        other.close()
    assert rig.led.settle(inst.id, rig.clock.now()) >= 0 and rig.led.instance(inst.id).state == "terminated"

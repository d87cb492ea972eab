"""Faults done for real on the local provider (real processes, kill -9, real files): a dead worker,
everything dead then `budget resume`. The README's fault table points here."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from runner.providers.local import pid_alive as alive
from tests.runner.conftest import caption_plan, db, instance_pids, result_lines, spent, the_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _events(home: Path) -> list[tuple[str, str]]:
    return [(r["kind"], r["detail"]) for r in db(home).execute("SELECT kind, detail FROM events ORDER BY id")]


def _killpg(path: Path) -> None:
    os.killpg(int(path.read_text()), signal.SIGKILL)


def _ids(run: dict) -> list[str]:
    return [json.loads(x)["id"] for x in (Path(run["dir"]) / "out" / "results" / "captions.jsonl").read_text().splitlines()]


def test_a_killed_worker_is_restarted_not_billed(cli, local_home, tmp_path):
    """The audit: SIGKILL the worker's process group (no worker.exit) and the controller extended the lease
    on and on - 85 of 90 CNY spent, stuck at 19 samples. Now it notices and restarts it; the run finishes."""
    plan = caption_plan(tmp_path, "medium", 120)
    code, out, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes", "--detach", "--batch-size", "1")
    assert code == 0, err
    run_id = out.strip()
    inst = local_home / "instances" / run_id
    _wait(lambda: result_lines(the_run(local_home)) > 0, 120, "results")
    _killpg(inst / "worker.pid")
    _wait(lambda: the_run(local_home)["state"] in ("done", "stopped", "failed"), 300, "the run's end")
    run = the_run(local_home)
    assert (run["state"], run["samples_done"]) == ("done", 120), run
    ids = _ids(run)
    assert len(ids) == len(set(ids)) == 120
    restarts = [d for k, d in _events(local_home) if k == "worker" and "restarting" in d]
    assert len(restarts) == 1 and "no exit code" in restarts[0]
    assert not [p for p in instance_pids(run, local_home) if alive(p)]


def test_resume_rearms_the_watchdog_before_extending_anything(cli, local_home, tmp_path):
    """Kill the worker, the watchdog and the controller; `budget resume` re-arms the watchdog first, then
    restarts the worker, and the run completes with every sample once."""
    plan = caption_plan(tmp_path, "medium", 120)
    code, out, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes", "--detach", "--batch-size", "1")
    assert code == 0, err
    run_id = out.strip()
    inst = local_home / "instances" / run_id
    _wait(lambda: result_lines(the_run(local_home)) > 0, 120, "results")
    os.kill(the_run(local_home)["controller_pid"], signal.SIGKILL)
    _killpg(inst / "worker.pid")
    _killpg(inst / "watchdog.pid")
    _wait(lambda: not [p for p in instance_pids(the_run(local_home), local_home) if alive(p)], 60, "all dead")
    armed_before = sum(1 for k, _ in _events(local_home) if k == "watchdog")
    code, _, err = cli("resume", run_id)
    assert code == 0, err
    events = _events(local_home)
    kinds = [k for k, _ in events]
    resumed = kinds.index("phase", kinds.index("watchdog"))  # the reattaching phase after the first arming
    assert sum(1 for k in kinds if k == "watchdog") == armed_before + 1
    # after the takeover: the watchdog is armed before the worker restarts and before any tick
    rearm = len(kinds) - 1 - kinds[::-1].index("watchdog")
    assert resumed < rearm < kinds.index("reattached") < max(i for i, (k, d) in enumerate(events)
                                                               if k == "worker" and "restarting" in d)
    run = the_run(local_home)
    assert (run["state"], run["samples_done"]) == ("done", 120)
    ids = _ids(run)
    assert len(ids) == len(set(ids)) == 120
    assert spent(local_home) > 0

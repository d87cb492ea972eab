"""Interruptions: a SIGKILL mid-task loses nothing finished and a restart completes the plan without
duplicates or recomputation; a deadline, a stop file or SIGTERM stop the worker cleanly."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time

import pytest

from .conftest import job, lines, run_inline, spawn, status, summary, write_job

slow = pytest.mark.slow  # a real process, killed or signalled

MANY = 24


def _long_job(model, **extra):
    task = {"name": "cap", "kind": "caption", "samples": MANY, "image_size": [64, 64]}
    return job(model, [task], "fp32", batch_size=1, generation={"max_new_tokens": 8, "do_sample": False}, **extra)


def _wait_for_lines(out, n: int, proc, timeout: float = 120.0) -> None:
    path = out / "results" / "cap.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    pytest.fail(f"no {n} result lines within {timeout} s")


@slow
def test_sigkill_then_resume(tiny_model, tmp_path):
    out = tmp_path / "out"
    job_path = write_job(tmp_path, _long_job(tiny_model))
    proc = spawn(job_path, out)
    _wait_for_lines(out, 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = lines(out, "cap")
    assert 5 <= len(before) < MANY, "the worker must be killed mid-task"
    assert status(out)["phase"] == "running"
    # A kill in the middle of a write leaves a torn last line; the restart must cut it, not choke on it.
    with open(out / "results" / "cap.jsonl", "ab") as f:
        f.write(b'{"id": "syn-99999", "task": "ca')

    assert run_inline(job_path, out) == 0
    after = lines(out, "cap")
    ids = [x["id"] for x in after]
    assert len(ids) == len(set(ids)) == MANY
    assert sorted(ids, key=lambda i: int(i.split("-")[1])) == [f"syn-{i}" for i in range(MANY)]
    assert after[:len(before)] == before  # finished lines untouched ...
    assert {x["attempt"] for x in before} == {1}
    assert {x["attempt"] for x in after[len(before):]} == {2}  # ... and not recomputed
    s = summary(out)
    assert s["complete"] and s["attempt"] == 2 and s["tasks"]["cap"]["done"] == MANY
    assert status(out)["phase"] == "done"
    assert (out / "results" / "cap.jsonl").read_bytes().endswith(b"}\n")


def test_deadline_stops_cleanly_and_rerun_finishes(tiny_model, tmp_path, monkeypatch):
    """The worker's clock is injected: it reaches the deadline once 5 lines are written (no race with the
    model load on a busy machine)."""
    from runner.worker import run as worker_run

    out = tmp_path / "out"
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    real_now = worker_run.now

    def now():
        path = out / "results" / "cap.jsonl"
        done = len(path.read_bytes().splitlines()) if path.exists() else 0
        return deadline + dt.timedelta(seconds=1) if done >= 5 else real_now()
    monkeypatch.setattr(worker_run, "now", now)
    job_path = write_job(tmp_path, _long_job(tiny_model, deadline=deadline.isoformat()))
    assert run_inline(job_path, out) == 3
    s, st = summary(out), status(out)
    assert s["stopped"] == "deadline" and not s["complete"] and st["phase"] == "stopped"
    got = lines(out, "cap")
    assert 5 <= len(got) < MANY and s["tasks"]["cap"]["done"] == len(got)
    raw = (out / "results" / "cap.jsonl").read_bytes()
    assert raw.endswith(b"\n") and all(json.loads(x) for x in raw.splitlines())

    # Restarted after the deadline: stops before loading the model, keeps everything.
    assert run_inline(job_path, out) == 3
    assert summary(out)["loads"] == [] and len(lines(out, "cap")) == len(got)

    write_job(tmp_path, _long_job(tiny_model))  # the controller lifts the deadline
    monkeypatch.setattr(worker_run, "now", real_now)
    assert run_inline(job_path, out) == 0
    assert len(lines(out, "cap")) == MANY and summary(out)["complete"]


def test_a_stop_file_stops_it_cleanly(tiny_model, tmp_path, monkeypatch):
    """The stop file (the watchdog's and `budget stop`'s way) appears once 3 lines are written - the worker's
    clock (read for a deadline an hour away) is the hook: no race with the model load on a busy machine."""
    from runner.worker import run as worker_run

    out = tmp_path / "out"
    real_now = worker_run.now
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()

    def now():
        path = out / "results" / "cap.jsonl"
        if path.exists() and path.read_bytes().count(b"\n") >= 3:
            (out / "STOP").touch()
        return real_now()
    monkeypatch.setattr(worker_run, "now", now)
    assert run_inline(write_job(tmp_path, _long_job(tiny_model, deadline=later)), out) == 3
    _stopped_cleanly(out, "stop_file")


@slow
def test_sigterm_stops_it_cleanly(tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = spawn(write_job(tmp_path, _long_job(tiny_model)), out)
    _wait_for_lines(out, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 3
    _stopped_cleanly(out, "sigterm")


def _stopped_cleanly(out, how: str) -> None:
    s = summary(out)
    assert s["stopped"] == how and not s["complete"]
    assert 3 <= s["tasks"]["cap"]["done"] == len(lines(out, "cap")) < MANY
    st = status(out)
    assert st["phase"] == "stopped" and st["eta_s"] > 0  # the rest, at the rate seen so far

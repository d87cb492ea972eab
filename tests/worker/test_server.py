"""A server engine the worker starts: real child processes standing in for the engine (one that never
listens, one that dies at start, one that answers /health, one with a child of its own), waited on with a
fake clock; stopped as a process group; gone when the worker that started it is killed with kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner.worker.server import Server, ServerFailed, free_port

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.slept = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s
        time.sleep(0.01)  # let the real process run a little between polls


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split(")")[-1].split()[0] != "Z"


def wait_gone(pid: int, bound_s: float = 60) -> None:
    end = time.monotonic() + bound_s
    while alive(pid):
        assert time.monotonic() < end, f"pid {pid} still alive"
        time.sleep(0.05)


def server(tmp_path, code: str, clock: FakeClock) -> Server:
    return Server([sys.executable, "-c", textwrap.dedent(code)], free_port(), "/health", tmp_path / "engine.log",
                  sleep=clock.sleep, now=clock.now)


def test_an_engine_that_never_answers_times_out_on_the_clock_and_is_stopped(tmp_path):
    clock = FakeClock()
    s = server(tmp_path, "import time; print('loading weights', flush=True); time.sleep(600)", clock)
    s.start()
    with pytest.raises(ServerFailed, match=r"did not answer .*/health within 30 s"):
        s.wait_ready(30, lambda: False)
    assert clock.t >= 30
    s.stop(grace_s=5)
    wait_gone(s.proc.pid)


def test_an_engine_that_dies_at_start_says_why(tmp_path):
    clock = FakeClock()
    s = server(tmp_path, "print('RuntimeError: no CUDA GPUs are available'); raise SystemExit(3)", clock)
    s.start()
    with pytest.raises(ServerFailed, match="exited with code 3 .*no CUDA GPUs are available"):
        s.wait_ready(3600, lambda: False)


def test_a_stop_request_ends_the_wait(tmp_path):
    clock = FakeClock()
    s = server(tmp_path, "import time; time.sleep(600)", clock)
    s.start()
    try:
        with pytest.raises(InterruptedError):
            s.wait_ready(3600, lambda: clock.t >= 5)
    finally:
        s.stop(grace_s=5)


def test_ready_when_health_answers_and_stop_takes_the_whole_group(tmp_path):
    clock = FakeClock()
    port = free_port()
    code = f"""
        import http.server, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(tmp_path / 'child.pid')!r}, "w").write(str(child.pid))
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/health" else 404); self.end_headers()
            def log_message(self, *a): pass
        http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
    """
    s = Server([sys.executable, "-c", textwrap.dedent(code)], port, "/health", tmp_path / "engine.log",
               sleep=clock.sleep, now=clock.now)
    s.start()
    s.wait_ready(3600, lambda: False)
    assert s.base_url == f"http://127.0.0.1:{port}/v1"
    child = int((tmp_path / "child.pid").read_text())
    mem = s.memory()  # no nvidia-smi here: the group's resident set
    assert mem and mem[0]["source"] in ("server-rss", "nvidia-smi") and mem[0]["bytes"] > 0
    s.stop(grace_s=5)
    wait_gone(s.proc.pid)
    wait_gone(child)


@pytest.mark.timeout(120)
def test_kill_9_of_the_worker_takes_its_engine_along(tmp_path):
    """The worker's engine must not outlive it: SIGKILL gives no chance to stop it, the kernel's
    parent-death signal does."""
    code = f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from runner.worker.server import Server, free_port
        s = Server([sys.executable, "-c", "import time; time.sleep(600)"], free_port(), "/health",
                   Path({str(tmp_path / 'engine.log')!r}))
        s.start()
        print(s.proc.pid, flush=True)
        time.sleep(600)
    """
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    engine = int(worker.stdout.readline())
    assert alive(engine)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    wait_gone(engine)

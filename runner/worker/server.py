"""A serving engine the worker starts on this machine: installed when missing (the engine's pinned
version, only for a job that uses it), started as a child on loopback in its own process group (SIGTERM
to it when the worker dies, even by kill -9: Linux PR_SET_PDEATHSIG), waited on until it answers its health
path (within the job's deadline for it; the wait sleeps on an injected clock and stops when the worker is
asked to), and stopped - the whole group - however the worker ends. Its memory is read from the card
(nvidia-smi, the server's processes) or, without a GPU, from the server's resident set, and says so."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("gpubudget.worker")


class ServerFailed(Exception):
    """The engine could not be installed or started; the message says why (and its log's last line)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NEEDS = {"vllm": ("vllm",), "sglang": ("sglang",), "transformers": ("transformers", "fastapi", "uvicorn")}


def installed(engine: str, python: str = sys.executable) -> bool:
    """Whether `python` has the engine's packages (this interpreter: looked up without importing them)."""
    if python == sys.executable:
        from importlib.util import find_spec

        return all(find_spec(m) is not None for m in NEEDS[engine])
    check = f"from importlib.util import find_spec as f; raise SystemExit(not all(f(m) for m in {NEEDS[engine]!r}))"
    return subprocess.run([python, "-c", check], capture_output=True, check=False).returncode == 0


def install(engine: str, home: Path, log_path: Path, python: str = sys.executable) -> str:
    """The Python that runs `engine`: this one where it already can, else a venv of the engine's own under
    `home` (on this one, its packages visible) with the pinned version installed - an engine pins its own
    transformers and torch (vLLM 0.34: transformers < 5.23), which must not replace the worker's."""
    from .engine_commands import install_command

    if installed(engine, python):
        return python
    venv = Path(home) / f"engine-{engine}"
    venv_python = str(venv / "bin" / "python")
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / f".engine-{engine}.lock", "ab") as lock:  # replicas sharing the cache install it once
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if venv.exists() and installed(engine, venv_python):
            return venv_python
        steps = [[python, "-m", "venv", "--system-site-packages", str(venv)], install_command(engine, venv_python)]
        with open(log_path, "ab") as out:
            for argv in steps:
                log.info("installing %s: %s", engine, " ".join(argv))
                code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
                if code != 0:
                    raise ServerFailed(f"installing {engine} failed ({argv[2]} exit {code}); see {log_path.name}")
    return venv_python


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM it when its parent dies, even by kill -9 (Linux PR_SET_PDEATHSIG; the
    child then ends as it would on a stop). The worker's engine goes with the worker, `budget eval`'s worker with
    `budget eval`. Not Linux: the child may outlive a killed parent."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    def __init__(self, argv: list[str], port: int, health_path: str, log_path: Path,
                 sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.monotonic):
        self.argv = argv
        self.base = f"http://127.0.0.1:{port}"
        self.health = self.base + health_path
        self.log_path = log_path
        self.sleep = sleep
        self.now = now
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return self.base + "/v1"

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True,
                                         preexec_fn=die_with_parent)  # noqa: PLW1509 - before any client thread
        log.info("engine started (pid %d): %s", self.proc.pid, " ".join(self.argv))

    def wait_ready(self, timeout_s: float, should_stop: Callable[[], bool], poll_s: float = 1.0) -> float:
        """Seconds until the server answered its health path. Raises ServerFailed when it exits or does not
        answer within `timeout_s`, InterruptedError when the worker is asked to stop meanwhile."""
        started = self.now()
        while True:
            if self.proc.poll() is not None:
                raise ServerFailed(f"the engine exited with code {self.proc.returncode} before it was ready: "
                                   f"{self.last_line() or 'no output'} (see {self.log_path.name})")
            if self._healthy():
                return self.now() - started
            if should_stop():
                raise InterruptedError("stopped while the engine was starting")
            if self.now() - started >= timeout_s:
                raise ServerFailed(f"the engine did not answer {self.health} within {timeout_s:.0f} s "
                                   f"({self.last_line() or 'no output'})")
            self.sleep(poll_s)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health, timeout=5) as r:  # our own loopback URL
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the engine's process group, SIGKILL what is left after `grace_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.info("engine stopped (exit %s)", self.proc.returncode)

    def last_line(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:200] if lines else ""

    def memory(self) -> list[dict]:
        """The engine's memory now: per GPU what nvidia-smi says its processes hold; without a GPU, its resident
        set. Each entry says where it came from."""
        pids = self._pids()
        gpu = _nvidia_smi(pids)
        if gpu is not None:
            return gpu
        return [{"device": "cpu", "bytes": sum(_rss(p) for p in pids), "source": "server-rss"}] if pids else []

    def _pids(self) -> set[int]:
        if self.proc is None or self.proc.poll() is not None:
            return set()
        group = self.proc.pid
        pids = set()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if os.getpgid(int(d.name)) == group:
                        pids.add(int(d.name))
                except OSError:
                    continue
        return pids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _nvidia_smi(pids: set[int]) -> list[dict] | None:
    """Memory the server's processes hold per GPU, or None without nvidia-smi."""
    try:
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10,
                              check=False)
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if apps.returncode != 0 or gpus.returncode != 0:
        return None
    index = {}
    for row in gpus.stdout.splitlines():
        i, _, uuid = row.partition(",")
        index[uuid.strip()] = i.strip()
    used: dict[str, int] = {}
    for row in apps.stdout.splitlines():
        parts = [x.strip() for x in row.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in pids and parts[2].isdigit():
            used[parts[0]] = used.get(parts[0], 0) + int(parts[2]) * 2**20
    return [{"device": f"cuda:{index.get(u, '?')}", "bytes": b, "source": "nvidia-smi"} for u, b in sorted(used.items())]

"""The `local` provider: the "instance" is a directory under $BUDGET_HOME/instances/ and the worker a
subprocess on this machine, billed at a simulated rate (the chosen offer's price, or one given). The
whole run loop - ledger, guard, lease, watchdog, fetch, teardown - works exactly as on a cloud."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ..remote import LocalSession
from .base import Endpoint, InstanceInfo, LaunchSpec

# the watchdog's "power off" for a directory: end the worker's process group
POWEROFF = 'kill -TERM -"$(cat worker.pid)" 2>/dev/null; touch POWEROFF'


class LocalProvider:
    name = "local"
    teardown_s = 30.0  # SIGTERM, then the worker flushes and exits; SIGKILL after that
    ssh_wait_s = 10.0  # nothing boots: the directory is there at once
    poweroff = POWEROFF

    def __init__(self, home: Path):
        self.base = Path(home) / "instances"
        self.remote_dir = str(self.base)

    def _dir(self, provider_id: str) -> Path:
        return self.base / provider_id.removeprefix("local-")

    def launch(self, spec: LaunchSpec) -> InstanceInfo:
        d = self.base / spec.run_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "TERMINATED").unlink(missing_ok=True)
        return InstanceInfo(f"local-{spec.run_id}", "running", "localhost", time.time(), spec.spot)

    def session(self, provider_id: str) -> LocalSession:
        return LocalSession(self._dir(provider_id))

    def status(self, provider_id: str) -> InstanceInfo:
        d = self._dir(provider_id)
        # POWEROFF: its watchdog powered it off at the lease (what EC2 reports as terminated)
        gone = not d.exists() or (d / "TERMINATED").exists() or (d / "POWEROFF").exists()
        return InstanceInfo(provider_id, "terminated" if gone else "running", "localhost")

    def terminate(self, provider_id: str) -> float:
        d = self._dir(provider_id)
        if not d.exists() or (d / "TERMINATED").exists():
            return time.time()
        for name in ("worker.pid", "watchdog.pid"):
            _kill_group(d / name, signal.SIGTERM)
        end = time.monotonic() + self.teardown_s - 2
        while time.monotonic() < end and _alive(d / "worker.pid"):
            time.sleep(0.1)
        for name in ("worker.pid", "watchdog.pid"):
            _kill_group(d / name, signal.SIGKILL)
        (d / "TERMINATED").write_text(f"{time.time():.3f}\n")
        return time.time()

    def endpoint(self, provider_id: str) -> Endpoint | None:
        return None

    def list_managed(self) -> list[InstanceInfo]:
        if not self.base.exists():
            return []
        return [InstanceInfo(f"local-{d.name}", "running", "localhost") for d in sorted(self.base.iterdir())
                if d.is_dir() and not (d / "TERMINATED").exists() and _alive(d / "worker.pid")]


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(path: Path) -> bool:
    return pid_alive(_pid(path))


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` runs on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _kill_group(path: Path, sig: int) -> None:
    pid = _pid(path)
    if pid is None:
        return
    try:
        os.killpg(pid, sig)  # started with setsid: the pid is its group's id
    except OSError:
        pass

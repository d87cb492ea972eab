"""The `local` provider: the "instance" is a directory under $BUDGET_HOME/instances/ and the worker a
subprocess on this machine, billed at a simulated rate (the chosen offer's price, or one given). The
whole run loop - ledger, guard, lease, watchdog, fetch, teardown - works exactly as on a cloud."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .base import INSTANCE_FILES, MANAGED_TAG, OURS, RUN_TAG, START_WATCHDOG, Endpoint, InstanceInfo, LaunchSpec
from .remote import LocalSession

# the watchdog's "power off" for a directory: end the worker's process group (if the pid is still the
# worker's: it works in this directory)
POWEROFF = OURS + 'ours worker.pid && kill -TERM -"$p" 2>/dev/null; touch POWEROFF'


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
        if spec.lease_until:
            # the boot guard (EC2's is a boot-time `shutdown -h +M` in user-data): the watchdog runs from the
            # first moment, held to the admitted boot lease, so a controller killed before it arms one costs
            # no more than that lease
            s = LocalSession(d)
            s.put_file(INSTANCE_FILES / "watchdog.sh", "watchdog.sh", 0o755)
            s.put_bytes((POWEROFF + "\n").encode(), "poweroff.sh", 0o755)
            s.put_bytes(f"{spec.grace_s}\n".encode(), "grace")
            s.put_bytes(f"{int(spec.lease_until)}\n".encode(), "lease")
            s.run(START_WATCHDOG, timeout=60)
        return InstanceInfo(f"local-{spec.run_id}", "running", "localhost", time.time(), spec.spot)

    def session(self, provider_id: str) -> LocalSession:
        return LocalSession(self._dir(provider_id))

    def status(self, provider_id: str) -> InstanceInfo:
        d = self._dir(provider_id)
        if not d.exists() or (d / "TERMINATED").exists():
            return InstanceInfo(provider_id, "terminated", "localhost")
        # POWEROFF: its watchdog powered it off at the lease - nothing runs or bills, its disk is still there
        return InstanceInfo(provider_id, "stopped" if (d / "POWEROFF").exists() else "running", "localhost")

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
        return [InstanceInfo(f"local-{d.name}", "running", "localhost", tags={RUN_TAG: d.name, MANAGED_TAG: "true"})
                for d in sorted(self.base.iterdir())
                if d.is_dir() and not (d / "TERMINATED").exists() and not (d / "POWEROFF").exists()]


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(path: Path) -> bool:
    """The process in `path` (worker.pid, watchdog.pid) runs and is still that instance's."""
    pid = _pid(path)
    return pid_alive(pid) and runs_in(pid, path.parent)


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


def proc_start(pid: int | None) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22): with the pid, its
    identity - a pid reused by another process has another start time. None where /proc is missing."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError, TypeError):
        return None


def same_process(pid: int | None, start: str | None) -> bool:
    """Whether `pid` still is the process that had start time `start` (None: unknown, trust the pid)."""
    if not pid_alive(pid):
        return False
    now = proc_start(pid)
    return start is None or now is None or now == start


def runs_in(pid: int, directory: Path) -> bool:
    """Whether process `pid` works in `directory` (a worker or watchdog of that instance, not some other
    process that got its pid after a power-off). True where /proc cannot tell."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == Path(directory).resolve()
    except FileNotFoundError:
        return not Path(f"/proc/{pid}").exists() and not Path("/proc/self").exists()
    except OSError:
        return False


def _kill_group(path: Path, sig: int) -> None:
    if not _alive(path):
        return  # gone, or the pid now belongs to an unrelated process: never signal that
    pid = _pid(path)
    try:
        os.killpg(pid, sig)  # started with setsid: the pid is its group's id
    except OSError:
        pass

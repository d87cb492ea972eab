"""The `local` provider: the "instance" is a directory under $BUDGET_HOME/instances/ and the worker a
subprocess on this machine, billed at a simulated rate (the chosen offer's price, or one given). The
whole run loop - ledger, guard, lease, watchdog, fetch, teardown - works exactly as on a cloud."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from ..clock import SYSTEM, Clock
from ..procs import pid_alive, runs_in
from .base import (
    INSTANCE_FILES,
    MANAGED_TAG,
    OURS,
    RUN_TAG,
    START_WATCHDOG,
    Capabilities,
    InstanceInfo,
    LaunchSpec,
    ProviderBase,
)
from .remote import LocalSession

# the watchdog's "power off" for a directory: end the worker's process group (if the pid is still the
# worker's: it works in this directory)
POWEROFF = OURS + 'ours worker.pid && kill -TERM -"$p" 2>/dev/null; touch POWEROFF'


class LocalProvider(ProviderBase):
    name = "local"
    # nothing boots (the directory is there at once); a terminate is SIGTERM, the worker's flush, SIGKILL
    # (an instance's directory stays after it ended: `find` finds it for ever)
    caps = Capabilities(ssh_wait_s=10.0, teardown_s=30.0, poweroff=POWEROFF, this_machine=True,
                        finds_ended_s=float("inf"))

    def __init__(self, home: Path, clock: Clock = SYSTEM, price_cny_h: Decimal | None = None):
        self.base = Path(home) / "instances"
        self.clock = clock
        if price_cny_h is not None:  # config local.price_yuan_per_hour: the simulated rate
            self.caps = replace(self.caps, price_cny_h=price_cny_h)

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
        return InstanceInfo(f"local-{spec.run_id}", "running", "localhost", self.clock.now(), spec.spot)

    def session(self, provider_id: str, run_id: str = "", timeout_s: float = 10.0) -> LocalSession:
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
            return self.clock.now()
        for name in ("worker.pid", "watchdog.pid"):
            _kill_group(d / name, signal.SIGTERM)
        end = self.clock.monotonic() + self.caps.teardown_s - 2
        while self.clock.monotonic() < end and _alive(d / "worker.pid"):
            self.clock.sleep(0.1)
        for name in ("worker.pid", "watchdog.pid"):
            _kill_group(d / name, signal.SIGKILL)
        (d / "TERMINATED").write_text(f"{self.clock.now():.3f}\n")
        return self.clock.now()

    def find(self, run_id: str) -> list[InstanceInfo]:
        """The run's instance in any state (its directory), ended ones included."""
        d = self.base / run_id
        if not d.is_dir():
            return []
        info = self.status(f"local-{run_id}")
        return [replace(info, launched_at=d.stat().st_mtime, tags={RUN_TAG: run_id, MANAGED_TAG: "true"})]

    def ended_at(self, provider_id: str) -> float | None:
        """When it stopped running: its watchdog's power-off (POWEROFF's time), else the terminate's."""
        d = self._dir(provider_id)
        try:
            return (d / "POWEROFF").stat().st_mtime
        except OSError:
            pass
        try:
            return float((d / "TERMINATED").read_text().strip())
        except (OSError, ValueError):
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


def _kill_group(path: Path, sig: int) -> None:
    if not _alive(path):
        return  # gone, or the pid now belongs to an unrelated process: never signal that
    pid = _pid(path)
    try:
        os.killpg(pid, sig)  # started with setsid: the pid is its group's id
    except OSError:
        pass

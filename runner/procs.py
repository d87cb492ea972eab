"""Processes on this machine and their identity: a pid alone is not a process (it is reused), so a process
is its pid and its start time; a worker or watchdog of a local instance is also known by the directory it
works in. Used by the local provider and by whoever asks whether a run's controller still lives."""

from __future__ import annotations

import os
from pathlib import Path


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

"""$BUDGET_HOME's rules: where a run's directory is, opening the ledger safely (never a fresh one over runs
it would forget), whether the home can take a run at all, and finding a run by id or prefix. Below every
command module and above the ledger, so commands, calibration and recovery meet here, not in each other."""

from __future__ import annotations

import os
from pathlib import Path

from planner import names
from planner.errors import InputError

from .clock import SYSTEM, Clock
from .errors import LedgerError
from .money import recovery
from .money.ledger import HINT as LEDGER_HINT
from .money.ledger import Ledger
from .procs import same_process

MIN_FREE_BYTES = 256 * 2**20  # results, logs and the ledger of a run; below this a launch is a gamble


def directory(home: Path, run_id: str) -> Path:
    """$BUDGET_HOME/runs/<run id>; an id that is not a plain name (it came from a command line) is refused."""
    try:
        names.check(run_id, "run id")
    except ValueError as e:
        raise InputError(str(e), "see `budget status` for run ids") from None
    return home / "runs" / run_id


def ledger(home: Path, clock: Clock = SYSTEM) -> Ledger:
    """The spend ledger - refused when it is missing or empty while run directories exist: a lost ledger
    must never reset the budget (`budget ledger rebuild` restores it from the run directories)."""
    path = home / "ledger.db"
    on_disk = recovery.run_dirs(home)
    if on_disk and not path.exists():
        raise LedgerError(f"{path} is missing but {len(on_disk)} run(s) are in {home / 'runs'}: starting an empty "
                          "ledger would forget their spend", LEDGER_HINT)
    led = Ledger(path, clock)
    if on_disk and not led.runs(1):
        led.close()
        raise LedgerError(f"{path} holds no runs but {len(on_disk)} run(s) are in {home / 'runs'} (was it truncated "
                          "or replaced?): their spend would be forgotten", LEDGER_HINT)
    return led


def writable(home: Path) -> None:
    """Refuse a $BUDGET_HOME that cannot take a run's records (read-only, full) before anything launches: a
    controller that cannot write its ledger cannot account for an instance it started."""
    import shutil
    import tempfile

    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".write-test-") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        free = shutil.disk_usage(home).free
    except OSError as e:
        raise InputError(f"BUDGET_HOME {home} cannot be written ({e.strerror or e}): nothing was launched",
                         "point BUDGET_HOME at a writable folder") from None
    if free < MIN_FREE_BYTES:
        raise InputError(f"BUDGET_HOME {home} has {free / 2**20:.0f} MiB free (a run needs {MIN_FREE_BYTES >> 20} MiB "
                         "for results, logs and the ledger): nothing was launched",
                         "free some space, or point BUDGET_HOME at another disk")


def controller_alive(run: dict) -> bool:
    """Whether the run's controller process still runs - the same process, not a reuse of its pid."""
    return same_process(run.get("controller_pid"), run.get("controller_start"))


def resolve(led: Ledger, run_id: str | None) -> dict:
    """A run by id or unique prefix (the newest when None)."""
    if run_id is None:
        runs = led.runs(1)
        if not runs:
            raise InputError("no runs yet", "start one with `budget run PLAN`")
        return runs[0]
    found = led.find_runs(run_id)
    if len(found) != 1:
        raise InputError(f"no run {run_id!r}" if not found else
                         f"{run_id!r} matches {len(found)} runs: {', '.join(found[:3])}"
                         f"{', ...' if len(found) > 3 else ''}",
                         "see `budget status` for run ids (a unique prefix is enough)")
    return led.run(found[0])

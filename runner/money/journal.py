"""Each run directory's money.jsonl: every money fact the ledger records about a run (its row, its pool's cap,
each instance's intent, launch, lease extensions and settlement), appended and fsynced as it is written - so
a ledger that is lost or broken can be rebuilt from the run directories (runner/money/recovery.py)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from ..clock import Clock

JOURNAL = "money.jsonl"


class Journal:
    def __init__(self, db: sqlite3.Connection, clock: Clock):
        self.db, self.clock = db, clock
        self._dirs: dict[str, str] = {}

    def append(self, run_id: str, record: dict) -> None:
        """Append one money fact to the run's money.jsonl (fsynced). A run directory that cannot be written
        does not stop the money path - the ledger itself holds."""
        d = self._dirs.get(run_id)
        if d is None:
            row = self.db.execute("SELECT dir FROM runs WHERE id=?", (run_id,)).fetchone()
            d = self._dirs[run_id] = row[0] if row else ""
        if not d or not Path(d).is_absolute() or not Path(d).is_dir():  # run directories are absolute
            return
        try:
            with open(Path(d) / JOURNAL, "a", encoding="utf-8") as f:
                f.write(json.dumps({"at": self.clock.now(), **record}, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            pass

"""What runs produced, kept in the ledger beside their money: each task's summary (for reports and the cost of
quality) and `budget calibrate`'s fits (for plan, estimate and run). Plain functions over the ledger's
connection."""

from __future__ import annotations

import json

from .ledger import Ledger


def record_tasks(led: Ledger, run_id: str, summary: dict) -> None:
    with led.transaction():
        for name, t in (summary.get("tasks") or {}).items():
            led.db.execute("INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?,?)",
                           (run_id, name, t.get("kind", ""), int(t.get("done") or 0), int(t.get("ok") or 0),
                            json.dumps(t, ensure_ascii=False)))


def tasks(led: Ledger, run_id: str) -> list[dict]:
    return [dict(r) for r in led.db.execute("SELECT * FROM tasks WHERE run_id=? ORDER BY task", (run_id,))]


def save_calibration(led: Ledger, doc: str, now: float) -> None:
    with led.transaction():
        led.db.execute("INSERT INTO calibrations (created_at, doc) VALUES (?, ?)", (now, doc))


def calibration(led: Ledger) -> str | None:
    """The newest calibration's JSON, if any."""
    row = led.db.execute("SELECT doc FROM calibrations ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None

"""Printers of `budget ledger check` and `budget ledger rebuild`."""

from __future__ import annotations

from . import base


def ledger_check(doc: dict) -> None:
    out = base.out
    out.print(f"ledger {doc['ledger']}: {'ok' if doc['ok'] else 'NOT OK'} - {doc['runs_in_ledger']} run(s) in it, "
              f"{doc['runs_on_disk']} on disk, {doc['live_instances']} live instance(s)")
    for p in doc["problems"]:
        out.print(f"  problem: {p}")
    if not doc["ok"]:
        out.print("  fix: `budget ledger rebuild` (the old file is kept beside it)")


def ledger_rebuilt(doc: dict) -> None:
    aside = f"; the old one is kept as {doc['moved_aside']}" if doc["moved_aside"] else ""
    base.out.print(f"rebuilt {doc['ledger']}: {doc['runs']} run(s), {doc['instances']} instance(s){aside}")

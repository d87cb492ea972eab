"""When the ledger is lost or broken. The ledger is the budget, so losing it must never reset it: every run
directory keeps money.jsonl, the ledger's money facts of that run (its row, pool cap, each instance's
intent, launch, lease extensions and settlement), appended and fsynced as the ledger writes them.

This module owns what happens without a readable ledger: which run directories exist (`run_dirs`),
`budget ledger check` (SQLite's integrity check, runs on disk the ledger lacks, instances the provider
still runs that the ledger has no live row for), `budget ledger rebuild` (the broken file moved aside, a
new ledger replayed from the run directories - spend re-derived from each instance's price at launch,
billing rule and times; an instance with no recorded end stays live with its lease, so the guard counts
it and `budget stop` settles it against the provider's real state). `budget stop` from the run directory
alone is a run's teardown (runner/run/teardown.py `without_ledger`); it journals what it ended for rebuild."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

from .journal import JOURNAL
from .ledger import FINAL, LIVE, Ledger


def run_dirs(home: Path) -> list[Path]:
    """Run directories under $BUDGET_HOME/runs that hold a run (request.json or money.jsonl)."""
    base = Path(home) / "runs"
    if not base.is_dir():
        return []
    return sorted(d for d in base.iterdir() if d.is_dir() and ((d / "request.json").exists() or (d / JOURNAL).exists()))


def replay(run_dir: Path) -> dict:
    """One run's money facts from its journal: {"run": row, "pool": {...}, "instances": {id: row}}."""
    facts: dict = {"run": None, "pool": None, "instances": {}, "calls": {}}
    try:
        lines = (run_dir / JOURNAL).read_text(encoding="utf-8").splitlines()
    except OSError:
        return facts
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue  # a torn last line (a kill mid-write): the facts before it stand
        if not isinstance(rec, dict):
            continue
        if isinstance(rec.get("run"), dict):
            facts["run"] = {**(facts["run"] or {}), **rec["run"]}
        if isinstance(rec.get("pool"), dict):
            facts["pool"] = rec["pool"]
        inst = rec.get("instance")
        if isinstance(inst, dict) and "id" in inst:
            facts["instances"][inst["id"]] = {**facts["instances"].get(inst["id"], {}), **inst}
        call = rec.get("call")  # a metered call's whole row, each time it changes
        if isinstance(call, dict) and isinstance(call.get("id"), int):
            facts["calls"][call["id"]] = call
        gone = rec.get("terminated")  # `budget stop` while the ledger could not be read
        if isinstance(gone, dict):
            for i in facts["instances"].values():
                if i.get("provider_id") == gone.get("provider_id") and i.get("ended_at") is None:
                    i.update(state="terminated", ended_at=gone.get("at"))
    return facts


def check(home: Path) -> dict:
    """What `budget ledger check` reports: {"ok", "ledger": str, "problems": [...], "runs_on_disk", ...}."""
    path = Path(home) / "ledger.db"
    problems: list[str] = []
    in_ledger: set[str] = set()
    live: list[str] = []
    if not path.exists():
        if run_dirs(home):  # a home never used has no ledger yet, and nothing to lose
            problems.append(f"{path} is missing")
    else:
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                verdict = [r[0] for r in db.execute("PRAGMA integrity_check")]
                if verdict != ["ok"]:
                    problems.append(f"integrity check: {'; '.join(verdict[:3])}")
                in_ledger = {r[0] for r in db.execute("SELECT id FROM runs")}
                live = [r[0] for r in db.execute(f"SELECT run_id FROM instances WHERE state IN "
                                                 f"({', '.join('?' * len(LIVE))})", LIVE)]
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            problems.append(f"{path} cannot be read: {e}")
    disk = [d.name for d in run_dirs(home)]
    missing = [r for r in disk if r not in in_ledger]
    if missing and not any("cannot be read" in p or "missing" in p for p in problems):
        problems.append(f"{len(missing)} run(s) on disk are not in the ledger: {', '.join(missing[:5])}")
    orphans = [d.name for d in (Path(home) / "instances").iterdir()
               if d.is_dir() and not (d / "TERMINATED").exists() and not (d / "POWEROFF").exists()
               and d.name not in live] if (Path(home) / "instances").is_dir() else []
    if orphans:
        problems.append(f"{len(orphans)} local instance(s) run with no live row in the ledger: {', '.join(orphans[:5])}")
    return {"ok": not problems, "ledger": str(path), "problems": problems, "runs_on_disk": len(disk),
            "runs_in_ledger": len(in_ledger), "live_instances": len(live)}


def rebuild(home: Path, now: float | None = None) -> dict:
    """Replay every run directory into a new ledger, then move ledger.db aside (kept, never deleted or
    overwritten) and put the new one in its place - so a rebuild that dies half way leaves the old ledger where
    it was. The replay writes nothing to the run directories: what it replays is there already (journaled again
    under new instance ids, it would be merged into other instances by the next rebuild)."""
    now = time.time() if now is None else now
    home = Path(home)
    path = home / "ledger.db"
    new = home / "ledger.db.rebuilding"
    _remove(new)  # a rebuild that died before
    led = Ledger(new)
    led.journal = _Replayed()
    runs = instances = 0
    try:
        for d in run_dirs(home):
            facts = replay(d)
            run = facts["run"]
            if not run or "pool" not in run:
                continue
            pool = facts["pool"] or {"name": run["pool"], "cap_cny": run["cap_cny"]}
            led.ensure_pool(pool["name"], _dec(pool["cap_cny"]), run.get("created_at", now), f"rebuilt from {d.name}")
            if led.run(run["id"]) is None:
                row = {k: v for k, v in run.items() if k in _RUN_COLUMNS}
                row["dir"] = str(d)
                led.create_run(**row)
                runs += 1
            for inst in sorted(facts["instances"].values(), key=lambda i: i["id"]):
                if _restore_instance(led, run["id"], inst, now):
                    instances += 1
            for call in sorted(facts["calls"].values(), key=lambda c: c["id"]):
                _restore_call(led, run["id"], call, now)
            state = run.get("state", "created")
            reason = run.get("reason") or ""
            if state not in FINAL and not led.instances(run_id=run["id"], live=True):
                state, reason = "failed", "rebuilt: its controller and its instances are gone"
            led.update_run(run["id"], state=state, phase=state, reason=reason, finished_at=run.get("finished_at"))
        led.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        led.close()
        _remove(new)
        raise
    led.close()
    aside = None
    if path.exists():
        stamp = time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))
        aside = path.with_name(f"ledger.db.broken-{stamp}")
        n = 1
        while any(Path(str(aside) + x).exists() for x in ("", "-wal", "-shm")):
            n += 1
            aside = path.with_name(f"ledger.db.broken-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            if Path(str(path) + suffix).exists():
                shutil.move(str(path) + suffix, str(aside) + suffix)
    os.replace(new, path)
    _remove(new)
    return {"ledger": str(path), "moved_aside": str(aside) if aside else None, "runs": runs, "instances": instances}


class _Replayed:
    """The journal of a ledger being rebuilt: it writes nothing (the facts come from the journals)."""

    def append(self, run_id: str, record: dict) -> None:
        return None


def _remove(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


_RUN_COLUMNS = ("id", "pool", "plan", "plan_path", "provider", "offer", "quantization", "spot", "cap_cny",
                "estimate_cny", "estimate_s", "dir", "created_at")
_INSTANCE_COLUMNS = ("run_id", "pool", "provider", "provider_id", "instance_type", "region", "spot", "price_cny_h",
                     "price_original_h", "currency", "increment_s", "minimum_s", "state", "started_at", "launched_at",
                     "lease_until", "ended_at", "address", "gpu", "gpu_count", "market_price_h", "attempt",
                     "offer_index")


_CALL_COLUMNS = ("run_id", "pool", "model", "state", "reserved_at", "at", "bound_cny", "amount_cny", "prompt_tokens",
                 "completion_tokens", "input_per_1m", "output_per_1m", "currency", "cny_per_unit", "detail")


def _restore_call(led: Ledger, run_id: str, call: dict, now: float) -> None:
    """A metered call back into the ledger as journaled; one still reserved (its controller is gone) is billed at
    its bound - the most the provider can have billed for it."""
    from .calls import OPEN, bill_bound

    if any(call.get(k) is None for k in ("pool", "model", "state", "reserved_at", "bound_cny", "input_per_1m",
                                          "output_per_1m", "currency", "cny_per_unit")):
        return
    row = {k: call.get(k) for k in _CALL_COLUMNS} | {"run_id": run_id}
    row["detail"] = row["detail"] or ""
    if led.db.execute("SELECT 1 FROM calls WHERE id=?", (call["id"],)).fetchone() is None:
        row["id"] = call["id"]
    cur = led.db.execute(f"INSERT INTO calls ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values()))
    if row["state"] == OPEN:
        bill_bound(led, cur.lastrowid, now, "rebuilt: its controller died during the call")


def _dec(x):
    from decimal import Decimal

    return Decimal(str(x))


def _restore_instance(led: Ledger, run_id: str, inst: dict, now: float) -> bool:
    """One instance back into the ledger under its own id, its spend re-derived under its billing rule: to its
    recorded end; with none recorded, to its lease + teardown (its watchdog's bound) - left live, so the guard
    still counts it until `budget stop` settles it against the provider's real state. A record with no intent
    (a fragment an older rebuild journaled under another id) is skipped: False."""
    if any(inst.get(k) is None for k in ("pool", "price_cny_h", "started_at", "lease_until")):
        return False
    row = {k: inst.get(k) for k in _INSTANCE_COLUMNS}
    row["run_id"] = run_id
    if isinstance(inst.get("id"), int) and led.db.execute("SELECT 1 FROM instances WHERE id=?",
                                                          (inst["id"],)).fetchone() is None:
        row["id"] = inst["id"]  # later facts (a stop's settlement) are journaled under the id the journal knows
    ended = row.pop("ended_at")
    state = row.get("state") or "intent"
    cols = ", ".join(row)
    cur = led.db.execute(f"INSERT INTO instances ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    iid = cur.lastrowid
    if ended is not None or state not in LIVE:
        led.settle(iid, ended if ended is not None else None, state if state not in LIVE else "terminated")
        return True
    led._accrue(led.instance(iid), min(now, float(row["lease_until"])))
    return True

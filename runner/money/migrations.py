"""The ledger's file: its schema, as numbered migrations (simonw/llm's way): each a small function appended to
MIGRATIONS, never edited once released; PRAGMA user_version counts those applied. A migration runs inside the
opening transaction, so a ledger is either wholly at the new version or untouched.

And what makes a file a ledger: a new one is made whole aside and linked into place (`create`), so a
ledger.db that exists is always one that was finished; `validate` refuses anything else (a garbled page, a
truncated file, another program's database) before a byte is written to it - a damaged ledger is never
read, or migrated, as a fresh one."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path


def _script(db: sqlite3.Connection, sql: str) -> None:
    # not executescript(): it commits, and a migration must stay inside its transaction
    for statement in filter(str.strip, sql.split(";")):
        db.execute(statement)


def _m1(db: sqlite3.Connection) -> None:
    _script(db, """
    CREATE TABLE pools (name TEXT PRIMARY KEY, cap_cny TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, pool TEXT NOT NULL REFERENCES pools(name), plan TEXT NOT NULL,
        plan_path TEXT NOT NULL, provider TEXT NOT NULL, offer TEXT NOT NULL, quantization TEXT NOT NULL,
        spot INTEGER NOT NULL, cap_cny TEXT NOT NULL, estimate_cny TEXT, estimate_s REAL,
        state TEXT NOT NULL, reason TEXT, phase TEXT, dir TEXT NOT NULL, controller_pid INTEGER,
        samples_done INTEGER NOT NULL DEFAULT 0, samples_total INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, finished_at REAL, stop_requested INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), pool TEXT NOT NULL,
        provider TEXT NOT NULL, provider_id TEXT, instance_type TEXT NOT NULL, region TEXT NOT NULL,
        spot INTEGER NOT NULL, price_cny_h TEXT NOT NULL, price_original_h TEXT NOT NULL, currency TEXT NOT NULL,
        increment_s INTEGER NOT NULL, minimum_s INTEGER NOT NULL, state TEXT NOT NULL,
        started_at REAL NOT NULL, launched_at REAL, lease_until REAL NOT NULL, ended_at REAL, address TEXT);
    CREATE TABLE events (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, instance_id INTEGER, at REAL NOT NULL,
        kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
    CREATE TABLE spend (id INTEGER PRIMARY KEY, instance_id INTEGER NOT NULL REFERENCES instances(id),
        start_at REAL NOT NULL, end_at REAL NOT NULL, amount_cny TEXT NOT NULL);
    CREATE TABLE tasks (run_id TEXT NOT NULL REFERENCES runs(id), task TEXT NOT NULL, kind TEXT NOT NULL,
        samples INTEGER NOT NULL, ok INTEGER NOT NULL, summary TEXT NOT NULL, PRIMARY KEY (run_id, task));
    CREATE INDEX instances_pool ON instances(pool, state);
    CREATE INDEX events_run ON events(run_id, at);
    CREATE INDEX spend_instance ON spend(instance_id);
    """)


def _m2(db: sqlite3.Connection) -> None:
    """Pools are explicit: every cap (the first one included) is an event with who set it and when."""
    _script(db, """
    CREATE TABLE pool_events (id INTEGER PRIMARY KEY, pool TEXT NOT NULL REFERENCES pools(name), at REAL NOT NULL,
        kind TEXT NOT NULL, old_cap_cny TEXT, new_cap_cny TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
    CREATE INDEX pool_events_pool ON pool_events(pool, at);
    INSERT INTO pool_events (pool, at, kind, new_cap_cny, detail)
        SELECT name, created_at, 'created', cap_cny, 'recorded before pool events existed' FROM pools
    """)


def _m3(db: sqlite3.Connection) -> None:
    """A controller is its pid *and* its start time: a pid reused by another process is not our controller."""
    db.execute("ALTER TABLE runs ADD COLUMN controller_start TEXT")


def _m4(db: sqlite3.Connection) -> None:
    """For `budget report`: each spend row's billed seconds (its amount is price_cny_h x billed_s / 3600, so
    reports sum integers in SQL and multiply once per instance - exactly); the GPU and count of the offer
    at launch (a later catalog change must not rename what ran); a covering index in (instance, UTC day) order, so
    `budget report` groups a million rows without sorting them (runner/money/report.py); and (instance, end)
    in place of (instance): each tick's "end of the last row" becomes one index seek instead of a scan."""
    _script(db, """
    ALTER TABLE spend ADD COLUMN billed_s INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE instances ADD COLUMN gpu TEXT;
    ALTER TABLE instances ADD COLUMN gpu_count INTEGER;
    DROP INDEX spend_instance;
    CREATE INDEX spend_last ON spend(instance_id, end_at);
    CREATE INDEX spend_day ON spend(instance_id, CAST(start_at / 86400 AS INTEGER), CAST(end_at / 86400 AS INTEGER),
                                    start_at, end_at, billed_s);
    CREATE INDEX runs_plan ON runs(plan, created_at);
    CREATE INDEX instances_run ON instances(run_id)
    """)
    for iid, run_dir in db.execute("SELECT i.id, r.dir FROM instances i JOIN runs r ON r.id = i.run_id").fetchall():
        if not Path(run_dir).is_absolute():
            continue
        try:  # what ran, from the run's request.json (its offer as chosen at launch); a report shows "-" without it
            offer = json.loads((Path(run_dir) / "request.json").read_text(encoding="utf-8"))["offer"]
            db.execute("UPDATE instances SET gpu=?, gpu_count=? WHERE id=?",
                       (str(offer["gpu"]), int(offer["gpu_count"]), iid))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    prices = {r[0]: Decimal(r[1]) for r in db.execute("SELECT id, price_cny_h FROM instances")}
    rows = db.execute("SELECT id, instance_id, start_at, end_at, amount_cny FROM spend").fetchall()
    for sid, iid, start, end, amount in rows:
        price = prices.get(iid, Decimal(0))
        billed = round(Decimal(amount) * 3600 / price) if price > 0 else round(end - start)
        db.execute("UPDATE spend SET billed_s=? WHERE id=?", (int(billed), sid))


def _m5(db: sqlite3.Connection) -> None:
    """A spot instance's market price at launch, in its offer's currency per hour, where the provider says it
    (the ledger bills it at its MaxPrice - the most EC2 may charge - so this is what it was really charged)."""
    db.execute("ALTER TABLE instances ADD COLUMN market_price_h TEXT")


def _m6(db: sqlite3.Connection) -> None:
    """`budget calibrate`'s fits (planner.calibration.Calibration as JSON), newest last; the plan and estimate
    commands read the newest."""
    db.execute("CREATE TABLE calibrations (id INTEGER PRIMARY KEY, created_at REAL NOT NULL, doc TEXT NOT NULL)")


def _m7(db: sqlite3.Connection) -> None:
    """One attempt record per instance: which attempt of its run it is (0: the first; a relaunch adds one) and
    which of the run's offers it ran on (0: its own; then the planner's fallbacks). Admission is idempotent per
    (run, attempt, offer): a controller that died after admitting and is resumed finds its intent again."""
    _script(db, """
    ALTER TABLE instances ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE instances ADD COLUMN offer_index INTEGER NOT NULL DEFAULT 0
    """)


def _m8(db: sqlite3.Connection) -> None:
    """Metered calls: the second kind of spend, a hosted model's calls billed by tokens (`budget compare`). A call
    is reserved before it is sent - `bound_cny`, the most it can cost, counted against its run's and pool's caps
    like an instance's projection - then billed from the usage the server returned (`amount_cny`, tokens x the
    prices recorded when the run started, converted at the rate recorded then), or released when nothing was
    sent or the provider bills nothing for its answer (an error status). `at` is when it was billed."""
    _script(db, """
    CREATE TABLE calls (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), pool TEXT NOT NULL,
        model TEXT NOT NULL, state TEXT NOT NULL, reserved_at REAL NOT NULL, at REAL, bound_cny TEXT NOT NULL,
        amount_cny TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, input_per_1m TEXT NOT NULL,
        output_per_1m TEXT NOT NULL, currency TEXT NOT NULL, cny_per_unit TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '');
    CREATE INDEX calls_pool ON calls(pool, state);
    CREATE INDEX calls_run ON calls(run_id, state);
    CREATE INDEX calls_day ON calls(CAST(at / 86400 AS INTEGER), pool) WHERE state = 'billed'
    """)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1, _m2, _m3, _m4, _m5, _m6, _m7, _m8]


TABLES = frozenset({"pools", "runs", "instances", "events", "spend"})  # a file without them is not a ledger


class NotALedger(Exception):
    """A readable SQLite file that is not a whole ledger (empty, another program's, half made)."""


def connect(target: str, uri: bool = False) -> sqlite3.Connection:
    """A connection as the ledger uses it: autocommit (transactions are explicit), rows by column name."""
    db = sqlite3.connect(target, timeout=30, isolation_level=None, check_same_thread=False, uri=uri)
    db.row_factory = sqlite3.Row
    return db


def settings(db: sqlite3.Connection) -> None:
    """The connection's settings; run only on a file that passed `validate` (journal_mode writes its header)."""
    db.execute("PRAGMA journal_mode=WAL")  # stored in the file: every later connection is in WAL mode too
    # FULL: a committed launch intent or spend row survives a power failure (NORMAL may lose the last ones)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=30000")


def upgrade(db: sqlite3.Connection) -> None:
    """The migrations this ledger lacks (inside the caller's transaction)."""
    have = db.execute("PRAGMA user_version").fetchone()[0]
    for n, step in enumerate(MIGRATIONS[have:], start=have + 1):
        step(db)
        db.execute(f"PRAGMA user_version = {n}")


def create(path: Path) -> None:
    """A new ledger, made whole in a file of its own and linked into place: nobody ever opens a half-made
    ledger.db (a process killed while making one leaves nothing). Under a lock on its folder, so of two
    processes making one at once the second finds the first's. A -wal/-shm left by a deleted ledger is moved
    aside (kept): SQLite would replay its old pages onto the new file."""
    import fcntl
    import time

    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if os.path.lexists(path):
            return  # another process made it while this one waited
        db = connect(str(tmp))
        try:
            settings(db)
            db.execute("BEGIN IMMEDIATE")
            upgrade(db)
            db.execute("COMMIT")
        finally:
            db.close()  # the last connection: its WAL is checkpointed into the file
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        for suffix in ("-wal", "-shm"):
            if os.path.lexists(f"{path}{suffix}"):
                os.replace(f"{path}{suffix}", f"{path}{suffix}.orphaned-{stamp}")
        try:
            os.link(tmp, path)
        except OSError:  # a filesystem without hard links (the lock keeps the rename from replacing a ledger)
            os.replace(tmp, path)
    finally:
        os.close(folder)  # releases the lock
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def validate(path: Path, db: sqlite3.Connection) -> None:
    """Refuse what is not a whole ledger: SQLite's own quick check of every page (a garbled page anywhere,
    not only in `runs`), a schema version and the ledger's tables (a valid database of another program, or an
    empty one, is not ours to migrate). Reads only: nothing is written to a file that fails."""
    if path.is_file() and path.stat().st_size == 0:
        raise NotALedger("it is 0 bytes: it holds no runs, no pools and no spend - was it truncated?")
    verdict = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)")]
    if verdict != ["ok"]:
        raise NotALedger("SQLite's quick check: " + "; ".join(" ".join(v.split()) for v in verdict)[:200])
    version = db.execute("PRAGMA user_version").fetchone()[0]
    missing = TABLES - {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version == 0 or missing:
        raise NotALedger("it is an SQLite database but not a spend ledger: " +
                         (f"no table {', '.join(sorted(missing))}" if missing else "no schema version"))


def why(path: Path, e: BaseException) -> str:
    """What is wrong with the file at `path`, in one line, from the error opening it raised."""
    if path.is_dir():
        return "it is a directory, not a file"
    if isinstance(e, sqlite3.OperationalError) and path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "this user cannot read and write it"
    return " ".join(str(e).split()) or e.__class__.__name__

"""The spend ledger: one SQLite file ($BUDGET_HOME/ledger.db) in WAL mode, so a detached controller,
`budget status` and a second run can read and write it at once.

Tables: pools (named caps), runs, instances (price *at launch* and billing rule, lease), events (the
lifecycle), spend (intervals: each row is what one instance cost from `start_at` to `end_at` under its
billing rule; an instance's rows sum to its cost so far), calls (metered calls of a hosted model: reserved,
then billed by tokens - runner/money/calls.py), tasks (the worker's per-task summaries).
Money is stored as decimal text and read back as Decimal; times as epoch seconds (UTC).

Schema changes are numbered functions appended to MIGRATIONS (PRAGMA user_version counts them).
An instance row is written as an `intent` *before* the launch call, inside the same transaction as
the guard's admission check, so concurrent runs on one pool cannot both spend the last yuan."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ..clock import SYSTEM, Clock
from ..errors import LedgerError
from ..units import iso, money
from .calls import held
from .guard import Decision, Meter, Policy, check
from .journal import Journal
from .migrations import MIGRATIONS, NotALedger, connect, create, settings, upgrade, validate, why  # noqa: F401

JOURNALED = ("state", "reason", "finished_at", "cap_cny")  # a run's fields its money.jsonl keeps as they change
LIVE = ("intent", "launching", "running", "stopping")  # an instance's states while it may bill
FINAL = ("done", "stopped", "failed")  # a run's states once it has ended
# what a damaged ledger's refusal says to do, in every command (runner/money/recovery.py has the same words)
HINT = "`budget ledger check` shows what is on disk; `budget ledger rebuild` restores the ledger from the run directories"


@dataclass(frozen=True)
class Instance:
    id: int
    run_id: str
    pool: str
    provider: str
    provider_id: str | None
    instance_type: str
    region: str
    spot: bool
    price_cny_h: Decimal
    price_original_h: Decimal
    currency: str
    increment_s: int
    minimum_s: int
    state: str
    started_at: float
    launched_at: float | None
    lease_until: float
    ended_at: float | None
    address: str | None
    gpu: str | None = None
    gpu_count: int | None = None
    market_price_h: str | None = None
    attempt: int = 0
    offer_index: int = 0

    @property
    def meter(self) -> Meter:
        return Meter(self.price_cny_h, self.increment_s, self.minimum_s, self.started_at, self.lease_until,
                     self.ended_at)


class Ledger:
    """The ledger at `path`. A new one is made aside and put in place whole (migrations.create), so a ledger.db
    that exists is always one that was finished: one that fails migrations.validate is damage - refused with
    LedgerError naming the file and pointing at `budget ledger check` / `rebuild` - never read as fresh."""

    def __init__(self, path: Path, clock: Clock = SYSTEM):
        self.path = Path(path)
        self.clock = clock  # stamps events and journal lines written without a time of their own
        self.db = None
        try:
            if str(path) == ":memory:":  # a throwaway ledger (tests): no file to make or to validate
                self.db = connect(":memory:")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if not os.path.lexists(self.path):
                    create(self.path)
                # mode=rw: a ledger.db gone since the check above is an error here, never a new empty file
                self.db = connect(Path(os.path.abspath(self.path)).as_uri() + "?mode=rw", uri=True)
                validate(self.path, self.db)  # before anything is written into it
            settings(self.db)
            self.journal = Journal(self.db, clock)
            self._migrate()
        except (sqlite3.DatabaseError, OSError, NotALedger) as e:
            if self.db is not None:
                self.db.close()
            raise LedgerError(f"{self.path}: the spend ledger cannot be opened ({why(self.path, e)})", HINT) from None

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        with self.transaction():
            upgrade(self.db)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time across processes, so read-decide-write is atomic."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ pools and runs

    def pool_cap(self, name: str) -> Decimal | None:
        row = self.db.execute("SELECT cap_cny FROM pools WHERE name=?", (name,)).fetchone()
        return Decimal(row[0]) if row else None

    def ensure_pool(self, name: str, cap: Decimal, now: float, detail: str = "") -> Decimal:
        """The pool's cap; a new pool is created with `cap` (and its creation recorded)."""
        with self.transaction():
            if self.db.execute("INSERT OR IGNORE INTO pools VALUES (?,?,?)", (name, str(cap), now)).rowcount:
                self._pool_event(name, now, "created", None, cap, detail)
        return self.pool_cap(name)

    def set_pool_cap(self, name: str, cap: Decimal, now: float, detail: str = "") -> Decimal:
        """Change a pool's cap (an event with the old and new figures); returns the old cap."""
        with self.transaction():
            old = self.pool_cap(name)
            self.db.execute("UPDATE pools SET cap_cny=? WHERE name=?", (str(cap), name))
            self._pool_event(name, now, "cap", old, cap, detail)
        return old

    def _pool_event(self, name: str, now: float, kind: str, old: Decimal | None, new: Decimal, detail: str) -> None:
        self.db.execute("INSERT INTO pool_events (pool, at, kind, old_cap_cny, new_cap_cny, detail) VALUES (?,?,?,?,?,?)",
                        (name, now, kind, None if old is None else str(old), str(new), detail))

    def create_run(self, **row) -> None:
        row.setdefault("state", "created")
        row["cap_cny"] = str(row["cap_cny"])
        if row.get("estimate_cny") is not None:
            row["estimate_cny"] = str(row["estimate_cny"])
        cols = ", ".join(row)
        self.db.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        self.journal.append(row["id"], {"run": dict(row), "pool": {"name": row["pool"], "cap_cny": str(self.pool_cap(row["pool"]))}})
        self.event(row["id"], "created", f"{row['provider']} {row['offer']} {row['quantization']}")

    def update_run(self, run_id: str, **fields) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE runs SET {sets} WHERE id=?", (*fields.values(), run_id))
        if "state" in fields:
            self.journal.append(run_id, {"run": {k: v for k, v in fields.items() if k in JOURNALED}})

    def run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return dict(row) if row else None

    def runs(self, limit: int = -1) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT ?",
                                                  (limit,))]

    def find_runs(self, prefix: str) -> list[str]:
        exact = self.db.execute("SELECT id FROM runs WHERE id=?", (prefix,)).fetchall()
        rows = exact or self.db.execute("SELECT id FROM runs WHERE substr(id, 1, ?)=? ORDER BY id",
                                        (len(prefix), prefix)).fetchall()
        return [r[0] for r in rows]

    def event(self, run_id: str, kind: str, detail: str = "", instance_id: int | None = None,
              at: float | None = None) -> None:
        self.db.execute("INSERT INTO events (run_id, instance_id, at, kind, detail) VALUES (?,?,?,?,?)",
                        (run_id, instance_id, self.clock.now() if at is None else at, kind, detail))

    def events(self, run_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM events WHERE run_id=? ORDER BY at, id", (run_id,))]

    # ------------------------------------------------------------------ instances and the guard

    def _instance(self, row) -> Instance:
        d = dict(row)
        for k in ("price_cny_h", "price_original_h"):
            d[k] = Decimal(d[k])
        d["spot"] = bool(d["spot"])
        return Instance(**d)

    def instance(self, instance_id: int) -> Instance:
        return self._instance(self.db.execute("SELECT * FROM instances WHERE id=?", (instance_id,)).fetchone())

    def instances(self, run_id: str | None = None, pool: str | None = None, live: bool = False) -> list[Instance]:
        q, args = "SELECT * FROM instances WHERE 1=1", []
        if run_id is not None:
            q, args = q + " AND run_id=?", [*args, run_id]
        if pool is not None:
            q, args = q + " AND pool=?", [*args, pool]
        if live:
            q += f" AND state IN ({', '.join('?' * len(LIVE))})"
            args += LIVE
        return [self._instance(r) for r in self.db.execute(q + " ORDER BY id", args)]

    def _check(self, run_id: str, pool: str, mine: Meter, skip: int | None, now: float,
               policy: Policy) -> Decision:
        """The guard's decision for `mine` against its pool's and its run's caps and every other instance."""
        others = [i for i in self.instances(pool=pool) if i.id != skip]
        return check(self.pool_cap(pool), Decimal(self.run(run_id)["cap_cny"]), [i.meter for i in others],
                     [i.meter for i in others if i.run_id == run_id], mine, now, policy,
                     held(self.db, pool=pool), held(self.db, run_id=run_id))

    def admit(self, run_id: str, *, offer, price_cny_h: Decimal, price_original_h: Decimal, spot: bool,
              provider: str, now: float, policy: Policy, min_lease_s: float = 0.0, attempt: int = 0,
              offer_index: int = 0) -> tuple[Decision, int | None]:
        """The guard's launch check and, if it passes, the intent row - in one transaction. A launch whose
        money would not last `min_lease_s` (its boot and a first stretch of work) is refused: admitted, it
        would only be stopped at its first tick with nothing done. Idempotent per (run, attempt, offer): an
        intent still live is found again, not doubled."""
        run = self.run(run_id)
        with self.transaction():
            again = self.db.execute(
                f"SELECT id FROM instances WHERE run_id=? AND attempt=? AND offer_index=? AND state IN "
                f"({', '.join('?' * len(LIVE))})", (run_id, attempt, offer_index, *LIVE)).fetchone()
            if again is not None:
                inst = self.instance(again[0])
                return Decision(True, "admitted before", Decimal(0), Decimal(0), Decimal(run["cap_cny"]),
                                inst.lease_until), inst.id
            mine = Meter(price_cny_h, offer.billing_increment_s, offer.billing_minimum_s, now, now)
            d = self._check(run_id, run["pool"], mine, None, now, policy)
            if d.go and d.lease_until < now + min_lease_s:
                d = dataclasses.replace(d, go=False, reason="short")
            if not d.go:
                return d, None
            cur = self.db.execute(
                "INSERT INTO instances (run_id, pool, provider, instance_type, region, spot, price_cny_h, "
                "price_original_h, currency, increment_s, minimum_s, state, started_at, lease_until, gpu, gpu_count, "
                "attempt, offer_index) VALUES (?,?,?,?,?,?,?,?,?,?,?,'intent',?,?,?,?,?,?)",
                (run_id, run["pool"], provider, offer.instance_type, offer.region, int(spot), str(price_cny_h),
                 str(price_original_h), offer.currency, offer.billing_increment_s, offer.billing_minimum_s,
                 now, d.lease_until, offer.gpu, offer.gpu_count, attempt, offer_index))
            self.event(run_id, "intent", f"launch {offer.instance_type} at {price_cny_h} CNY/h "
                       f"(lease to {iso(d.lease_until)})", cur.lastrowid, now)
        self.journal.append(run_id, {"instance": self._row(cur.lastrowid)})
        return d, cur.lastrowid

    def _row(self, instance_id: int) -> dict:
        return dict(self.db.execute("SELECT * FROM instances WHERE id=?", (instance_id,)).fetchone())

    def tick(self, instance_id: int, now: float, policy: Policy) -> Decision:
        """Accrue spend up to `now` and decide: on `go`, the lease is extended (ledger first, then the
        caller tells the instance); on stop, nothing is extended."""
        with self.transaction():
            inst = self.instance(instance_id)
            d = self._check(inst.run_id, inst.pool, inst.meter, inst.id, now, policy)
            # a lease that lapsed (a controller asleep or dead) ended the instance by lease + teardown: its
            # watchdog powered it off; the terminate bills more if it finds it still running
            self._accrue(inst, min(now, inst.lease_until + policy.teardown_s))
            if d.go and d.lease_until > inst.lease_until:
                self.db.execute("UPDATE instances SET lease_until=? WHERE id=?", (d.lease_until, instance_id))
        if d.go and d.lease_until > inst.lease_until:
            self.journal.append(inst.run_id, {"instance": {"id": instance_id, "lease_until": d.lease_until}})
        return d

    def _accrue(self, inst: Instance, until: float) -> None:
        """Add the interval from the end of the last one to `until`. An instance's rows sum to its cost up to
        the end of its last row, so the new row is the difference of two costs - no re-summing per tick. Its
        billed seconds are the difference of two billed durations: amount = price_cny_h x billed_s / 3600."""
        last = self.db.execute("SELECT MAX(end_at) FROM spend WHERE instance_id=?", (inst.id,)).fetchone()[0]
        start = inst.started_at if last is None else last
        m = inst.meter
        delta = m.cost(until) - (Decimal(0) if last is None else m.cost(last))
        billed = m.billed(until) - (0 if last is None else m.billed(last))
        if until <= start and delta <= 0:
            return
        self.db.execute("INSERT INTO spend (instance_id, start_at, end_at, amount_cny, billed_s) VALUES (?,?,?,?,?)",
                        (inst.id, start, max(start, until), str(max(delta, Decimal(0))), max(billed, 0)))

    def set_instance(self, instance_id: int, **fields) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE instances SET {sets} WHERE id=?", (*fields.values(), instance_id))
        row = self._row(instance_id)
        self.journal.append(row["run_id"], {"instance": {"id": instance_id, **fields}})

    def settle(self, instance_id: int, ended_at: float | None, state: str = "terminated") -> Decimal:
        """Close an instance: its last spend interval up to `ended_at` (None: it never existed, no charge)."""
        with self.transaction():
            inst = self.instance(instance_id)
            if inst.ended_at is not None:
                return self.spent_instance(instance_id)
            if ended_at is None:  # the launch call failed before any instance existed
                self.db.execute("UPDATE instances SET state=?, ended_at=?, lease_until=? WHERE id=?",
                                (state, inst.started_at, inst.started_at, instance_id))
                self.db.execute("DELETE FROM spend WHERE instance_id=?", (instance_id,))
            else:
                ended_at = max(ended_at, inst.started_at)
                self.db.execute("UPDATE instances SET state=?, ended_at=? WHERE id=?", (state, ended_at, instance_id))
                self._accrue(self.instance(instance_id), ended_at)
            self.event(inst.run_id, "settled", f"{state}; {money(self.spent_instance(instance_id))} CNY", instance_id)
        row = self._row(instance_id)
        self.journal.append(inst.run_id, {"instance": {k: row[k] for k in ("id", "state", "ended_at", "lease_until")},
                                   "spent_cny": str(self.spent_instance(instance_id))})
        return self.spent_instance(instance_id)

    # ------------------------------------------------------------------ money

    def _sum(self, q: str, args: tuple) -> Decimal:
        return sum((Decimal(r[0]) for r in self.db.execute(q, args)), Decimal(0))

    def spent_instance(self, instance_id: int) -> Decimal:
        return self._sum("SELECT amount_cny FROM spend WHERE instance_id=?", (instance_id,))

    def spent_run(self, run_id: str) -> Decimal:  # instances' spend plus the metered calls billed
        return self._sum("SELECT s.amount_cny FROM spend s JOIN instances i ON i.id=s.instance_id WHERE i.run_id=?",
                         (run_id,)) + held(self.db, run_id=run_id, billed_only=True)

    def spent_pool(self, pool: str) -> Decimal:
        return self._sum("SELECT s.amount_cny FROM spend s JOIN instances i ON i.id=s.instance_id WHERE i.pool=?",
                         (pool,)) + held(self.db, pool=pool, billed_only=True)

    def spend_rows(self, run_id: str) -> list[dict]:
        q = "SELECT s.* FROM spend s JOIN instances i ON i.id=s.instance_id WHERE i.run_id=? ORDER BY s.id"
        return [dict(r) for r in self.db.execute(q, (run_id,))]

    # ------------------------------------------------------------------ results

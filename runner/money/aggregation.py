"""The SQL aggregation behind `budget report`: billed seconds per (cell, instance) summed in SQLite, rows that
cross a period's edge or a cell boundary cut in proportion to time, and their cost at each instance's price at
launch (planner/money.py's billing rule) - all exact (integers and fractions.Fraction), never rounded.

- Each spend row holds its billed seconds, so SQL sums integers per (day, instance) along the ledger's covering
  index `spend_day` (no sort) and Python multiplies once per instance.
- A cut shares a row's billed seconds by the share of its interval on each side (on a millisecond grid); the
  pieces telescope, so every grouping sums to the total exactly."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from planner.money import charge
from planner.money import metered as planner_metered

from .ledger import Ledger
from .periods import DAY, TIME_GROUPS, Period, bucket


class Total:
    """An exact running sum of Fractions: numerators added per denominator (ints), one Fraction at the end.
    Amounts share a handful of denominators (prices x 3600), so a million additions stay integer additions."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: dict[int, int] = {}

    def add(self, x: Fraction | int) -> None:
        if isinstance(x, int):
            self.parts[1] = self.parts.get(1, 0) + x
        else:
            self.parts[x.denominator] = self.parts.get(x.denominator, 0) + x.numerator

    @property
    def value(self) -> Fraction:
        return sum((Fraction(n, d) for d, n in self.parts.items()), Fraction(0))


def fsum(xs) -> Fraction:
    """The exact sum of Fractions and ints (a Total)."""
    t = Total()
    for x in xs:
        t.add(x)
    return t.value


def billed(led: Ledger, period: Period, daily: bool | int, pools: list[str] | None) -> dict[tuple[int, int], Fraction]:
    """(cell or 0, instance id) -> billed seconds inside the period; cells are days when `daily` is True, or
    `daily` seconds wide when it is a number (the burn-down's steps). Rows inside one cell are summed in SQL
    (integers; for days and whole instances along the ledger's covering index spend_day, in its order: no
    sort); rows crossing the period's edge or a cell boundary are cut here, in proportion to time."""
    width = DAY if daily is True else int(daily)
    if width in (0, DAY):  # the index's own expression, so SQLite walks the index in group order
        cell, index = ("CAST(s.start_at / 86400 AS INTEGER)" if width else "0"), " INDEXED BY spend_day"
        same = " AND CAST(s.start_at / 86400 AS INTEGER) = CAST(s.end_at / 86400 AS INTEGER)" if width else ""
    else:
        cell, index = f"CAST(s.start_at / {width} AS INTEGER)", ""
        same = f" AND {cell} = CAST(s.end_at / {width} AS INTEGER)"
    where_pool, args = "", {"lo": period.lo, "hi": period.hi}
    if pools is not None:
        marks = ", ".join(f":p{i}" for i in range(len(pools)))
        where_pool = f" AND s.instance_id IN (SELECT id FROM instances WHERE pool IN ({marks}))"
        args |= {f"p{i}": p for i, p in enumerate(pools)}
    if period == Period():  # no edges to test: whole cells only (a fifth less work on a million rows)
        inside = same.removeprefix(" AND ") or "1"
    else:
        inside = f"s.start_at >= :lo AND s.end_at <= :hi AND s.start_at < :hi{same}"
    out: dict[tuple[int, int], Fraction] = {}
    group = "s.instance_id" + (f", {cell}" if width else "")  # (a literal 0 in GROUP BY would name a column)
    for iid, d, secs in led.db.execute(
            f"SELECT s.instance_id, {cell}, SUM(s.billed_s) FROM spend s{index} WHERE {inside}{where_pool} "
            f"GROUP BY {group}", args):
        out[(d, iid)] = secs  # an int: exact, and cheaper than a Fraction for the million-row case
    for iid, start, end, secs in led.db.execute(
            f"SELECT s.instance_id, s.start_at, s.end_at, s.billed_s FROM spend s{index} WHERE s.start_at < :hi AND "
            f"s.end_at > :lo AND s.end_at > s.start_at AND NOT ({inside}){where_pool}", args):
        for d, piece in cut(start, end, secs, period, width):
            out[(d, iid)] = out.get((d, iid), 0) + piece
    return out


def cut(start: float, end: float, secs: int, period: Period, width: int) -> list[tuple[int, Fraction]]:
    """A row's billed seconds shared over the cells it spans (`width` seconds each; 0: one cell), inside the
    period only, in proportion to time (on a millisecond grid). Each piece is the difference of two exact
    cumulative shares, so the pieces of a row the period holds sum to `secs` exactly."""
    edges = {start, end, period.lo, period.hi}
    if width:
        edges |= {float(k * width) for k in range(math.floor(start / width) + 1, math.floor(end / width) + 1)}
    edges = sorted(x for x in edges if start <= x <= end)
    span = round(end * 1000) - round(start * 1000)
    if span <= 0:  # under half a millisecond long: all of it where it starts
        return [(math.floor(start / width) if width else 0, Fraction(secs))] if period.lo <= start < period.hi else []
    pieces = []
    for a, b in zip(edges, edges[1:]):
        if a >= period.lo and b <= period.hi and b > a:
            share = Fraction(secs * (round(b * 1000) - round(a * 1000)), span)
            pieces.append((math.floor(a / width) if width else 0, share))
    return pieces


def burn_down(led: Ledger, period: Period, pools: list[str] | None, now: float,
              steps: int = 400) -> list[tuple[float, Fraction]]:
    """Cumulative spend over the period at about `steps` points: (epoch seconds, CNY so far), exact."""
    insts = instances(led, pools)
    lo = period.since if period.since is not None else min((i.row["started_at"] for i in insts.values()), default=now)
    hi = min(period.hi, max([now, *(i.row["ended_at"] or 0 for i in insts.values())]))
    width = max(60, math.ceil((hi - lo) / steps))
    per_cell: dict[int, Fraction] = defaultdict(Fraction)
    for (c, iid), secs in billed(led, period, width, pools).items():
        per_cell[c] += insts[iid].amount(secs)
    for (c, _), amount in metered(led, period, width, pools).items():
        per_cell[c] += amount
    out, total = [(lo, Fraction(0))], Fraction(0)
    for c in sorted(per_cell):
        total += per_cell[c]
        out.append((float((c + 1) * width), total))
    return out


@dataclass
class Inst:
    """An instance as the report sees it (one ledger row, read once)."""

    row: dict
    price: Fraction

    def amount(self, secs: Fraction | int) -> Fraction:
        """What `secs` billed seconds cost at the price recorded at launch (the billing rule), exact."""
        return charge(self.price, secs)


def instances(led: Ledger, pools: list[str] | None) -> dict[int, Inst]:
    q = ("SELECT i.*, r.plan, r.quantization, r.reason AS run_reason, r.state AS run_state FROM instances i "
         "JOIN runs r ON r.id = i.run_id")
    args: list = []
    if pools is not None:
        q += f" WHERE i.pool IN ({', '.join('?' * len(pools))})"
        args = pools
    prices: dict[str, Fraction] = {}  # a few distinct prices among thousands of instances
    return {r["id"]: Inst(dict(r), prices.get(r["price_cny_h"]) or prices.setdefault(
        r["price_cny_h"], Fraction(Decimal(r["price_cny_h"])))) for r in led.db.execute(q, args)}


def metered_runs(led: Ledger, pools: list[str] | None) -> dict[int, Inst]:
    """Each run with billed metered calls as the report's line for them: an `Inst` at no hourly price, keyed by
    minus the run's rowid (apart from instance ids), its row made from the run and its calls (what it bought:
    the model, tokens, prices recorded at its start). Its amounts come from `metered`."""
    q = ("SELECT c.run_id, MIN(c.reserved_at) AS first, MAX(c.at) AS last, COUNT(*) AS n, SUM(c.prompt_tokens) AS "
         "prompt, SUM(c.completion_tokens) AS completion, MAX(c.currency) AS currency, MAX(c.input_per_1m) AS "
         "input_per_1m, MAX(c.output_per_1m) AS output_per_1m, MAX(c.model) AS model FROM calls c "
         "WHERE c.state = 'billed'")
    args: list = []
    if pools is not None:
        q += f" AND c.pool IN ({', '.join('?' * len(pools))})"
        args = pools
    calls = {r["run_id"]: r for r in led.db.execute(q + " GROUP BY c.run_id", args)}
    out = {}
    for r in led.db.execute(f"SELECT rowid AS rid, * FROM runs WHERE id IN ({', '.join('?' * len(calls))})",
                            list(calls)) if calls else ():
        c = calls[r["id"]]
        row = {"id": -r["rid"], "run_id": r["id"], "pool": r["pool"], "provider": r["provider"], "provider_id": None,
               "instance_type": c["model"], "region": "", "spot": 0, "price_cny_h": "0", "price_original_h": "0",
               "currency": c["currency"], "increment_s": None, "minimum_s": None, "state": "metered",
               "started_at": c["first"], "launched_at": None, "lease_until": c["last"], "ended_at": c["last"],
               "gpu": None, "gpu_count": None, "market_price_h": None, "plan": r["plan"],
               "quantization": r["quantization"], "run_reason": r["reason"], "run_state": r["state"],
               "calls": c["n"], "prompt_tokens": c["prompt"] or 0, "completion_tokens": c["completion"] or 0,
               "input_per_1m": c["input_per_1m"], "output_per_1m": c["output_per_1m"]}
        out[row["id"]] = Inst(row, Fraction(0))
    return out


def metered(led: Ledger, period: Period, daily: bool | int, pools: list[str] | None) -> dict[tuple[int, int], Fraction]:
    """(cell or 0, minus the run's rowid) -> CNY of the metered calls billed inside the period (a call is billed at
    one moment, its `at`: nothing to cut). Cells as in `billed`. A call's cost is linear in its tokens at the
    prices recorded with it, so SQL sums tokens per (cell, run, prices) and Python prices each sum once, exactly
    (planner.money.metered); calls billed at their bound (no usage) are added one by one."""
    width = DAY if daily is True else int(daily)
    cell = f"CAST(at / {width} AS INTEGER)" if width else "0"
    where, args = "state = 'billed'", []
    if period != Period():
        where, args = where + " AND at >= ? AND at < ?", [period.lo, period.hi]
    if pools is not None:
        where += f" AND pool IN ({', '.join('?' * len(pools))})"
        args += pools
    out: dict[tuple[str, int], Total] = defaultdict(Total)
    prices = f"{cell + ', ' if width else ''}input_per_1m, output_per_1m, cny_per_unit"
    for run, d, i, o, fx, p, c in led.db.execute(
            f"SELECT run_id, {cell}, input_per_1m, output_per_1m, cny_per_unit, SUM(prompt_tokens), SUM(completion_tokens) "
            f"FROM calls WHERE {where} AND prompt_tokens IS NOT NULL GROUP BY run_id, {prices}", args):
        out[(d, run)].add(Fraction(planner_metered(p, c, Decimal(i), Decimal(o), Decimal(fx))))
    for run, d, amount in led.db.execute(
            f"SELECT run_id, {cell}, amount_cny FROM calls WHERE {where} AND prompt_tokens IS NULL", args):
        out[(d, run)].add(Fraction(Decimal(amount)))
    runs = {r: -rid for rid, r in led.db.execute(
        f"SELECT rowid, id FROM runs WHERE id IN ({', '.join('?' * len({r for _, r in out}))})",
        list({r for _, r in out}))} if out else {}
    return {(d, runs[r]): t.value for (d, r), t in out.items()}


def task_weights(led: Ledger, run_ids: set[str]) -> dict[str, dict[str, Fraction]]:
    """run -> task -> its share of the run's cost: the worker's busy seconds of that task over the run's."""
    out: dict[str, dict[str, Fraction]] = {}
    for run_id, task, summary in led.db.execute("SELECT run_id, task, summary FROM tasks"):
        if run_id in run_ids:
            busy = (json.loads(summary) or {}).get("busy_s") or 0
            out.setdefault(run_id, {})[task] = Fraction(Decimal(str(busy))) if busy > 0 else Fraction(0)
    for run_id, w in list(out.items()):
        total = sum(w.values(), Fraction(0))
        out[run_id] = {t: v / total for t, v in w.items()} if total else {}
    return out


def key_of(by: str, inst: Inst) -> str:
    r = inst.row
    if by == "run":
        return r["run_id"]
    if by == "provider":
        return r["provider"]
    if by == "gpu":
        return f"{r['gpu']} x{r['gpu_count']}" if r.get("gpu") else r["instance_type"]
    if by == "quant":
        return r["quantization"]
    return r["plan"]


def grouped(cells: dict[tuple[int, int], Fraction], insts: dict[int, Inst], by: str, led: Ledger,
            calls: dict[tuple[int, int], Fraction] | None = None) -> dict[str, list[Fraction]]:
    """group -> [amount CNY, billed seconds], exact; `calls`: metered amounts per (cell, run line), no seconds."""
    out: dict[str, list[Total]] = defaultdict(lambda: [Total(), Total()])
    weights = task_weights(led, {i.row["run_id"] for i in insts.values()}) if by == "task" else {}
    names: dict[int, str] = {}
    items = [(k, secs, insts[k[1]].amount(secs)) for k, secs in cells.items()]
    items += [(k, 0, amount) for k, amount in (calls or {}).items()]
    for (d, iid), secs, amount in items:
        inst = insts[iid]
        if by in TIME_GROUPS:
            keys = [(names.get(d) or names.setdefault(d, bucket(d, by)), 1)]
        elif by == "task":
            w = weights.get(inst.row["run_id"])
            keys = list(w.items()) if w else [("(no task results)", 1)]
        else:
            keys = [(key_of(by, inst), 1)]
        for k, share in keys:
            g = out[k]
            g[0].add(amount * share if share != 1 else amount)
            g[1].add(secs * share if share != 1 else secs)
    return {k: [a.value, s.value] for k, (a, s) in out.items()}


def per_instance(cells: dict[tuple[int, int], Fraction]) -> dict[int, Fraction]:
    """instance id -> its billed seconds over every cell."""
    out: dict[int, Fraction] = defaultdict(int)
    for (_, iid), secs in cells.items():
        out[iid] += secs
    return out

"""`budget report`'s statement: what a period cost, per instance or grouped, read from the ledger.

Money rules (the README states them too):
- An instance's cost is what the ledger recorded at launch: its price in CNY per hour (and in the offer's
  currency; the exchange rate is their ratio, fixed at launch) times its *billed* seconds under the
  offer's rule (whole increments started, at least the minimum). A later catalog or FX change changes
  nothing here: no price is looked up.
- Each spend row holds its billed seconds, so SQL sums integers per (day, instance) and Python multiplies
  once per instance: exact rational arithmetic (fractions.Fraction), never a float.
- A period cuts a row that crosses its edge (or a day's, for --by day/week/month) in proportion to time:
  the row's billed seconds are shared by the share of its interval on each side. Pieces are exact, so
  every grouping sums to the total exactly.
- Rounding happens once, for display: the total to the cent half-even; the lines by largest remainder,
  so the printed lines add up to the printed total (each within a cent of its own rounding).
- An instance still live is "accruing": its cost to the ledger's last tick. A launch that never billed is
  a zero line with its reason, never a cost. Days, weeks (ISO, from Monday) and months are UTC."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from planner.errors import InputError

from ..units import iso
from .ledger import FINAL, LIVE, Ledger

GROUPS = ("run", "day", "week", "month", "provider", "gpu", "quant", "task", "plan")
TIME_GROUPS = ("day", "week", "month")
DAY = 86400
FAR = 1e15  # an open period end, as epoch seconds (year ~31 million): beyond any ledger row
SCHEMA = "gpubudget.report/1"


# ---------------------------------------------------------------------------------------------- money


def cents(x: Fraction) -> int:
    """Half-even at the cent (Python's round of a Fraction is exact and half-even)."""
    return round(x * 100)


def yuan(c: int) -> str:
    """'12.35', '-0.40', '0.00': a whole number of cents as a fixed 2-decimal string."""
    return str(Decimal(c).scaleb(-2).quantize(Decimal("0.01")))


def apportion(amounts: list[Fraction]) -> list[int]:
    """Cents per line that add up to the total's cents (half-even): each line its floor, the cents left
    to the largest remainders (ties: the earlier line)."""
    total = cents(fsum(amounts))
    floors = [math.floor(a * 100) for a in amounts]
    left = total - sum(floors)
    order = sorted(range(len(amounts)), key=lambda i: (-(amounts[i] * 100 - floors[i]), i))
    for i in order[:max(0, left)]:
        floors[i] += 1
    for i in order[::-1][:max(0, -left)]:  # only when lines are negative (never for spend)
        floors[i] -= 1
    return floors


def exact(x: Fraction) -> str:
    """Every digit a script may want (to 1e-12 CNY), as a decimal string."""
    return str((Decimal(x.numerator) / Decimal(x.denominator)).quantize(Decimal("1e-12")))


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
    t = Total()
    for x in xs:
        t.add(x)
    return t.value


# ---------------------------------------------------------------------------------------------- period


@dataclass(frozen=True)
class Period:
    since: float | None = None
    until: float | None = None

    @property
    def lo(self) -> float:
        return -FAR if self.since is None else self.since

    @property
    def hi(self) -> float:
        return FAR if self.until is None else self.until


def parse_when(text: str | None, flag: str, end: bool = False) -> float | None:
    """An ISO date (YYYY-MM-DD: the day's start; for --until the next day's start, so the day counts) or a
    date and time (YYYY-MM-DDTHH:MM[:SS], UTC unless it says otherwise) -> epoch seconds."""
    if text is None:
        return None
    raw = text.strip()
    try:
        d = dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        d = d if d.tzinfo else d.replace(tzinfo=dt.UTC)
        if "T" not in raw.upper() and " " not in raw and end:  # a date alone: --until includes that day
            d += dt.timedelta(days=1)
        return d.timestamp()
    except (ValueError, OverflowError):
        raise InputError(f"{flag} {text!r} is not a date", f"e.g. {flag} 2026-11-01 or {flag} 2026-11-01T08:00Z") \
            from None


def check_period(p: Period) -> None:
    if p.since is not None and p.until is not None and p.since >= p.until:
        raise InputError(f"--since ({iso(p.since)}) is not before --until ({iso(p.until)})",
                         "swap them, e.g. --since 2026-11-01 --until 2026-11-30")


def bucket(day: int, by: str) -> str:
    d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    if by == "day":
        return d.isoformat()
    if by == "week":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    return f"{d.year}-{d.month:02d}"


# ---------------------------------------------------------------------------------------------- aggregation


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
        if isinstance(secs, int):  # one normalisation instead of two Fraction operations
            return Fraction(self.price.numerator * secs, self.price.denominator * 3600)
        return self.price * secs / 3600


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


def grouped(cells: dict[tuple[int, int], Fraction], insts: dict[int, Inst], by: str, led: Ledger
            ) -> dict[str, list[Fraction]]:
    """group -> [amount CNY, billed seconds], exact."""
    out: dict[str, list[Total]] = defaultdict(lambda: [Total(), Total()])
    weights = task_weights(led, {i.row["run_id"] for i in insts.values()}) if by == "task" else {}
    names: dict[int, str] = {}
    for (d, iid), secs in cells.items():
        inst = insts[iid]
        amount = inst.amount(secs)
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


# ---------------------------------------------------------------------------------------------- statement


def _pools(led: Ledger, pool: str | None) -> list[str] | None:
    if pool is None:
        return None
    if led.pool_cap(pool) is None:
        known = ", ".join(p["name"] for p in led.pools()) or "none yet"
        raise InputError(f"no pool {pool!r} (pools: {known})", "see `budget pool list`, or leave out --pool")
    return [pool]


def cap_at(led: Ledger, pools: list[str], t: float | None) -> Decimal:
    """The pools' caps as they stood at `t` (now when None): the last cap event at or before it."""
    total = Decimal(0)
    for p in pools:
        row = led.db.execute("SELECT new_cap_cny FROM pool_events WHERE pool=? AND at<=? ORDER BY at DESC, id DESC "
                             "LIMIT 1", (p, FAR if t is None else t)).fetchone()
        total += Decimal(row[0]) if row else Decimal(0)
    return total


def duration(secs: Fraction) -> str:
    s = round(secs)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def statement(led: Ledger, *, pool: str | None = None, period: Period = Period(), by: str | None = None,
              now: float) -> dict:
    """The statement of `pool` (every pool when None) over `period`; grouped `by` when given, else one
    charge line per instance. Amounts in the document are strings (2 decimals; `exact_cny` to 1e-12)."""
    check_period(period)
    pools = _pools(led, pool)
    if not led.db.execute("SELECT 1 FROM runs LIMIT 1").fetchone():
        raise InputError("the ledger holds no runs yet: nothing to report",
                         "start one with `budget run plans/smoke.yaml --yuan 5`, then `budget report`")
    names = pools or [p["name"] for p in led.pools()]
    insts = instances(led, pools)
    daily = by in TIME_GROUPS
    cells = billed(led, period, daily, pools)
    per_inst = _per_instance(cells)
    amounts = {i: insts[i].amount(s) for i, s in per_inst.items()}
    total = fsum(amounts.values())
    before = Fraction(0)
    if period.since is not None:
        before = fsum(insts[i].amount(s) for (_, i), s in billed(led, Period(None, period.since), False, pools).items())
    cap = cap_at(led, names, period.until)
    opening = Fraction(cap) - before
    remaining = opening - total
    end = min(now, period.hi)
    live = [i for i in insts.values() if i.row["state"] in LIVE and i.row["started_at"] < period.hi]
    first = period.since if period.since is not None else min(
        (i.row["started_at"] for i in insts.values()), default=end)
    days = Fraction(max(0.0, end - first)) / DAY
    burn_day = total / days if days else None
    burn_h = sum((i.price for i in live), Fraction(0))
    if burn_h:
        runway, basis = max(remaining, Fraction(0)) / burn_h, "the live instances' rate"
    elif burn_day:
        runway, basis = max(remaining, Fraction(0)) / burn_day * 24, "the period's average burn"
    else:
        runway, basis = None, "nothing is spending"
    doc = {
        "schema": SCHEMA, "view": "statement", "generated_at": iso(now), "pools": names,
        "period": {"since": iso(period.since) if period.since else None,
                   "until": iso(period.until) if period.until else None},
        "currency": "CNY", "cap_cny": yuan(cents(Fraction(cap))), "opening_balance_cny": yuan(cents(opening)),
        "spent_cny": yuan(cents(total)), "exact_spent_cny": exact(total), "remaining_cny": yuan(cents(remaining)),
        "burn": {"average_cny_per_day": None if burn_day is None else yuan(cents(burn_day)),
                 "current_cny_per_h": yuan(cents(burn_h)), "live_instances": len(live)},
        "runway_h": None if runway is None else f"{float(runway):.1f}", "runway_basis": basis,
        "cap_changes": [{"pool": e["pool"], "at": iso(e["at"]), "old_cap_cny": e["old_cap_cny"],
                         "new_cap_cny": e["new_cap_cny"], "detail": e["detail"]}
                        for e in led.db.execute(
                            "SELECT * FROM pool_events WHERE at>=? AND at<? AND pool IN "
                            f"({', '.join('?' * len(names))}) ORDER BY at, id", (period.lo, period.hi, *names))],
    }
    per_pool: dict[str, Total] = defaultdict(Total)
    for i, a in amounts.items():
        per_pool[insts[i].row["pool"]].add(a)
    doc["subtotals"] = [{"pool": p, "amount_cny": yuan(c)} for p, c in
                        zip(names, apportion([per_pool[p].value if p in per_pool else Fraction(0) for p in names]))]
    if by is not None:
        groups = grouped(cells, insts, by, led)
        keys = sorted(groups)
        shares = apportion([groups[k][0] for k in keys])
        doc["by"] = by
        doc["groups"] = [{"key": k, "amount_cny": yuan(c), "exact_cny": exact(groups[k][0]),
                          "billed_s": f"{float(groups[k][1]):.0f}",
                          "share_pct": f"{float(groups[k][0] / total * 100):.1f}" if total else "0.0"}
                         for k, c in zip(keys, shares)]
    else:
        doc["charges"] = charges(led, insts, per_inst, period, pools)
    whole = amounts if period == Period() else {
        i: insts[i].amount(s) for i, s in _per_instance(billed(led, Period(), False, pools)).items()}
    doc["variance"] = variance(led, insts, {insts[i].row["run_id"] for i in per_inst}, whole)
    return doc


def _per_instance(cells: dict[tuple[int, int], Fraction]) -> dict[int, Fraction]:
    out: dict[int, Fraction] = defaultdict(int)
    for (_, iid), secs in cells.items():
        out[iid] += secs
    return out


def charges(led: Ledger, insts: dict[int, Inst], per_inst: dict[int, Fraction], period: Period,
            pools: list[str] | None) -> list[dict]:
    """One line per instance billed in the period, plus zero lines: launches that never billed and runs
    that ended before any launch (each with its reason)."""
    unbilled = {i for i, x in insts.items() if i not in per_inst and period.lo <= x.row["started_at"] < period.hi}
    shown = sorted(set(per_inst) | unbilled, key=lambda i: insts[i].row["started_at"])
    amounts = [insts[i].amount(per_inst.get(i, Fraction(0))) for i in shown]
    lines = []
    for iid, amount, c in zip(shown, amounts, apportion(amounts)):
        r, secs = insts[iid].row, per_inst.get(iid, Fraction(0))
        live = r["state"] in LIVE
        original = Decimal(r["price_original_h"])
        if live:
            last = led.db.execute("SELECT MAX(end_at) FROM spend WHERE instance_id=?", (iid,)).fetchone()[0]
            status, reason = "accruing", f"live; cost to the last tick ({iso(last)})"
        elif not secs and not amount:
            status, reason = "not billed", r["run_reason"] or r["state"]
        else:
            status, reason = r["state"], ""
        lines.append({
            "run": r["run_id"], "pool": r["pool"], "plan": r["plan"], "quant": r["quantization"],
            "provider": r["provider"], "region": r["region"], "instance_type": r["instance_type"],
            "gpu": r.get("gpu") or "", "gpu_count": r.get("gpu_count"), "spot": bool(r["spot"]),
            "started_at": iso(r["launched_at"] or r["started_at"]), "ended_at": iso(r["ended_at"]),
            "rate_cny_h": str(Decimal(r["price_cny_h"])), "rate_original_h": str(original), "currency": r["currency"],
            "spot_market_original_h": r.get("market_price_h"),
            "fx_cny_per_unit": format((Decimal(r["price_cny_h"]) / original).quantize(Decimal("1e-6")).normalize(), "f")
            if original else None,
            "increment_s": r["increment_s"], "minimum_s": r["minimum_s"],
            "billed_s": f"{float(secs):.0f}", "billed": duration(secs), "amount_cny": yuan(c),
            "exact_cny": exact(amount),
            "status": status, "reason": reason})
    args: list = [period.lo, period.hi]
    q = ("SELECT * FROM runs r WHERE created_at>=? AND created_at<? "
         "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.run_id=r.id)")
    if pools is not None:
        q += f" AND pool IN ({', '.join('?' * len(pools))})"
        args += pools
    for r in led.db.execute(q + " ORDER BY created_at", args):
        lines.append({"run": r["id"], "pool": r["pool"], "plan": r["plan"], "quant": r["quantization"],
                      "provider": r["provider"], "region": "", "instance_type": "", "gpu": "", "gpu_count": None,
                      "spot": bool(r["spot"]), "started_at": iso(r["created_at"]), "ended_at": iso(r["finished_at"]),
                      "rate_cny_h": None, "rate_original_h": None, "currency": None, "spot_market_original_h": None,
                      "fx_cny_per_unit": None,
                      "increment_s": None, "minimum_s": None, "billed_s": "0", "billed": duration(Fraction(0)),
                      "amount_cny": yuan(0), "exact_cny": exact(Fraction(0)),
                      "status": "never launched" if r["state"] in FINAL else "not launched yet",
                      "reason": r["reason"] or r["state"]})
    return lines


def variance(led: Ledger, insts: dict[int, Inst], run_ids: set[str], whole: dict[int, Fraction]) -> dict:
    """Each run's whole cost (not cut by the period; `whole`: instance -> CNY) against the plan's estimate
    when it was launched."""
    runs: dict[str, Fraction] = {}
    for iid, amount in whole.items():
        rid = insts[iid].row["run_id"]
        if rid in run_ids:
            runs[rid] = runs[rid] + amount if rid in runs else amount
    lines, est_sum, act_sum = [], Decimal(0), Total()
    rows = {r["id"]: r for r in led.db.execute("SELECT id, state, estimate_cny FROM runs")}
    for run_id in sorted(run_ids):
        r = rows[run_id]
        actual = runs.get(run_id, Fraction(0))
        a_c = cents(actual)
        line = {"run": run_id, "state": r["state"], "estimate_cny": None, "actual_cny": yuan(a_c),
                "variance_cny": None, "variance_pct": None}
        if r["estimate_cny"] is not None:
            est = Decimal(r["estimate_cny"])
            e_c = cents(Fraction(est))
            # the printed difference of the printed figures (each rounded once, half-even)
            line.update(estimate_cny=yuan(e_c), variance_cny=yuan(a_c - e_c),
                        variance_pct=f"{(a_c - e_c) * 100 / e_c:+.1f}" if e_c else None)
            if r["state"] in FINAL:
                est_sum += est
                act_sum.add(actual)
        lines.append(line)
    e_c, a_c = cents(Fraction(est_sum)), cents(act_sum.value)
    return {"runs": lines, "finished_estimate_cny": yuan(e_c), "finished_actual_cny": yuan(a_c),
            "finished_variance_cny": yuan(a_c - e_c),
            "finished_variance_pct": f"{(a_c - e_c) * 100 / e_c:+.1f}" if e_c else None}

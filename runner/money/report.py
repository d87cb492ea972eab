"""`budget report`'s statement: what a period cost, per instance or grouped, read from the ledger - the
document (totals, balance, burn and runway, charge lines or groups, variance against the plan's estimate).
The period and groups are runner/money/periods.py's, the exact sums runner/money/aggregation.py's; the money
rules are planner/money.py's (the README states them too):

- An instance's cost is what the ledger recorded at launch: its price in CNY per hour (and in the offer's
  currency; the exchange rate is their ratio, fixed at launch) times its *billed* seconds under the
  offer's rule (whole increments started, at least the minimum). A later catalog or FX change changes
  nothing here: no price is looked up. Sums are exact (fractions.Fraction), never a float.
- Rounding happens once, for display: the total to the cent half-even; the lines by largest remainder,
  so the printed lines add up to the printed total (each within a cent of its own rounding).
- An instance still live is "accruing": its cost to the ledger's last tick. A launch that never billed is
  a zero line with its reason, never a cost. Days, weeks (ISO, from Monday) and months are UTC."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from fractions import Fraction

from planner.errors import InputError
from planner.money import apportion, cents, display, yuan

from ..units import iso
from .aggregation import (
    Inst,
    Total,
    billed,
    burn_down,  # noqa: F401 (the CLI reads it as report.burn_down)
    fsum,
    grouped,
    instances,
    metered,
    metered_runs,
    per_instance,
)
from .ledger import FINAL, LIVE, Ledger
from .periods import DAY, FAR, GROUPS, TIME_GROUPS, Period, check_period, parse_when  # noqa: F401 (the CLI reads them as report.X)
from .pools import pool_names

SCHEMA = "gpubudget.report/1"
EXACT_PLACES = 12


def exact(x: Fraction | Decimal) -> str:
    """Every digit a script may want: the display rule to 1e-12 CNY ('exact_cny' beside each rounded amount)."""
    return display(x, EXACT_PLACES)


def _pools(led: Ledger, pool: str | None) -> list[str] | None:
    if pool is None:
        return None
    if led.pool_cap(pool) is None:
        known = ", ".join(pool_names(led)) or "none yet"
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
    names = pools or pool_names(led)
    insts = instances(led, pools) | metered_runs(led, pools)  # machines by the hour, and runs' metered calls
    daily = by in TIME_GROUPS
    cells = billed(led, period, daily, pools)
    calls = metered(led, period, daily, pools)
    per_inst = per_instance(cells)
    amounts = {i: insts[i].amount(s) for i, s in per_inst.items()}
    for (_, i), amount in calls.items():
        amounts[i] = amounts.get(i, Fraction(0)) + amount
        per_inst.setdefault(i, Fraction(0))
    total = fsum(amounts.values())
    before = Fraction(0)
    if period.since is not None:
        earlier = Period(None, period.since)
        before = fsum([*(insts[i].amount(s) for (_, i), s in billed(led, earlier, False, pools).items()),
                       *metered(led, earlier, False, pools).values()])
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
        "currency": "CNY", "cap_cny": display(cap, 2), "opening_balance_cny": display(opening, 2),
        "spent_cny": display(total, 2), "exact_spent_cny": exact(total), "remaining_cny": display(remaining, 2),
        "burn": {"average_cny_per_day": None if burn_day is None else display(burn_day, 2),
                 "current_cny_per_h": display(burn_h, 2), "live_instances": len(live)},
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
        groups = grouped(cells, insts, by, led, calls)
        keys = sorted(groups)
        shares = apportion([groups[k][0] for k in keys])
        doc["by"] = by
        doc["groups"] = [{"key": k, "amount_cny": yuan(c), "exact_cny": exact(groups[k][0]),
                          "billed_s": f"{float(groups[k][1]):.0f}",
                          "share_pct": f"{float(groups[k][0] / total * 100):.1f}" if total else "0.0"}
                         for k, c in zip(keys, shares)]
    else:
        doc["charges"] = charges(led, insts, per_inst, amounts, period, pools)
    whole = amounts
    if period != Period():
        whole = {i: insts[i].amount(s) for i, s in per_instance(billed(led, Period(), False, pools)).items()}
        for (_, i), amount in metered(led, Period(), False, pools).items():
            whole[i] = whole.get(i, Fraction(0)) + amount
    doc["variance"] = variance(led, insts, {insts[i].row["run_id"] for i in per_inst}, whole)
    return doc


def charges(led: Ledger, insts: dict[int, Inst], per_inst: dict[int, Fraction], amount_of: dict[int, Fraction],
            period: Period, pools: list[str] | None) -> list[dict]:
    """One line per instance billed in the period and one per run's metered calls, plus zero lines: launches
    that never billed and runs that ended before any launch or billed call (each with its reason)."""
    unbilled = {i for i, x in insts.items() if i not in per_inst and period.lo <= x.row["started_at"] < period.hi}
    shown = sorted(set(per_inst) | unbilled, key=lambda i: insts[i].row["started_at"])
    amounts = [amount_of.get(i, Fraction(0)) for i in shown]
    lines = []
    for iid, amount, c in zip(shown, amounts, apportion(amounts)):
        r, secs = insts[iid].row, per_inst.get(iid, Fraction(0))
        live = r["state"] in LIVE
        original = Decimal(r["price_original_h"])
        hourly = r["state"] != "metered"
        if not hourly:  # a run's metered calls: tokens at the prices recorded at its start
            status = r["run_state"]
            reason = (f"{r['calls']} calls: {r['prompt_tokens']} prompt + {r['completion_tokens']} completion tokens "
                      f"at {r['input_per_1m']} / {r['output_per_1m']} {r['currency']} per 1M")
        elif live:
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
            "rate_cny_h": str(Decimal(r["price_cny_h"])) if hourly else None,
            "rate_original_h": str(original) if hourly else None, "currency": r["currency"],
            "spot_market_original_h": r.get("market_price_h"),
            "fx_cny_per_unit": format((Decimal(r["price_cny_h"]) / original).quantize(Decimal("1e-6")).normalize(), "f")
            if original else None,
            "increment_s": r["increment_s"], "minimum_s": r["minimum_s"],
            "billed_s": f"{float(secs):.0f}", "billed": duration(secs), "amount_cny": yuan(c),
            "exact_cny": exact(amount),
            "status": status, "reason": reason})
    args: list = [period.lo, period.hi]
    q = ("SELECT * FROM runs r WHERE created_at>=? AND created_at<? "
         "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.run_id=r.id) "
         "AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.run_id=r.id AND c.state='billed')")
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
            e_c = cents(est)
            # the printed difference of the printed figures (each rounded once, half-even)
            line.update(estimate_cny=yuan(e_c), variance_cny=yuan(a_c - e_c),
                        variance_pct=f"{(a_c - e_c) * 100 / e_c:+.1f}" if e_c else None)
            if r["state"] in FINAL:
                est_sum += est
                act_sum.add(actual)
        lines.append(line)
    e_c, a_c = cents(est_sum), cents(act_sum.value)
    return {"runs": lines, "finished_estimate_cny": yuan(e_c), "finished_actual_cny": yuan(a_c),
            "finished_variance_cny": yuan(a_c - e_c),
            "finished_variance_pct": f"{(a_c - e_c) * 100 / e_c:+.1f}" if e_c else None}

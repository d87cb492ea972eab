"""Metered calls in the ledger (migration 8): the spend of a hosted model billed by tokens. Before a call is
sent its bound - the most it can cost - is reserved against its run's cap and its pool's, in one BEGIN
IMMEDIATE transaction with every instance's projection and every other call (so runs sharing a pool cannot
both spend the last yuan); when the server's usage comes back the call is billed at tokens x the prices
recorded when the run started (planner.money.metered); a call never sent, or answered with an error status
(which providers do not bill), is released; a call whose outcome is unknown (the connection broke after it was
sent, the controller died during it) is billed at its bound: the ledger never records less than the provider
can bill. Every change is mirrored into the run's money.jsonl. Plain functions over the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from planner.money import metered

from .guard import Decision, Policy, accrued, committed

OPEN, BILLED, RELEASED = "reserved", "billed", "released"


@dataclass(frozen=True)
class Rate:
    """A hosted model's prices as recorded when the run started (per 1M tokens, in `currency`) and the rate
    into CNY recorded then."""

    model: str
    input_per_1m: Decimal
    output_per_1m: Decimal
    currency: str
    cny_per_unit: Decimal

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return metered(prompt_tokens, completion_tokens, self.input_per_1m, self.output_per_1m, self.cny_per_unit)


def held(db, *, pool: str | None = None, run_id: str | None = None, billed_only: bool = False) -> Decimal:
    """What the calls of a pool (or a run) have cost, plus - unless `billed_only` - the bounds still reserved.
    Billed calls are summed as tokens per price in SQL and priced once per price (the cost is linear in tokens)."""
    where, args = ("pool=?", (pool,)) if pool is not None else ("run_id=?", (run_id,))
    total = Decimal(0)
    for i, o, fx, p, c in db.execute(
            f"SELECT input_per_1m, output_per_1m, cny_per_unit, SUM(prompt_tokens), SUM(completion_tokens) FROM calls "
            f"WHERE {where} AND state=? AND prompt_tokens IS NOT NULL GROUP BY input_per_1m, output_per_1m, cny_per_unit",
            (*args, BILLED)):
        total += metered(p, c, Decimal(i), Decimal(o), Decimal(fx))
    states = (BILLED,) if billed_only else (BILLED, OPEN)
    for state, amount, bound in db.execute(  # billed at their bound (no usage), and the open reservations
            f"SELECT state, amount_cny, bound_cny FROM calls WHERE {where} AND (state=? AND prompt_tokens IS NULL "
            f"OR state IN ({', '.join('?' * len(states))}) AND state=?)", (*args, BILLED, *states, OPEN)):
        total += Decimal(amount if state == BILLED else bound)
    return total


def reserve(led, run_id: str, rate: Rate, bound_cny: Decimal, now: float, policy: Policy | None = None,
            detail: str = "") -> tuple[Decision, int | None]:
    """Reserve `bound_cny` for one call of `run_id`, if its pool's and its run's caps can pay it on top of
    everything already committed (instances projected as the guard does, calls billed or reserved). Refused
    (reason `stopped`) once a stop was asked for the run."""
    policy = policy or Policy()
    with led.transaction():
        run = led.run(run_id)
        pool = run["pool"]
        if run["stop_requested"]:
            return Decision(False, "stopped", Decimal(0), Decimal(0), Decimal(run["cap_cny"])), None
        verdicts = []
        for cap, insts, scope in ((led.pool_cap(pool), led.instances(pool=pool), {"pool": pool}),
                                  (Decimal(run["cap_cny"]), led.instances(run_id=run_id), {"run_id": run_id})):
            meters = [i.meter for i in insts]
            worst = committed(meters, now, policy) + held(led.db, **scope) + bound_cny
            spent = accrued(meters, now) + held(led.db, billed_only=True, **scope)
            go = worst <= cap - policy.reserve_cny
            verdicts.append(Decision(go, "" if go else "budget", spent, worst, cap))
        refused = next((d for d in verdicts if not d.go), None)
        if refused is not None:
            return refused, None
        cur = led.db.execute(
            "INSERT INTO calls (run_id, pool, model, state, reserved_at, bound_cny, input_per_1m, output_per_1m, "
            "currency, cny_per_unit, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, pool, rate.model, OPEN, now, str(bound_cny), str(rate.input_per_1m), str(rate.output_per_1m),
             rate.currency, str(rate.cny_per_unit), detail))
    _mirror(led, cur.lastrowid)
    return verdicts[-1], cur.lastrowid


def bill(led, call_id: int, prompt_tokens: int, completion_tokens: int, now: float, detail: str = "") -> Decimal:
    """Bill a reserved call from the server's usage, at the prices recorded with it."""
    with led.transaction():
        row = _row(led, call_id)
        if row["state"] != OPEN:
            return Decimal(row["amount_cny"] or 0)
        rate = Rate(row["model"], Decimal(row["input_per_1m"]), Decimal(row["output_per_1m"]), row["currency"],
                    Decimal(row["cny_per_unit"]))
        amount = rate.cost(prompt_tokens, completion_tokens)
        led.db.execute("UPDATE calls SET state=?, at=?, amount_cny=?, prompt_tokens=?, completion_tokens=?, "
                       "detail=? WHERE id=?", (BILLED, now, str(amount), prompt_tokens, completion_tokens,
                                               detail or row["detail"], call_id))
    _mirror(led, call_id)
    return amount


def bill_bound(led, call_id: int, now: float, why: str) -> Decimal:
    """Bill a call whose outcome is unknown at its bound (the most the provider can have billed)."""
    with led.transaction():
        row = _row(led, call_id)
        if row["state"] != OPEN:
            return Decimal(row["amount_cny"] or 0)
        led.db.execute("UPDATE calls SET state=?, at=?, amount_cny=bound_cny, detail=? WHERE id=?",
                       (BILLED, now, f"billed at its bound: {why}", call_id))
        led.event(row["run_id"], "call-unknown", f"call {call_id} billed at its bound {row['bound_cny']} CNY: {why}",
                  at=now)
    _mirror(led, call_id)
    return Decimal(row["bound_cny"])


def release(led, call_id: int, now: float, why: str) -> None:
    """Give a reservation back: the call was not sent, or the provider bills nothing for its answer."""
    with led.transaction():
        if _row(led, call_id)["state"] != OPEN:
            return
        led.db.execute("UPDATE calls SET state=?, at=?, detail=? WHERE id=?", (RELEASED, now, why[:500], call_id))
    _mirror(led, call_id)


def open_calls(led, run_id: str) -> list[int]:
    """The run's calls still reserved (their controller died during them)."""
    return [r[0] for r in led.db.execute("SELECT id FROM calls WHERE run_id=? AND state=? ORDER BY id",
                                         (run_id, OPEN))]


def totals(led, run_id: str) -> dict:
    """The run's billed calls: count, tokens, CNY."""
    n, p, c = led.db.execute("SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
                             "FROM calls WHERE run_id=? AND state=?", (run_id, BILLED)).fetchone()
    return {"calls": n, "prompt_tokens": p, "completion_tokens": c,
            "spent_cny": held(led.db, run_id=run_id, billed_only=True)}


def _row(led, call_id: int) -> dict:
    return dict(led.db.execute("SELECT * FROM calls WHERE id=?", (call_id,)).fetchone())


def _mirror(led, call_id: int) -> None:
    row = _row(led, call_id)
    led.journal.append(row["run_id"], {"call": row})

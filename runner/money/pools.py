"""Budget pools: named caps in the ledger that runs draw on. This module owns what a pool *is* to a
user - creating one, changing its cap (every change is a ledger event with the old and new figures),
listing and showing them with their spend - and the one rule `budget run` applies before it prints a
cap: the cap printed is the cap enforced. A run's own cap may be below its pool's; it may never be
above it (the pool would stop the run first, at a figure the user was not shown), so such a run is
refused before anything is written, with the commands that fix it."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from planner import names
from planner.errors import InputError
from planner.money import display

from .guard import Policy, committed
from .ledger import Ledger

_NO_MARGIN = Policy(tick_s=0.0, teardown_s=0.0)


def check_name(name: str) -> str:
    try:
        return names.check(name, "pool name")
    except ValueError as e:
        raise InputError(str(e), "e.g. --pool team-eval") from None


@dataclass(frozen=True)
class RunCap:
    """What `budget run` will enforce: the run's cap and the pool it draws on (`pool_cap` None: the
    pool is new and is created with the run's cap)."""

    pool: str
    cap_cny: Decimal
    pool_cap_cny: Decimal | None
    pool_spent_cny: Decimal

    @property
    def new_pool(self) -> bool:
        return self.pool_cap_cny is None

    @property
    def pool_left_cny(self) -> Decimal:
        return self.cap_cny if self.pool_cap_cny is None else self.pool_cap_cny - self.pool_spent_cny


def run_cap(led: Ledger, pool: str, yuan: Decimal | None, plan_budget: Decimal | None) -> RunCap:
    """The cap a new run gets on `pool`: --yuan, else the plan's budget_yuan, else the pool's cap.
    Refused (exit 2) when it is above the pool's cap: the pool's cap would be the one enforced."""
    check_name(pool)
    pool_cap = led.pool_cap(pool)
    spent = led.spent_pool(pool) if pool_cap is not None else Decimal(0)
    cap, source = (yuan, f"--yuan {yuan} CNY") if yuan is not None else \
        (plan_budget, f"the plan's budget_yuan ({plan_budget} CNY)")
    if cap is None:
        if pool_cap is None:
            raise InputError("no budget given", "pass --yuan AMOUNT (CNY) or set budget_yuan in the plan")
        cap = pool_cap
    elif pool_cap is not None and cap > pool_cap:
        raise InputError(f"{source} is above the cap of pool {pool!r} ({display(pool_cap)} CNY, {display(spent)} CNY spent): the run "
                         f"would be stopped at the pool's cap, not at {cap} CNY",
                         f"raise the pool's cap with `budget pool set-cap {pool} {cap}`, pass --yuan {pool_cap} or "
                         "less, or draw on another pool with --pool NAME")
    return RunCap(pool, cap, pool_cap, spent)


def create(led: Ledger, name: str, cap: Decimal, detail: str = "") -> dict:
    check_name(name)
    if led.pool_cap(name) is not None:
        raise InputError(f"pool {name!r} exists already (cap {led.pool_cap(name)} CNY)",
                         f"change its cap with `budget pool set-cap {name} {cap}`")
    led.ensure_pool(name, cap, led.clock.now(), detail or "budget pool create")
    return show(led, name)


def set_cap(led: Ledger, name: str, cap: Decimal) -> dict:
    _existing(led, name)
    led.set_pool_cap(name, cap, led.clock.now(), "budget pool set-cap")
    return show(led, name)


def _existing(led: Ledger, name: str) -> Decimal:
    cap = led.pool_cap(name)
    if cap is None:
        known = ", ".join(pool_names(led)) or "none yet"
        raise InputError(f"no pool {name!r} (pools: {known})", f"create it with `budget pool create {name} --yuan AMOUNT`")
    return cap


def _summary(led: Ledger, pool: dict, now: float) -> dict:
    """A pool's money: cap, spent (billed so far), committed (the worst case if each live instance stops as
    late as its lease allows; a statement, so without the guard's tick and teardown margins), left = cap -
    committed."""
    cap = Decimal(pool["cap_cny"])
    instances = led.instances(pool=pool["name"])
    spent = led.spent_pool(pool["name"])
    live = [i for i in instances if i.ended_at is None]
    # the guard's projection without its margins: every live instance to the end of its lease
    worst = max(spent, committed([i.meter for i in instances], now, _NO_MARGIN))
    runs = _pool_runs(led, pool["name"])
    return {"name": pool["name"], "cap_cny": cap, "spent_cny": spent, "committed_cny": worst,
            "left_cny": cap - worst, "runs": len(runs),
            "active_runs": sum(r["state"] in ("created", "running") for r in runs),
            "live_instances": len(live), "created_at": pool["created_at"]}


def listing(led: Ledger) -> list[dict]:
    now = led.clock.now()
    return [_summary(led, p, now) for p in _pools(led)]


def show(led: Ledger, name: str) -> dict:
    _existing(led, name)
    pool = next(p for p in _pools(led) if p["name"] == name)
    doc = _summary(led, pool, led.clock.now())
    doc["cap_history"] = [{"at": e["at"], "kind": e["kind"], "old_cap_cny": None if e["old_cap_cny"] is None
                           else Decimal(e["old_cap_cny"]), "new_cap_cny": Decimal(e["new_cap_cny"]),
                           "detail": e["detail"]} for e in _pool_events(led, name)]
    doc["run_list"] = [{"id": r["id"], "state": r["state"], "cap_cny": Decimal(r["cap_cny"]),
                        "spent_cny": led.spent_run(r["id"]), "created_at": r["created_at"]} for r in _pool_runs(led, name)]
    return doc


def _pools(led: Ledger) -> list[dict]:
    return [dict(r) for r in led.db.execute("SELECT * FROM pools ORDER BY name")]


def pool_names(led: Ledger) -> list[str]:
    """Every pool's name, in order."""
    return [p["name"] for p in _pools(led)]


def _pool_events(led: Ledger, name: str) -> list[dict]:
    return [dict(r) for r in led.db.execute("SELECT * FROM pool_events WHERE pool=? ORDER BY at, id", (name,))]


def _pool_runs(led: Ledger, name: str) -> list[dict]:
    return [dict(r) for r in led.db.execute("SELECT * FROM runs WHERE pool=? ORDER BY created_at DESC, id DESC",
                                             (name,))]

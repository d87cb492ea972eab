"""The budget guard: pure decisions over ledger facts and the clock (no I/O, no clock of its own).

Every instance is a `Meter`: its price at launch, its billing rule (increment, minimum), when billing
started, when it ended (if it has) and its *lease*: the moment its own watchdog will stop it if no
controller extends the lease first (runner/instance/watchdog.sh). So an instance's cost is bounded
even when its controller dies: it ends by `lease_until + teardown_s` at the latest.

A decision projects every instance of a pool to the latest moment it can still be running:

    live:   max(now + tick_s, lease_until) + teardown_s     (the next decision may come a tick late,
                                                             and stopping takes teardown_s)
    lapsed: lease_until + teardown_s                        (a lease a tick past due: no controller extends
                                                             it, the watchdog ends the instance)
    ended:  ended_at

and charges each under its billing rule (whole increments started, at least the minimum). The run may
continue - and extend its lease - only while those projected costs plus the reserve fit the cap. On
hourly billing this uses the hour already paid (the projection stays inside it) and stops a teardown
before the next hour it cannot pay. Every lease extension and every launch is such a check, so the
last check before the end bounds the final spend of the whole pool: settled spend <= cap
(tests/runner/test_guard.py checks this property over random prices, rules, jitter and concurrency)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from planner.money import billed_seconds, charge


@dataclass(frozen=True)
class Meter:
    """One instance's billing facts. Times are epoch seconds."""

    price_cny_h: Decimal
    increment_s: int
    minimum_s: int
    started: float
    lease_until: float
    ended: float | None = None

    @property
    def void(self) -> bool:
        """A launch that made nothing (the ledger settles it with its end and its lease at its start): it bills
        nothing - not even the minimum - and commits nothing once it ended."""
        return self.ended is not None and self.ended <= self.started and self.lease_until <= self.started

    def billed(self, t: float) -> int:
        """Seconds billed if billing ends at `t` (or at its end, if that is earlier)."""
        if self.void:
            return 0
        end = t if self.ended is None else min(t, self.ended)
        return billed_seconds(max(0.0, end - self.started), self.increment_s, self.minimum_s)

    def cost(self, t: float) -> Decimal:
        """What the instance costs if billing ends at `t` (or at its end, if that is earlier)."""
        return charge(self.price_cny_h, self.billed(t))

    def projected_end(self, now: float, tick_s: float, teardown_s: float) -> float:
        if self.ended is not None:
            return self.ended
        if self.lease_until + tick_s < now:
            # lapsed: nobody extended its lease for over a tick (its controller is gone), so its own watchdog
            # ends it by lease + teardown - projecting it to `now` would block the pool with money not spent
            return self.lease_until + teardown_s
        return max(now + tick_s, self.lease_until) + teardown_s

    def next_increment_cny(self, now: float) -> Decimal:
        """The cost of the billing increment after the one running at `now`."""
        return self.cost(now + self.increment_s) - self.cost(now)


@dataclass(frozen=True)
class Policy:
    """How cautious the guard is. `tick_s`: the longest gap between two decisions; `teardown_s`: the
    longest a terminate takes to stop billing; `reserve_cny`: money never planned (price drift, FX);
    `lease_s`: how far ahead an instance may run on its own if its controller goes silent."""

    tick_s: float = 5.0
    teardown_s: float = 60.0
    reserve_cny: Decimal = Decimal(0)
    lease_s: float = 300.0


@dataclass(frozen=True)
class Decision:
    go: bool
    reason: str
    accrued_cny: Decimal     # what the pool has cost so far (billing rules applied)
    committed_cny: Decimal   # the worst case if every instance stops as late as it can
    cap_cny: Decimal
    lease_until: float | None = None  # the lease to hand the instance (None when stopping)
    next_increment_cny: Decimal = Decimal(0)

    @property
    def headroom_cny(self) -> Decimal:
        return self.cap_cny - self.committed_cny


def accrued(meters: list[Meter], now: float) -> Decimal:
    return sum((m.cost(now) for m in meters), Decimal(0))


def committed(meters: list[Meter], now: float, policy: Policy) -> Decimal:
    return sum((m.cost(m.projected_end(now, policy.tick_s, policy.teardown_s)) for m in meters), Decimal(0))


def decide(cap_cny: Decimal, others: list[Meter], mine: Meter, now: float, policy: Policy,
           fixed: Decimal = Decimal(0)) -> Decision:
    """May `mine` keep running (or start, for a meter that starts at `now`) after this tick, and until when
    may its watchdog let it run alone? `others` are the pool's other instances, settled or live; `fixed` what
    is committed besides them (metered calls billed or reserved: runner/money/calls.py)."""
    budget = cap_cny - policy.reserve_cny
    base = committed(others, now, policy) + fixed
    acc = accrued([*others, mine], now) + fixed

    def fits(lease: float) -> bool:
        return base + replace(mine, lease_until=lease).cost(lease + policy.teardown_s) <= budget

    floor_ = max(now + policy.tick_s, mine.lease_until)  # a lease already handed out cannot be taken back
    if not fits(floor_):
        worst = base + mine.cost(floor_ + policy.teardown_s)
        return Decision(False, "budget", acc, worst, cap_cny, None, mine.next_increment_cny(now))
    lo, hi = floor_, max(floor_, now + policy.lease_s)
    if not fits(hi):  # the longest lease that still fits: cost is a step function of the lease end
        while hi - lo > 0.5:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        hi = lo
    worst = base + mine.cost(hi + policy.teardown_s)
    return Decision(True, "", acc, worst, cap_cny, hi, mine.next_increment_cny(now))


def check(pool_cap: Decimal, run_cap: Decimal, pool_others: list[Meter], run_others: list[Meter], mine: Meter,
          now: float, policy: Policy, pool_fixed: Decimal = Decimal(0), run_fixed: Decimal = Decimal(0)) -> Decision:
    """The stricter of the pool's and the run's decision (a run's cap may be below its pool's): `pool_others`
    are the pool's other instances, `run_others` those of the run; `*_fixed` their metered calls."""
    d_pool = decide(pool_cap, pool_others, mine, now, policy, pool_fixed)
    d_run = decide(run_cap, run_others, mine, now, policy, run_fixed)
    if not d_pool.go:
        return d_pool
    if not d_run.go or d_run.lease_until < d_pool.lease_until:
        return d_run
    return d_pool

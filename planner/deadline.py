"""`budget plan --deadline`: when the plan must be done, and what that does to the choice. Owns the deadline's
syntax (a duration - `6h`, `90m`, `2d`, `1h30m` - or an ISO date or datetime: a date means the end of that day in
UTC, a datetime without a zone is UTC), the test a candidate must pass (the upper end of its time band - the band
printed beside every time, `TimeEstimate.band` - at most the time left), and what the enumeration learns on the way
(`Watch`): the candidates that miss it, grouped for the rejection list, the cheapest option within budget that
ignores it (what the deadline costs is the recommendation's cost over that one's), the fastest option (named when
nothing meets it), and the refusal when no candidate within budget meets it - exit 2, naming the nearest feasible
option: the cheapest that meets it over the budget, else the fastest and how long it could take.

The optimizer (planner/optimize.py) asks `Watch.late` once per option x bucket of offers (they share a time) and
skips what is late; every other figure it ranks and counts is its own. Pure: no clock is read here (the caller
passes `now`)."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal

from .errors import InputError
from .models import QUALITY_RANK, DeadlineReport, Recommendation, Rejection, TimeEstimate
from .money import charge, display, unrounded, yuan

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?",
                       re.ASCII | re.IGNORECASE)
_UNITS = (86400, 3600, 60, 1)
MAX_DAYS = 366  # past a year, a typo rather than a deadline
HINT = "pass --deadline as a duration (6h, 90m, 2d, 1h30m) or an ISO date or datetime (2026-12-24, 2026-12-24T18:00)"


@dataclass(frozen=True, slots=True)
class Deadline:
    """A deadline as given (`text`), when it falls (`at`, UTC) and the seconds from planning to it."""

    text: str
    at: dt.datetime
    seconds: float

    @property
    def iso(self) -> str:
        return self.at.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def said(self) -> str:
        """'6h (2026-12-08T18:00:00Z)': how messages name it."""
        return self.iso if self.text.strip() in (self.iso, self.iso[:-1]) else f"{self.text.strip()} ({self.iso})"


def parse(text: str, now: dt.datetime) -> Deadline:
    """`text` as a deadline after `now` (an aware datetime). InputError when it is neither a duration nor an ISO
    date/datetime, in the past, now, or more than a year away."""
    t = text.strip()
    m = _DURATION.fullmatch(t)
    if t and m and any(m.groups()):
        secs = sum(float(g) * u for g, u in zip(m.groups(), _UNITS) if g)
        at = now + dt.timedelta(seconds=min(secs, (MAX_DAYS + 1) * 86400.0))
    else:
        at = _instant(t)
        secs = (at - now).total_seconds()
    if secs <= 0:
        raise InputError(f"--deadline {text!r} is not in the future (now {now.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ})",
                         HINT)
    if secs > MAX_DAYS * 86400:
        raise InputError(f"--deadline {text!r} is more than {MAX_DAYS} days away", HINT)
    return Deadline(text, at.astimezone(dt.UTC), secs)


def _instant(t: str) -> dt.datetime:
    """An ISO date (the end of that day in UTC) or datetime (UTC when it names no zone)."""
    if not t.isascii() or not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?", t, re.IGNORECASE):
        raise InputError(f"--deadline {t!r} is neither a duration nor an ISO date or datetime", HINT)
    try:
        if len(t) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(t) + dt.timedelta(days=1), dt.time(), dt.UTC)
        at = dt.datetime.fromisoformat(t)
    except ValueError:
        raise InputError(f"--deadline {t!r} is not a valid date or time", HINT) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def upper_s(t: TimeEstimate) -> float:
    """The upper end of a time's band: what a deadline is judged on."""
    return t.total_s * (1 + t.band)


def span(seconds: float, up: bool = True) -> str:
    """'24 min', '7.21 h': a span as messages and rejection reasons write it - one number (merged rejection rows
    show it as a range), rounded up (`up`: a time that could be taken) or down (the time left)."""
    r = math.ceil if up else math.floor
    if seconds < 3600:
        return f"{max(r(seconds / 60), 1)} min"
    return f"{r(seconds / 36) / 100:g} h"


def _cheaper(row: tuple) -> tuple:
    """What 'cheapest' means for a row, whatever the plan ranks by: cost, then quality, time, enumeration order."""
    return row[-1], -QUALITY_RANK[row[5].quant], row[8].total_s, row[3]


@dataclass
class Watch:
    """What the enumeration learns about one deadline (rows: planner/optimize.py's tuples)."""

    deadline: Deadline
    budget: Decimal
    late: dict[tuple, list] = field(default_factory=dict)  # (gpu, count, quant, engine, layout) -> [upper s, n, row]
    missed: int = 0  # candidates (offers x market) late
    ignoring: tuple | None = None  # the cheapest row within budget, deadline or not
    fastest: tuple[float, tuple] | None = None  # (upper s, a row) of the fastest option

    def seen(self, row: tuple) -> None:
        """A bucket's cheapest row within budget (on time or not)."""
        if self.ignoring is None or _cheaper(row) < _cheaper(self.ignoring):
            self.ignoring = row

    def is_late(self, group: tuple, t: TimeEstimate, bucket, billed: int, row: Callable[[Decimal, int], tuple]
                ) -> bool:
        """Whether an option x bucket of offers (planner/optimize.py's `_Bucket`, `billed` seconds each) misses the
        deadline; if so it is recorded, with its cheapest offer (`row(cost, position)` makes its row)."""
        up = upper_s(t)
        if up <= self.deadline.seconds:
            return False
        first = bucket.at(0)  # the cheapest price (equal prices: catalog order)
        any_row = row(charge(bucket.price(first), billed), bucket.position(first))
        offers = len(bucket.rows)
        if any_row[-1] <= self.budget:
            self.seen(any_row)
        if self.fastest is None or (up, _cheaper(any_row)) < (self.fastest[0], _cheaper(self.fastest[1])):
            self.fastest = (up, any_row)
        got = self.late.get(group)
        if got is None:
            self.late[group] = [up, offers, any_row]
        else:
            got[1] += offers
            if up < got[0]:
                got[0], got[2] = up, any_row
        self.missed += offers
        return True

    def rejections(self, layout_named: bool) -> list[Rejection]:
        """One per late (GPU, count, quantization, engine, layout): its fastest upper time against the time left."""
        return [Rejection(gpu=g, gpu_count=c, quantization=q, engine=e, offers=k, example=row[4].id,
                          reason=f"misses the deadline{f' as {lay}' if layout_named and c > 1 else ''}: up to "
                                 f"{span(up)} > {span(self.deadline.seconds, up=False)} left")
                for (g, c, q, e, lay), (up, k, row) in self.late.items()]

    def report(self, rec: Recommendation | None, out: Callable[[tuple], Recommendation],
               on_time_over_budget: tuple | None) -> DeadlineReport:
        """The report's `deadline`: what it costs over the cheapest option that ignores it (`rec`: the
        recommendation among those that meet it); when none within budget does, the nearest feasible option -
        `on_time_over_budget` (the cheapest that meets it, over the budget), else the fastest."""
        cheapest = None if self.ignoring is None else out(self.ignoring)
        nearest = None
        if rec is None:
            row = on_time_over_budget or (self.fastest[1] if self.fastest else None)
            nearest = None if row is None else out(row)
        d = self.deadline
        extra = None if rec is None or cheapest is None else unrounded(rec.cost_cny - cheapest.cost_cny)
        return DeadlineReport(deadline=d.text, deadline_at=d.iso, seconds_left=d.seconds, met=rec is not None,
                              extra_cny=extra, cheapest=cheapest, nearest=nearest, late=self.missed)


def enough(cost: Decimal) -> str:
    """'12.41': the least whole-cent budget that pays `cost` (rounded up, never half-even: it must suffice)."""
    return yuan(int((cost * 100).to_integral_value(rounding=ROUND_CEILING)))


def what(r: Recommendation) -> str:
    """'aws:p3.8xlarge (V100-16GB x4 replicas, nf4, hf, spot)': an option as a message names it."""
    rig = f"{r.gpu} x{r.gpu_count}" + (f" {r.layout}" if r.gpu_count > 1 else "")
    offer = f"{r.provider}:{r.instance_type}" + (f"@{r.region}" if r.region else "")
    return f"{offer} ({rig}, {r.quantization}, {r.engine}{', spot' if r.spot else ''})"


def refusal(deadline: Deadline, budget: Decimal, nearest: Recommendation | None) -> InputError:
    """No candidate within budget meets the deadline: the error naming the nearest feasible option - the cheapest
    that meets it over the budget, else (nothing meets it) the fastest and how long it could take."""
    left = f"by the deadline, {deadline.said}"
    if nearest is not None and upper_s(nearest.time) <= deadline.seconds:
        return InputError(f"no option within the {display(budget)} CNY budget finishes {left}: the cheapest that does "
                          f"is {what(nearest)}, up to {span(upper_s(nearest.time))}; it needs "
                          f"{display(nearest.cost_cny)} CNY, over the {display(budget)} CNY budget",
                          f"raise --yuan to {enough(nearest.cost_cny)} or more, or allow a later --deadline")
    if nearest is None:
        return InputError(f"nothing finishes {left}: no candidate can run the plan",
                          "see the rejected table; allow nf4, a larger GPU, or more GPUs per instance")
    up = span(upper_s(nearest.time))
    return InputError(f"nothing finishes {left}: the fastest option, {what(nearest)}, takes up to {up} "
                      f"({display(nearest.cost_cny)} CNY)",
                      f"allow a later --deadline (at least {up} from now), or make the "
                      "plan smaller (fewer samples, smaller images)")

"""What a report covers: the period (`--since`/`--until`, parsed and checked) and the groups a statement can
be cut by, with the UTC calendar buckets (days, ISO weeks from Monday, months) of the time groups."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from planner.errors import InputError

from ..units import iso

GROUPS = ("run", "day", "week", "month", "provider", "gpu", "quant", "task", "plan")
TIME_GROUPS = ("day", "week", "month")
DAY = 86400
FAR = 1e15  # an open period end, as epoch seconds (year ~31 million): beyond any ledger row


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
    """The time group (`by`: day, week or month) of a UTC day number (days since 1970-01-01)."""
    d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    if by == "day":
        return d.isoformat()
    if by == "week":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    return f"{d.year}-{d.month:02d}"

"""Time, injected. Everything that waits, ticks, times out or backs off takes a `Clock`: `SystemClock` in
use, `FakeClock` in tests - its `sleep` advances its time at once, so a run of hours is driven in
milliseconds and no test waits on, or races, the machine's real clock.

`now()` is wall time (epoch seconds: leases, billing, the ledger); `monotonic()` measures intervals
(deadlines, backoff) and never jumps back."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds (UTC)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for deadlines)."""

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a fake clock only advances)."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that moves only when told: `sleep` and `advance` add to it; `now()` and `monotonic()` read it."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.t = float(start)
        self.slept = 0.0

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        step = max(0.0, float(seconds))
        self.t += step
        self.slept += step


SYSTEM = SystemClock()

"""units.duration and units.iso: the one spelling of a span of time and of an instant in every table,
line and message the runner prints."""

from __future__ import annotations

import pytest

from runner.units import duration, iso


@pytest.mark.parametrize("seconds, shown", [
    (None, "-"), (float("nan"), "-"), (float("inf"), "-"), (0, "0 s"), (0.0004, "0 s"),
    (0.0123, "0.0123 s"), (5.234, "5.23 s"), (42.46, "42.5 s"), (59.94, "59.9 s"),
    (59.96, "1 min"), (60, "1 min"), (187, "3 min 07 s"), (3599.4, "59 min 59 s"), (3599.6, "1 h"),
    (3629, "1 h"), (3900, "1 h 05 min"), (90_000, "25 h"),
])
def test_a_duration_reads_at_every_scale(seconds, shown):
    assert duration(seconds) == shown


def test_an_instant_is_iso_8601_utc_to_the_second():
    assert iso(1_800_000_000.4) == "2027-01-15T08:00:00Z"
    assert iso(None) == iso(0) == "-"

"""How figures are written for people, in logs, events and tables alike: CNY amounts rounded for display
only (half-even; 2 decimals, 4 below 1 CNY - the ledger keeps every digit), instants as ISO 8601 UTC
(`iso`), spans of time in s / min / h (`duration`), an estimate's error band (`band`), and text an instance wrote with its control
characters escaped (`printable`): one spelling of each everywhere. And the caps on a number read back from an
instance (`capped_int`, `capped_float`: runner/inbound.py parses result lines with them)."""

from __future__ import annotations

import datetime as dt
import math

from planner.assumptions import band_text
from planner.money import display


def money(amount) -> str:
    """'12.35', '0.0237': a CNY amount for display, by planner/money.py's display rule (half-even; 2 decimals,
    4 below 1 CNY; never a float's tail, never rounded in storage)."""
    return display(amount)


def iso(epoch: float | None) -> str:
    """'2026-11-28T08:42:09Z' (seconds), or '-' for no time."""
    if not epoch:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """'0.0123 s', '42.5 s', '3 min 07 s', '2 h 05 min' (3 significant digits below a minute, then whole
    seconds, then whole minutes from an hour on); '-' for none."""
    if seconds is None or not -1e12 < seconds < 1e12:  # NaN and infinities fail the comparison too
        return "-"
    if abs(seconds) < 0.001:
        return "0 s"
    if seconds < 59.95:  # below what rounds to a whole minute
        return f"{seconds:.3g} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60:02d} s" if s % 60 else "")
    m = round(seconds / 60)
    return f"{m // 60} h" + (f" {m % 60:02d} min" if m % 60 else "")


def band(fraction: float) -> str:
    """'±55%': the +- fraction printed beside an estimate (planner.assumptions.band_text)."""
    return band_text(fraction)


def printable(text: str) -> str:
    """`text` with every control character (C0 but tab, DEL, C1 - ESC and CSI start terminal escapes) and every
    bidirectional override written as a visible escape: what the instance wrote never drives the terminal."""
    return text.translate(_ESCAPES)


_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x09), *range(0x0a, 0x20), *range(0x7f, 0xa0)]}
_ESCAPES.update({c: f"\\u{c:04x}" for c in [*range(0x202a, 0x202f), *range(0x2066, 0x206a), 0x200e, 0x200f, 0x061c]})


NUMBER_CAP = 10**15  # every number in a result line read back is finite and at most this (tokens, bytes, seconds, scores)


def capped_int(s: str) -> int:
    """json.loads' parse_int for what an instance wrote: a number out of range is a ValueError."""
    if len(s) > 17 or abs(n := int(s)) > NUMBER_CAP:
        raise ValueError(f"number {s[:20]} out of range")
    return n


def capped_float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x) or abs(x) > NUMBER_CAP:
        raise ValueError(f"number {s[:20]} out of range")
    return x


def no_constant(s: str):  # NaN, Infinity
    raise ValueError(f"{s} is not a number a result line holds")

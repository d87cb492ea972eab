"""How figures are written for people, in logs, events and tables alike: CNY amounts rounded for display
only (half-even; 2 decimals, 4 below 1 CNY - the ledger keeps every digit) and instants as ISO 8601 UTC."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal


def money(amount) -> str:
    """'12.35', '0.0237': a CNY amount for display (never a float's tail, never rounded in storage)."""
    d = Decimal(amount)
    places = Decimal("0.01") if abs(d) >= 1 or d == 0 else Decimal("0.0001")
    return str(d.quantize(places, ROUND_HALF_EVEN))


def iso(epoch: float | None) -> str:
    """'2026-11-28T08:42:09Z' (seconds), or '-' for no time."""
    if not epoch:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

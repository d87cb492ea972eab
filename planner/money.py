"""Money's rules, each written once here and used by the planner and the runner alike.

- **Billing** (what a stretch of time costs): the seconds billed under an offer's rule - whole increments
  started, at least the minimum (`billed_seconds`) - times the price per hour (`charge`). Never rounded to
  the cent: a planner's estimate, the guard's projection, the ledger's spend row and a report's line are
  all this same product, kept with every digit.
- **Metering** (what a hosted model's call costs): its prompt and completion tokens times the prices per
  million tokens recorded when the run started, converted at that moment's rate (`metered`); exact, like billing.
- **Display** (how an amount is written for people): half-even, 2 decimals, 4 below 1 CNY (`display`;
  `cents` is the same rounding as a whole number of cents, `yuan` writes such a number). Only where an
  amount is shown; nothing computed or stored is rounded.
- **Apportion** (a statement's lines): whole cents per line by largest remainder, so the lines add up to
  the printed total, itself the total rounded half-even to the cent (`apportion`).

Amounts are `Decimal` (the planner, the guard, the ledger) or `fractions.Fraction` (the report's exact sums);
each rule takes either. Pure: the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction

HOUR = 3600
CENT = Decimal("0.01")

# ---------------------------------------------------------------------------------------------- billing


def billed_seconds(seconds: float, increment_s: int, minimum_s: int) -> int:
    """Seconds charged: whole increments started, at least the minimum."""
    return max(minimum_s, math.ceil(seconds / increment_s) * increment_s)


def charge(price_cny_h: Decimal | Fraction, billed_s: int | Fraction) -> Decimal | Fraction:
    """The cost of `billed_s` billed seconds at `price_cny_h` CNY per hour: price x seconds / 3600, never
    rounded to the cent. A Decimal price gives a Decimal (multiplied before it is divided, so it is exact
    wherever the quotient ends within Decimal's 28 digits); a Fraction price gives an exact Fraction."""
    if isinstance(price_cny_h, Decimal):  # tested first: a test against Fraction (an ABC) is slow
        return price_cny_h * billed_s / HOUR
    if isinstance(billed_s, int):  # one normalisation instead of two Fraction operations
        return Fraction(price_cny_h.numerator * billed_s, price_cny_h.denominator * HOUR)
    return price_cny_h * billed_s / HOUR


MILLION = 1_000_000


def metered(prompt_tokens: int, completion_tokens: int, input_per_1m: Decimal, output_per_1m: Decimal,
            cny_per_unit: Decimal = Decimal(1)) -> Decimal:
    """The cost in CNY of one metered call: tokens x the price per million tokens (in the price's currency)
    x the exchange rate recorded with it. Exact (Decimal products; one division by a power of ten)."""
    return (prompt_tokens * input_per_1m + completion_tokens * output_per_1m) * cny_per_unit / MILLION


def unrounded(amount: Decimal) -> Decimal:
    """`amount` with the same value, written with at least two decimals ('200' -> '200.00'; '7.16272' stays):
    how a computed amount is kept, so stored and JSON figures read as money. Never rounds."""
    return amount.quantize(CENT) if amount.as_tuple().exponent > -2 else amount


# ---------------------------------------------------------------------------------------------- display


def _scaled(amount: Decimal | Fraction | int | str, places: int) -> int:
    """`amount` x 10**places rounded half-even to a whole number, exactly (no Decimal context involved)."""
    if isinstance(amount, int):
        return amount * 10**places
    x = amount if isinstance(amount, Fraction) else Fraction(Decimal(amount))
    return round(x * 10**places)  # Python rounds a Fraction exactly, half to even


def _written(n: int, places: int) -> str:
    """A whole number of 10**-places units as a fixed-point string: (1235, 2) -> '12.35', (-40, 2) -> '-0.40'."""
    if not places:
        return str(n)
    whole, frac = divmod(abs(n), 10**places)
    return f"{'-' if n < 0 else ''}{whole}.{frac:0{places}d}"


def display(amount: Decimal | Fraction | int | str, places: int | None = None) -> str:
    """'12.35', '0.0237', '-0.40': a CNY amount for people, rounded half-even - to 2 decimals, or to 4 below
    1 CNY (a sample often costs less than a cent) - or to `places` decimals when given. The one place money
    is rounded for display; what is stored keeps every digit."""
    if places is None:
        x = amount if isinstance(amount, (Fraction, int)) else Decimal(amount)
        places = 2 if abs(x) >= 1 or x == 0 else 4
    return _written(_scaled(amount, places), places)


def cents(amount: Decimal | Fraction | int | str) -> int:
    """The display rule at the cent, as a whole number of cents (half-even): for figures computed from
    printed figures (a variance is the difference of the two amounts shown)."""
    return _scaled(amount, 2)


def yuan(c: int) -> str:
    """'12.35', '-0.40', '0.00': a whole number of cents written with 2 decimals (no rounding left to do)."""
    return _written(c, 2)


# ---------------------------------------------------------------------------------------------- apportion


def apportion(amounts: Iterable[Decimal | Fraction | int]) -> list[int]:
    """Whole cents per line that add up to the total's cents (the total rounded half-even): each line its
    floor, the cents left to the largest remainders (ties: the earlier line). Each line is within a cent
    of its own amount."""
    xs = [a if isinstance(a, Fraction) else Fraction(a) for a in amounts]
    total = cents(sum(xs, Fraction(0)))
    floors = [math.floor(a * 100) for a in xs]
    left = total - sum(floors)
    order = sorted(range(len(xs)), key=lambda i: (-(xs[i] * 100 - floors[i]), i))
    for i in order[:max(0, left)]:
        floors[i] += 1
    for i in order[::-1][:max(0, -left)]:  # only when lines are negative (never for spend)
        floors[i] -= 1
    return floors

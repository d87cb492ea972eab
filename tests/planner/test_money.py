"""planner/money.py's three rules: billing, display, apportion (the runner's use of them: tests/runner)."""

from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from planner.money import apportion, billed_seconds, cents, charge, display, unrounded, yuan


def test_billing_is_exact_and_never_rounded_to_the_cent():
    assert billed_seconds(61.2, 1, 60) == 62 and billed_seconds(1, 3600, 3600) == 3600
    assert charge(Decimal("7.16272"), 62) == Decimal("7.16272") * 62 / 3600  # not 0.13 nor 0.12
    assert charge(Decimal("3.5"), 3600) == Decimal("3.5")
    assert charge(Fraction(716272, 100000), 62) == Fraction(716272 * 62, 100000 * 3600)
    assert charge(Fraction(7), Fraction(1, 2)) == Fraction(7, 7200)


@given(price=st.decimals(min_value=0, max_value=1000, places=4), secs=st.integers(0, 10**7))
def test_the_decimal_and_the_exact_charge_agree(price, secs):
    d, f = charge(price, secs), charge(Fraction(price), secs)
    assert abs(Fraction(d) - f) <= Fraction(1, 10**20) * max(1, f)


def test_display_is_half_even_with_4_places_below_one_yuan():
    assert display(Decimal("12.345")) == "12.34" and display(Decimal("12.355")) == "12.36"
    assert display(Decimal("0.02365")) == "0.0236" and display(Decimal("0.02375")) == "0.0238"
    assert display(0) == "0.00" and display(Decimal("-0.4")) == "-0.4000" and display(-5) == "-5.00"
    assert display(Fraction(1, 3)) == "0.3333" and display(Fraction(1, 200), 2) == "0.00"
    assert display(Fraction(3, 200), 2) == "0.02" and display(Fraction(0), 12) == "0.000000000000"
    assert display("1234567.891") == "1234567.89" and display(Decimal("-0.00001")) == "0.0000"
    assert cents(Fraction(1, 200)) == 0 and cents(Decimal("0.015")) == 2 and yuan(-40) == "-0.40"


def test_unrounded_keeps_the_value_and_writes_cents():
    assert str(unrounded(Decimal("200"))) == "200.00" and str(unrounded(Decimal("7.16272"))) == "7.16272"
    x = Decimal("14.44481866666666666666666667")
    assert unrounded(x) is x and unrounded(Decimal("2E+3")) == 2000


@given(st.lists(st.fractions(min_value=0, max_value=1000, max_denominator=10**6), max_size=30))
def test_apportioned_lines_add_up_to_the_printed_total(xs):
    lines = apportion(xs)
    assert sum(lines) == cents(sum(xs, Fraction(0)))
    assert all(abs(c - x * 100) < 1 for c, x in zip(lines, xs))


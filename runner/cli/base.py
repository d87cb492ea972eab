"""What every command group shares: the root app they register on, and the option parsing they all use -
amounts in CNY, batch size, $BUDGET_HOME, the catalog, the ledger, `--json`, the model names for help. Below
the groups (they import it; it imports none of them)."""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer

from planner import numbers
from planner.errors import InputError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Budget-first planner and runner for evaluating quantized Qwen3-VL on rented GPUs.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document.")]
# the bundled models' short names, for help (the catalog also takes full names and $BUDGET_HOME/catalog/models)
_BUNDLED = Path(__file__).resolve().parents[2] / "planner" / "data" / "models"
MODELS = ", ".join(sorted((p.stem.lower().removesuffix("-instruct").removeprefix("qwen3-vl-")
                           for p in _BUNDLED.glob("*.json")), key=lambda n: (not n[0].isdigit(), len(n), n)))


def budget_home() -> Path:
    return Path(os.environ.get("BUDGET_HOME") or Path.home() / ".gpubudget")


def catalog(fx: list[str] | None = None):
    from planner.catalog import load_catalog, with_fx

    for item in fx or []:  # the rate in ASCII digits (with_fx would read '7_2' and '７.2')
        cur, _, rate = item.partition("=")
        if rate and not numbers.is_number(rate):
            raise InputError(f"--fx {item!r}: the rate is not a number: {numbers.SYNTAX}", "e.g. --fx USD=7.2")
    return with_fx(load_catalog(budget_home() / "catalog"), fx or [])


def open_ledger():
    """$BUDGET_HOME's ledger; the caller closes it."""
    from .. import home

    return home.ledger(budget_home())


MAX_YUAN = Decimal(10) ** 9  # a billion CNY: beyond any budget, and within Decimal's exact arithmetic
EXAMPLE = {"--yuan": "2000", "--max-yuan-hour": "5", "--price-yuan-hour": "3.5"}


def amount(value: str | None, flag: str, zero_ok: bool = False) -> Decimal | None:
    """An amount in CNY from the command line: exact (Decimal), positive (or 0 where `zero_ok`), in range."""
    if value is None:
        return None
    example = f"e.g. {flag} {EXAMPLE.get(flag, '2000')}"
    try:
        if not numbers.is_number(value):
            raise InvalidOperation
        d = Decimal(value.strip())
    except InvalidOperation:
        raise InputError(f"{flag} {value!r} is not a number: {numbers.SYNTAX}", example) from None
    if not d.is_finite() or d < 0 or (d == 0 and not zero_ok):
        raise InputError(f"{flag} must be {'0 or more' if zero_ok else 'a positive amount'} in CNY, got {value}",
                         example)
    if d > MAX_YUAN or d.as_tuple().exponent < -6:
        raise InputError(f"{flag} {value} is out of range: at most {MAX_YUAN:,} CNY, to 6 decimal places", example)
    return d


def batch_size(value: str | None) -> int | str | None:
    if value is None:
        return None
    if value != "auto" and not (numbers.is_int(value) and 0 < int(value) <= numbers.MAX_BATCH):
        raise InputError(f"--batch-size {value!r} is not a positive integer or auto (at most {numbers.MAX_BATCH}; "
                         f"{numbers.SYNTAX})", "e.g. --batch-size 4")
    return value if value == "auto" else int(value)


def count(value: int, flag: str, most: int) -> int:
    """A count from the command line, between 1 and `most` (past it, a typo rather than a workload)."""
    if value < 1:
        raise InputError(f"{flag} must be at least 1, got {value}", f"e.g. {flag} 1")
    if value > most:
        raise InputError(f"{flag} must be at most {most:,}, got {value:,}", f"e.g. {flag} 1")
    return value


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    """Budget-first planner and runner for evaluating quantized Qwen3-VL on rented GPUs."""

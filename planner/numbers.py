"""The one syntax for numbers people type - on the command line and in plan files: ASCII digits, an optional
sign, decimal point and exponent. Python's own parsers accept more (`int("１０")` is 10, `Decimal("1_000")` is
1000, YAML 1.1 reads `0x10`, `1:30` and `1_000` as integers); a typo or a pasted full-width digit becomes a
number nobody meant, so each is refused where it enters. And the bounds past which a count is a typo, not a
workload. Pure: the standard library only."""

from __future__ import annotations

import re

INT = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
# what float() / Decimal() also spell and a value may carry through a JSON round trip (validators bound it)
_SPECIAL = re.compile(r"[+-]?(inf|infinity|nan)", re.IGNORECASE)

MAX_TOKENS = 1_000_000  # tokens of one prompt or one answer: past any context window of the catalog's models
MAX_BATCH = 4096        # requests generated together
MAX_GPUS = 64           # cards of one rig
SYNTAX = "ASCII digits only (no full-width digits, '_', hex or ':')"


def is_int(text: str) -> bool:
    """`text` (surrounding spaces aside) is a whole number in ASCII digits."""
    return INT.fullmatch(text.strip()) is not None


def is_number(text: str) -> bool:
    """`text` (surrounding spaces aside) is a number in ASCII digits: sign, point and exponent allowed."""
    t = text.strip()
    return NUMBER.fullmatch(t) is not None or _SPECIAL.fullmatch(t) is not None

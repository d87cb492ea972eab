"""The one rule for names that become file and directory names (plans, tasks, pools, runs): letters,
digits, '.', '_' and '-', at most 128 characters (a plan's at most 96: its runs' ids add 21), not starting with '.' or '-'. A name is checked where it
enters (the plan, the CLI, the job file), so nothing built from it can leave its folder."""

from __future__ import annotations

import re

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
RULE = "use letters, digits, '.', '_' and '-' (at most 128, not starting with '.' or '-')"
PLAN_MAX = 96  # a run id is the plan's name + 21 characters (-YYYYmmdd-HHMMSS-xxxx)


def is_safe(name: object) -> bool:
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def check(name: object, what: str) -> str:
    """`name` unchanged, or ValueError naming `what` and the rule."""
    if not is_safe(name):
        raise ValueError(f"{what} {name!r} is not allowed: {RULE}")
    return name

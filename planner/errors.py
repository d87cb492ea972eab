"""The project's error tree. Every error the user can cause ends in one line plus a hint.

    GpuBudgetError                 exit 1 - base; the CLI prints `error: ...` + `hint: ...`
    ├── InputError                 exit 2 - the user gave us something we cannot use
    │   ├── PlanError              a plan file: `file:field: problem`
    │   ├── CatalogError           a catalog file or the catalog as a whole
    │   └── ModelConfigError       an unknown model or an unusable config.json
    └── BudgetTooSmall             exit 1 - valid input, but nothing fits the money

Third-party exceptions (pydantic, yaml, csv) are translated where they enter, never shown raw.
"""

from __future__ import annotations


class GpuBudgetError(Exception):
    """Base error: `message` is one line; `hint` tells the user what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(GpuBudgetError):
    exit_code = 2


class PlanError(InputError):
    pass


class CatalogError(InputError):
    pass


class ModelConfigError(InputError):
    pass


class BudgetTooSmall(GpuBudgetError):
    pass


def shown_path(path) -> str:
    """A path as an error line shows it: whole when short, else its start, its end and its length."""
    s = str(path)
    return s if len(s) <= 120 else f"{s[:50]}...{s[-50:]} ({len(s)} characters)"

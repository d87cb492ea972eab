"""`budget` - the thin shell: parse, call the core, render. Only this package imports typer.

This module owns the root app, the option parsing every command group shares (amounts in CNY, batch size,
$BUDGET_HOME, the catalog, the ledger), the plain metavars help shows, and `main`: the one error handler -
our errors print one red line + a hint and exit 1 (2 for bad input); `--debug` shows the traceback. The
commands live one module per group: planning, evals, runs, reports, sweep, ledger, pools, data."""

from __future__ import annotations

import os
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer

from planner.errors import GpuBudgetError, InputError

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
        d = Decimal(value.strip())
    except InvalidOperation:
        raise InputError(f"{flag} {value!r} is not a number", example) from None
    if not d.is_finite() or d < 0 or (d == 0 and not zero_ok):
        raise InputError(f"{flag} must be {'0 or more' if zero_ok else 'a positive amount'} in CNY, got {value}",
                         example)
    if d > MAX_YUAN or d.as_tuple().exponent < -6:
        raise InputError(f"{flag} {value} is out of range: at most {MAX_YUAN:,} CNY, to 6 decimal places", example)
    return d


def batch_size(value: str | None) -> int | str | None:
    if value is None:
        return None
    if value != "auto" and not (value.isdigit() and int(value) > 0):
        raise InputError(f"--batch-size {value!r} is not a positive integer or auto", "e.g. --batch-size 4")
    return value if value == "auto" else int(value)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    """Budget-first planner and runner for evaluating quantized Qwen3-VL on rented GPUs."""


# Each group registers its commands on `app` as it is imported: this order is the order help lists them in.
from . import planning, evals, runs, reports, sweep, ledger, pools, data  # noqa: E402, F401, I001

app.add_typer(planning.prices_app, name="prices")
app.add_typer(planning.model_app, name="model")
app.add_typer(pools.app, name="pool")
app.add_typer(data.app, name="data")
app.add_typer(ledger.app, name="ledger")

# What each option's value is, as help shows it (typer would print <str>, <bool>, <list[str]>).
METAVARS = {"--yuan": "AMOUNT", "--max-yuan-hour": "AMOUNT", "--price-yuan-hour": "AMOUNT", "--plan": "PATH",
            "--model": "NAME", "--model-config": "PATH", "--model-path": "DIR", "--out": "PATH", "--provider": "NAME",
            "--pool": "NAME", "--offer": "ID", "--quant": "Q", "--objective": "cost|time", "--top": "N", "--limit": "N",
            "--fx": "CUR=RATE", "--assume": "NAME=VALUE", "--batch-size": "N|auto", "--device": "auto|cuda|cpu",
            "--max-minutes": "MINUTES", "--gpu": "GPU", "--format": "FORMAT", "--remote-python": "PATH",
            "--since": "DATE", "--until": "DATE", "--by": "GROUP", "--run": "RUN"}


def _plain_metavars(cmd) -> None:
    """Give every option of every command a plain metavar (flags none), and arguments their upper-case name."""
    from typer.core import TyperArgument, TyperOption  # typer vendors its own click: its classes, not click's

    if not getattr(TyperOption, "_gpubudget_plain", False):  # flags (--help too, made per call) show no type
        shown = TyperOption.display_type_rich
        TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)
        TyperOption._gpubudget_plain = True
    for param in getattr(cmd, "params", []):
        if isinstance(param, TyperArgument):  # its name says it (PLAN, RUN); no type column
            param.metavar = param.metavar or (param.name or "value").upper()
            param.display_type_rich = lambda ctx=None: None
        else:
            param.metavar = None if param.is_flag else (param.metavar or METAVARS.get(max(param.opts, key=len), "VALUE"))
    for sub in getattr(cmd, "commands", {}).values():
        _plain_metavars(sub)


def command():
    """The click command tree of `budget`, with plain metavars."""
    cmd = typer.main.get_command(app)
    _plain_metavars(cmd)
    return cmd


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place errors become exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        rv = command().main(args=args, prog_name="budget", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)  # typer returns typer.Exit's code here
    except GpuBudgetError as e:
        if debug:
            raise
        from .. import render

        render.error(e)
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors (exit 2): one error line and a hint, like ours
        if type(e).__name__ == "NoArgsIsHelpError":  # `budget pool` alone: its help
            e.show()
            sys.exit(e.exit_code)
        from .. import render

        ctx = getattr(e, "ctx", None)
        render.error(e.format_message().replace("\n", " "), f"see `{ctx.command_path if ctx else 'budget'} --help`")
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except Exception as e:  # a bug of ours: one line, never locals (they may hold credentials)
        if debug:
            raise
        sys.stderr.write(f"error: internal error: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
                         "hint: rerun with --debug for the traceback and report it\n")
        sys.exit(1)

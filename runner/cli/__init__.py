"""`budget` - the thin shell: parse, call the core, render. Only this package imports typer.

This module puts the groups together on the root app (base.py: the app and the option parsing every group
shares), the plain metavars help shows, and `main`: the one error handler - our errors print one red line +
a hint and exit 1 (2 for bad input); `--debug` shows the traceback. The commands live one module per group:
planning, evals, runs, reports, sweep, ledger, pools, data, colab."""

from __future__ import annotations

import errno
import sys

import typer

from planner import numbers
from planner.errors import GpuBudgetError, InputError, shown_path

# Each group registers its commands on `app` as it is imported: this order is the order help lists them in.
from . import planning, evals, runs, reports, sweep, ledger, pools, data, colab  # noqa: F401, I001
from .base import app

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
            "--since": "DATE", "--until": "DATE", "--by": "GROUP", "--run": "RUN", "--worker-from": "PATH",
            "--drive": "FOLDER"}


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
            metavar = param.metavar or METAVARS.get(max(param.opts, key=len), "VALUE")
            param.metavar = None if param.is_flag else metavar
    for sub in getattr(cmd, "commands", {}).values():
        _plain_metavars(sub)


def _ascii_numbers(cmd) -> None:
    """Every int and float option takes ASCII digits only (planner/numbers.py): typer's own parsing reads
    `1_000` as 1000."""
    for param in getattr(cmd, "params", []):
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        if annotation in (int, float):
            param.process_value = _checked(param, annotation, param.process_value)
    for sub in getattr(cmd, "commands", {}).values():
        _ascii_numbers(sub)


def _checked(param, annotation, process):
    def process_value(ctx, value):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, str) and not (numbers.is_int(v) if annotation is int else numbers.is_number(v)):
                flag = max(param.opts, key=len)
                raise InputError(f"{flag} {v!r} is not {'a whole number' if annotation is int else 'a number'}: "
                                 f"{numbers.SYNTAX}", f"e.g. {flag} 1")
        return process(ctx, value)
    return process_value


def command():
    """The click command tree of `budget`, with plain metavars and ASCII numbers."""
    cmd = typer.main.get_command(app)
    _plain_metavars(cmd)
    _ascii_numbers(cmd)
    return cmd


def _os_error(e: OSError) -> GpuBudgetError | None:
    """The operating system's refusals a user can act on, as our errors; None: a bug of ours."""
    if e.errno == errno.ENOSPC:
        where = shown_path(e.filename) if e.filename else "the disk of $BUDGET_HOME"
        return GpuBudgetError(f"no space left on the device writing {where}; nothing already written was "
                              "removed: finished results and the ledger are kept",
                              "free space on that disk (df -h shows it), then run the command again "
                              "(a run goes on with `budget resume RUN`)")
    if e.errno == errno.ENAMETOOLONG:
        return InputError(f"path too long for this system: {shown_path(e.filename or '')}",
                          "use a shorter path (at most 255 characters per name, 4096 in all)")
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place errors become exit codes."""
    args = sys.argv[1:] if argv is None else argv
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    if debug:  # accepted anywhere (the hint says "rerun with --debug"); it is the root's option
        args = ["--debug", *[a for a in args[:end] if a != "--debug"], *args[end:]]
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
    except OSError as e:  # a full disk, a path too long: one clear error, not an internal one
        ours = _os_error(e)
        if debug:
            raise
        if ours is None:
            _internal(e)
        from .. import render

        render.error(ours)
        sys.exit(ours.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except Exception as e:  # a bug of ours
        if debug:
            raise
        _internal(e)


def _internal(e: Exception) -> None:
    """A bug of ours: one line, never locals (they may hold credentials); --debug shows the traceback."""
    first = str(e).splitlines()[0] if str(e) else ""
    sys.stderr.write(f"error: internal error: {e.__class__.__name__}: {first[:300]}\n"
                     "hint: rerun with --debug for the traceback and report it\n")
    sys.exit(1)

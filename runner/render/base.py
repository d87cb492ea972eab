"""What every printer shares: the two consoles (tables to stdout, warnings and errors to stderr), styled
text, the table style, the one-line error, `--json` documents, byte sizes, billing rules and the live
lines' time columns.

The consoles are made by runner/render/__init__.py, again on `importlib.reload(runner.render)` (a console
reads COLUMNS when it is made), so printers reach them as `base.out` / `base.err`, never by a name bound at
import."""

from __future__ import annotations

import os
import sys

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.progress import ProgressColumn
from rich.table import Table as _Table
from rich.text import Text

from planner.errors import GpuBudgetError
from planner.models import GIB

from ..units import duration

out: Console
err: Console


def consoles() -> tuple[Console, Console]:
    """(stdout's, stderr's). Piped output gets room for the tables; a terminal keeps its own width.
    markup off: names, paths and hints are printed as they are ('gpubudget[cloud]' stays); styles via styled()."""
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
    return (Console(highlight=False, markup=False, width=wide),
            Console(stderr=True, highlight=False, markup=False))


def styled(*parts) -> Text:
    """Styled text: plain strings as they are, (text, style) pairs styled."""
    return Text.assemble(*parts)


def Table(**kw) -> _Table:
    return _Table(box=box.SIMPLE_HEAD, pad_edge=False, **kw)


def add_columns(t: _Table, names, *, whole=(), right=()) -> None:
    """Columns for `names`: those in `whole` (ids, money) are never wrapped (see show); those in `right` are
    right-aligned."""
    for name in names:
        t.add_column(name, justify="right" if name in right else "left", no_wrap=name in whole)


def show(con: Console, t: _Table) -> None:
    """Print table `t` on `con` when it fits without breaking a word - ids and amounts stay whole; on a
    narrower terminal (80 columns) each row is a block instead: its first cell on a line of its own, then
    every other column as `header value`, wrapped between them."""
    if _least_width(t) <= con.width:
        con.print(t)
        return
    if t.title:
        con.print(styled((str(t.title), "italic")))
    cells = [[_plain(c) for c in col._cells] for col in t.columns]
    headers = [_plain(col.header) for col in t.columns]
    for row in zip(*cells):
        con.print(styled((row[0], "bold")))
        con.print(Padding(", ".join(f"{h} {v}" for h, v in zip(headers[1:], row[1:]) if v), (0, 0, 0, 2)))


def _least_width(t: _Table) -> int:
    """The narrowest `t` prints without breaking a word: each column as wide as its longest word (its
    longest cell where it does not wrap), plus padding and rules."""
    need = t._extra_width
    for i, col in enumerate(t.columns):
        texts = [_plain(col.header), *(_plain(c) for c in col._cells)]
        longest = (max(map(len, line.split(" ")), default=0) for x in texts for line in x.splitlines() or [""]) \
            if not col.no_wrap else (len(line) for x in texts for line in x.splitlines() or [""])
        need += max(longest, default=0) + t._get_padding_width(i)
    return need


def _plain(cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def json_doc(model) -> None:
    """Exactly one JSON document on stdout (keys by alias: a field may not be named like a pydantic method)."""
    sys.stdout.write(model.model_dump_json(indent=2, by_alias=True) + "\n")


def error(e: GpuBudgetError | str, hint: str = "") -> None:
    msg = e.message if isinstance(e, GpuBudgetError) else e
    hint = e.hint if isinstance(e, GpuBudgetError) else hint
    err.print(styled(("error:", "bold red"), f" {msg}"), soft_wrap=True)
    if hint:
        err.print(styled(("hint:", "yellow"), f" {hint}"), soft_wrap=True)


def gib(b: int) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB / 10 or b == 0 else f"{b / 1024**2:.1f} MiB"


def billing(increment_s: int, minimum_s: int) -> str:
    """'1 s, at least 1 min': how an offer bills (its increment and, when longer, its minimum)."""
    return duration(increment_s) + (f", at least {duration(minimum_s)}" if minimum_s > increment_s else "")


class Clock(ProgressColumn):
    """A live line's elapsed (or remaining) time, spelled as everywhere else; whole seconds, so it does not
    flicker at each refresh."""

    def __init__(self, remaining: bool = False) -> None:
        super().__init__()
        self.remaining = remaining

    def render(self, task) -> Text:
        s = task.time_remaining if self.remaining else (task.finished_time if task.finished else task.elapsed)
        return Text(duration(None if s is None else round(s)), style="progress.elapsed")


class Bar:
    """A progress line on stderr (a context manager)."""

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

"""`budget report`: spend statements from the ledger (per instance, or grouped --by, over a period) and the
cost of quality of runs (--run, --plan), as a table, CSV, JSON or one self-contained HTML file."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from planner.errors import InputError

from .base import app, budget_home, open_ledger


@app.command("report")
def report_cmd(
    pool: Annotated[str | None, typer.Option("--pool", help="Only this pool (default: every pool).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this UTC date or time (YYYY-MM-DD[THH:MM]).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="To this UTC date (inclusive) or time (exclusive).")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Group: run, day, week, month, provider, gpu, quant, task, plan.")] = None,
    run: Annotated[list[str] | None, typer.Option("--run", help="Cost of quality of this run (repeatable).")] = None,
    plan: Annotated[str | None, typer.Option("--plan", metavar="NAME",
                                             help="Cost of quality across the runs of this plan (its name).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or html.")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """Spend statements from the ledger (per instance, or grouped --by) and the cost of quality (--run, --plan)."""
    from .. import render
    from ..money import documents, quality, report

    fmt = "json" if as_json else fmt

    if fmt not in documents.FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(documents.FORMATS)}", "e.g. --format csv")
    if by is not None and by not in report.GROUPS:
        raise InputError(f"--by {by!r} is not one of {', '.join(report.GROUPS)}", "e.g. --by day")
    if (run or plan) and (by or since or until or pool):
        raise InputError("--run/--plan report the cost of quality of whole runs; --by, --since, --until and --pool "
                         "belong to the statement", "leave out one or the other")
    period = report.Period(report.parse_when(since, "--since"), report.parse_when(until, "--until", end=True))
    report.check_period(period)
    documents.check_out(out)
    if not (budget_home() / "ledger.db").exists() and not (budget_home() / "runs").is_dir():
        raise InputError(f"no ledger at {budget_home() / 'ledger.db'}: nothing has been run with this BUDGET_HOME",
                         f"{_first_run()}, or set BUDGET_HOME")
    now = time.time()
    led = open_ledger()
    try:
        if not (run or plan or pool) and not led.runs(limit=1):
            raise InputError("the ledger holds no runs yet: nothing to report", f"{_first_run()}, then `budget report`")
        if run or plan:
            doc = quality.cost_of_quality(led, runs=run, plan=plan, now=now)
            extra, burn = doc, []
        else:
            doc = report.statement(led, pool=pool, period=period, by=by, now=now)
            extra, burn = None, []
            if fmt == "html":
                ids = sorted({c["run"] for c in doc.get("charges", [])})
                extra = quality.cost_of_quality(led, runs=ids, now=now) if ids and not by else None
                burn = [(t, float(v)) for t, v in report.burn_down(led, period, None if pool is None else [pool], now)]
    finally:
        led.close()
    if fmt == "table":
        text = render.report(doc, to_string=out is not None)
        data = text.encode() if text is not None else None
    elif fmt == "csv":
        data = documents.to_csv(doc)
    elif fmt == "json":
        data = documents.to_json(doc)
    else:
        data = documents.to_html(doc, extra, burn)
    if data is None:
        return
    if out is None:
        sys.stdout.write(data.decode("utf-8"))
    else:
        documents.write(out, data)
        render.wrote(out, fmt)


def _first_run() -> str:
    """How to start a first run on this install: the smoke plan runs on this machine, with the worker extra."""
    from ..run.prepare import worker_missing

    run = "start one with `budget run plans/smoke.yaml --yuan 5`"
    if worker_missing():
        return 'install the worker extra first (pip install "gpubudget[worker]"), then ' + run
    return run

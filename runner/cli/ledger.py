"""`budget ledger`: the spend ledger itself - is it whole (`check`), and rebuilding it from the run
directories' money journals (`rebuild`)."""

from __future__ import annotations

from typing import Annotated

import typer

from .base import JsonOpt, budget_home

app = typer.Typer(no_args_is_help=True, help="The spend ledger itself: check it, rebuild it from run directories.")


@app.command("check")
def ledger_check(as_json: JsonOpt = False) -> None:
    """Is the ledger whole? SQLite's integrity check, runs on disk it lacks, instances it does not count."""
    from .. import outputs, render
    from ..money import recovery

    doc = recovery.check(budget_home())
    render.json_doc(outputs.LedgerCheck.model_validate(doc)) if as_json else render.ledger_check(doc)
    if not doc["ok"]:
        raise typer.Exit(1)


@app.command("rebuild")
def ledger_rebuild(yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
                   as_json: JsonOpt = False) -> None:
    """Move ledger.db aside (kept) and rebuild it from the run directories' money journals."""
    from .. import outputs, render
    from ..money import recovery

    if not yes and not typer.confirm(f"move {budget_home() / 'ledger.db'} aside and rebuild it from "
                                     f"{budget_home() / 'runs'}?", default=False):
        raise typer.Exit(1)
    doc = recovery.rebuild(budget_home())
    render.json_doc(outputs.LedgerRebuild.model_validate(doc)) if as_json else render.ledger_rebuilt(doc)

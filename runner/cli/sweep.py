"""`budget sweep`: resources tagged as ours that no live run owns, priced per hour; --yes deletes them."""

from __future__ import annotations

from typing import Annotated

import typer

from .base import JsonOpt, app, budget_home, catalog, open_ledger


@app.command("sweep")
def sweep_cmd(
    region: Annotated[list[str] | None, typer.Option("--region", help="AWS region to look in (repeatable; default: the "
                                                     "configured one and every region the ledger ran in).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Delete the leaks (default: only list them).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Resources tagged as ours that no live run owns (instances, volumes, security groups, key pairs, S3
    result prefixes, local workers), with their cost per hour; --yes deletes them."""
    from .. import outputs, render, sweep

    led = open_ledger()
    try:
        doc = sweep.sweep(budget_home(), led, catalog(), region, yes)
    finally:
        led.close()
    render.json_doc(outputs.Sweep.model_validate(doc)) if as_json else render.swept(doc)
    if doc["unchecked"]:  # a place we could not look may hold leaks: not a clean bill
        raise typer.Exit(1)

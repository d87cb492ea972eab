"""`budget pool`: named caps in CNY that runs draw on - list, show, create, and change a cap (every change
an event in the ledger)."""

from __future__ import annotations

from typing import Annotated

import typer

from .base import JsonOpt, amount, open_ledger

app = typer.Typer(no_args_is_help=True, help="Budget pools: named caps in CNY that runs draw on.")


def _pools(fn, *args):
    """`fn(ledger, *args)` on $BUDGET_HOME's ledger, closed after."""
    led = open_ledger()
    try:
        return fn(led, *args)
    finally:
        led.close()


def _detail(doc: dict, as_json: bool) -> None:
    from .. import outputs, render

    render.json_doc(outputs.PoolDetail.model_validate(doc)) if as_json else render.pool_detail(doc)


@app.command("list")
def pool_list(as_json: JsonOpt = False) -> None:
    """Every pool: cap, spent, committed by live instances, left (CNY), runs."""
    from .. import outputs, render
    from ..money import pools

    rows = _pools(pools.listing)
    render.json_doc(outputs.PoolList(pools=rows)) if as_json else render.pools_table(rows)


@app.command("show")
def pool_show(name: Annotated[str, typer.Argument(help="Pool name.", metavar="NAME")], as_json: JsonOpt = False) -> None:
    """One pool: its money, its runs and every change of its cap."""
    from ..money import pools

    _detail(_pools(pools.show, name), as_json)


@app.command("create")
def pool_create(
    name: Annotated[str, typer.Argument(help="Pool name (letters, digits, . _ -).", metavar="NAME")],
    yuan: Annotated[str, typer.Option("--yuan", help="The pool's cap in CNY.", metavar="AMOUNT")],
    as_json: JsonOpt = False,
) -> None:
    """Create a pool with a cap in CNY (recorded as an event in the ledger)."""
    from planner import names
    from planner.errors import InputError

    from ..money import pools

    cap = amount(yuan, "--yuan")
    if not names.is_safe(name):  # said here: the money layer's hint names `budget run`'s --pool
        raise InputError(f"pool name {name!r} is not allowed: {names.RULE}",
                         f"e.g. `budget pool create team-eval --yuan {cap}`")
    _detail(_pools(pools.create, name, cap), as_json)


@app.command("set-cap")
def pool_set_cap(
    name: Annotated[str, typer.Argument(help="Pool name.", metavar="NAME")],
    yuan: Annotated[str, typer.Argument(help="The new cap in CNY (0 stops every run of the pool).", metavar="AMOUNT")],
    as_json: JsonOpt = False,
) -> None:
    """Change a pool's cap; live runs obey it at their next guard tick (recorded as an event)."""
    from ..money import pools

    _detail(_pools(pools.set_cap, name, amount(yuan, "AMOUNT", zero_ok=True)), as_json)

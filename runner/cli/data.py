"""`budget data`: a plan's own data - template manifests for the datasets only the user has."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="A plan's own data: template manifests for what only you have.")


@app.command("init")
def data_init(plan: Annotated[Path, typer.Argument(help="Plan YAML whose local datasets need manifests.")]) -> None:
    """Write a template manifest (with the fields its task kind expects) for every local dataset of the plan
    that has none; a plan shipped with gpubudget is first copied into this directory."""
    import shutil

    from planner.plans import bundled_plan, load_plan, plan_file

    from .. import plandata, render

    path = plan_file(plan)
    ev = load_plan(path)
    copied = None
    if path.resolve().parent == bundled_plan().resolve().parent:  # never write into the installed package
        copied = Path.cwd() / path.name
        if not copied.exists():
            shutil.copyfile(path, copied)
        path = copied
    render.data_init(plandata.init(ev, path), path, copied)

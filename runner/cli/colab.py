"""The free Colab path: `colab` (a self-contained notebook that runs a plan's job on Colab's free T4 -
runner/colab.py) and `import` (the results zip it makes, recorded as a 0 CNY run - runner/imported.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .base import app, budget_home, catalog


@app.command("colab")
def colab_cmd(
    plan: Annotated[Path, typer.Argument(help="Plan YAML, e.g. plans/smoke.yaml.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The notebook to write (default: PLAN-colab.ipynb "
                                             "here).")] = None,
    worker_from: Annotated[Path | None, typer.Option("--worker-from", help="Install the worker from this wheel "
                                                     "(carried in the notebook) or source tree (local Jupyter, "
                                                     "tests) instead of the package index.")] = None,
    quant: Annotated[str | None, typer.Option("--quant", help="Quantization (default: the planner's choice for "
                                              "Colab's free T4).")] = None,
    drive: Annotated[str | None, typer.Option("--drive", help="Also copy the results zip to this folder of your "
                                              "Google Drive (MyDrive/FOLDER).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N samples per task.")] = None,
) -> None:
    """Write a notebook that runs the plan on Colab's free T4 (you run it; nothing is spent); `budget import`
    records its results."""
    from planner.plans import load_plan, plan_file

    from .. import colab
    from ..render import colab as shown

    ev, cat = load_plan(plan), catalog()
    nb, job, rec = colab.build(ev, plan_file(plan), cat, budget_home(), quant=quant.lower() if quant else None,
                               limit=limit, worker_from=worker_from, drive=drive)
    dest = out if out is not None else Path(f"{ev.name}-colab.ipynb")
    colab.write(nb, dest)
    shown.notebook(dest, job, rec, str(plan), cat.terms[colab.PROVIDER])


@app.command("import")
def import_cmd(
    results: Annotated[Path, typer.Argument(help="The results zip a `budget colab` notebook made.")],
    plan: Annotated[Path | None, typer.Option("--plan", help="The plan YAML it ran (checked against the zip's job; "
                                              "default: the plan named in its run id).")] = None,
) -> None:
    """Record a Colab notebook's results as a 0 CNY run (provider colab): `budget report` counts it."""
    from .. import imported
    from ..render import colab as shown

    shown.imported_run(imported.run(results, plan, budget_home(), catalog()))

"""`budget eval`: a plan's evaluation on this machine - no provider, no ledger, no money; rerun to resume."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from planner.errors import InputError

from .base import JsonOpt, app, batch_size, budget_home, catalog


@app.command("eval")
def eval_cmd(
    plan: Annotated[Path, typer.Argument(help="Plan YAML, e.g. plans/smoke.yaml.")],
    model_path: Annotated[Path | None, typer.Option("--model-path", help="Load the model from this directory.")] = None,
    quant: Annotated[str | None, typer.Option("--quant", help="nf4, int8, fp16, bf16 or fp32 (default: the plan's first).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory (default: $BUDGET_HOME/evals/PLAN-QUANT).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N samples per task.")] = None,
    batch: Annotated[str | None, typer.Option("--batch-size",
                                              help="Samples per batch, or auto (default: the plan's).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cuda or cpu.")] = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard earlier results in --out instead of resuming.")] = False,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", min=0, help="Stop cleanly after this long (resumable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a plan's evaluation on this machine (no provider, no ledger); rerun to resume."""
    from planner.plans import load_plan, plan_file

    from .. import evaluate, jobs, outputs, render
    from ..run.prepare import WORKER_HINT, worker_missing

    lib = worker_missing()
    if lib:  # before anything is written: the worker runs here, in this Python
        raise InputError(f"budget eval runs the worker on this machine: it needs the worker extra ({lib} is not "
                         "installed)", WORKER_HINT)
    ev = load_plan(plan)
    q = (quant or ev.quantizations[0]).lower()
    if device not in ("auto", "cuda", "cpu"):
        raise InputError(f"--device {device!r} is not auto, cuda or cpu", "e.g. --device cpu")
    bs = batch_size(batch)
    deadline = None if max_minutes is None else dt.datetime.now(dt.UTC) + dt.timedelta(minutes=max_minutes)
    job = jobs.build(ev, plan_file(plan), catalog(), budget_home(), quantization=q, model_path=model_path,
                     limit=limit, batch_size=bs, device=device, deadline=deadline)
    out_dir = out or budget_home() / "evals" / f"{ev.name}-{q}"
    evaluate.prepare(out_dir, job, fresh)
    with render.EvalProgress() as bar:
        outcome = evaluate.run(out_dir, bar.update)
    summary = outcome.summary
    if any(t.get("done") for t in (summary.get("tasks") or {}).values()):
        if as_json:
            render.json_doc(outputs.EvalSummary.model_validate(summary))
        else:
            render.eval_summary(summary, str(out_dir))
    evaluate.check(outcome)

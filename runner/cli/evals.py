"""`budget eval`: a plan's evaluation on this machine - no provider, no ledger, no money; rerun to resume.
`budget compare`: the plan's quality tasks asked of a hosted reference model from this machine, metered in the
ledger under a hard cap (runner/compare.py); rerun to resume."""

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
    engine: Annotated[str, typer.Option("--engine", help="hf (in this process), vllm, sglang or transformers (a server "
                                        "the worker starts here), or server (one already running: --base-url).")] = "hf",
    base_url: Annotated[str | None, typer.Option("--base-url", help="--engine server: its OpenAI-compatible URL, "
                                                 "e.g. http://127.0.0.1:8000/v1.")] = None,
    served_model: Annotated[str | None, typer.Option("--served-model", help="--engine server: the model name it "
                                                     "answers to (default: the plan's model).")] = None,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="--engine server: the environment variable "
                                                    "holding its API key (the key is never written anywhere).")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, max=1024,
                                                    help="Server engines: requests in flight (default 8).")] = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=64, help="Worker processes, one per GPU (pinned "
                                          "with CUDA_VISIBLE_DEVICES), on disjoint shards merged into one results "
                                          "folder; on CPU, processes sharing the cores.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Run a plan's evaluation on this machine (no provider, no ledger); rerun to resume."""
    from planner.plans import load_plan, plan_file

    from .. import engines, evaluate, jobs, outputs, render
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
    spec = engines.engine_of(engine, base_url, served_model, api_key_env, concurrency, here=True)
    job = jobs.build(ev, plan_file(plan), catalog(), budget_home(), quantization=q, model_path=model_path,
                     limit=limit, batch_size=bs, device=device, deadline=deadline, engine=spec)
    if replicas > 1:
        job["replicas"] = replicas
    out_dir = out or budget_home() / "evals" / (f"{ev.name}-{q}" if engine == "hf" else f"{ev.name}-{q}-{engine}")
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


@app.command("compare")
def compare_cmd(
    plan: Annotated[Path, typer.Argument(help="Plan YAML whose quality tasks the reference answers.")],
    reference: Annotated[str, typer.Option("--reference", help="The hosted model's API name, e.g. gpt-4o, "
                                           "qwen-vl-max (priced in planner/data/api_models.csv).")],
    base_url: Annotated[str, typer.Option("--base-url", help="Its OpenAI-compatible URL (DashScope: "
                                          "https://dashscope.aliyuncs.com/compatible-mode/v1).")] = "https://api.openai.com/v1",
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="The environment variable holding its key "
                                                    "(read when calling, never written), e.g. OPENAI_API_KEY.")] = None,
    cases: Annotated[int, typer.Option("--cases", min=1, max=100_000, help="The first N cases of each task.")] = 5,
    yuan: Annotated[str | None, typer.Option("--yuan", help="Hard cap in CNY (default: the plan's budget_yuan; a "
                                             "rerun keeps its run's cap).")] = None,
    pool: Annotated[str, typer.Option("--pool", help="Budget pool the run draws on (made with the cap if new).")] = "default",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64, help="Calls in flight.")] = 4,
    free: Annotated[bool, typer.Option("--free", help="The endpoint charges nothing (a local vLLM): no price "
                                       "needed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask a hosted reference model the plan's quality tasks (first N cases each), metered under a hard cap."""
    from .. import compare, outputs, render
    from ..run.prepare import WORKER_HINT, worker_missing
    from .base import amount

    lib = worker_missing()
    if lib:
        raise InputError(f"budget compare runs the worker's task loop here: it needs the worker extra ({lib} is not "
                         "installed)", WORKER_HINT)
    from planner import names

    if not names.is_safe(pool):
        raise InputError(f"--pool {pool!r} is not allowed: {names.RULE}", "e.g. --pool default")
    ask = compare.Ask(plan=plan, reference=reference, base_url=base_url, api_key_env=api_key_env, cases=cases,
                      yuan=amount(yuan, "--yuan"), pool=pool, concurrency=concurrency, free=free)
    outcome = compare.run(ask, budget_home(), catalog())
    if as_json:
        render.json_doc(outputs.CompareSummary.from_outcome(outcome))
    else:
        render.compare_summary(outcome)
    if outcome.state != "done":
        raise compare.CompareFailed(
            f"run {outcome.run_id} {outcome.state} ({outcome.reason}{': ' + outcome.why if outcome.why else ''}); "
            "its finished cases are kept",
            f"rerun the same command to resume{' with a higher --yuan' if outcome.reason == 'budget' else ''}")

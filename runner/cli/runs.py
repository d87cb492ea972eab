"""The run commands - where money is spent: `run` (provision, push the worker, evaluate against the cap,
tear down), `resume` (take over a run whose controller died), the hidden `drive` (a detached run's
controller), `status`, `logs` and `stop`. runner.run is imported where it is used: `budget plan` never
pays for loading the run machinery."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .base import JsonOpt, amount, app, batch_size, budget_home, catalog


@app.command("run")
def run_cmd(
    plan: Annotated[Path, typer.Argument(help="Plan YAML, e.g. plans/smoke.yaml.")],
    yuan: Annotated[str | None, typer.Option("--yuan", help="This run's cap in CNY (default: the plan's budget_yuan).")] = None,
    pool: Annotated[str, typer.Option("--pool", help="Budget pool the run draws on (made with the cap if new).")] = "default",
    provider: Annotated[str, typer.Option("--provider", help="local (this machine, simulated price), aws, ssh, or ray "
                                          "(tasks on a Ray cluster).")] = "local",
    offer: Annotated[str | None, typer.Option("--offer", help="Offer id (see `budget prices list`; default: the planner's choice).")] = None,
    spot: Annotated[bool, typer.Option("--spot", help="Spot prices only (aws).")] = False,
    quant: Annotated[str | None, typer.Option("--quant", help="Quantization (default: the planner's choice).")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="hf, vllm, sglang or transformers (default: the "
                                               "planner's choice; hf on this machine).")] = None,
    price_yuan_hour: Annotated[str | None, typer.Option("--price-yuan-hour", help="Bill at this CNY/h (local, ssh; "
                                                        "ray: per GPU-hour of each task).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N samples per task.")] = None,
    batch: Annotated[str | None, typer.Option("--batch-size", help="Samples per batch, or auto.")] = None,
    model_path: Annotated[Path | None, typer.Option("--model-path", help="Push this saved model instead of downloading.")] = None,
    remote_python: Annotated[str | None, typer.Option("--remote-python", help="Python on the instance that is ready (skips bootstrap).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Return once the run is written (a controller drives it in the background); watch with status/logs.")] = False,
    unattended: Annotated[bool, typer.Option("--unattended", help="aws: once the worker runs, the instance holds "
                                             "its budget deadline, uploads to S3 and powers off alone; no "
                                             "controller (`budget status RUN` collects).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before spending.")] = False,
    address: Annotated[str | None, typer.Option("--address", help="ray: the cluster (ray://HEAD:10001, auto, "
                                                "HOST:PORT; default: a Ray started here for the run).")] = None,
    replicas: Annotated[int | None, typer.Option("--replicas", min=1, max=4096, help="ray: at most N tasks at once "
                                                 "(default: the cluster's GPUs, or CPUs for CPU tasks).")] = None,
    shards: Annotated[int | None, typer.Option("--shards", min=1, max=4096, help="ray: split the samples in K "
                                               "shards, one task each (default: 3 per task slot).")] = None,
    per_task: Annotated[str | None, typer.Option("--per-task", help="ray: what a task holds, gpu or cpu (default: "
                                                 "gpu where the cluster has GPUs).")] = None,
) -> None:
    """Provision, push the worker, evaluate, track spend against the cap, tear down."""
    from planner.plans import load_plan, plan_file

    from .. import engines, render
    from ..cloud import registry
    from ..run import commands, prepare

    ray_only = {"--address": address, "--replicas": replicas, "--shards": shards, "--per-task": per_task}
    if provider in registry.RUNNERS:
        _refuse({"--spot": spot, "--unattended": unattended, "--remote-python": remote_python},
                f"not for --provider {provider}", "leave it out: the run's tasks run where the cluster puts them, "
                "driven from this machine (a dead controller's tasks stop by their leases; `budget resume RUN` takes "
                "it over, `budget stop RUN` settles it)")
        from ..scaleout import launch

        if per_task not in (None, "gpu", "cpu"):
            _refuse({"--per-task": per_task}, f"{per_task!r}, not gpu or cpu (what one task holds)",
                    "pass --per-task gpu or --per-task cpu")
        ask = launch.Ask(plan=plan, address=address, yuan=amount(yuan, "--yuan"), pool=pool,
                         price_yuan_h=amount(price_yuan_hour, "--price-yuan-hour"), offer_id=offer, quant=quant,
                         engine=engines.engine_of(engine, here=False)["kind"] if engine else None, limit=limit,
                         batch_size=batch_size(batch), model_path=model_path, replicas=replicas, shards=shards,
                         per_task=per_task)
        _run_on_cluster(ask, yes, detach)
        return
    _refuse(ray_only, "only for --provider ray (how a Ray cluster runs the plan's shards)",
            "add --provider ray, or leave them out")

    if unattended and detach:  # an unattended run has no controller to put in the background
        from planner.errors import InputError

        raise InputError("--detach does not apply to --unattended: an unattended run has no controller here, it "
                         "returns once the worker runs", "leave out --detach (or --unattended, for a background "
                         "controller on this machine)")
    ev = load_plan(plan)
    ask = prepare.Ask(yuan=amount(yuan, "--yuan"), pool=pool, offer_id=offer, spot=spot, quant=quant, limit=limit,
                      batch_size=batch_size(batch), price_yuan_h=amount(price_yuan_hour, "--price-yuan-hour"),
                      model_path=model_path, remote_python=remote_python, unattended=unattended,
                      engine=engines.engine_of(engine, here=False)["kind"] if engine else None)
    prepare.prerequisites(provider, budget_home(), ev, plan_file(plan), ask)  # all of them, before anything
    prov = prepare.provider(provider, budget_home(), ask)
    p = prepare.prepare(ev, plan_file(plan), catalog(), budget_home(), prov, ask)
    render.run_estimate(p)
    if not yes and not _confirm("Launch and start spending?"):
        from ..errors import RunError

        raise RunError("nothing launched, nothing spent", "run it again and answer y, or pass --yes")
    commands.create(p, budget_home())
    if unattended:  # set up here, with the live line; then the instance is on its own
        with render.RunProgress() as bar:
            state = commands.drive(p.request.run_id, budget_home(), bar.update)
        if state != "running":
            commands.check(p.request.run_id, budget_home(), state)
        render.unattended(p.request.run_id)
        return
    if detach:
        pid = commands.detach(p.request.run_id, budget_home())
        render.detached(p.request.run_id, pid)
        return
    _drive(p.request.run_id, resume=False)


def _refuse(given: dict, said: str, hint: str) -> None:
    """One error for the options given where they do not apply (exit 2): "FLAGS <said>"."""
    from planner.errors import InputError

    flags = [f for f, v in given.items() if v not in (None, False)]
    if flags:
        raise InputError(f"{', '.join(flags)} {'is' if len(flags) == 1 else 'are'} {said}", hint)


def _run_on_cluster(ask, yes: bool, detach: bool) -> None:
    """`budget run --provider ray`: checked and connected, shown, asked, written, driven here (or by a controller in
    the background: `--detach`), printed."""
    from .. import render
    from ..errors import RunError
    from ..render.runs import cluster_estimate
    from ..run import commands
    from ..scaleout import launch

    plan, cluster = launch.prepare(ask, budget_home(), catalog())
    try:
        cluster_estimate(plan.banner())
        if not yes and not _confirm("Submit the tasks and start spending?"):
            raise RunError("nothing submitted, nothing spent", "run it again and answer y, or pass --yes")
        launch.create(plan, budget_home())
        if detach:
            cluster.close()  # the background controller connects on its own
            render.detached(plan.run_id, commands.detach(plan.run_id, budget_home()))
            return
        with render.RunProgress() as bar:
            state = launch.drive(plan, budget_home(), cluster, bar.update)
    finally:
        cluster.close()
    _status_of(plan.run_id, as_json=False)
    commands.check(plan.run_id, budget_home(), state)


def _confirm(question: str) -> bool:
    """y/N on stderr; no answer (end of input) is no. The answer starts its own line even when the
    input is piped (no echo)."""
    try:
        yes = typer.confirm(question, default=False, err=True)
    except typer.Abort:
        yes = False
    if not sys.stdin.isatty():
        sys.stderr.write("\n")
    return yes


def _drive(run_id: str, resume: bool) -> None:
    """Drive a run here with the live line, then print it; a run that did not finish exits 1."""
    from .. import render
    from ..run import commands

    with render.RunProgress() as bar:
        state = commands.drive(run_id, budget_home(), bar.update, resume=resume)
    _status_of(run_id, as_json=False)
    commands.check(run_id, budget_home(), state)


@app.command("resume")
def resume_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix) whose controller died.")],
    detach: Annotated[bool, typer.Option("--detach", help="Drive it in the background.")] = False,
) -> None:
    """Take over a run whose controller died while its instance still runs (before its lease ends)."""
    from .. import home, render
    from ..run import commands

    led = home.ledger(budget_home())
    try:
        run_id = home.resolve(led, run)["id"]
    finally:
        led.close()
    if detach:
        render.detached(run_id, commands.detach(run_id, budget_home(), resume=True))
        return
    _drive(run_id, resume=True)


@app.command("drive", hidden=True)
def drive_cmd(run_id: Annotated[str, typer.Argument()],
              resume: Annotated[bool, typer.Option("--resume")] = False) -> None:
    """The controller of a detached run (started by `budget run --detach`)."""
    from ..run import commands

    commands.drive(run_id, budget_home(), resume=resume)


def _status_of(run_id: str | None, as_json: bool) -> None:
    from .. import outputs, render
    from ..run import commands

    if run_id is None:
        rows = commands.listing(budget_home())
        render.json_doc(outputs.RunList(runs=rows)) if as_json else render.runs_table(rows)
    else:
        doc = commands.describe(budget_home(), run_id)
        if as_json:
            render.json_doc(outputs.RunDetail.model_validate(doc))
            return
        from ..cloud import registry

        if doc["provider"] in registry.RUNNERS:  # its instances are tasks on a cluster: shard, node, spend
            from ..scaleout import stopping

            doc = dict(doc, shards=stopping.shard_rows(budget_home(), doc))
        render.run_detail(doc)


@app.command("status")
def status_cmd(
    run: Annotated[str | None, typer.Argument(help="Run id (or a unique prefix); default: every run.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Runs with their state, spend against the cap and progress; one run in detail."""
    _status_of(run, as_json)


@app.command("logs")
def logs_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
) -> None:
    """The run's controller log and the worker's log (fetched from the instance as they grow)."""
    from .. import render
    from ..run import commands

    for line in commands.log_lines(budget_home(), run, follow):
        render.log_line(line)


@app.command("stop")
def stop_cmd(run: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]) -> None:
    """Stop a run: finished samples are kept, the instance is terminated, the ledger settled."""
    from .. import render
    from ..run import commands

    render.stopped(commands.stop(run, budget_home()))

"""`budget` — the thin shell: parse, call the core, render. One error handler for everything
(`main`): our errors print one red line + a hint and exit 1 (2 for bad input); `--debug` shows the
traceback. Only this module imports typer."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer

from planner.errors import GpuBudgetError, InputError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Budget-first planner and runner for evaluating quantized Qwen3-VL on rented GPUs.")
prices_app = typer.Typer(no_args_is_help=True, help="List and import GPU offers (prices in CNY).")
model_app = typer.Typer(no_args_is_help=True, help="Inspect Qwen3-VL architectures.")
pool_app = typer.Typer(no_args_is_help=True, help="Budget pools: named caps in CNY that runs draw on.")
ledger_app = typer.Typer(no_args_is_help=True, help="The spend ledger itself: check it, rebuild it from run directories.")
data_app = typer.Typer(no_args_is_help=True, help="A plan's own data: template manifests for what only you have.")
app.add_typer(prices_app, name="prices")
app.add_typer(model_app, name="model")
app.add_typer(pool_app, name="pool")
app.add_typer(data_app, name="data")
app.add_typer(ledger_app, name="ledger")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document.")]
# the bundled models' short names, for help (the catalog also takes full names and $BUDGET_HOME/catalog/models)
MODELS = ", ".join(sorted((p.stem.lower().removesuffix("-instruct").removeprefix("qwen3-vl-")
                           for p in (Path(__file__).resolve().parent.parent / "planner" / "data" / "models").glob("*.json")),
                          key=lambda n: (not n[0].isdigit(), len(n), n)))


def budget_home() -> Path:
    return Path(os.environ.get("BUDGET_HOME") or Path.home() / ".gpubudget")


def _catalog(fx: list[str] | None = None):
    from planner.catalog import load_catalog, with_fx

    return with_fx(load_catalog(budget_home() / "catalog"), fx or [])


MAX_YUAN = Decimal(10) ** 9  # a billion CNY: beyond any budget, and within Decimal's exact arithmetic
EXAMPLE = {"--yuan": "2000", "--max-yuan-hour": "5", "--price-yuan-hour": "3.5"}


def _decimal(value: str | None, flag: str, zero_ok: bool = False) -> Decimal | None:
    if value is None:
        return None
    example = f"e.g. {flag} {EXAMPLE.get(flag, '2000')}"
    try:
        d = Decimal(value.strip())
    except InvalidOperation:
        raise InputError(f"{flag} {value!r} is not a number", example) from None
    if not d.is_finite() or d < 0 or (d == 0 and not zero_ok):
        raise InputError(f"{flag} must be {'0 or more' if zero_ok else 'a positive amount'} in CNY, got {value}",
                         example)
    if d > MAX_YUAN or d.as_tuple().exponent < -6:
        raise InputError(f"{flag} {value} is out of range: at most {MAX_YUAN:,} CNY, to 6 decimal places", example)
    return d


def _batch_size(value: str | None) -> int | str | None:
    if value is None:
        return None
    if value != "auto" and not (value.isdigit() and int(value) > 0):
        raise InputError(f"--batch-size {value!r} is not a positive integer or auto", "e.g. --batch-size 4")
    return value if value == "auto" else int(value)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    """Budget-first planner and runner for evaluating quantized Qwen3-VL on rented GPUs."""


@app.command("plan")
def plan_cmd(
    yuan: Annotated[str | None, typer.Option("--yuan", help="Budget in CNY (default: the plan's budget_yuan).")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="Plan YAML (default: plans/qwen3-vl-8b.yaml).")] = None,
    model: Annotated[str | None, typer.Option("--model", help=f"Model (overrides the plan's): {MODELS}, or a full name.")] = None,
    model_config: Annotated[Path | None, typer.Option("--model-config", help="Plan for any Qwen3-VL config.json.")] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", help="Only these providers (repeatable).")] = None,
    spot: Annotated[bool | None, typer.Option("--spot/--on-demand", help="Only spot / only on-demand prices.")] = None,
    quant: Annotated[list[str] | None, typer.Option("--quant", help="Only these quantizations (repeatable).")] = None,
    objective: Annotated[str, typer.Option("--objective", help="cost (cheapest) or time (fastest within budget).")] = "cost",
    top: Annotated[int, typer.Option("--top", min=1, help="How many options to show.")] = 5,
    fx: Annotated[list[str] | None, typer.Option("--fx", help="Exchange rate override, e.g. USD=7.2.")] = None,
    assume: Annotated[list[str] | None, typer.Option("--assume", help="Override a model assumption NAME=VALUE.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List every rejected group (default: a screenful).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Which offer, GPU count and quantization run the plan cheapest within the budget, and why."""
    from planner.architecture import load_config
    from planner.assumptions import parse_overrides
    from planner.optimize import optimize
    from planner.plans import DEFAULT_PLAN, load_plan, plan_file
    from planner.summaries import next_step

    from . import render
    from .calibrate import calibration

    ev = load_plan(plan)
    budget = _decimal(yuan, "--yuan") or ev.budget_yuan
    if budget is None:
        raise InputError("no budget given", "pass --yuan AMOUNT (CNY) or set budget_yuan in the plan")
    cat = _catalog(fx)
    spec = load_config(model_config) if model_config else cat.model(ev.model if model is None else model)
    result = optimize(ev, spec, cat, budget, assumptions=parse_overrides(assume or []), providers=provider,
                      spot=spot, objective=objective, top=top, quantizations=quant,
                      calibration=None if assume else calibration(budget_home()))
    rec = result.report.recommendation
    if rec is not None:
        try:
            plan_model = cat.model(ev.model).name
        except GpuBudgetError:  # the plan names a model the catalog lacks (planned with --model-config)
            plan_model = ev.model
        plan_arg = str(plan) if plan is not None else f"plans/{DEFAULT_PLAN}"
        result.report.next = next_step(rec, plan_arg, budget, plan_model, spec.name)
        result.report.next.setup += _data_needs(ev, plan_file(plan), plan_arg)
    render.json_doc(result.report) if as_json else render.plan(result.report, show_all)
    verdict = result.shortfall(ev.name, spec.name)
    if verdict is not None:
        raise verdict


def _data_needs(ev, path: Path, plan_arg: str) -> list[str]:
    """What the plan still needs of the user's own data before `budget run` can start it."""
    from . import plandata

    try:
        gone = plandata.missing(ev, path)
    except GpuBudgetError as e:
        return [f"its data needs fixing first: {e.message}"]
    if not gone:
        return []
    return [f"it reads {len(gone)} data file(s) of yours that are not there yet (e.g. {gone[0].path}): "
            f"`budget data init {plan_arg}` writes templates; plans/qwen3-vl-8b-public.yaml fetches public data instead"]


def _size(value: str, flag: str) -> tuple[int, int]:
    w, sep, h = value.lower().partition("x")
    if not sep or not (w.isdigit() and h.isdigit()) or int(w) <= 0 or int(h) <= 0 or max(int(w), int(h)) > 100_000:
        raise InputError(f"{flag} {value!r} is not WIDTHxHEIGHT in pixels (both at least 1)", f"e.g. {flag} 1024x768")
    return int(w), int(h)


@app.command("estimate")
def estimate_cmd(
    gpu: Annotated[str, typer.Option("--gpu", help="GPU name from the catalog (budget prices list), or cpu.")],
    quant: Annotated[str, typer.Option("--quant", help="bf16, fp16, int8 or nf4.")],
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="Text tokens of the prompt (>= 1).")],
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Tokens to generate (>= 1).")],
    model: Annotated[str | None, typer.Option("--model", help=f"Catalog model: {MODELS}, or a full name.")] = None,
    model_config: Annotated[Path | None, typer.Option("--model-config", help="Any supported config.json.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="Cards (layers split across them).")] = 1,
    image: Annotated[list[str] | None, typer.Option("--image", help="An image WxH in pixels (repeatable).")] = None,
    video: Annotated[str | None, typer.Option("--video", help="A clip: SECONDS@FPS, e.g. 30@2.")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Requests generated together.")] = 1,
    assume: Annotated[list[str] | None, typer.Option("--assume", help="Override a model assumption NAME=VALUE.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One request on one rig: peak memory per card by component, vision / prefill / decode seconds, decode
    tokens/s and time to first token (calibrated where `budget calibrate` has fitted this GPU)."""
    from planner.architecture import load_config
    from planner.assumptions import parse_overrides
    from planner.estimate import estimate_request, request_pass
    from planner.models import ImageLimits, VideoSpec

    from . import render
    from .calibrate import calibration, devices

    for flag, v in (("--prompt-tokens", prompt_tokens), ("--new-tokens", new_tokens), ("--batch", batch),
                    ("--gpus", gpus)):
        if v < 1:
            raise InputError(f"{flag} must be at least 1, got {v}", f"e.g. {flag} 1")
    if quant not in ("bf16", "fp16", "int8", "nf4"):
        raise InputError(f"unknown quantization {quant!r}", "use --quant bf16, fp16, int8 or nf4")
    if (model is None) == (model_config is None):
        raise InputError("say which model: one of --model or --model-config", f"e.g. --model 8b ({MODELS})")
    cat = _catalog()
    spec = load_config(model_config) if model_config else cat.model(model)
    rig = devices(cat, budget_home())(gpu)
    images = [_size(v, "--image") for v in image or []]
    clip = None
    if video is not None:
        secs, _, fps = video.partition("@")
        try:
            clip = VideoSpec(duration_s=float(secs), fps=float(fps or 2))
        except ValueError:
            raise InputError(f"--video {video!r} is not SECONDS@FPS with both above 0", "e.g. --video 30@2") from None
    if spec.vision is None and (images or clip):
        raise InputError(f"{spec.name} is a text-only model ({spec.model_type}): it takes no --image or --video",
                         "drop --image/--video, or pick a vision-language model")
    if quant == "bf16" and not rig.bf16:
        raise InputError(f"no bf16 on {rig.name} (compute capability {rig.compute_capability})", "use --quant fp16")
    a, said = parse_overrides(assume or []), ""
    cal = None if assume else calibration(budget_home())
    if cal is not None:
        a, said = cal.for_rig(a, rig.name, quant)
    p = request_pass(spec, prompt_tokens, images, clip, new_tokens, ImageLimits(), a)
    r = estimate_request(spec, rig, gpus, quant, p, batch, a, prompt_tokens=prompt_tokens, calibration=said)
    render.json_doc(r) if as_json else render.estimate(r)


@app.command("calibrate")
def calibrate_cmd(
    measurements: Annotated[list[Path] | None, typer.Option("--measurements", help="A measurement file of "
                            "benchmarks/gpu_check.py --grid (repeatable), e.g. benchmarks/measured/*.jsonl.")] = None,
    run: Annotated[list[str] | None, typer.Option("--run", help="Only these finished runs (repeatable).")] = None,
    show: Annotated[bool, typer.Option("--show", help="Estimate vs actual for every finished run, before and "
                                       "after the stored calibration; fits nothing.")] = False,
    remeasure: Annotated[bool, typer.Option("--remeasure", help="Measure this machine's CPU profile again.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit the time model (per GPU x quantization), fixed costs (per provider) and memory margins to your
    finished runs and measurement files; store the fit in the ledger for plan, estimate and run."""
    from . import calibrate, localrig, render

    home = budget_home()
    if remeasure:
        localrig.profile(home, remeasure=True)
    if show:
        doc = calibrate.show(home, _catalog())
        render.json_dict(doc) if as_json else render.calibration_show(doc)
        return
    cal = calibrate.run(home, _catalog(), list(measurements or []), run)
    render.json_doc(cal) if as_json else render.calibrated(cal)


@prices_app.command("list")
def prices_list(
    gpu: Annotated[str | None, typer.Option("--gpu", help="Only this GPU, e.g. T4.")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Only this provider, e.g. aws.")] = None,
    max_yuan_hour: Annotated[str | None, typer.Option("--max-yuan-hour", help="Only offers up to this CNY/h.")] = None,
    fx: Annotated[list[str] | None, typer.Option("--fx", help="Exchange rate override, e.g. USD=7.2.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """GPU offers with their price in CNY per hour (original currency beside), cheapest first."""
    from planner.summaries import price_list

    from . import render

    cat = _catalog(fx)
    if gpu and cat.gpu(gpu) is None:
        raise InputError(f"unknown GPU {gpu!r}", "known: " + ", ".join(cat.gpus))
    p = price_list(cat, gpu, provider, _decimal(max_yuan_hour, "--max-yuan-hour"))
    render.json_doc(p) if as_json else render.prices(p)


@prices_app.command("import")
def prices_import(
    file: Annotated[Path, typer.Argument(help="Offer file to validate and add to the user catalog.")],
    fmt: Annotated[str, typer.Option("--format", help="skypilot (SkyPilot's vms.csv) or csv (ours).")] = "skypilot",
    provider: Annotated[str | None, typer.Option("--provider", help="Provider name (skypilot default: aws).")] = None,
) -> None:
    """Validate an offer file and add it to $BUDGET_HOME/catalog/offers/ (replacing that provider's offers)."""
    from planner.catalog import prepare_import

    from . import render

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: cannot read ({e.__class__.__name__})", "pass a readable UTF-8 CSV file") from None
    r = prepare_import(text, str(file), fmt, provider, _catalog(), _dt.date.today().isoformat())
    dest = budget_home() / "catalog" / "offers" / r.file_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(r.content, encoding="utf-8")
    tmp.replace(dest)
    render.imported(r, str(dest))


@model_app.command("inspect")
def model_inspect(
    model: Annotated[str, typer.Argument(help="Catalog name (e.g. Qwen3-VL-8B-Instruct, 8b) or path to config.json.")],
    as_json: JsonOpt = False,
) -> None:
    """Exact parameter breakdown and weight memory per quantization of a Qwen3-VL model."""
    from planner.architecture import load_config
    from planner.summaries import inspect_model

    from . import render

    p = Path(model)
    spec = load_config(p) if p.exists() else _catalog().model(model)
    r = inspect_model(spec)
    render.json_doc(r) if as_json else render.inspect(r)


@app.command("eval")
def eval_cmd(
    plan: Annotated[Path, typer.Argument(help="Plan YAML, e.g. plans/smoke.yaml.")],
    model_path: Annotated[Path | None, typer.Option("--model-path", help="Load the model from this directory.")] = None,
    quant: Annotated[str | None, typer.Option("--quant", help="nf4, int8, fp16, bf16 or fp32 (default: the plan's first).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory (default: $BUDGET_HOME/evals/PLAN-QUANT).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N samples per task.")] = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", help="Samples per batch, or auto (default: the plan's).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cuda or cpu.")] = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard earlier results in --out instead of resuming.")] = False,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", min=0, help="Stop cleanly after this long (resumable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a plan's evaluation on this machine (no provider, no ledger); rerun to resume."""
    from planner.plans import load_plan, plan_file

    from . import evaluate, jobs, render

    ev = load_plan(plan)
    q = (quant or ev.quantizations[0]).lower()
    if device not in ("auto", "cuda", "cpu"):
        raise InputError(f"--device {device!r} is not auto, cuda or cpu", "e.g. --device cpu")
    bs = _batch_size(batch_size)
    deadline = None if max_minutes is None else _dt.datetime.now(_dt.UTC) + _dt.timedelta(minutes=max_minutes)
    job = jobs.build(ev, plan_file(plan), _catalog(), budget_home(), quantization=q, model_path=model_path,
                     limit=limit, batch_size=bs, device=device, deadline=deadline)
    out_dir = out or budget_home() / "evals" / f"{ev.name}-{q}"
    evaluate.prepare(out_dir, job, fresh)
    with render.EvalProgress() as bar:
        outcome = evaluate.run(out_dir, bar.update)
    if any(t.get("done") for t in (outcome.summary.get("tasks") or {}).values()):
        render.json_dict(outcome.summary) if as_json else render.eval_summary(outcome.summary, str(out_dir))
    evaluate.check(outcome)


@app.command("run")
def run_cmd(
    plan: Annotated[Path, typer.Argument(help="Plan YAML, e.g. plans/smoke.yaml.")],
    yuan: Annotated[str | None, typer.Option("--yuan", help="This run's cap in CNY (default: the plan's budget_yuan).")] = None,
    pool: Annotated[str, typer.Option("--pool", help="Budget pool the run draws on (made with the cap if new).")] = "default",
    provider: Annotated[str, typer.Option("--provider", help="local (this machine, simulated price), aws or ssh.")] = "local",
    offer: Annotated[str | None, typer.Option("--offer", help="Offer id (see `budget prices list`; default: the planner's choice).")] = None,
    spot: Annotated[bool, typer.Option("--spot", help="Spot prices only (aws).")] = False,
    quant: Annotated[str | None, typer.Option("--quant", help="Quantization (default: the planner's choice).")] = None,
    price_yuan_hour: Annotated[str | None, typer.Option("--price-yuan-hour", help="Bill at this CNY/h (local, ssh).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N samples per task.")] = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", help="Samples per batch, or auto.")] = None,
    model_path: Annotated[Path | None, typer.Option("--model-path", help="Push this saved model instead of downloading.")] = None,
    remote_python: Annotated[str | None, typer.Option("--remote-python", help="Python on the instance that is ready (skips bootstrap).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Return once launched; watch with status/logs.")] = False,
    unattended: Annotated[bool, typer.Option("--unattended", help="aws: once the worker runs, the instance holds "
                                             "its budget deadline, uploads to S3 and powers off alone; no "
                                             "controller (`budget status RUN` collects).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before spending.")] = False,
) -> None:
    """Provision, push the worker, evaluate, track spend against the cap, tear down."""
    from planner.plans import load_plan, plan_file

    from . import render, runs

    ev = load_plan(plan)
    if unattended:
        runs.check_unattended(provider, budget_home())
    prov = runs.preflight(provider, budget_home())
    p = runs.prepare(ev, plan_file(plan), _catalog(), budget_home(), provider=prov, yuan=_decimal(yuan, "--yuan"),
                     pool=pool, offer_id=offer, spot=spot, quant=quant, limit=limit, batch_size=_batch_size(batch_size),
                     price_yuan_h=_decimal(price_yuan_hour, "--price-yuan-hour"), model_path=model_path,
                     remote_python=remote_python, unattended=unattended)
    render.run_estimate(p)
    if not yes and not _confirm("Launch and start spending?"):
        from .errors import RunError

        raise RunError("nothing launched, nothing spent", "run it again and answer y, or pass --yes")
    runs.create(p, budget_home())
    if unattended:  # set up here, with the live line; then the instance is on its own
        with render.RunProgress() as bar:
            state = runs.drive(p.request.run_id, budget_home(), bar.update)
        if state != "running":
            runs.check(p.request.run_id, budget_home(), state)
        render.unattended(p.request.run_id)
        return
    if detach:
        pid = runs.detach(p.request.run_id, budget_home())
        render.detached(p.request.run_id, pid)
        return
    _drive(p.request.run_id, resume=False)


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
    from . import render, runs

    with render.RunProgress() as bar:
        state = runs.drive(run_id, budget_home(), bar.update, resume=resume)
    _status_of(run_id, as_json=False)
    runs.check(run_id, budget_home(), state)


@app.command("resume")
def resume_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix) whose controller died.")],
    detach: Annotated[bool, typer.Option("--detach", help="Drive it in the background.")] = False,
) -> None:
    """Take over a run whose controller died while its instance still runs (before its lease ends)."""
    from . import render, runs

    led = runs.ledger(budget_home())
    try:
        run_id = runs.resolve(led, run)["id"]
    finally:
        led.close()
    if detach:
        render.detached(run_id, runs.detach(run_id, budget_home(), resume=True))
        return
    _drive(run_id, resume=True)


@app.command("drive", hidden=True)
def drive_cmd(run_id: Annotated[str, typer.Argument()],
              resume: Annotated[bool, typer.Option("--resume")] = False) -> None:
    """The controller of a detached run (started by `budget run --detach`)."""
    from . import runs

    runs.drive(run_id, budget_home(), resume=resume)


def _status_of(run_id: str | None, as_json: bool) -> None:
    from . import render, runs

    if run_id is None:
        rows = runs.listing(budget_home())
        render.json_dict({"runs": rows}) if as_json else render.runs_table(rows)
    else:
        doc = runs.describe(budget_home(), run_id)
        render.json_dict(doc) if as_json else render.run_detail(doc)


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
    from . import render, runs

    for line in runs.log_lines(budget_home(), run, follow):
        render.log_line(line)


@app.command("stop")
def stop_cmd(run: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]) -> None:
    """Stop a run: finished samples are kept, the instance is terminated, the ledger settled."""
    from . import render, runs

    render.stopped(runs.stop(run, budget_home()))


@data_app.command("init")
def data_init(plan: Annotated[Path, typer.Argument(help="Plan YAML whose local datasets need manifests.")]) -> None:
    """Write a template manifest (with the fields its task kind expects) for every local dataset of the plan
    that has none; a plan shipped with gpubudget is first copied into this directory."""
    import shutil

    from planner.plans import bundled_plan, load_plan, plan_file

    from . import plandata, render

    path = plan_file(plan)
    ev = load_plan(path)
    copied = None
    if path.resolve().parent == bundled_plan().resolve().parent:  # never write into the installed package
        copied = Path.cwd() / path.name
        if not copied.exists():
            shutil.copyfile(path, copied)
        path = copied
    render.data_init(plandata.init(ev, path), path, copied)


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
    import time

    from . import render
    from .money import documents, quality, report

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
                         "start one with `budget run plans/smoke.yaml --yuan 5`, or set BUDGET_HOME")
    now = time.time()
    led = _ledger()
    try:
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


@app.command("sweep")
def sweep_cmd(
    region: Annotated[list[str] | None, typer.Option("--region", help="AWS region to look in (repeatable; default: the "
                                                     "configured one and every region the ledger ran in).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Delete the leaks (default: only list them).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Resources tagged as ours that no live run owns (instances, volumes, security groups, key pairs, S3
    result prefixes, local workers), with their cost per hour; --yes deletes them."""
    from . import render, sweep

    led = _ledger()
    try:
        doc = sweep.sweep(budget_home(), led, _catalog(), region, yes)
    finally:
        led.close()
    render.json_dict(doc) if as_json else render.swept(doc)
    if doc["unchecked"]:  # a place we could not look may hold leaks: not a clean bill
        raise typer.Exit(1)


def _ledger():
    from . import runs

    return runs.ledger(budget_home())


def _pools(fn, *args):
    from . import runs

    led = runs.ledger(budget_home())
    try:
        return fn(led, *args)
    finally:
        led.close()


@ledger_app.command("check")
def ledger_check(as_json: JsonOpt = False) -> None:
    """Is the ledger whole? SQLite's integrity check, runs on disk it lacks, instances it does not count."""
    from . import render
    from .money import recovery

    doc = recovery.check(budget_home())
    render.json_dict(doc) if as_json else render.ledger_check(doc)
    if not doc["ok"]:
        raise typer.Exit(1)


@ledger_app.command("rebuild")
def ledger_rebuild(yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
                   as_json: JsonOpt = False) -> None:
    """Move ledger.db aside (kept) and rebuild it from the run directories' money journals."""
    from . import render
    from .money import recovery

    if not yes and not typer.confirm(f"move {budget_home() / 'ledger.db'} aside and rebuild it from "
                                     f"{budget_home() / 'runs'}?", default=False):
        raise typer.Exit(1)
    doc = recovery.rebuild(budget_home())
    render.json_dict(doc) if as_json else render.ledger_rebuilt(doc)


@pool_app.command("list")
def pool_list(as_json: JsonOpt = False) -> None:
    """Every pool: cap, spent, committed by live instances, left (CNY), runs."""
    from . import render
    from .money import pools

    rows = _pools(pools.listing)
    render.json_dict({"pools": rows}) if as_json else render.pools_table(rows)


@pool_app.command("show")
def pool_show(name: Annotated[str, typer.Argument(help="Pool name.", metavar="NAME")], as_json: JsonOpt = False) -> None:
    """One pool: its money, its runs and every change of its cap."""
    from . import render
    from .money import pools

    doc = _pools(pools.show, name)
    render.json_dict(doc) if as_json else render.pool_detail(doc)


@pool_app.command("create")
def pool_create(
    name: Annotated[str, typer.Argument(help="Pool name (letters, digits, . _ -).", metavar="NAME")],
    yuan: Annotated[str, typer.Option("--yuan", help="The pool's cap in CNY.", metavar="AMOUNT")],
    as_json: JsonOpt = False,
) -> None:
    """Create a pool with a cap in CNY (recorded as an event in the ledger)."""
    from . import render
    from .money import pools

    doc = _pools(pools.create, name, _decimal(yuan, "--yuan"))
    render.json_dict(doc) if as_json else render.pool_detail(doc)


@pool_app.command("set-cap")
def pool_set_cap(
    name: Annotated[str, typer.Argument(help="Pool name.", metavar="NAME")],
    yuan: Annotated[str, typer.Argument(help="The new cap in CNY (0 stops every run of the pool).", metavar="AMOUNT")],
    as_json: JsonOpt = False,
) -> None:
    """Change a pool's cap; live runs obey it at their next guard tick (recorded as an event)."""
    from . import render
    from .money import pools

    doc = _pools(pools.set_cap, name, _decimal(yuan, "AMOUNT", zero_ok=True))
    render.json_dict(doc) if as_json else render.pool_detail(doc)


# What each option's value is, as help shows it (typer would print <str>, <bool>, <list[str]>).
METAVARS = {"--yuan": "AMOUNT", "--max-yuan-hour": "AMOUNT", "--price-yuan-hour": "AMOUNT", "--plan": "PATH",
            "--model": "NAME", "--model-config": "PATH", "--model-path": "DIR", "--out": "PATH", "--provider": "NAME",
            "--pool": "NAME", "--offer": "ID", "--quant": "Q", "--objective": "cost|time", "--top": "N", "--limit": "N",
            "--fx": "CUR=RATE", "--assume": "NAME=VALUE", "--batch-size": "N|auto", "--device": "auto|cuda|cpu",
            "--max-minutes": "MINUTES", "--gpu": "GPU", "--format": "FORMAT", "--remote-python": "PATH",
            "--since": "DATE", "--until": "DATE", "--by": "GROUP", "--run": "RUN"}


def _plain_metavars(cmd) -> None:
    """Give every option of every command a plain metavar (flags none), and arguments their upper-case name."""
    from typer.core import TyperArgument, TyperOption  # typer vendors its own click: its classes, not click's

    if not getattr(TyperOption, "_gpubudget_plain", False):  # flags (--help too, made per call) show no type
        shown = TyperOption.display_type_rich
        TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)
        TyperOption._gpubudget_plain = True
    for param in getattr(cmd, "params", []):
        if isinstance(param, TyperArgument):  # its name says it (PLAN, RUN); no type column
            param.metavar = param.metavar or (param.name or "value").upper()
            param.display_type_rich = lambda ctx=None: None
        else:
            param.metavar = None if param.is_flag else (param.metavar or METAVARS.get(max(param.opts, key=len), "VALUE"))
    for sub in getattr(cmd, "commands", {}).values():
        _plain_metavars(sub)


def command():
    """The click command tree of `budget`, with plain metavars."""
    cmd = typer.main.get_command(app)
    _plain_metavars(cmd)
    return cmd


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place errors become exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        rv = command().main(args=args, prog_name="budget", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)  # typer returns typer.Exit's code here
    except GpuBudgetError as e:
        if debug:
            raise
        from . import render

        render.error(e)
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors (exit 2): one error line and a hint, like ours
        if type(e).__name__ == "NoArgsIsHelpError":  # `budget pool` alone: its help
            e.show()
            sys.exit(e.exit_code)
        from . import render

        ctx = getattr(e, "ctx", None)
        render.error(e.format_message().replace("\n", " "), f"see `{ctx.command_path if ctx else 'budget'} --help`")
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except Exception as e:  # a bug of ours: one line, never locals (they may hold credentials)
        if debug:
            raise
        sys.stderr.write(f"error: internal error: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
                         "hint: rerun with --debug for the traceback and report it\n")
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The planning commands - nothing is launched, nothing is spent: `plan` (the cheapest offer, GPU count and
quantization for a plan within a budget), `estimate` (one request on one rig), `calibrate` (fit the models
to finished runs and measurements; --show: estimate vs actual), `prices list` / `import` and
`model inspect`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from planner import numbers
from planner.errors import GpuBudgetError, InputError

from .base import MODELS, JsonOpt, amount, app, budget_home, catalog, count

prices_app = typer.Typer(no_args_is_help=True, help="List and import GPU offers (prices in CNY).")
model_app = typer.Typer(no_args_is_help=True, help="Inspect Qwen3-VL architectures.")


@app.command("plan")
def plan_cmd(
    yuan: Annotated[str | None, typer.Option("--yuan", help="Budget in CNY (default: the plan's budget_yuan).")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="Plan YAML (default: plans/qwen3-vl-8b.yaml).")] = None,
    model: Annotated[str | None, typer.Option("--model", help=f"Model (overrides the plan's): {MODELS}, or a full name.")] = None,
    model_config: Annotated[Path | None, typer.Option("--model-config", help="Plan for any Qwen3-VL config.json.")] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", help="Only these providers (repeatable); colab "
                                                       "(a free notebook you run) is ranked only when named.")] = None,
    spot: Annotated[bool | None, typer.Option("--spot/--on-demand", help="Only spot / only on-demand prices.")] = None,
    quant: Annotated[list[str] | None, typer.Option("--quant", help="Only these quantizations (repeatable).")] = None,
    engine: Annotated[list[str] | None, typer.Option("--engine", help="Only these engines: hf, vllm, sglang, "
                                                     "transformers (repeatable, or a comma list).")] = None,
    objective: Annotated[str, typer.Option("--objective", help="cost (cheapest) or time (fastest within budget).")] = "cost",
    deadline: Annotated[str | None, typer.Option("--deadline", help="Done by then: a duration (6h, 90m, 2d, 1h30m) or "
                                                 "an ISO date or datetime (UTC unless it names a zone; a date: that "
                                                 "day's end), judged on the upper end of each time band.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many options to show.")] = 5,
    fx: Annotated[list[str] | None, typer.Option("--fx", help="Exchange rate override, e.g. USD=7.2.")] = None,
    assume: Annotated[list[str] | None, typer.Option("--assume", help="Override a model assumption NAME=VALUE.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List every rejected group (default: a screenful).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Which offer, GPU count, layout (one model over the cards, or one per card) and quantization run the plan
    cheapest within the budget (and by the deadline), and why."""
    from planner import deadline as deadlines
    from planner.architecture import load_config
    from planner.assumptions import parse_overrides
    from planner.models import NextStep
    from planner.optimize import optimize
    from planner.plans import DEFAULT_PLAN, load_plan, plan_file
    from planner.summaries import next_step

    from .. import render
    from ..calibrate import calibration

    due = None if deadline is None else deadlines.parse(deadline, dt.datetime.now(dt.UTC))
    ev = load_plan(plan)
    budget = amount(yuan, "--yuan") or ev.budget_yuan
    if budget is None:
        raise InputError("no budget given", "pass --yuan AMOUNT (CNY) or set budget_yuan in the plan")
    cat = catalog(fx)
    spec = load_config(model_config) if model_config else cat.model(ev.model if model is None else model)
    cal = None if assume else calibration(budget_home())

    def ranked(providers: list[str] | None, top_: int):
        return optimize(ev, spec, cat, budget, assumptions=parse_overrides(assume or []), providers=providers,
                        spot=spot, objective=objective, top=top_, quantizations=quant, engines=_engines(engine),
                        calibration=cal, deadline=due)
    result = ranked(provider, top)
    plan_arg = str(plan) if plan is not None else f"plans/{DEFAULT_PLAN}"
    rec = result.report.recommendation
    if rec is not None:
        try:
            plan_model = cat.model(ev.model).name
        except GpuBudgetError:  # the plan names a model the catalog lacks (planned with --model-config)
            plan_model = ev.model
        result.report.next = next_step(rec, plan_arg, budget, plan_model, spec.name)
        terms = cat.terms.get(rec.provider)
        if terms is not None and terms.manual:  # asked for by name: run by a person, with its own command
            rec.notes[:0] = terms.notes(rec.hours, plan_arg)
            result.report.next = NextStep(command=terms.usage(plan_arg), setup=terms.steps(plan_arg))
        result.report.next.setup += _data_needs(ev, plan_file(plan), plan_arg)
    free, missed = ([], []) if provider else _manual_options(cat, ranked, plan_arg)
    result.report.free = free
    if as_json:
        render.json_doc(result.report)
    else:
        render.plan(result.report, show_all, free, missed)
    verdict = result.shortfall(ev.name, spec.name)
    if verdict is not None:
        raise verdict


def _manual_options(cat, ranked, plan_arg: str) -> tuple[list, list[str]]:
    """The default view's options a person runs (providers declared `manual`: Colab's free notebook), never ranked
    over a rig that runs alone: (each one's best option, its limits, sources and command in its notes; a line for
    each the plan cannot run on, saying why). Shown after the ranking; in `--json`, PlanReport's `free`."""
    from planner.errors import CatalogError

    free, missed = [], []
    for name in sorted(cat.manual()):
        try:
            got = ranked([name], 1)
        except CatalogError:  # none of its offers is left (--spot: it has no spot price; a catalog without it)
            continue
        best = got.report.recommendation
        if best is None:
            why = min(got.report.rejected, key=lambda x: (x.gpu == "*", x.reason.startswith("over")), default=None)
            missed.append(f"{name}: the plan cannot run there" + (f" ({why.reason})" if why else ""))
            continue
        best.notes[:0] = cat.terms[name].notes(best.hours, plan_arg)
        free.append(best)
    return free, missed


def _engines(values: list[str] | None) -> list[str] | None:
    """`--engine vllm --engine hf` or `--engine vllm,hf`: the engines named, each known (InputError otherwise)."""
    from planner.models import ENGINE_NAMES

    names = [n.strip().lower() for v in values or [] for n in v.split(",") if n.strip()]
    if bad := [n for n in names if n not in ENGINE_NAMES]:
        raise InputError(f"unknown engine {bad[0]!r}", "use --engine " + ", ".join(ENGINE_NAMES))
    return names or None


def _data_needs(ev, path: Path, plan_arg: str) -> list[str]:
    """What the plan still needs of the user's own data before `budget run` can start it."""
    from .. import plandata

    try:
        gone = plandata.missing(ev, path)
    except GpuBudgetError as e:
        return [f"its data needs fixing first: {e.message}"]
    if not gone:
        return []
    return [(f"it reads {len(gone)} data file(s) of yours that are not there yet (e.g. {gone[0].path}): "
             f"`budget data init {plan_arg}` writes templates; plans/qwen3-vl-8b-public.yaml fetches public data instead")]


def _size(value: str, flag: str) -> tuple[int, int]:
    w, sep, h = value.lower().partition("x")
    if not sep or not (numbers.is_int(w) and numbers.is_int(h)) or int(w) <= 0 or int(h) <= 0 or max(int(w), int(h)) > 100_000:
        raise InputError(f"{flag} {value!r} is not WIDTHxHEIGHT in pixels (both at least 1)", f"e.g. {flag} 1024x768")
    return int(w), int(h)


@app.command("estimate")
def estimate_cmd(
    gpu: Annotated[str, typer.Option("--gpu", help="GPU name from the catalog (budget prices list), or cpu.")],
    quant: Annotated[str, typer.Option("--quant", help="bf16, fp16, fp8 (vllm, sglang), int8 or nf4.")],
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="Text tokens of the prompt (>= 1).")],
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Tokens to generate (>= 1).")],
    model: Annotated[str | None, typer.Option("--model", help=f"Catalog model: {MODELS}, or a full name.")] = None,
    model_config: Annotated[Path | None, typer.Option("--model-config", help="Any supported config.json.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="Cards (layers split across them).")] = 1,
    image: Annotated[list[str] | None, typer.Option("--image", help="An image WxH in pixels (repeatable).")] = None,
    video: Annotated[str | None, typer.Option("--video", help="A clip: SECONDS@FPS, e.g. 30@2.")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Requests generated together.")] = 1,
    engine: Annotated[str, typer.Option("--engine", help="hf (in-process generate), vllm, sglang or transformers "
                                        "(transformers serve).")] = "hf",
    assume: Annotated[list[str] | None, typer.Option("--assume", help="Override a model assumption NAME=VALUE.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One request on one rig: peak memory per card by component, vision / prefill / decode seconds, decode
    tokens/s and time to first token (calibrated where `budget calibrate` has fitted this GPU)."""
    from planner.architecture import load_config
    from planner.assumptions import parse_overrides
    from planner.estimate import estimate_request, request_pass
    from planner.models import ImageLimits, VideoSpec

    from .. import render
    from ..calibrate import calibration, devices

    for flag, v, most in (("--prompt-tokens", prompt_tokens, numbers.MAX_TOKENS),
                          ("--new-tokens", new_tokens, numbers.MAX_TOKENS), ("--batch", batch, numbers.MAX_BATCH),
                          ("--gpus", gpus, numbers.MAX_GPUS)):
        count(v, flag, most)
    if prompt_tokens + new_tokens > numbers.MAX_TOKENS:
        raise InputError(f"--prompt-tokens + --new-tokens is {prompt_tokens + new_tokens:,} tokens: past any model's "
                         f"context (at most {numbers.MAX_TOKENS:,} here)", "e.g. --prompt-tokens 512 --new-tokens 128")
    if quant not in ("bf16", "fp16", "fp8", "int8", "nf4"):
        raise InputError(f"unknown quantization {quant!r}", "use --quant bf16, fp16, fp8, int8 or nf4")
    (engine,) = _engines([engine]) or ["hf"]
    if (model is None) == (model_config is None):
        raise InputError("say which model: one of --model or --model-config", f"e.g. --model 8b ({MODELS})")
    cat = catalog()
    spec = load_config(model_config) if model_config else cat.model(model)
    from ..localrig import NAME as CPU

    # the catalog's rule: GPU names in any case (`--gpu t4`), this machine's CPU profile too (`--gpu cpu`)
    rig = devices(cat, budget_home())(CPU if gpu.strip().lower() == CPU.lower() else gpu)
    images = [_size(v, "--image") for v in image or []]
    clip = None
    if video is not None:
        secs, _, fps = video.partition("@")
        try:
            clip = VideoSpec(duration_s=secs, fps=fps or "2")  # ASCII digits only (the model's rule)
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
    r = estimate_request(spec, rig, gpus, quant, p, batch, a, prompt_tokens=prompt_tokens, calibration=said,
                         engine=engine)
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
    from .. import calibrate, localrig, outputs, render

    home = budget_home()
    if remeasure:
        localrig.profile(home, remeasure=True)
    if show:
        doc = calibrate.show(home, catalog())
        render.json_doc(outputs.CalibrationCheck.model_validate(doc)) if as_json else render.calibration_show(doc)
        return
    cal = calibrate.run(home, catalog(), list(measurements or []), run)
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

    from .. import render

    cat = catalog(fx)
    if gpu and cat.gpu(gpu) is None:
        raise InputError(f"unknown GPU {gpu!r}", "known: " + ", ".join(cat.gpus))
    p = price_list(cat, gpu, provider, amount(max_yuan_hour, "--max-yuan-hour"))
    render.json_doc(p) if as_json else render.prices(p)


@prices_app.command("import")
def prices_import(
    file: Annotated[Path, typer.Argument(help="Offer file to validate and add to the user catalog.")],
    fmt: Annotated[str, typer.Option("--format", help="skypilot (SkyPilot's vms.csv) or csv (ours).")] = "skypilot",
    provider: Annotated[str | None, typer.Option("--provider", help="Provider name (skypilot default: aws).")] = None,
) -> None:
    """Validate an offer file and add it to $BUDGET_HOME/catalog/offers/ (replacing that provider's offers)."""
    from planner.catalog import prepare_import, save_index

    from .. import render

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: cannot read ({e.__class__.__name__})", "pass a readable UTF-8 CSV file") from None
    # the offers' `date` column: the calendar day they were imported, as the bundled catalogs write theirs
    r = prepare_import(text, str(file), fmt, provider, catalog(), dt.date.today().isoformat())
    dest = budget_home() / "catalog" / "offers" / r.file_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(r.content, encoding="utf-8")
    tmp.replace(dest)
    save_index(dest, r)  # what plans load: the file's offers, without reading the file again
    render.imported(r, str(dest))


@model_app.command("inspect")
def model_inspect(
    model: Annotated[str, typer.Argument(help="Catalog name (e.g. Qwen3-VL-8B-Instruct, 8b) or path to config.json.")],
    as_json: JsonOpt = False,
) -> None:
    """Exact parameter breakdown and weight memory per quantization of a Qwen3-VL model."""
    from planner.architecture import load_config
    from planner.summaries import inspect_model

    from .. import render

    p = Path(model)
    spec = load_config(p) if p.exists() else catalog().model(model)
    r = inspect_model(spec)
    render.json_doc(r) if as_json else render.inspect(r)

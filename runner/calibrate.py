"""`budget calibrate`: gather measurements - the result lines of finished runs in the ledger, and
measurement files written by `benchmarks/gpu_check.py --grid` - validate them where they enter, fit
(`planner.calibration`), store the fit with its provenance in the ledger, and show estimate vs actual
for every finished run. `calibration()` is what `budget plan`, `budget estimate` and `budget run` read."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from planner.assumptions import Assumptions
from planner.errors import InputError, ModelConfigError

if TYPE_CHECKING:  # `budget plan` imports this module for `calibration()`: the rest comes in where it is used
    from planner.calibration import Calibration, Measurement, RunTiming
    from planner.catalog import Catalog
    from planner.models import EvalPlan, Gpu

    from .money.ledger import Ledger

SCHEMA = "gpubudget.measurement/1"
MAX_FILE_BYTES = 16 * 2**20
MAX_LINES = 200_000
RUN_KINDS = ("caption", "document", "poetry", "digits", "fp16_verify", "memory_sweep")  # one image, one generate call


def devices(catalog: Catalog, home: Path):
    """name -> Gpu, with this machine's CPU profile as `CPU`."""
    from . import localrig

    cpu = None

    def gpu(name: str) -> Gpu:
        nonlocal cpu
        if name == localrig.NAME:
            cpu = cpu or localrig.as_gpu(localrig.profile(home))
            return cpu
        g = catalog.gpu(name)
        if g is None:
            raise InputError(f"unknown GPU {name!r}", "see planner/data/gpus.csv, or add it to "
                             "$BUDGET_HOME/catalog/gpus.csv")
        return g
    return gpu


def _num(v, what: str, where: str, integer: bool = False, optional: bool = False):
    if v is None and optional:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v) or v < 0 or v > 1e15:
        raise InputError(f"{where}: {what} must be a non-negative {'integer' if integer else 'number'}, got {v!r}",
                         "files come from the grid mode of benchmarks/gpu_check.py (schema gpubudget.measurement/1)")
    return v


def read_measurements(path: Path, catalog: Catalog) -> list[Measurement]:
    """One measurement file (JSON lines), validated line by line: the schema, the model (a catalog model),
    the device (a catalog GPU), numbers finite and non-negative. The first bad line is the error."""
    from planner.calibration import Measurement

    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{path}: over {MAX_FILE_BYTES >> 20} MiB", "split the file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such measurement file", "pass a file written by the grid mode of "
                         "benchmarks/gpu_check.py (e.g. benchmarks/measured/*.jsonl)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot be read ({e})", "pass a JSON-lines measurement file") from None
    out = []
    for n, line in enumerate(text.splitlines()[:MAX_LINES], 1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{where}: not JSON", "one JSON object per line") from None
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise InputError(f"{where}: not a {SCHEMA} line", "files come from the grid mode of benchmarks/gpu_check.py")
        try:
            spec = catalog.model(str(d.get("model")))
        except ModelConfigError as e:
            raise InputError(f"{where}: {e.message}", e.hint) from None
        gpu = catalog.gpu(str(d.get("device", "")))
        if gpu is None:
            raise InputError(f"{where}: unknown device {d.get('device')!r}", "add it to $BUDGET_HOME/catalog/gpus.csv")
        quant = d.get("quantization")
        if quant not in ("bf16", "fp16", "nf4", "int8"):
            raise InputError(f"{where}: quantization {quant!r}", "bf16, fp16, nf4 or int8")
        visual = _num(d.get("visual_tokens", 0), "visual_tokens", where, integer=True)
        merge = spec.vision.spatial_merge_size ** 2 if spec.vision else 0
        out.append(Measurement(
            device=gpu.name, model=spec.name, quantization=quant, double_quant=bool(d.get("double_quant", True)),
            batch=max(1, _num(d.get("batch"), "batch", where, integer=True)),
            prefill_tokens=_num(d.get("prefill_tokens"), "prefill_tokens", where, integer=True),
            visual_tokens=visual, vit_patches=visual * merge,
            new_tokens=_num(d.get("new_tokens"), "new_tokens", where, integer=True),
            ttft_s=_num(d.get("ttft_s"), "ttft_s", where), decode_s=_num(d.get("decode_s"), "decode_s", where),
            peak_allocated_bytes=_num(d.get("peak_allocated_bytes"), "peak_allocated_bytes", where, True, True),
            peak_reserved_bytes=_num(d.get("peak_reserved_bytes"), "peak_reserved_bytes", where, True, True),
            source=f"file:{path.name}:{n}"))
    if not out:
        raise InputError(f"{path}: no measurements in it", "pass a file written by the grid mode of benchmarks/gpu_check.py")
    return out


# --------------------------------------------------------------------------- runs in the ledger


def _lines(path: Path) -> list[dict]:
    out = []
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[:MAX_LINES]:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict) and d.get("status") == "ok":
                out.append(d)
    except OSError:
        pass
    return out


def _ok_number(d: dict, key: str) -> bool:
    v = d.get(key)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1e9


def run_measurements(run: dict, catalog: Catalog, led: Ledger,
                     a: Assumptions) -> tuple[list[Measurement], RunTiming | None, str]:
    """A finished run's generate calls as measurements, and its billed wall time against them (None for a
    run relaunched on several instances: it has no one wall time); or why it is not used ('' when it is)."""
    from planner.architecture import inventory
    from planner.calibration import Measurement, RunTiming
    from planner.speed import ModelCost, fixed_seconds

    from . import localrig

    rid = run["id"]
    if run["state"] != "done":
        return [], None, f"{rid}: {run['state']} ({run.get('reason') or 'not finished'}): not used"
    out = Path(run["dir"]) / "out"
    try:
        summary = json.loads((out / "summary.json").read_text())
        request = json.loads((Path(run["dir"]) / "request.json").read_text())
    except (OSError, ValueError):
        return [], None, f"{rid}: no summary.json or request.json: not used"
    if not isinstance(summary, dict) or not summary.get("complete"):
        return [], None, f"{rid}: its worker did not finish the plan: not used"
    model = (request.get("job") or {}).get("model") or {}
    try:
        spec = catalog.model(str(model.get("name", "")))
    except ModelConfigError:
        return [], None, f"{rid}: model {model.get('name')!r} is not in the catalog: not used"
    loads = [x for x in summary.get("loads") or [] if isinstance(x, dict)]
    env = summary.get("environment") if isinstance(summary.get("environment"), dict) else {}
    if not loads:
        return [], None, f"{rid}: no model load recorded: not used"
    if loads[0].get("device") == "cpu":
        device = localrig.NAME
    else:
        names = [str(n)[:200] for n in env.get("gpus") or [] if isinstance(n, str)] if isinstance(env.get("gpus"), list) else []
        g = catalog.gpu(str(names[0])) if names else None
        if g is None:
            return [], None, f"{rid}: its GPU {names[:1]} is not in the catalog: not used"
        device = g.name
    merge = spec.vision.spatial_merge_size ** 2 if spec.vision else 0
    groups: dict[tuple, list[dict]] = {}
    busy, samples = 0.0, 0
    kinds = {t.get("name"): t.get("kind") for t in (request.get("job") or {}).get("tasks") or [] if isinstance(t, dict)}
    for path in sorted((out / "results").glob("*.jsonl")):
        for x in _lines(path):
            if not all(_ok_number(x, k) for k in ("latency_s", "ttft_s", "batch_size", "prefill_tokens",
                                                  "visual_tokens", "decode_tokens")) or x["batch_size"] < 1:
                continue
            samples += 1
            busy += x["latency_s"] / x["batch_size"]
            if kinds.get(x.get("task")) in RUN_KINDS and x.get("quantization") in ("bf16", "fp16", "nf4", "int8"):
                groups.setdefault((x["task"], x["quantization"], x["batch_size"], x["visual_tokens"]), []).append(x)
    rows = []
    for (task, quant, batch, visual), xs in groups.items():
        def mean(key: str) -> float:
            return sum(x[key] for x in xs) / len(xs)
        peak = max((x.get("peak_memory_bytes") or 0 for x in xs if _ok_number(x, "peak_memory_bytes")), default=0)
        rows.append(Measurement(
            device=device, model=spec.name, quantization=quant, batch=int(batch),
            prefill_tokens=round(mean("prefill_tokens")), visual_tokens=int(visual), vit_patches=int(visual) * merge,
            new_tokens=max(1, round(mean("decode_tokens"))), ttft_s=mean("ttft_s"),
            decode_s=max(mean("latency_s") - mean("ttft_s"), 0.0), calls=max(1, len(xs) // int(batch)),
            peak_allocated_bytes=peak or None if device != localrig.NAME else None, source=f"{rid}:{task}"))
    inst = led.instances(rid)
    timing = None
    if len(inst) == 1 and inst[0].ended_at:
        load = fixed_seconds(ModelCost(spec, inventory(spec)), run["quantization"], run["provider"], a)[3]
        timing = RunTiming(run_id=rid, provider=run["provider"], wall_s=inst[0].ended_at - inst[0].started_at,
                           busy_s=busy, samples=samples, modelled_load_s=load)
    return rows, timing, ""


def gather(led: Ledger, catalog: Catalog, a: Assumptions,
           run_ids: list[str] | None = None) -> tuple[list[Measurement], list[RunTiming], list[str]]:
    """Measurements and timings of the ledger's finished runs (or `run_ids`), and why others were not used."""
    from . import home as homes

    rows, timings, excluded = [], [], []
    chosen = [homes.resolve(led, r) for r in run_ids] if run_ids else led.runs()
    for run in chosen:
        got, timing, why = run_measurements(run, catalog, led, a)
        if why:
            excluded.append(why)
            if run_ids:
                raise InputError(f"run {why}", "calibrate from runs that finished their plan (`budget status`)")
            continue
        if timing is not None:
            timings.append(timing)
        rows += got
    return rows, timings, excluded


# --------------------------------------------------------------------------- the command


def run(home: Path, catalog: Catalog, files: list[Path], run_ids: list[str] | None = None) -> Calibration:
    """Fit from the ledger's finished runs (or `run_ids`) and `files`; store the fit; return it."""
    from planner.calibration import Predictor, calibrate

    from . import home as homes
    from .money import results

    led = homes.ledger(home)
    try:
        a = Assumptions()
        rows, timings, excluded = gather(led, catalog, a, run_ids)
        for f in files:
            rows += read_measurements(f, catalog)
        if not rows:
            raise InputError("nothing to calibrate from: no finished run in the ledger"
                             + (f" ({len(excluded)} not usable: {excluded[0]})" if excluded else "")
                             + (" and no measurement file" if not files else ""),
                             "finish a run (`budget run PLAN`), or pass --measurements FILE "
                             "(benchmarks/measured/*.jsonl)")
        gpu = devices(catalog, home)
        pr = Predictor(catalog.model, gpu)
        cal = calibrate(pr, rows, timings, a, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), excluded)
        results.save_calibration(led, cal.model_dump_json(), time.time())
        return cal
    finally:
        led.close()


def calibration(home: Path) -> Calibration | None:
    """The newest stored calibration, or None (no ledger, none stored, or one this version cannot read)."""
    path = home / "ledger.db"
    if not path.exists():
        return None
    from planner.calibration import Calibration

    from .money import results
    from .money.ledger import Ledger

    led = Ledger(path)
    try:
        doc = results.calibration(led)
    finally:
        led.close()
    if doc is None:
        return None
    try:
        return Calibration.model_validate_json(doc)
    except ValueError:
        return None


def show(home: Path, catalog: Catalog) -> dict:
    """For every finished run: estimate vs actual (hours, cost, peak memory) before and after the stored
    calibration; and the stored fits."""
    from planner.calibration import mean_abs, relative_error

    from . import home as homes

    cal = calibration(home)
    led = homes.ledger(home)
    try:
        out = []
        for r in led.runs():
            if r["state"] != "done":
                continue
            inst = led.instances(r["id"])
            if not inst or not all(i.ended_at for i in inst):
                continue
            hours = sum(i.ended_at - i.started_at for i in inst) / 3600
            spent = led.spent_run(r["id"])
            row = {"run": r["id"], "plan": r["plan"], "provider": r["provider"], "quantization": r["quantization"],
                   "actual_h": hours, "actual_cny": str(spent), "estimate_h": (r["estimate_s"] or 0) / 3600,
                   "estimate_cny": r["estimate_cny"]}
            # a run with no estimate (a notebook's results imported without --plan) has no error to show
            row["error_before"] = relative_error(row["estimate_h"], hours) if hours > 0 and r["estimate_s"] else None
            row["estimate_after_h"] = _re_estimate(r, catalog, home, cal)
            row["error_after"] = (relative_error(row["estimate_after_h"], hours)
                                  if row["estimate_after_h"] and hours > 0 else None)
            out.append(row)
    finally:
        led.close()
    return {"runs": out, "calibration": cal.model_dump(mode="json") if cal else None,
            "mean_error_before": mean_abs([r["error_before"] for r in out if r["error_before"] is not None]),
            "mean_error_after": mean_abs([r["error_after"] for r in out if r["error_after"] is not None])}


def _re_estimate(run: dict, catalog: Catalog, home: Path, cal: Calibration | None) -> float | None:
    """The run's hours as the planner estimates them now, with the stored calibration."""
    from planner.plans import load_plan

    from .cloud import registry

    try:
        req = json.loads((Path(run["dir"]) / "request.json").read_text())
        plan = load_plan(Path(run["plan_path"]))
        here = registry.PROVIDERS[req["provider"]].this_machine
        return run_time(plan, catalog, home, req["provider"], req["offer"]["gpu"], int(req["offer"]["gpu_count"]),
                        req["quantization"], bool(req.get("spot")), cal, here)[0].total_s / 3600
    except Exception:  # noqa: BLE001 - a plan moved or changed since, an old request: no re-estimate for that run
        return None


def run_time(plan: EvalPlan, catalog: Catalog, home: Path, provider: str, gpu: str, gpu_count: int, quant: str,
             spot: bool, cal: Calibration | None, this_machine: bool = False):
    """(TimeEstimate, calibration line) of `plan` on the rig a run really uses: this machine's CPU when the
    provider's instance is this machine, the offer's GPUs otherwise; with the rig's calibrated assumptions
    when there are some."""
    from planner.estimate import plan_on_rig

    from . import localrig

    rig = devices(catalog, home)(localrig.NAME if this_machine else gpu)
    count = 1 if this_machine else gpu_count
    a, said = cal.for_rig(Assumptions(), rig.name, quant, provider) if cal else (Assumptions(), "")
    return plan_on_rig(plan, catalog.model(plan.model), rig, count, quant, provider, a, spot), said

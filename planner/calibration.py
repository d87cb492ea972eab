"""Calibration: fit the time model's factors and the memory margins to measurements, and hand each
rig its fitted assumptions.

A `Measurement` is one shape of generate call measured on one device (a catalog GPU, or `CPU` for
this machine): per sample prompt/visual tokens and ViT patches, new tokens, the batch, time to first
token, decode time, and the allocator's peak where the device reports one. They come from the
worker's task summaries of finished runs and from `benchmarks/gpu_check.py --grid` files.

The fit, per device:
- speed: the time model's own fit (`planner.timefit`, least squares in relative error of each call's time,
  started from the current assumptions, damped so that rows which cannot separate two factors leave them
  near where they were): 16-bit rows move the host's per-layer time and the bandwidth efficiency; nf4 / int8
  rows move that quantization's per-linear host time over the device's 16-bit factors.
- Rows more than 3x the median residual off (and over 25 %) are outliers: reported, left out, refitted.
- Memory: memory_extra_mib = the largest amount a measured peak exceeds the modelled allocations by
  (+5 %), and headroom (the floor over the weights) lowered only as far as the largest measured
  reserved peak allows. Every fitted estimate stays >= every measured peak.
Per provider, from finished runs: the fixed seconds (boot) and the per-sample overhead outside the
generate calls, from the run's wall time less its busy time.

Pure: no torch, no I/O. `runner/calibrate.py` gathers measurements and stores the result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from .architecture import inventory
from .assumptions import Assumptions
from .memory import dynamic, peak_of, weight_layout
from .models import Gpu, Model, ModelSpec
from .speed import SIXTEEN, ModelCost, pass_phases
from .timefit import OURS, Row, TimeModel, band, fit, stack_coefficients, worker_factors
from .workload import Pass

QUANTIZED = ("nf4", "int8")
OUTLIER_X, OUTLIER_MIN = 3.0, 0.25
MEMORY_CUSHION = 1.05
MEMORY_FACTORS = ("memory_extra_mib", "headroom")


class Measurement(Model):
    """One measured shape of generate call (times per call, tokens per sample)."""

    device: str
    model: str
    quantization: str
    batch: int
    prefill_tokens: int
    visual_tokens: int = 0
    vit_patches: int = 0
    new_tokens: int
    ttft_s: float
    decode_s: float
    calls: int = 1  # generate calls this row averages
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    double_quant: bool = True
    source: str

    def shape(self) -> Pass:
        return Pass(self.prefill_tokens, max(self.new_tokens, 1), self.visual_tokens,
                    (self.vit_patches,) if self.vit_patches else ())


class RunTiming(Model):
    """A finished run's wall time against its generate calls, for the provider's fixed costs."""

    run_id: str
    provider: str
    wall_s: float  # billed: instance start to end
    busy_s: float  # inside generate calls
    samples: int
    modelled_load_s: float  # what the model says loading takes (kept out of the fit)


class RigFit(Model):
    """Fitted factors for one device x quantization, with where they came from."""

    device: str
    quantization: str
    factors: dict[str, float]
    samples: int
    sources: list[str]
    error_before: float | None  # mean |relative error| of call time on these rows, defaults
    error_after: float | None
    memory_error_before: float | None = None
    memory_error_after: float | None = None
    outliers: list[str] = []


class ProviderFit(Model):
    provider: str
    factors: dict[str, float]
    runs: list[str]
    error_before: float | None
    error_after: float | None


class Calibration(Model):
    """What `budget calibrate` stored: per rig and per provider fits, with their provenance."""

    created_at: str
    rigs: list[RigFit] = []
    providers: list[ProviderFit] = []
    excluded: list[str] = []  # runs or rows not used, with why

    def rig(self, device: str, quant: str) -> RigFit | None:
        quant = "bf16" if quant == "fp16" else quant
        return next((r for r in self.rigs if r.device == device and r.quantization == quant), None)

    def for_rig(self, base: Assumptions, device: str, quant: str, provider: str = "") -> tuple[Assumptions, str]:
        """`base` with this rig's and provider's fitted factors; and a line saying what was used."""
        said, data = [], base.model_dump()
        base16 = self.rig(device, "bf16")
        fit = self.rig(device, quant)
        if base16 is not None:  # its speed factors; its memory margins speak for 16-bit loads only
            data.update({k: v for k, v in base16.factors.items()
                         if fit is base16 or k not in MEMORY_FACTORS})
        if fit is not None:
            data.update(fit.factors)
        if fit is not None:
            said.append(f"calibrated from {_count(fit)} on {device}/{quant}")
        elif base16 is not None:
            said.append(f"calibrated from {_count(base16)} on {device}/16-bit (no {quant} measurement: "
                        "its slowdowns are the defaults)")
        pf = next((p for p in self.providers if p.provider == provider), None)
        if pf is not None:
            data.update(pf.factors)
            said.append(f"fixed costs from {len(pf.runs)} {provider} run{'s' if len(pf.runs) != 1 else ''}")
        return (Assumptions.model_validate(data) if said else base), "; ".join(said)


def _count(f: RigFit) -> str:
    """'2 runs and 45 measurements (file.jsonl)': a run's rows share its id (one per task, per sweep size),
    a file's rows are one source each."""
    runs = {s.split(":")[0] for s in f.sources if not s.startswith("file:")}
    rows = [s for s in f.sources if s.startswith("file:")]
    files = sorted({s.split(":")[1] for s in rows})
    parts = []
    if runs:
        parts.append(f"{len(runs)} run{'s' if len(runs) != 1 else ''}")
    if files:
        parts.append(f"{len(rows)} measurements ({', '.join(files)})")
    return " and ".join(parts) or f"{f.samples} measurements"


# --------------------------------------------------------------------------- predictions


class Predictor:
    """Model predictions for measurements (one ModelCost per model)."""

    def __init__(self, specs: Callable[[str], ModelSpec], gpus: Callable[[str], Gpu]) -> None:
        self.specs, self.gpus = specs, gpus
        self._mc: dict[str, ModelCost] = {}

    def cost(self, name: str) -> ModelCost:
        if name not in self._mc:
            spec = self.specs(name)
            self._mc[name] = ModelCost(spec, inventory(spec))
        return self._mc[name]

    def phases(self, m: Measurement, a: Assumptions, quant: str | None = None):
        return pass_phases(self.cost(m.model), m.shape(), m.batch, quant or m.quantization, self.gpus(m.device), 1, a)

    def call_s(self, m: Measurement, a: Assumptions) -> float:
        p = self.phases(m, a)
        return p.ttft_s + p.decode_s

    def dynamic_bytes(self, m: Measurement, a: Assumptions) -> tuple[int, int]:
        """(modelled weights, modelled dynamic bytes: KV cache + activations + scratch + the fitted extra)."""
        spec = self.specs(m.model)
        w = weight_layout(spec, inventory(spec), m.quantization, double_quant=m.double_quant)
        d = dynamic(spec, peak_of([(m.shape(), m.batch)]), a)
        scratch = w.largest_quantized16 if m.quantization in QUANTIZED else 0
        extra = int(a.memory_extra_mib * 2**20)
        return w.total, d.kv_per_layer * spec.text.num_hidden_layers + max(d.llm_act, d.vision_act) + scratch + extra


def relative_error(pred: float, measured: float) -> float:
    return (pred - measured) / measured if measured > 0 else 0.0


def mean_abs(xs: list[float]) -> float | None:
    return sum(abs(x) for x in xs) / len(xs) if xs else None


# --------------------------------------------------------------------------- fitting


SPEED_FACTORS = {"16": ("decode_overhead_ms_per_layer", "bandwidth_efficiency")} | {
    q: (f"{q}_overhead_ms_per_linear",) for q in QUANTIZED}


def fit_speed(pr: Predictor, rows: list[Measurement], a: Assumptions, quant: str) -> dict[str, float]:
    """The rig's speed factors by the time model's own fit (`planner.timefit`), from `a`: 16-bit rows move
    the host's per-layer time and the bandwidth efficiency; nf4 / int8 rows that quantization's per-linear host
    time over the (fitted) 16-bit factors. Prefill efficiency and slowdowns stay the defaults: they are fitted on
    published 30k-token prompts and our 4k ones, and a short prompt's first token is launch-bound and says
    nothing of them."""
    model = TimeModel([Row(OURS, r.model, r.device, 1, r.quantization, r.batch, r.shape(), r.ttft_s + r.decode_s, r.source)
                   for r in rows], pr.specs, pr.gpus, a.hop_latency_ms)
    start = stack_coefficients(a)
    free = ([f"layer@{OURS}", "weights"] if quant in SIXTEEN
            else [f"qlinear.{quant}@{OURS}"])
    got = worker_factors(fit(model, list(range(len(rows))), start=start, free=free))
    return {k: got[k] for k in SPEED_FACTORS["16" if quant in SIXTEEN else quant]}


def fit_memory(pr: Predictor, rows: list[Measurement], a: Assumptions) -> dict[str, float]:
    """memory_extra_mib and headroom from rows with a measured peak; the fitted estimate stays at or above
    every one of them."""
    mem = [r for r in rows if r.peak_allocated_bytes]
    if not mem:
        return {}
    under, floors = 0, []
    for r in mem:
        weights, dyn = pr.dynamic_bytes(r, a)
        under = max(under, r.peak_allocated_bytes - weights - dyn)
        if r.peak_reserved_bytes and weights:
            floors.append((r.peak_reserved_bytes + a.cuda_context_mib * 2**20) / weights)
    out = {"memory_extra_mib": a.memory_extra_mib + under * MEMORY_CUSHION / 2**20}
    if floors:  # only ever lowered, never below what the card really held
        out["headroom"] = min(a.headroom, max(1.0, max(floors) * MEMORY_CUSHION))
    return out


def memory_errors(pr: Predictor, rows: list[Measurement], a: Assumptions) -> list[float]:
    out = []
    for r in rows:
        if r.peak_allocated_bytes:
            weights, dyn = pr.dynamic_bytes(r, a)
            out.append(relative_error(weights + dyn, r.peak_allocated_bytes))
    return out


def fit_rig(pr: Predictor, device: str, quant: str, rows: list[Measurement], base: Assumptions,
            sixteen: dict[str, float] | None = None) -> RigFit:
    """Fit one device x quantization (16-bit: its own factors; nf4/int8: slowdowns over `sixteen`),
    dropping outliers once."""
    a16 = base.model_copy(update=sixteen or {})
    outliers: list[str] = []

    def fit(rs: list[Measurement]) -> dict[str, float]:
        return {**fit_speed(pr, rs, a16, quant), **fit_memory(pr, rs, base)}

    factors = fit(rows)
    errs = [relative_error(pr.call_s(r, a16.model_copy(update=factors)), r.ttft_s + r.decode_s) for r in rows]
    med = statistics.median(abs(e) for e in errs) if errs else 0.0
    keep = [r for r, e in zip(rows, errs, strict=True) if not (abs(e) > OUTLIER_MIN and abs(e) > OUTLIER_X * med)]
    if len(keep) < len(rows) and keep:
        outliers = [f"{r.source} ({e:+.0%})" for r, e in zip(rows, errs, strict=True) if r not in keep]
        rows, factors = keep, fit(keep)
    before = [relative_error(pr.call_s(r, base), r.ttft_s + r.decode_s) for r in rows]
    after = [relative_error(pr.call_s(r, a16.model_copy(update=factors)), r.ttft_s + r.decode_s) for r in rows]
    factors["time_band"] = band(after)  # the band printed beside this rig's estimates: its own residuals
    fitted = a16.model_copy(update=factors)
    return RigFit(device=device, quantization="bf16" if quant == "fp16" else quant,
                  factors={k: round(v, 6) for k, v in factors.items() if math.isfinite(v)}, samples=len(rows),
                  sources=sorted({r.source for r in rows}), error_before=mean_abs(before), error_after=mean_abs(after),
                  memory_error_before=mean_abs(memory_errors(pr, rows, base)),
                  memory_error_after=mean_abs(memory_errors(pr, rows, fitted)), outliers=outliers)


def fit_provider(provider: str, runs: list[RunTiming], a: Assumptions) -> ProviderFit | None:
    """The provider's boot seconds and per-sample overhead from finished runs: wall time less the generate
    calls and the modelled load is boot + samples x overhead (least squares when the runs differ in
    samples, else the overhead stays and boot takes the rest)."""
    if not runs:
        return None
    key = {"aws": "boot_s_aws", "local": "boot_s_local"}.get(provider, "boot_s")
    rest = [max(r.wall_s - r.busy_s - r.modelled_load_s, 0.0) for r in runs]
    n = [float(r.samples) for r in runs]
    boot, per = None, a.sample_overhead_s
    if len(set(n)) > 1:
        mean_n, mean_r = statistics.fmean(n), statistics.fmean(rest)
        slope = sum((x - mean_n) * (y - mean_r) for x, y in zip(n, rest, strict=True)) / sum((x - mean_n) ** 2 for x in n)
        if slope >= 0 and mean_r - slope * mean_n >= 0:
            per, boot = slope, mean_r - slope * mean_n
    if boot is None:
        boot = max(statistics.fmean(r - x * per for r, x in zip(rest, n, strict=True)), 0.0)
    base_boot = getattr(a, key)

    def err(b: float, p: float) -> float | None:
        return mean_abs([relative_error(b + x * p + r.busy_s + r.modelled_load_s, r.wall_s) for r, x in zip(runs, n,
                                                                                                           strict=True)])
    return ProviderFit(provider=provider, factors={key: round(boot, 3), "sample_overhead_s": round(per, 4)},
                       runs=[r.run_id for r in runs], error_before=err(base_boot, a.sample_overhead_s),
                       error_after=err(boot, per))


def calibrate(pr: Predictor, rows: list[Measurement], runs: list[RunTiming], base: Assumptions,
              created_at: str, excluded: list[str] | None = None) -> Calibration:
    """Fit every device x quantization in `rows` (16-bit first: the quantized fits build on it) and every
    provider in `runs`."""
    by: dict[tuple[str, str], list[Measurement]] = {}
    for r in rows:
        by.setdefault((r.device, "bf16" if r.quantization == "fp16" else r.quantization), []).append(r)
    rigs: list[RigFit] = []
    sixteen: dict[str, dict[str, float]] = {}
    for (device, quant), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] not in SIXTEEN, kv[0][1])):
        fit = fit_rig(pr, device, quant, rs, base, sixteen.get(device))
        if quant in SIXTEEN:
            sixteen[device] = {k: v for k, v in fit.factors.items() if k not in MEMORY_FACTORS}
        rigs.append(fit)
    providers = []
    for prov in sorted({r.provider for r in runs}):
        f = fit_provider(prov, [r for r in runs if r.provider == prov], base)
        if f is not None:
            providers.append(f)
    return Calibration(created_at=created_at, rigs=rigs, providers=providers, excluded=list(excluded or []))

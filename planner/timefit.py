"""The time model's coefficients fitted to measured generate calls, and the fit's residuals.

Rows are single-stream `generate` calls, each read with its own source's speed definition:
- Qwen's published transformers tables (`data/published/hf_speed.csv`: Qwen2.5 on A100 with transformers
  4.46, tokens/s = generated / time; Qwen3 on H20 with 4.51.3, tokens/s = (prompt + generated) / time),
  every size x input length x quantization they list;
- our own rows (`benchmarks/measured/*.jsonl`: time to first token + decode time of each call);
- the serving engines' published rows (`data/published/engine_speed.csv`: vLLM 0.6.3 on A100, SGLang 0.4.6 on H20),
  stacks of their own whose terms `fit_engines` fits with the card's efficiencies held at the fit of the rows above
  (planner/engines.py ships the result).
Host costs (per layer, per quantized linear, per MoE expert) belong to a row's stack (software + host);
the card's efficiencies (weights, attention, compute) are shared by every row. The fit minimises the
squared relative error of each row's whole call time (Gauss-Newton on the piecewise-linear model of
`planner.speed`, coefficients kept in range). `band()` turns residuals into the +-fraction printed beside
an estimate. Pure: no I/O beyond reading the bundled published tables.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .architecture import inventory, load_config
from .models import Gpu, ModelSpec
from .speed import SIXTEEN, ModelCost, Terms, call_terms, phases_of
from .workload import Pass

PUBLISHED = Path(__file__).parent / "data" / "published"
OURS = "gpubudget-tf5"  # the worker's stack: transformers 5.x, what `budget run` executes
CARD = ("weights", "compute")  # reciprocal efficiencies, shared
# the decode attention kernel of each stack: its efficiency is the kernel's (shared by the stacks that run it)
# (torch's SDPA runs its FlashAttention-2 backend for 16-bit decode on Ampere and later; our rows reach only
# 4k of context, too short to measure it, so the worker shares the newest FA2 measured (2.7.4, on Hopper);
# AutoAWQ's fused modules bring their own attention and KV cache)
# Serving engines (`data/published/engine_speed.csv`) are stacks of their own: their decode step is a captured CUDA
# graph (tiny host time per layer), their MoE kernels run the experts the batch hits, their multi-card rows are
# tensor-parallel, and their paged decode attention reads each KV head once for its group of query heads.
VLLM, SGLANG = "qwen2.5-a100-vllm0.6", "qwen3-h20-sglang0.4.6"
ENGINE_STACKS = (VLLM, SGLANG)
KERNEL = {"qwen2.5-a100-tf4.46": "fa2.5", "qwen3-h20-tf4.51": "fa2.7", "qwen3-h20-tf4.51-autoawq": "autoawq",
          OURS: "fa2.7", VLLM: "vllm0.6", SGLANG: "sglang0.4.6"}
# kernels that read the KV cache once per KV head, not once per query head
GQA_AWARE = {"autoawq", "vllm0.6", "sglang0.4.6"}
LOOPS_ALL_EXPERTS = {"qwen3-h20-tf4.51"}  # transformers <= 4.51 loops every expert of an MoE layer
# SGLang's H20 rows stream the weights at a third of the H20's nominal 4.0 TB/s (Qwen3-32B BF16: 48 ms a step for
# 65.5 GB, slower than transformers on the same card), where every A100/H200 row streams at ~64% of its card's: that
# table gets its own streaming coefficient, so that its host terms are read cleanly; the planner prices SGLang on
# every card at the shared efficiency.
OWN_STREAMING = {SGLANG}
TENSOR_PARALLEL = set(ENGINE_STACKS)  # their multi-card rows split every layer (TP=n in the tables' notes)
START = {"layer": 0.5, "expert": 0.1, "qlinear": 0.05, "prefill": 1.0, "weights": 1.5, "attention": 6.0,
         "compute": 2.5, "allreduce": 0.02}


@dataclass(frozen=True, slots=True)
class Row:
    """One measured call (or the mean of several of one shape): `seconds` is its whole duration."""

    stack: str
    model: str
    gpu: str
    gpu_count: int
    quant: str
    batch: int
    shape: Pass
    seconds: float
    source: str
    speed: float = 0.0  # as published, in the source's own definition (0: not a published row)
    definition: str = ""  # "generated" | "prompt+generated" | "" (ours: seconds measured)
    memory_mb: float = 0.0  # published torch peak allocated, 2^20 bytes (all cards)

    def speed_of(self, seconds: float) -> float:
        """Tokens/s in this row's own definition for a call of `seconds`."""
        tokens = self.shape.new + (self.shape.prefill if self.definition == "prompt+generated" else 0)
        return tokens / seconds


def published_rows(path: Path | None = None) -> list[Row]:
    """Every row of the published tables, in file order."""
    p = path or PUBLISHED / "hf_speed.csv"
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    out = []
    for r in csv.DictReader(lines):
        n_in, new, tps = int(r["input_tokens"]), int(r["new_tokens"]), float(r["tokens_per_s"])
        tokens = new + (n_in if r["speed_definition"] == "prompt+generated" else 0)
        out.append(Row(r["stack"], r["model"], r["gpu"], int(r["gpu_count"]), r["quantization"], 1,
                       Pass(n_in, new, 0, ()), tokens / tps, r["source"], tps, r["speed_definition"],
                       float(r["memory_mb"] or 0)))
    return out


def engine_rows() -> list[Row]:
    """The serving engines' published rows (vLLM 0.6.3 on A100, SGLang 0.4.6 on H20), in file order."""
    return published_rows(PUBLISHED / "engine_speed.csv")


def measured_rows(docs: list[dict], source: str, merge: int = 4) -> list[Row]:
    """Our measurement lines (`benchmarks/gpu_check.py --grid`): one row per line, on the worker's stack.
    ViT patches are the visual tokens x the tower's spatial merge (2 x 2)."""
    out = []
    for d in docs:
        visual = int(d.get("visual_tokens") or 0)
        shape = Pass(int(d["prefill_tokens"]), int(d["new_tokens"]), visual, (visual * merge,) if visual else ())
        out.append(Row(OURS, d["model"], d["device"], int(d.get("gpu_count", 1)), d["quantization"],
                       int(d["batch"]), shape, float(d["ttft_s"]) + float(d["decode_s"]), source))
    return out


def published_specs() -> dict[str, ModelSpec]:
    return {p.stem: load_config(p, name=p.stem) for p in sorted((PUBLISHED / "models").glob("*.json"))}


class TimeModel:
    """Terms of every row (computed once) and predictions for a coefficient vector."""

    def __init__(self, rows: list[Row], specs: Callable[[str], ModelSpec], gpus: Callable[[str], Gpu],
                 hop_latency_ms: float = 1.0) -> None:
        self.rows = rows
        costs: dict[str, ModelCost] = {}
        self.terms: list[Terms] = []
        for r in rows:
            if r.model not in costs:
                spec = specs(r.model)
                costs[r.model] = ModelCost(spec, inventory(spec))
            gpu: Gpu = gpus(r.gpu)
            self.terms.append(call_terms(costs[r.model], r.shape, r.batch, r.quant, gpu, r.gpu_count, hop_latency_ms,
                                         all_experts=r.stack in LOOPS_ALL_EXPERTS, tp=r.stack in TENSOR_PARALLEL))
        self.uses: list[list[str]] = []  # the coefficients each row depends on
        for r, t in zip(rows, self.terms, strict=True):
            card = [f"weights@{r.stack}" if r.stack in OWN_STREAMING else "weights", "compute"]
            own = [*card, f"attention@{KERNEL[r.stack]}"] + [f"{k}@{r.stack}" for k, v in t.host.items() if v > 0]
            self.uses.append(own + ([f"prefill.{r.quant}@{r.stack}"] if r.quant not in SIXTEEN else []))
        self.names = sorted({n for u in self.uses for n in u})

    def coef(self, x: dict[str, float], i: int) -> dict[str, float]:
        """Row i's coefficients: its stack's host terms and the shared card terms."""
        stack = self.rows[i].stack
        kernel = KERNEL[stack]
        out = {k: x[k] for k in CARD} | {"attention_kv" if kernel in GQA_AWARE else "attention": x[f"attention@{kernel}"]}
        if stack in OWN_STREAMING:
            out["weights"] = x[f"weights@{stack}"]
        for k in self.terms[i].host:
            out[k] = x.get(f"{k}@{stack}", 0.0)
        return out

    def predict(self, x: dict[str, float], i: int) -> float:
        r = self.rows[i]
        slow = x.get(f"prefill.{r.quant}@{r.stack}", 1.0)
        return phases_of(self.terms[i], self.coef(x, i), pre_slow=slow, vision_slow=slow).total_s


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (small dense systems)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[piv] = m[piv], m[c]
        if abs(m[c][c]) < 1e-300:
            continue
        for r in range(n):
            if r != c and m[r][c]:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c], strict=True)]
    return [m[i][n] / m[i][i] if abs(m[i][i]) > 1e-300 else 0.0 for i in range(n)]


def _bounds(name: str) -> tuple[float, float]:
    base = name.split("@")[0]
    if base == "prefill.fp8":  # W8A8 multiplies on FP8 tensor cores: up to twice the 16-bit rate
        return 0.5, 100.0
    if base.startswith("prefill."):  # a quantized prefill is never faster than the 16-bit one
        return 1.0, 100.0
    return (1.0, 1e4) if base in CARD or base == "attention" else (0.0, 1e3)


def fit(model: TimeModel, use: list[int], iterations: int = 60, start: dict[str, float] | None = None,
        free: Iterable[str] | None = None) -> dict[str, float]:
    """Coefficients minimising sum over rows `use` of (predicted / measured - 1)^2, from `start` (default: a
    neutral guess), moving only the coefficients in `free` (default: every one the rows depend on)."""
    names = sorted({n for i in use for n in model.uses[i]} & (set(free) if free is not None else set(model.names)))
    col = {n: k for k, n in enumerate(names)}
    x = {n: START[n.split("@")[0].split(".")[0]] for n in model.names} | dict(start or {})
    lam = 1e-3
    cost = _cost(model, x, use)
    normal = _normal(model, x, use, col)
    for _ in range(iterations):
        ata, atr = normal
        damped = [[v + (lam * (v + 1e-12) if a == b else 0.0) for b, v in enumerate(row)] for a, row in enumerate(ata)]
        step = _solve(damped, atr)
        trial = x | {n: min(max(x[n] + s, _bounds(n)[0]), _bounds(n)[1]) for n, s in zip(names, step, strict=True)}
        c2 = _cost(model, trial, use)
        if c2 < cost:
            x, lam = trial, max(lam / 3, 1e-9)
            if cost - c2 < 1e-8 * cost:
                break
            cost = c2
            normal = _normal(model, x, use, col)
        else:  # the same point, a shorter step: the normal equations stand
            lam *= 10
            if lam > 1e8:
                break
    return x


def _normal(model: TimeModel, x: dict[str, float], use: list[int], col: dict[str, int]
            ) -> tuple[list[list[float]], list[float]]:
    """J'J and -J'r of the relative residuals at `x` (a row's Jacobian has a handful of non-zeros: summed as
    outer products of those)."""
    ata = [[0.0] * len(col) for _ in col]
    atr = [0.0] * len(col)
    for i in use:
        meas = model.rows[i].seconds
        p0 = model.predict(x, i)
        r = p0 / meas - 1
        grad = []
        for n in model.uses[i]:
            if n in col:
                h = max(abs(x[n]) * 1e-6, 1e-9)
                grad.append((col[n], (model.predict({**x, n: x[n] + h}, i) - p0) / h / meas))
        for a, u in grad:
            atr[a] -= u * r
            row = ata[a]
            for b, v in grad:
                row[b] += u * v
    return ata, atr


def _cost(model: TimeModel, x: dict[str, float], use: list[int]) -> float:
    return sum((model.predict(x, i) / model.rows[i].seconds - 1) ** 2 for i in use)


def residuals(model: TimeModel, x: dict[str, float], rows: list[int]) -> list[float]:
    """Relative error of the predicted call time, (predicted - measured) / measured, per row."""
    return [model.predict(x, i) / model.rows[i].seconds - 1 for i in rows]


def band(res: list[float], share: float = 0.9) -> float:
    """The +-fraction that covers `share` of the residuals (their |value|'s quantile, rounded up to 1%)."""
    if not res:
        return 0.0
    xs = sorted(abs(r) for r in res)
    k = min(len(xs) - 1, max(0, math.ceil(share * len(xs)) - 1))
    return math.ceil(xs[k] * 100) / 100


def folds(n: int, k: int = 4, seed: int = 23) -> list[int]:
    """The held-out rule: row i belongs to fold j when it is the j-th mod k of the rows' indexes shuffled by
    random.Random(seed) (fixed). Shuffling keeps every fold a spread of models, inputs and quantizations
    (in file order every fourth row is one quantization, or one input length, of every table)."""
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = [0] * n
    for j, i in enumerate(order):
        out[i] = j % k
    return out


def cross_validate(model: TimeModel, held_rows: list[int], k: int = 4, use: list[int] | None = None,
                   start: dict[str, float] | None = None, free: Iterable[str] | None = None) -> dict[int, float]:
    """Each of `held_rows` predicted by a fit on the rows `use` (default: every row of the model) minus its fold:
    row -> residual. `start` and `free` as in `fit` (the engines' folds move only their stacks' terms)."""
    fold = folds(len(held_rows), k)
    rows = range(len(model.rows)) if use is None else use
    out: dict[int, float] = {}
    for f in range(k):
        held = {i for i, g in zip(held_rows, fold, strict=True) if g == f}
        x = fit(model, [i for i in rows if i not in held], start=start, free=free)
        out.update(zip(sorted(held), residuals(model, x, sorted(held)), strict=True))
    return out


def engine_names(model: TimeModel) -> list[str]:
    """The coefficients only engine rows use: their stacks' host terms and their attention kernels'."""
    kernels = {f"attention@{KERNEL[s]}" for s in ENGINE_STACKS}
    return [n for n in model.names if n.split("@")[-1] in ENGINE_STACKS or n in kernels]


def fit_engines(model: TimeModel, base: dict[str, float]) -> dict[str, float]:
    """The engine stacks' terms fitted to their rows with the card's shared efficiencies held at `base` (the fit of
    the transformers rows: a card streams and multiplies at the same share of its peak whoever launches the
    kernels)."""
    rows = [i for i, r in enumerate(model.rows) if r.stack in ENGINE_STACKS]
    return fit(model, rows, start=base, free=engine_names(model))


def worker_factors(x: dict[str, float]) -> dict[str, float]:
    """The fit's coefficients as the worker stack's assumptions (`planner.assumptions` names). MoE: no row
    of ours has one, so its per-expert host time is the only stack that measured one."""
    expert = [x[f"expert@{OURS}"]] if f"expert@{OURS}" in x else [v for n, v in x.items() if n.startswith("expert@")]
    return {"decode_overhead_ms_per_layer": x[f"layer@{OURS}"],
            "nf4_overhead_ms_per_linear": x.get(f"qlinear.nf4@{OURS}", 0.0),
            "int8_overhead_ms_per_linear": x.get(f"qlinear.int8@{OURS}", 0.0),
            "nf4_prefill_slowdown": x.get(f"prefill.nf4@{OURS}", 1.0),
            "int8_prefill_slowdown": x.get(f"prefill.int8@{OURS}", 1.0),
            "moe_expert_overhead_ms": expert[0] if expert else 0.0,
            "bandwidth_efficiency": 1 / x["weights"], "prefill_efficiency": 1 / x["compute"],
            "attention_efficiency": 1 / x[f"attention@{KERNEL[OURS]}"]}


def stack_coefficients(a) -> dict[str, float]:
    """The worker stack's assumptions as the fit's coefficients (the inverse of `worker_factors`)."""
    return {f"layer@{OURS}": a.decode_overhead_ms_per_layer, f"expert@{OURS}": a.moe_expert_overhead_ms,
            f"qlinear.nf4@{OURS}": a.nf4_overhead_ms_per_linear, f"qlinear.int8@{OURS}": a.int8_overhead_ms_per_linear,
            f"prefill.nf4@{OURS}": a.nf4_prefill_slowdown, f"prefill.int8@{OURS}": a.int8_prefill_slowdown,
            "weights": 1 / a.bandwidth_efficiency, "compute": 1 / a.prefill_efficiency,
            f"attention@{KERNEL[OURS]}": 1 / a.attention_efficiency}

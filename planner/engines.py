"""Serving engines: which may run a candidate, what each holds in memory, how fast it runs and what it costs to
start. The optimizer chooses one per candidate like the quantization (offer x count x quantization x engine).

- `hf`: transformers' `generate` in the worker's process - the worker's stack (`planner.speed`), the plan's
  `batch_size`, accelerate's pipeline split across cards (one card works at a time).
- `transformers`: `transformers serve`, the same generate behind an OpenAI-compatible server. On our stack it
  answers one request after another (FACTS: `--continuous-batching` falls back to sequential for Qwen3-VL), so
  it is priced as hf at batch 1, plus its install and start.
- `vllm`, `sglang`: servers that preallocate `memory_fraction` of every card (weights, activations, CUDA graphs
  and a KV pool), batch the requests in flight continuously, split each layer across the cards (tensor
  parallelism), run a decode step as a captured CUDA graph and their MoE kernels over the experts the batch hits.
  They are priced with the host terms fitted to their published stacks (`STACK_TERMS`: vLLM 0.6.3 on A100, SGLang
  0.4.6 on H20, `planner.timefit.fit_engines`) and the card's efficiencies shared with every stack. The versions
  the worker installs are newer: our vLLM 0.34 is priced with vLLM 0.6's fitted host terms, our SGLang 0.5.23 with
  SGLang 0.4.6's - the newest rows anyone published for Qwen.

Quantizations (FACTS "Serving engines"): hf and transformers run fp16/bf16 and bitsandbytes int8/nf4, not fp8 (the
worker's HF loader has no fp8 path). vllm and sglang run fp16/bf16; fp8 in flight - W8A8 on compute capability
>= 8.9, weight-only W8A16 (Marlin) from 8.0 - priced with the FP8 rows' terms, or the Marlin GPTQ-Int8 rows' below
8.9. Neither runs bitsandbytes for Qwen3-VL at the pinned versions (runner/worker/engine_commands.py, checked
against their CLI references): vLLM removed it in 0.28.0 (and it never loaded the MoE: vllm#32012), SGLang's
loader lacks the model's mapping; no in-flight int8 either. nf4/int8 run on hf (or transformers serve).

A server's memory: each card holds its share of the weights (1/n under tensor parallelism), the largest prefill's
activations, the CUDA context and graph pools, and a KV pool - whatever is left of `memory_fraction` x the card.
A candidate fits when one sequence of `max_model_len` (the plan's longest context) fits at the largest fraction
allowed; the fraction chosen is the smallest that holds the concurrency wanted (the plan's samples, at most
`engine_max_concurrency`) at that length, and the concurrency is what the pool then holds.
A server's time: each task's samples `concurrency` at a time, a decode step over B in flight = max(host, weights
streamed once + B x KV read, B x compute) (`planner.speed`'s step over a batch); the tasks a preallocating server
cannot run (the memory sweep, the 16-bit re-run) are skipped with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from .architecture import ParamGroup
from .assumptions import Assumptions
from .memory import dynamic, peak_of
from .models import ENGINE_NAMES, QUALITY_RANK, EngineComparison, Gpu, ModelSpec, TimeEstimate
from .money import display, unrounded
from .speed import ModelCost, call_terms, phases_of, verifies, with_fixed
from .speed import plan_tasks as speed_plan_tasks
from .timefit import SGLANG as SGLANG_STACK
from .timefit import VLLM as VLLM_STACK
from .workload import TaskLoad

ENGINES = ENGINE_NAMES
SERVERS = ("vllm", "sglang")
NAMES = {"vllm": "vLLM", "sglang": "SGLang"}  # preallocating, continuously batching, tensor-parallel
MIB = 1024**2

# planner.timefit.fit_engines on data/published/engine_speed.csv, the card's efficiencies held at the worker
# stack's fit (tests/planner/test_engines.py refits and compares). Host terms in ms per step: per decoder layer,
# per MoE expert hit per layer, per all-reduce (two a layer under tensor parallelism), per quantized linear;
# `attention`: the reciprocal share of bandwidth the paged decode kernel reads the KV cache at (once per KV head);
# `prefill.*`: a quantized prefill over the 16-bit one. vLLM's table has neither MoE nor FP8 rows: its expert and
# FP8 terms are SGLang's, the only engine table that has them.
STACK_TERMS: dict[str, dict[str, float]] = {
    VLLM_STACK: {"layer": 0.168, "allreduce": 0.0358, "attention": 1.0,
                 "qlinear.gptq-int8": 0.00106, "prefill.gptq-int8": 1.0},
    SGLANG_STACK: {"layer": 0.0993, "expert": 0.00549, "allreduce": 0.0, "attention": 2.18,
                   "qlinear.fp8": 0.000144, "prefill.fp8": 0.5, "qlinear.gptq-int8": 0.00271, "prefill.gptq-int8": 1.0},
}
STACK = {"vllm": VLLM_STACK, "sglang": SGLANG_STACK}
MIN_CC = {"vllm": 7.0, "sglang": 7.5}  # vLLM's GPU requirement; FlashInfer's (SGLang's attention) lowest arch


def fp8_kind(gpu: Gpu) -> str:
    """How a server engine runs fp8 on `gpu`: 'W8A8' (FP8 tensor cores) or 'W8A16' (Marlin: 8-bit weights, 16-bit
    math)."""
    return "W8A8" if gpu.compute_capability >= 8.9 else "W8A16"


def policy_refusal(engine: str, quant: str, spec: ModelSpec) -> str | None:
    """Why `engine` never runs `spec` in `quant`, whatever the card (None: it may)."""
    if engine in ("hf", "transformers"):
        return "no fp8 path in the worker's transformers loader (fp8 runs on vllm or sglang)" if quant == "fp8" else None
    if quant in ("int8", "nf4"):  # vLLM removed bitsandbytes in 0.28.0 (and it never loaded the MoE: vllm#32012);
        # SGLang's loader needs a bitsandbytes_stacked_params_mapping Qwen3-VL's class lacks; neither has LLM.int8
        return "vLLM 0.34 and SGLang 0.5.23 run no bitsandbytes (int8, nf4) for Qwen3-VL; use fp8, or hf"
    return None


def refusal(engine: str, quant: str, spec: ModelSpec, gpu: Gpu, gpu_count: int) -> str | None:
    """Why `engine` cannot run `spec` in `quant` on `gpu_count` x `gpu` (None: it can)."""
    why = policy_refusal(engine, quant, spec)
    if why is not None or engine not in SERVERS:
        return why
    cc = gpu.compute_capability
    if cc < MIN_CC[engine]:
        return f"{engine} needs a CUDA card of compute capability >= {MIN_CC[engine]:g}; {gpu.name} has {cc:g}"
    if quant == "fp8" and cc < 8.0:
        return f"fp8 needs compute capability >= 8.0 (W8A16 Marlin; W8A8 >= 8.9); {gpu.name} has {cc:g}"
    t, heads = spec.text, [spec.text.num_attention_heads] + ([spec.vision.num_heads] if spec.vision else [])
    kv = t.num_key_value_heads
    if gpu_count > 1 and (any(h % gpu_count for h in heads) or (kv % gpu_count and gpu_count % kv)):
        return (f"tensor parallelism over {gpu_count} cards needs the attention heads "
                f"({'/'.join(map(str, heads))}, {kv} KV) to divide evenly")
    return None


def skips(engine: str, load: TaskLoad, quant: str) -> str | None:
    """Why `engine` skips a task (None: it runs it). A preallocating server has no per-resolution peak to measure,
    and re-running answers in 16-bit would need a second server."""
    if engine == "hf":
        return None
    if engine == "transformers" and load.kind == "video":
        return "transformers serve takes no video data URI (it answers HTTP 500): run video with hf, vllm or sglang"
    if load.kind == "memory_sweep":
        return f"{engine} preallocates its share of each card: no per-resolution peak to measure"
    if load.sixteen_bit:
        if quant in ("bf16", "fp16"):
            return "the plan already runs in 16-bit"
        return f"{engine}: a 16-bit re-run needs a second server (not run)"
    return None


def max_model_len(loads: list[TaskLoad], skipped: dict[str, str], multiple: int = 256) -> int:
    """The longest context of the tasks run (prompt + visual + new tokens), rounded up to `multiple`."""
    longest = max((t.peak_tokens for t in loads if t.name not in skipped), default=1)
    return -(-longest // multiple) * multiple


def server_weights(inv: list[ParamGroup], quant: str) -> int:
    """Bytes of weights a server holds in `quant`: 16-bit, or fp8 in flight (every decoder linear and MoE expert
    at one byte and a scale per row; embeddings, lm_head, norms and the vision tower 16-bit)."""
    if quant != "fp8":
        return 2 * sum(g.params for g in inv)
    eight = [g for g in inv if g.where == "layer" and (g.linear or g.name == "mlp.experts")]
    return 2 * sum(g.params for g in inv) - sum(int(0.99 * g.numel) * g.count for g in eight)


@dataclass(frozen=True, slots=True)
class ServerMemory:
    """What a preallocating engine holds per card and the concurrency its KV pool allows."""

    fraction: float
    concurrency: int
    max_model_len: int
    weights: int  # per card
    kv_pool: int
    activations: int
    vision_activations: int
    overhead: int  # CUDA context + graph pools

    @property
    def total(self) -> int:
        return self.weights + self.kv_pool + max(self.activations, self.vision_activations) + self.overhead

    def card(self, layers: int) -> tuple[int, ...]:
        """One card as planner/memory.py's `card_parts` row: (layers, weights, kv, activations, vision, scratch,
        CUDA context + graphs, slack, floor adjust, total)."""
        return (layers, self.weights, self.kv_pool, self.activations, self.vision_activations, 0, self.overhead, 0, 0,
                self.total)


def server_notes(engine: str, mem: ServerMemory, gpu: Gpu, count: int, quant: str) -> list[str]:
    """What a plan row on a server engine says about it: the memory share, context and concurrency it is started
    with, tensor parallelism, and how it runs fp8 on this card."""
    notes = [f"{engine} preallocates {mem.fraction:.0%} of each card (--gpu-memory-utilization), "
             f"{mem.max_model_len} tokens of context, {mem.concurrency} requests in flight"
             + (f", tensor-parallel over {count} cards" if count > 1 else "")]
    if quant == "fp8":
        w8a8 = fp8_kind(gpu) == "W8A8"
        notes.append(f"fp8 in flight, {fp8_kind(gpu)} on {gpu.name} (compute capability {gpu.compute_capability:g}): "
                     + ("FP8 tensor cores" if w8a8 else "8-bit weights, 16-bit math (Marlin)"))
    return notes


def kv_bytes_per_token(spec: ModelSpec, tp: int) -> int:
    """KV cache per token on one card: K and V, 16-bit, its share of the KV heads (replicated past their count)."""
    t = spec.text
    return 4 * math.ceil(t.num_key_value_heads / tp) * t.head_dim * t.num_hidden_layers


def server_memory(spec: ModelSpec, weights_total: int, loads: list[TaskLoad], skipped: dict[str, str],
                  gpu: Gpu, gpu_count: int, usable: int, a: Assumptions) -> ServerMemory | str:
    """The memory fraction, concurrency and per-card holdings of a server engine for the tasks it runs, on
    `gpu_count` cards of `usable` bytes each; or the one-line reason one sequence does not fit."""
    run = [t for t in loads if t.name not in skipped]
    if not run:
        return "every task is skipped"
    length = max_model_len(loads, skipped)
    d = dynamic(spec, peak_of([(p, 1) for t in run for p in t.passes]), a)  # one prefill at a time (chunked)
    weights = -(-weights_total // gpu_count)
    overhead = int((a.cuda_context_mib + a.engine_graph_mib) * MIB)
    fixed = weights + max(d.llm_act, d.vision_act) + overhead
    per_seq = kv_bytes_per_token(spec, gpu_count) * length
    want = min(a.engine_max_concurrency, max(t.samples for t in run))
    cap = a.engine_memory_fraction_max
    room = int(cap * usable)
    if fixed + per_seq > room:
        return (f"needs {(fixed + per_seq) / 1024**3:.1f} GiB per GPU for its weights and one {length}-token "
                f"sequence; {cap:.0%} of {gpu.name} is {room / 1024**3:.1f} GiB")
    fraction = min(cap, math.ceil((fixed + want * per_seq) / usable * 100) / 100)
    pool = int(fraction * usable) - fixed
    return ServerMemory(fraction, max(1, min(want, pool // per_seq)), length, weights, pool, d.llm_act, d.vision_act,
                        overhead)


def coefficients(engine: str, quant: str, gpu: Gpu, a: Assumptions) -> tuple[dict[str, float], float]:
    """A server engine's coefficients for `planner.speed`'s terms (its stack's host terms, the card's shared
    efficiencies) and its prefill slowdown in `quant`."""
    own, sg = STACK_TERMS[STACK[engine]], STACK_TERMS[SGLANG_STACK]
    # an all-reduce is NCCL's under either engine: the larger fitted (SGLang's H20 rows put theirs at 0, their time
    # taken by that table's own streaming coefficient), and never less than PCIe's latency on a PCIe rig
    allreduce = max(t["allreduce"] for t in STACK_TERMS.values())
    if gpu.link.startswith("PCIe"):
        allreduce = max(allreduce, a.pcie_allreduce_ms)
    coef = {"layer": own["layer"], "expert": own.get("expert", sg["expert"]), "allreduce": allreduce,
            "attention_kv": own["attention"], "weights": 1 / a.bandwidth_efficiency, "compute": 1 / a.prefill_efficiency}
    slow = 1.0
    if quant == "fp8":  # W8A8: the FP8 rows' terms; W8A16: the Marlin kernel the GPTQ-Int8 rows ran
        src = "fp8" if fp8_kind(gpu) == "W8A8" else "gptq-int8"
        terms = own if f"qlinear.{src}" in own else sg
        coef["qlinear.fp8"], slow = terms[f"qlinear.{src}"], terms[f"prefill.{src}"]
    return coef, slow


def start_seconds(engine: str, provider: str, a: Assumptions) -> tuple[float, float]:
    """(install, start) of a server engine: its packages on a fresh instance (none on this machine), and its
    start beside the weights' load."""
    if engine == "hf":
        return 0.0, 0.0
    install = 0.0 if provider == "local" else getattr(a, f"{engine}_install_s")
    return install, getattr(a, f"{engine}_start_s")


def server_task_seconds(mc: ModelCost, t: TaskLoad, quant: str, gpu: Gpu, n_cards: int, a: Assumptions,
                        coef: dict[str, float], slow: float, concurrency: int, vision_quantized: bool,
                        cache: dict | None = None, rig: tuple = ()) -> float:
    """A task's samples `concurrency` at a time (the last wave holds the rest), every pass of each. `cache`: a
    wave's seconds by its passes (their id: it must not outlive the task) and size, on the rig `rig` names (a replica's
    share of a task has the same waves)."""
    c = max(1, min(concurrency, t.samples))
    full, rest = divmod(t.samples, c)
    total = t.samples * a.sample_overhead_s
    for batch, waves in ((c, full), (rest, 1)):
        if not batch or not waves:
            continue
        key = (id(t.passes), batch, *rig)
        wave = None if cache is None else cache.get(key)
        if wave is None:
            wave = sum(phases_of(call_terms(mc, p, batch, quant, gpu, n_cards, a.hop_latency_ms, tp=True), coef, slow,
                                 slow if vision_quantized else 1.0).total_s for p in t.passes)
            if cache is not None:
                cache[key] = wave
        total += waves * wave
    return total


def server_tasks(mc: ModelCost, loads: list[TaskLoad], quant: str, engine: str, gpu: Gpu, n_cards: int,
                 a: Assumptions, concurrency: int, skipped: dict[str, str], vision_quantized: bool,
                 cache: dict | None = None) -> dict[str, float]:
    """Seconds of each task a server engine runs (those in `skipped` are left out)."""
    coef, slow = coefficients(engine, quant, gpu, a)
    rig = ("server", engine, quant, gpu.name, id(gpu), n_cards, id(a), vision_quantized)
    return {t.name: server_task_seconds(mc, t, quant, gpu, n_cards, a, coef, slow, concurrency, vision_quantized,
                                        cache, rig)
            for t in loads if t.name not in skipped}


def plan_tasks(mc: ModelCost, loads: list[TaskLoad], quant: str, sixteen: str, engine: str, gpu: Gpu, n_cards: int,
               a: Assumptions, concurrency: int | None, skipped: dict[str, str], vision_quantized: bool,
               cache: dict | None = None) -> dict[str, float]:
    """Seconds of each task `engine` runs on one rig: a server's batches of `concurrency`, `transformers serve`'s
    requests one after another, hf's batches of the plan's `batch_size` (`cache`: a batch's seconds by rig)."""
    if engine in SERVERS:
        return server_tasks(mc, loads, quant, engine, gpu, n_cards, a, concurrency or 1, skipped, vision_quantized,
                            cache)
    return speed_plan_tasks(mc, loads, quant, sixteen, gpu, n_cards, a, vision_quantized, skipped, cache,
                            1 if engine == "transformers" else None)


def plan_time(mc: ModelCost, loads: list[TaskLoad], quant: str, sixteen: str, engine: str, gpu: Gpu, n_cards: int,
              provider: str, a: Assumptions, concurrency: int | None, skipped: dict[str, str],
              vision_quantized: bool, spot: bool = False) -> TimeEstimate:
    """The whole plan on `engine`: its tasks, the instance's fixed costs, the engine's install and start."""
    tasks = plan_tasks(mc, loads, quant, sixteen, engine, gpu, n_cards, a, concurrency, skipped, vision_quantized)
    return with_fixed(mc, tasks, quant, provider, a, skipped, spot, verifies(loads, quant, skipped),
                      start_seconds(engine, provider, a))


def decode_tokens_per_s(mc: ModelCost, engine: str, quant: str, gpu: Gpu, n_cards: int, a: Assumptions,
                        batch: int, context: int = 512) -> float:
    """Generated tokens/s of one decode step over `batch` sequences of `context` tokens on `engine` (hf and
    transformers: the worker's generate): the figure the README's engine table prints."""
    from .speed import coefficients as hf_coefficients
    from .workload import Pass

    p = Pass(context, 2, 0, ())
    if engine in SERVERS:
        coef, _ = coefficients(engine, quant, gpu, a)
        tm = call_terms(mc, p, batch, quant, gpu, n_cards, a.hop_latency_ms, tp=True)
    else:
        coef = hf_coefficients(a, quant)
        tm = call_terms(mc, p, batch, quant, gpu, n_cards, a.hop_latency_ms)
    return batch / phases_of(tm, coef).step_s


def compare(engine: str, quant: str, seconds: float, cost: Decimal, engines: list[str], quants: list[str],
            priced: Callable[[str, str], tuple[float, Decimal] | str | None], by_time: bool) -> list[EngineComparison]:
    """How each other engine of `engines` fares on a row's offer (the row: `engine` in `quant`, `seconds` long,
    `cost` CNY): its best quantization there ranked as the plan ranks (`priced(engine, quant)`: (seconds, cost),
    the reason it cannot run, or None when not a candidate), else every quantization's reason (the row's first)."""
    out = []
    for e in engines:
        if e == engine:
            continue
        best, why = None, []
        for q in sorted(quants, key=lambda q: q != quant):
            got = priced(e, q)
            if isinstance(got, str):
                why.append(f"{q}: {got}")
            elif got is not None:
                key = (got[0], got[1], -QUALITY_RANK[q]) if by_time else (got[1], -QUALITY_RANK[q], got[0])
                if best is None or key < best[0]:
                    best = (key, q, *got)
        if best is None:
            out.append(EngineComparison(engine=e, quantization=None, hours=None, cost_cny=None,
                                        reason="; ".join(why) or "no quantization it runs is allowed"))
            continue
        _, q, secs, c = best
        more = "more" if c > cost else "less"
        money = f"{display(abs(c - cost))} CNY {more}" if c != cost else "the same cost"
        out.append(EngineComparison(engine=e, quantization=q, hours=round(secs / 3600, 3), cost_cny=unrounded(c),
                                    reason=f"{secs / seconds:.1f}x the time, {money}"))
    return out

"""Time model, per sample and for the whole plan: the terms a transformers `generate` call really pays.

One decode step is the slower of two sides that run concurrently (kernels are launched asynchronously):
- the host: a fixed cost per decoder layer per step (kernel launches, Python), an extra cost per quantized
  linear per step (bitsandbytes dequantizes per layer), and per MoE expert the layer loops over (transformers
  <= 4.51 loops over every expert, later versions over the experts the batch hits);
- the card: streaming the touched weights at their stored width, plus an attention term that grows with
  the context (each step re-reads the KV cache per query head, far from bandwidth-bound), each at its own
  fraction of the bandwidth; or, for large batches, the matmul FLOPs (the compute bound).
Prefill and the vision encoder are compute-bound at `prefill_efficiency` of the dense 16-bit TFLOPS, and a
forward pass never takes less than the host's launches. The coefficients are fitted (`planner.timefit`) to
Qwen's published single-stream tables and our own H200 rows; the defaults are that fit's values for the
worker's stack. A multi-card rig is a sequential pipeline (accelerate's device_map: one card works at a
time), so splitting never speeds a pass up; every extra card adds a hop per forward pass. A serving engine's rig is
tensor-parallel instead (`call_terms(tp=True)`: each card streams and multiplies its share at once, two all-reduces
a layer); its coefficients are its own stack's (planner/engines.py).
Fixed costs: boot, environment install, weight download, load (+ quantize on load).
Every factor is a named assumption (`planner.assumptions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .architecture import ParamGroup
from .assumptions import Assumptions
from .models import Gpu, ModelSpec, TimeEstimate, VisionArch
from .workload import Pass, TaskLoad

LINK_GB_S = {"PCIe 3": 12.0, "PCIe 4": 24.0}
# stored bytes per parameter of a quantized linear's weight (scales and zeros included)
WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "nf4": 0.53, "gptq-int4": 0.53, "awq": 0.53, "int8": 1.03,
                "gptq-int8": 1.03, "fp8": 1.01}
SIXTEEN = ("bf16", "fp16")


class ModelCost:
    """Per-model constants of the time model (computed once per model)."""

    def __init__(self, spec: ModelSpec, inv: list[ParamGroup]) -> None:
        t = spec.text
        self.spec = spec
        self.vision_linear = sum(g.numel * g.count for g in inv if g.where == "vision" and g.linear)
        layer = [g for g in inv if g.where == "layer"]
        self.llm_matmul = sum(g.numel * g.count for g in layer if g.name != "mlp.experts")
        self.experts = sum(g.numel * g.count for g in layer if g.name == "mlp.experts")
        self.lm_head = t.vocab_size * t.hidden_size
        self.checkpoint_bytes = 2 * sum(g.params for g in inv)  # hub checkpoints are bf16
        self.q_dim = t.num_attention_heads * t.head_dim
        self.moe_layers = sum(1 for i in range(t.num_hidden_layers) if t.num_experts and i not in t.mlp_only_layers
                              and (i + 1) % max(t.decoder_sparse_step, 1) == 0)
        # linears a step runs per layer: q, k, v, o (+ gate, up, down of a dense MLP)
        self.linears = 4 * t.num_hidden_layers + 3 * (t.num_hidden_layers - self.moe_layers)
        self.work_cache: dict[tuple, tuple] = {}  # speed._work

    def expert_fraction(self, tokens: int) -> float:
        """Share of expert weights a step touches: distinct experts hit by `tokens` tokens."""
        t = self.spec.text
        if not t.num_experts:
            return 1.0
        k = t.num_experts_per_tok / t.num_experts
        return 1 - (1 - k) ** max(tokens, 1)

    def active_matmul(self) -> float:
        """Parameters multiplied per token (MoE: top-k experts)."""
        t = self.spec.text
        k = t.num_experts_per_tok / t.num_experts if t.num_experts else 1.0
        return self.llm_matmul + self.experts * k + self.lm_head


def vit_attention(v: VisionArch, patches: int) -> int:
    """Sum over the tower's blocks of the attention pairs of one image of `patches` patches: full
    attention, except Qwen2.5-VL's windowed blocks (window_size px squares, full in fullatt_block_indexes)."""
    if not v.window_size:
        return v.depth * patches * patches
    window = (v.window_size // v.patch_size) ** 2
    full = len([i for i in v.fullatt_block_indexes if i < v.depth])
    return full * patches * patches + (v.depth - full) * patches * min(patches, window)


def _prefill_slowdown(quant: str, a: Assumptions) -> float:
    """A quantized prefill's (and vision tower's) time over the 16-bit one's."""
    return getattr(a, f"{quant}_prefill_slowdown") if quant in ("nf4", "int8") else 1.0


@dataclass(frozen=True, slots=True)
class Terms:
    """One generate call as linear terms: each value is seconds at coefficient 1 (host terms per 1 ms of
    overhead, card terms at 100% of bandwidth or FLOPs). `coefficients()` names what multiplies them."""

    host: dict[str, float]  # one decode step's launches: layer, qlinear.<quant>, expert
    stream: dict[str, float]  # one decode step's reads: weights, attention (per query head), attention_kv
    step_compute: float  # one decode step's matmul FLOPs
    prefill_compute: float  # the prompt's prefill (text part)
    vision_compute: float
    new: int
    hops_s: float


def coefficients(a: Assumptions, quant: str) -> dict[str, float]:
    """What multiplies each term, from the assumptions (the worker's stack)."""
    out = {"layer": a.decode_overhead_ms_per_layer, "expert": a.moe_expert_overhead_ms,
           "weights": 1 / a.bandwidth_efficiency, "attention": 1 / a.attention_efficiency,
           "compute": 1 / a.prefill_efficiency}
    if quant in ("nf4", "int8"):
        out[f"qlinear.{quant}"] = getattr(a, f"{quant}_overhead_ms_per_linear")
    return out


def _work(mc: ModelCost, p: Pass, batch: int, quant: str, all_experts: bool) -> tuple:
    """What one call does, whatever the card: (host counts, bytes read per step, step FLOPs, prefill FLOPs,
    vision FLOPs, prompt tokens of the batch). Cached per model: a plan prices the same shapes on every rig."""
    key = (p, batch, quant, all_experts)
    got = mc.work_cache.get(key)
    if got is not None:
        return got
    s, t = mc.spec, mc.spec.text
    # vision encoder: linear layers over every patch + per-image attention
    vit = 2 * mc.vision_linear * batch * sum(p.vit_seqs)
    vit += 4 * s.vision.hidden_size * batch * sum(vit_attention(s.vision, x) for x in p.vit_seqs) if s.vision else 0
    # prefill: matmuls over every prompt token + causal attention
    n = batch * p.prefill
    pre = 2 * mc.active_matmul() * n + 2 * t.num_hidden_layers * mc.q_dim * batch * p.prefill**2
    # decode step: host launches; the card streams the touched weights at their stored width once for the
    # batch, and re-reads each sequence's KV cache per query head
    touched = mc.expert_fraction(batch)
    looped = t.num_experts if all_experts else t.num_experts * touched
    host = {"layer": t.num_hidden_layers * 1e-3, "expert": mc.moe_layers * looped * 1e-3}
    if quant not in SIXTEEN:
        host[f"qlinear.{quant}"] = (mc.linears + 3 * mc.moe_layers * looped) * 1e-3
    width = WEIGHT_BYTES.get(quant, 2.0)
    weights = width * (mc.llm_matmul + mc.experts * touched) + 2 * mc.lm_head
    reads = batch * (p.prefill + p.new / 2) * t.num_hidden_layers * 4  # K and V, 2 bytes each, per head dim
    read = {"weights": weights, "attention": reads * mc.q_dim,  # re-read per query head (FA2, SDPA)
            "attention_kv": reads * t.num_key_value_heads * t.head_dim}  # once per KV head (GQA-aware)
    got = mc.work_cache[key] = (host, read, 2 * mc.active_matmul() * batch, pre, vit, n)
    return got


def link_gb_s(gpu: Gpu) -> float:
    """One direction of the card-to-card link, GB/s."""
    if gpu.link.startswith("NVLink"):
        return float(gpu.link.split()[-1]) / 2
    return LINK_GB_S.get(gpu.link, 24.0)


def call_terms(mc: ModelCost, p: Pass, batch: int, quant: str, gpu: Gpu, n_cards: int, hop_latency_ms: float,
               all_experts: bool = False, tp: bool = False) -> Terms:
    """The terms of one generate call over a batch of `batch` samples shaped like `p` on `n_cards` of `gpu`.
    `all_experts`: the stack's MoE block loops over every expert (transformers <= 4.51), not only those hit.
    `tp`: the cards split every layer (tensor parallelism: vLLM, SGLang) instead of holding whole layers in turn
    (accelerate's pipeline): each card streams and multiplies 1/n of the work at once, and every layer ends its
    attention and its MLP with an all-reduce (a host-side latency per step, `allreduce`, and its bytes over the
    link)."""
    host, read, step_flops, pre, vit, n = _work(mc, p, batch, quant, all_experts)
    flops = gpu.fp16_tflops * 1e12
    bw = gpu.bandwidth_gbs * 1e9
    hop_s = 0.0
    if n_cards > 1 and tp:
        share = 1 / n_cards
        layers = mc.spec.text.num_hidden_layers
        host = host | {"allreduce": 2 * layers * 1e-3}
        # ring all-reduce: each card sends 2 (n - 1) / n of the activations, twice per layer, per forward pass
        moved = 2 * layers * 2 * (n_cards - 1) / n_cards * mc.spec.text.hidden_size * 2 * (n + batch * p.new)
        hop_s = moved / (link_gb_s(gpu) * 1e9)
        return Terms(host, {k: v * share / bw for k, v in read.items()}, step_flops * share / flops,
                     pre * share / flops, vit * share / flops, p.new, hop_s)
    # pipeline hops: every forward pass crosses each card boundary once
    if n_cards > 1:
        hops = n_cards - 1
        hop_s = hops * (hop_latency_ms / 1000) * (1 + p.new) + hops * n * mc.spec.text.hidden_size * 2 / (
            link_gb_s(gpu) * 1e9)
    return Terms(host, {k: v / bw for k, v in read.items()}, step_flops / flops, pre / flops, vit / flops, p.new,
                 hop_s)


def _dot(terms: dict[str, float], coef: dict[str, float]) -> float:
    return sum(v * coef.get(k, 0.0) for k, v in terms.items())


def phases_of(tm: Terms, coef: dict[str, float], pre_slow: float = 1.0, vision_slow: float = 1.0) -> Phases:
    """Seconds by phase from terms and coefficients: a step is the slower of host and card; a forward pass
    (prefill) is never faster than one step's launches."""
    host = _dot(tm.host, coef)
    card = max(_dot(tm.stream, coef), tm.step_compute * coef["compute"])
    step = max(host, card)
    prefill = max(tm.prefill_compute * coef["compute"] * pre_slow - host, 0.0)  # beyond the first step's launches
    return Phases(tm.vision_compute * coef["compute"] * vision_slow, prefill, step, tm.new, tm.hops_s)


@dataclass(frozen=True, slots=True)
class Phases:
    """One generate call over a batch, by phase (seconds): the vision tower, the prompt's prefill, one
    decode step (the first token costs one too), and the pipeline hops of a multi-card rig."""

    vision_s: float
    prefill_s: float
    step_s: float
    new: int
    hops_s: float

    @property
    def ttft_s(self) -> float:
        return self.vision_s + self.prefill_s + self.step_s

    @property
    def decode_s(self) -> float:
        return max(self.new - 1, 0) * self.step_s

    @property
    def total_s(self) -> float:
        return self.ttft_s + self.decode_s + self.hops_s


def pass_phases(mc: ModelCost, p: Pass, batch: int, quant: str, gpu: Gpu, n_cards: int, a: Assumptions,
                vision_quantized: bool = True) -> Phases:
    """The phases of one generate call over a batch of `batch` samples shaped like `p`, on the worker's stack."""
    pre_slow = _prefill_slowdown(quant, a)
    tm = call_terms(mc, p, batch, quant, gpu, n_cards, a.hop_latency_ms)
    return phases_of(tm, coefficients(a, quant), pre_slow, pre_slow if vision_quantized else 1.0)


def pass_seconds(mc: ModelCost, p: Pass, batch: int, quant: str, gpu: Gpu, n_cards: int, a: Assumptions,
                 vision_quantized: bool = True) -> float:
    """Seconds for one generate call over a batch of `batch` samples shaped like `p`."""
    return pass_phases(mc, p, batch, quant, gpu, n_cards, a, vision_quantized).total_s


def task_seconds(mc: ModelCost, t: TaskLoad, quant: str, gpu: Gpu, n_cards: int, a: Assumptions,
                 vision_quantized: bool = True) -> float:
    """Seconds for a whole task: its samples in batches, every pass of each sample."""
    return _of_batches(t, batch_seconds(mc, t, quant, gpu, n_cards, a, vision_quantized), a)


def batch_seconds(mc: ModelCost, t: TaskLoad, quant: str, gpu: Gpu, n_cards: int, a: Assumptions,
                  vision_quantized: bool = True, batch: int | None = None) -> float:
    """Seconds for one batch of a task (whatever its sample count): every pass over `batch` (default: `t.batch`)
    samples."""
    return sum(pass_seconds(mc, p, batch or t.batch, quant, gpu, n_cards, a, vision_quantized) for p in t.passes)


def _of_batches(t: TaskLoad, per_batch: float, a: Assumptions, batch: int | None = None) -> float:
    return math.ceil(t.samples / (batch or t.batch)) * per_batch + t.samples * a.sample_overhead_s


def fixed_seconds(mc: ModelCost, quant: str, provider: str, a: Assumptions,
                  extra_16bit_load: bool = False) -> tuple[float, float, float, float]:
    """(boot, install, download, load) seconds. The download is the bf16 checkpoint whatever
    the quantization (bitsandbytes quantizes on load)."""
    if provider == "local":  # this machine: no instance to boot, nothing to install or download
        boot, install, download = a.boot_s_local, 0.0, 0.0
    else:
        boot, install = (a.boot_s_aws if provider == "aws" else a.boot_s), a.install_s
        download = mc.checkpoint_bytes / (a.download_mb_s * 1e6)
    load = mc.checkpoint_bytes / (a.load_gb_s * 1e9)
    if quant in ("nf4", "int8"):
        load += mc.checkpoint_bytes / (a.quantize_gb_s * 1e9)
    if extra_16bit_load:  # fp16 verification reloads the model unquantized
        load += mc.checkpoint_bytes / (a.load_gb_s * 1e9)
    return boot, install, download, load


def plan_tasks(mc: ModelCost, loads: list[TaskLoad], quant: str, sixteen: str, gpu: Gpu, n_cards: int,
               a: Assumptions, vision_quantized: bool, skipped: dict[str, str], cache: dict | None = None,
               batch: int | None = None) -> dict[str, float]:
    """Seconds of each task run on one rig (whatever the provider). `sixteen` is the 16-bit dtype for fp16_verify
    tasks; tasks in `skipped` (name -> reason) are left out; `batch`: every task in batches of that size instead
    of its own (`transformers serve`: 1). `cache`: a batch's seconds already priced on this rig (a task at batch 1
    costs the same in hf and `transformers serve`; a replica's share of a task, what a batch of the whole task
    costs) - keyed by the id of the task's passes: it must not outlive `loads`."""
    tasks: dict[str, float] = {}
    for t in loads:
        if t.name in skipped:
            continue
        q, vq = (sixteen, False) if t.sixteen_bit else (quant, vision_quantized)
        b = min(batch, t.batch) if batch else t.batch
        key = (id(t.passes), b, q, vq, gpu.name, id(gpu), n_cards, id(a))
        per_batch = None if cache is None else cache.get(key)
        if per_batch is None:
            per_batch = batch_seconds(mc, t, q, gpu, n_cards, a, vq, b)
            if cache is not None:
                cache[key] = per_batch
        tasks[t.name] = _of_batches(t, per_batch, a, b)
    return tasks


def with_fixed(mc: ModelCost, tasks: dict[str, float], quant: str, provider: str, a: Assumptions,
               skipped: dict[str, str], spot: bool = False, verify: bool = False,
               engine: tuple[float, float] = (0.0, 0.0)) -> TimeEstimate:
    """The plan's time from its tasks' seconds: the fixed costs of `provider` (a 16-bit reload when `verify`), a
    server engine's (install, start), and the spot overhead on the whole."""
    boot, install, download, load = fixed_seconds(mc, quant, provider, a, extra_16bit_load=verify)
    total = boot + install + download + load + sum(engine) + sum(tasks.values())
    extra = total * a.spot_overhead if spot else 0.0
    return TimeEstimate(boot_s=boot, install_s=install, download_s=download, load_s=load, tasks=dict(tasks),
                        skipped=dict(skipped), engine_install_s=engine[0], engine_start_s=engine[1],
                        spot_overhead_s=extra, total_s=total + extra, band=a.time_band)


def verifies(loads: list[TaskLoad], quant: str, skipped: dict[str, str]) -> bool:
    """Whether the plan reloads the model in 16-bit for an fp16_verify task it runs."""
    return any(t.sixteen_bit and t.name not in skipped for t in loads) and quant in ("nf4", "int8")


def plan_time(mc: ModelCost, loads: list[TaskLoad], quant: str, sixteen: str, gpu: Gpu, n_cards: int,
              provider: str, a: Assumptions, vision_quantized: bool,
              skipped: dict[str, str], spot: bool = False) -> TimeEstimate:
    """The whole plan on one rig. `sixteen` is the 16-bit dtype for fp16_verify tasks; tasks in
    `skipped` (name -> reason) cost nothing."""
    tasks = plan_tasks(mc, loads, quant, sixteen, gpu, n_cards, a, vision_quantized, skipped)
    return with_fixed(mc, tasks, quant, provider, a, skipped, spot, verifies(loads, quant, skipped))

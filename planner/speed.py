"""Time model, per sample and for the whole plan.

- Vision encoder and prefill are compute-bound: FLOPs / (dense FP16 TFLOPS x prefill_efficiency).
- Decode is bandwidth-bound: each step streams the active 16-bit-equivalent weights and the KV
  cache (bandwidth x bandwidth_efficiency) plus a per-layer launch overhead; a batch shares one
  weight read. bitsandbytes' real kernel slowdowns multiply the 16-bit time (NF4 ~1.4x decode,
  LLM.int8 several x): quantization saves memory, not time, at batch 1.
- A multi-card rig is a sequential pipeline (accelerate's device_map: one card works at a time), so
  splitting never speeds a pass up; every extra card adds a hop per forward pass.
- Fixed costs: boot, environment install, weight download, load (+ quantize on load).
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
        self.kv_per_token = 2 * t.num_key_value_heads * t.head_dim * 2 * t.num_hidden_layers
        self.q_dim = t.num_attention_heads * t.head_dim

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


def _slowdowns(quant: str, a: Assumptions) -> tuple[float, float]:
    if quant == "nf4":
        return a.nf4_prefill_slowdown, a.nf4_decode_slowdown
    if quant == "int8":
        return a.int8_prefill_slowdown, a.int8_decode_slowdown
    return 1.0, 1.0


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
    """The phases of one generate call over a batch of `batch` samples shaped like `p`."""
    s = mc.spec
    flops_s = gpu.fp16_tflops * 1e12 * a.prefill_efficiency
    pre_slow, dec_slow = _slowdowns(quant, a)
    # vision encoder: linear layers over every patch + per-image attention
    vit = 2 * mc.vision_linear * batch * sum(p.vit_seqs)
    vit += 4 * s.vision.hidden_size * batch * sum(vit_attention(s.vision, x) for x in p.vit_seqs) if s.vision else 0
    vit_s = vit / flops_s * (pre_slow if vision_quantized else 1.0)
    # prefill: matmuls over every prompt token + causal attention
    n = batch * p.prefill
    pre = 2 * mc.active_matmul() * n + 2 * s.text.num_hidden_layers * mc.q_dim * batch * p.prefill**2
    pre_s = pre / flops_s * pre_slow
    # decode: per step, stream the (touched) weights once for the batch + each sequence's KV cache
    avg_ctx = p.prefill + p.new / 2
    step_bytes = 2 * (mc.llm_matmul + mc.experts * mc.expert_fraction(batch) + mc.lm_head)
    step_bytes += batch * avg_ctx * mc.kv_per_token
    step_flops = 2 * mc.active_matmul() * batch
    step = max(step_bytes / (gpu.bandwidth_gbs * 1e9 * a.bandwidth_efficiency), step_flops / flops_s)
    step += s.text.num_hidden_layers * a.decode_overhead_ms_per_layer / 1000
    # pipeline hops: every forward pass crosses each card boundary once
    hops = n_cards - 1
    link = LINK_GB_S.get(gpu.link, 24.0)
    if gpu.link.startswith("NVLink"):
        link = float(gpu.link.split()[-1]) / 2
    hop_s = hops * (a.hop_latency_ms / 1000) * (1 + p.new) + hops * n * s.text.hidden_size * 2 / (link * 1e9)
    return Phases(vit_s, pre_s, step * dec_slow, p.new, hop_s)


def pass_seconds(mc: ModelCost, p: Pass, batch: int, quant: str, gpu: Gpu, n_cards: int, a: Assumptions,
                 vision_quantized: bool = True) -> float:
    """Seconds for one generate call over a batch of `batch` samples shaped like `p`."""
    return pass_phases(mc, p, batch, quant, gpu, n_cards, a, vision_quantized).total_s


def task_seconds(mc: ModelCost, t: TaskLoad, quant: str, gpu: Gpu, n_cards: int, a: Assumptions,
                 vision_quantized: bool = True) -> float:
    """Seconds for a whole task: its samples in batches, every pass of each sample."""
    batches = math.ceil(t.samples / t.batch)
    per_batch = sum(pass_seconds(mc, p, t.batch, quant, gpu, n_cards, a, vision_quantized) for p in t.passes)
    return batches * per_batch + t.samples * a.sample_overhead_s


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


def plan_time(mc: ModelCost, loads: list[TaskLoad], quant: str, sixteen: str, gpu: Gpu, n_cards: int,
              provider: str, a: Assumptions, vision_quantized: bool,
              skipped: dict[str, str], spot: bool = False) -> TimeEstimate:
    """The whole plan on one rig. `sixteen` is the 16-bit dtype for fp16_verify tasks; tasks in
    `skipped` (name -> reason) cost nothing."""
    tasks: dict[str, float] = {}
    for t in loads:
        if t.name in skipped:
            continue
        if t.sixteen_bit:
            tasks[t.name] = task_seconds(mc, t, sixteen, gpu, n_cards, a, vision_quantized=False)
        else:
            tasks[t.name] = task_seconds(mc, t, quant, gpu, n_cards, a, vision_quantized)
    verify = any(t.sixteen_bit and t.name not in skipped for t in loads) and quant in ("nf4", "int8")
    boot, install, download, load = fixed_seconds(mc, quant, provider, a, extra_16bit_load=verify)
    total = boot + install + download + load + sum(tasks.values())
    extra = total * a.spot_overhead if spot else 0.0
    return TimeEstimate(boot_s=boot, install_s=install, download_s=download, load_s=load, tasks=tasks,
                        skipped=dict(skipped), spot_overhead_s=extra, total_s=total + extra)

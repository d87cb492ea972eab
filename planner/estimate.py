"""Estimates on one given rig: one request (`budget estimate`: the question a VRAM/speed calculator
answers, with the full memory and time model) and a whole plan (a run's estimate on the machine it
really runs on, e.g. this CPU). Both take the rig's calibrated assumptions when there are some."""

from __future__ import annotations

import math

from . import engines as eng
from .architecture import inventory, param_breakdown
from .assumptions import Assumptions
from .errors import InputError
from .memory import card_parts, dynamic, from_parts, peak_of, weight_layout
from .models import GIB, EvalPlan, Gpu, ImageLimits, Model, ModelSpec, TimeEstimate, VideoSpec
from .speed import ModelCost, Phases, call_terms, pass_phases, phases_of
from .workload import TIMESTAMP_TOKENS, Pass, image_tokens, task_loads, video_frames

COMPONENTS = ("weights", "kv_cache", "activations", "vision_activations", "dequant_scratch", "cuda_context",
              "allocator_slack", "floor_adjust")


class RequestEstimate(Model):
    """`budget estimate --json`: exactly this document. Memory in bytes (per card, the fullest card's
    by component); times in seconds."""

    model: str
    model_type: str
    params: int
    gpu: str
    gpu_count: int
    quantization: str
    engine: str  # hf (in-process generate), vllm, sglang or transformers (transformers serve)
    batch: int
    prompt_tokens: int
    visual_tokens: int
    prefill_tokens: int
    new_tokens: int
    peak_memory_gib: float
    memory: dict[str, int]
    allocated_bytes: int  # what torch.cuda.max_memory_allocated would report: weights + KV + activations + scratch
    per_card_bytes: list[int]
    usable_bytes: int
    fits: bool
    engine_memory_fraction: float | None  # vllm/sglang: the share of each card it would preallocate
    vision_s: float
    prefill_s: float
    decode_s: float
    decode_tokens_per_s: float
    ttft_s: float
    total_s: float
    time_band: float  # +- fraction around every time (the time model's residuals; `Assumptions.time_band`)
    memory_band: float  # +- fraction around every memory figure
    assumptions: list[str]
    calibration: str = ""


def request_pass(spec: ModelSpec, prompt_tokens: int, images: list[tuple[int, int]], video: VideoSpec | None,
                 new_tokens: int, limits: ImageLimits, a: Assumptions) -> Pass:
    """One sample's generate call: the prompt's text tokens plus the template's, every image's and the
    video's visual tokens (processor resize as in workload)."""
    visual, seqs = 0, []
    for size in images:
        t, p = image_tokens(size, limits, spec)
        visual, seqs = visual + t, seqs + [p]
    if video is not None:
        t, p = image_tokens(video.frame_size, limits, spec)
        pairs = video_frames(video) // spec.vision.temporal_patch_size  # type: ignore[union-attr] - checked above
        visual, seqs = visual + pairs * (t + TIMESTAMP_TOKENS), seqs + [pairs * p]
    return Pass(prompt_tokens + a.template_tokens + visual, new_tokens, visual, tuple(seqs))


def estimate_request(spec: ModelSpec, gpu: Gpu, gpu_count: int, quant: str, p: Pass, batch: int, a: Assumptions,
                     *, prompt_tokens: int, double_quant: bool = True, keep_vision_16bit: bool = False,
                     calibration: str = "", engine: str = "hf") -> RequestEstimate:
    """`batch` requests shaped like `p` on `gpu_count` x `gpu` in `quant` on `engine` (planner/engines.py): memory
    of the fullest card and the phases of the call. InputError where the engine cannot run it."""
    why = eng.refusal(engine, quant, spec, gpu, gpu_count)
    if why is not None:
        raise InputError(f"{engine} cannot run {spec.name} in {quant} on {gpu.name} x{gpu_count}: {why}",
                         "pick another --engine or --quant (hf: bf16, fp16, int8, nf4; vllm/sglang: bf16, fp16, fp8)")
    if engine in eng.SERVERS:
        return _server_request(spec, gpu, gpu_count, quant, p, batch, a, prompt_tokens, keep_vision_16bit, calibration,
                               engine)
    inv = inventory(spec)
    w = weight_layout(spec, inv, quant, keep_vision_16bit, double_quant)
    one = engine == "transformers"  # transformers serve answers the requests one after another
    parts = card_parts(spec, w, quant, peak_of([(p, 1 if one else batch)]), gpu_count, a)
    usable = gpu.memory_mib * 2**20
    mem = from_parts(parts, quant, w.total, usable)
    worst = max(mem.per_gpu, key=lambda g: g.total)
    ph = pass_phases(ModelCost(spec, inv), p, 1 if one else batch, quant, gpu, gpu_count, a, not keep_vision_16bit)
    decode_tps = (1 if one else batch) * max(p.new - 1, 0) / ph.decode_s if ph.decode_s > 0 else batch / ph.step_s
    said = [f"{k}={getattr(a, k)}" for k in ("prefill_efficiency", "bandwidth_efficiency", "attention_efficiency",
                                              "decode_overhead_ms_per_layer")]
    if one:
        said.append(f"transformers serve: the {batch} request(s) one after another (times are the sum)")
        ph = Phases(batch * ph.vision_s, batch * ph.prefill_s, ph.step_s, batch * (ph.new - 1) + 1, batch * ph.hops_s)
    if spec.text.num_experts:
        said.append(f"moe_expert_overhead_ms={a.moe_expert_overhead_ms} ({spec.text.num_experts} experts; the ones "
                    "hit run)")
    if quant in ("nf4", "int8"):
        said += [f"{quant}_overhead_ms_per_linear={getattr(a, quant + '_overhead_ms_per_linear')}",
                 f"{quant}_prefill_slowdown={getattr(a, quant + '_prefill_slowdown')}"]
    said += [f"attention {a.attn_implementation}", f"{a.template_tokens} chat-template tokens",
             f"CUDA context {a.cuda_context_mib:g} MiB", f"allocator slack {a.allocator_slack:g}",
             f"peak >= {a.headroom:g} x weights", "greedy decoding to the full new-token count",
             f"{gpu.name}: {gpu.fp16_tflops:g} TFLOPS 16-bit, {gpu.bandwidth_gbs:g} GB/s ({gpu.source})"]
    if gpu_count > 1:
        said.append("layers split across cards; one card works at a time (accelerate's device_map)")
    return RequestEstimate(
        model=spec.name, model_type=spec.model_type, params=param_breakdown(spec).total, gpu=gpu.name,
        gpu_count=gpu_count, quantization=quant, engine=engine, batch=batch, prompt_tokens=prompt_tokens,
        visual_tokens=p.visual, prefill_tokens=p.prefill, new_tokens=p.new, peak_memory_gib=round(worst.total / GIB, 3),
        memory={k: getattr(worst, k) for k in COMPONENTS} | {"total": worst.total},
        allocated_bytes=worst.weights + worst.kv_cache + max(worst.activations, worst.vision_activations)
        + worst.dequant_scratch, per_card_bytes=[g.total for g in mem.per_gpu], usable_bytes=usable, fits=mem.fits,
        engine_memory_fraction=None, vision_s=ph.vision_s, prefill_s=ph.prefill_s, decode_s=ph.decode_s, decode_tokens_per_s=decode_tps,
        ttft_s=ph.ttft_s, total_s=ph.total_s, time_band=a.time_band, memory_band=a.memory_band, assumptions=said,
        calibration=calibration)


def _server_request(spec: ModelSpec, gpu: Gpu, gpu_count: int, quant: str, p: Pass, batch: int, a: Assumptions,
                    prompt_tokens: int, keep_vision_16bit: bool, calibration: str, engine: str) -> RequestEstimate:
    """A server engine's estimate: its share of the weights per card (tensor parallelism), the activations, its
    CUDA context and graph pools, the KV cache of the batch; the fraction of the card that holds them."""
    inv = inventory(spec)
    weights = -(-eng.server_weights(inv, quant) // gpu_count)
    d = dynamic(spec, peak_of([(p, 1)]), a)
    kv = batch * (p.prefill + p.new) * eng.kv_bytes_per_token(spec, gpu_count)
    ctx = int((a.cuda_context_mib + a.engine_graph_mib) * 2**20)
    memory = {"weights": weights, "kv_cache": kv, "activations": d.llm_act, "vision_activations": d.vision_act,
              "dequant_scratch": 0, "cuda_context": ctx, "allocator_slack": 0, "floor_adjust": 0}
    total = weights + kv + max(d.llm_act, d.vision_act) + ctx
    usable = gpu.memory_mib * 2**20
    fraction = math.ceil(total / usable * 100) / 100
    coef, slow = eng.coefficients(engine, quant, gpu, a)
    tm = call_terms(ModelCost(spec, inv), p, batch, quant, gpu, gpu_count, a.hop_latency_ms, tp=True)
    ph = phases_of(tm, coef, slow, 1.0 if keep_vision_16bit else slow)
    decode_tps = batch * max(p.new - 1, 0) / ph.decode_s if ph.decode_s > 0 else batch / ph.step_s
    said = [f"{engine}: the host terms fitted to {eng.STACK[engine]} "
            + ", ".join(f"{k}={v:g}" for k, v in coef.items() if k not in ("weights", "compute")),
            f"bandwidth_efficiency={a.bandwidth_efficiency}", f"prefill_efficiency={a.prefill_efficiency}",
            (f"{engine} preallocates {fraction:.0%} of each card, at most {a.engine_memory_fraction_max:.0%} "
             f"(weights, activations, CUDA context + {a.engine_graph_mib:g} MiB of graphs, the batch's KV cache)"),
            f"{gpu.name}: {gpu.fp16_tflops:g} TFLOPS 16-bit, {gpu.bandwidth_gbs:g} GB/s ({gpu.source})"]
    if quant == "fp8":
        said.append(f"fp8 {eng.fp8_kind(gpu)} on compute capability {gpu.compute_capability:g}")
    if gpu_count > 1:
        said.append(f"tensor parallelism over {gpu_count} cards: each streams 1/{gpu_count} of the weights, two "
                    "all-reduces a layer")
    return RequestEstimate(
        model=spec.name, model_type=spec.model_type, params=param_breakdown(spec).total, gpu=gpu.name,
        gpu_count=gpu_count, quantization=quant, engine=engine, batch=batch, prompt_tokens=prompt_tokens,
        visual_tokens=p.visual, prefill_tokens=p.prefill, new_tokens=p.new, peak_memory_gib=round(total / GIB, 3),
        memory=memory | {"total": total}, allocated_bytes=total - ctx, per_card_bytes=[total] * gpu_count,
        usable_bytes=usable, fits=total <= a.engine_memory_fraction_max * usable,
        engine_memory_fraction=min(fraction, a.engine_memory_fraction_max), vision_s=ph.vision_s,
        prefill_s=ph.prefill_s, decode_s=ph.decode_s, decode_tokens_per_s=decode_tps, ttft_s=ph.ttft_s,
        total_s=ph.total_s, time_band=a.time_band, memory_band=a.memory_band, assumptions=said,
        calibration=calibration)


def plan_on_rig(plan: EvalPlan, spec: ModelSpec, gpu: Gpu, gpu_count: int, quant: str, provider: str,
                a: Assumptions, spot: bool = False, engine: str = "hf") -> TimeEstimate:
    """The plan's time on one given rig (no offer search) on `engine`: every task it runs, the fixed costs of
    `provider`, the engine's install and start (a server's concurrency: what its KV pool holds on this card)."""
    loads = task_loads(plan, spec, a)
    sixteen = "bf16" if gpu.bf16 else "fp16"
    skipped = {t.name: "the plan already runs in 16-bit" for t in loads if t.sixteen_bit and quant in ("bf16", "fp16")}
    skipped |= {t.name: why for t in loads if (why := eng.skips(engine, t, quant))}
    inv = inventory(spec)
    concurrency = None
    if engine in eng.SERVERS:
        w = eng.server_weights(inv, quant)
        mem = eng.server_memory(spec, w, loads, skipped, gpu, gpu_count, gpu.memory_mib * 2**20, a)
        concurrency = 1 if isinstance(mem, str) else mem.concurrency
    return eng.plan_time(ModelCost(spec, inv), loads, quant, sixteen, engine, gpu, gpu_count, provider, a,
                         concurrency, skipped, not plan.keep_vision_16bit, spot=spot)

"""Every number the memory, speed and cost models assume that is not in a catalog: named,
documented, with its source, and overridable (`budget plan --assume NAME=VALUE`).
`planner.calibration` fits the speed factors per GPU x quantization, the fixed costs per provider and
the memory margins from measurements; a fitted value replaces the default for that rig only."""

from __future__ import annotations

import math

from pydantic import Field, ValidationError

from .errors import InputError
from .models import Model


class Assumptions(Model):
    # ---- memory
    headroom: float = Field(1.2, ge=1.0, description=(
        "a card's peak is at least this many times the weights it holds (Qwen's README: real usage is "
        "'at least 1.2 times' the weights; the seed's rule of thumb too)"))
    cuda_context_mib: float = Field(400, ge=0, description=(
        "CUDA context + cuBLAS workspace per card, MiB (FACTS: ~300 MB with lazy loading on CUDA>=11.7, "
        "up to 1 GB on older stacks)"))
    allocator_slack: float = Field(0.15, ge=0, description=(
        "PyTorch caching-allocator fragmentation, as a fraction of the dynamic memory (KV cache, activations)"))
    act_hidden_copies: float = Field(4.0, ge=0, description=(
        "live hidden-state-sized buffers during prefill (residual, norm output, attention output, q)"))
    act_mlp_copies: float = Field(3.0, ge=0, description="live MLP-intermediate-sized buffers (gate, up, act*up)")
    vit_hidden_copies: float = Field(6.0, ge=0, description="live ViT hidden-sized buffers (residual, norm, qkv, out)")
    vit_mlp_copies: float = Field(2.0, ge=0, description="live ViT MLP-intermediate-sized buffers")
    attn_implementation: str = Field("sdpa", pattern="^(sdpa|eager)$", description=(
        "sdpa: attention memory linear in length (flash / memory-efficient kernels); eager materialises "
        "heads x length^2 scores"))
    memory_extra_mib: float = Field(0, ge=0, description=(
        "allocations per card the model does not itemise (cuBLAS workspaces, small buffers), MiB; 0 until "
        "`budget calibrate` sets it from measured peaks, so that every measured peak is covered"))
    template_tokens: int = Field(16, ge=0, description="chat-template tokens around each prompt (role markers)")
    # ---- speed (the defaults are `planner.timefit`'s fit for the worker's stack; tests/planner/test_timefit.py
    # refits and checks them)
    prefill_efficiency: float = Field(0.270, gt=0, le=1, description=(
        "fraction of the card's dense FP16 tensor TFLOPS reached in prefill, the vision encoder and a batch's "
        "decode matmuls"))
    bandwidth_efficiency: float = Field(0.642, gt=0, le=1, description=(
        "fraction of memory bandwidth reached when a decode step streams the weights"))
    attention_efficiency: float = Field(0.0755, gt=0, le=1, description=(
        "fraction of memory bandwidth reached when a decode step re-reads the KV cache once per query head "
        "(long prompts decode slower: Qwen2.5-7B on A100 40.38 -> 18.83 tokens/s at 30720 input)"))
    decode_overhead_ms_per_layer: float = Field(1.11, ge=0, description=(
        "host time per decoder layer per generate step (kernel launches, Python) on the worker's stack; a step "
        "takes the longer of this and the card's work, so small models are barely faster than large ones"))
    nf4_overhead_ms_per_linear: float = Field(0.0, ge=0, description=(
        "extra host time per NF4 linear per step (bitsandbytes dequantizes per layer per step)"))
    int8_overhead_ms_per_linear: float = Field(0.335, ge=0, description=(
        "extra host time per LLM.int8 linear per step (outlier decomposition; FACTS: 15% of fp16 to 5x slower)"))
    moe_expert_overhead_ms: float = Field(0.0788, ge=0, description=(
        "host time per expert an MoE layer runs per step (transformers loops over experts in Python; 5.x "
        "over the experts the batch hits)"))
    nf4_prefill_slowdown: float = Field(1.0, gt=0, description=(
        "NF4 prefill vs 16-bit (weights dequantized per matmul; our H200 rows' first tokens are launch-bound)"))
    int8_prefill_slowdown: float = Field(1.22, gt=0, description="LLM.int8 prefill vs 16-bit (outlier decomposition)")
    time_band: float = Field(0.55, ge=0, description=(
        "+- fraction printed beside every time and cost: 90% of the time model's residuals on the worker's "
        "stack's measured calls fall within it (`benchmarks/published_accuracy.py` prints them)"))
    memory_band: float = Field(0.03, ge=0, description=(
        "+- fraction printed beside every memory figure: 90% of the memory model's residuals on measured peaks "
        "fall within it"))
    hop_latency_ms: float = Field(1.0, ge=0, description=(
        "per forward pass and per extra card: accelerate moves activations between cards and only one card "
        "works at a time (accelerate docs)"))
    sample_overhead_s: float = Field(0.10, ge=0, description="per sample: image decode, processor, bookkeeping")
    # ---- fixed costs
    boot_s: float = Field(90, ge=0, description="instance start to SSH-ready on hourly platforms, s")
    boot_s_aws: float = Field(150, ge=0, description="EC2 launch to SSH-ready, s (FACTS: SkyPilot 1.7-2.7 min)")
    boot_s_local: float = Field(10, ge=0, description=(
        "a local run: starting the controller and the worker process and importing torch + transformers, s "
        "(nothing to install or download: the model is on this machine)"))
    install_s: float = Field(240, ge=0, description="installing the worker's Python packages on a fresh instance, s")
    download_mb_s: float = Field(50, gt=0, description="weight download bandwidth on the instance, MB/s")
    load_gb_s: float = Field(1.5, gt=0, description="checkpoint load from local disk into GPU memory, GB/s")
    quantize_gb_s: float = Field(1.0, gt=0, description="extra bitsandbytes quantize-on-load throughput, GB/s")
    spot_overhead: float = Field(0.10, ge=0, description=(
        "expected extra run time on spot from interruptions (relaunch + resume), as a fraction"))
    # ---- serving engines (planner/engines.py; their speed terms are the fit of their published stacks there)
    vllm_install_s: float = Field(180, ge=0, description=(
        "pip install of vllm on a fresh instance, s: its wheel (~0.4 GB) and the torch/CUDA wheels it pins "
        "(~2.5 GB) at the instance's download bandwidth, then unpacking (an estimate: no run of ours yet)"))
    sglang_install_s: float = Field(240, ge=0, description=(
        "pip install of sglang on a fresh instance, s: sglang, sgl-kernel and flashinfer wheels beside its pinned "
        "torch (~3 GB; an estimate: no run of ours yet)"))
    transformers_install_s: float = Field(15, ge=0, description=(
        "`transformers[serving]` over the worker's install, s (FACTS: ~3 MB more)"))
    vllm_start_s: float = Field(90, ge=0, description=(
        "vllm serve's start beside loading the weights, s: torch.compile of the model on a cold cache, CUDA-graph "
        "capture of its batch sizes, memory profiling (vLLM logs each; ~1-1.5 min on 7-8B models)"))
    sglang_start_s: float = Field(45, ge=0, description=(
        "sglang.launch_server's start beside loading the weights, s: CUDA-graph capture and memory profiling "
        "(no torch.compile by default)"))
    transformers_start_s: float = Field(5, ge=0, description=(
        "transformers serve's start beside loading the weights, s (FACTS: /health after ~5 s with the tiny model)"))
    engine_memory_fraction_max: float = Field(0.92, gt=0, lt=1, description=(
        "the most of each card a preallocating engine is given (vLLM's default gpu_memory_utilization 0.9, "
        "SGLang's mem_fraction_static 0.85-0.88: the rest is left to the driver and fragmentation)"))
    engine_graph_mib: float = Field(1024, ge=0, description=(
        "per card, beside weights, activations and the KV pool: CUDA-graph pools, NCCL and sampler buffers a "
        "preallocating engine holds, MiB (vLLM reports ~0.3-1 GiB of graph memory for 7B-class models)"))
    engine_max_concurrency: int = Field(64, ge=1, description=(
        "requests a server engine holds in flight at most (the worker's client bound): past it a decode step is "
        "compute-bound on the cards we price, so more in flight adds latency, not throughput"))
    pcie_allreduce_ms: float = Field(0.05, ge=0, description=(
        "the least a tensor-parallel all-reduce of one step's activations takes across PCIe cards, ms (NCCL through "
        "the host bridge; the engine tables' NVLink rows fit 0-0.036 ms)"))

    def describe(self) -> list[dict[str, object]]:
        """Every assumption with its value and why, for --json output and the README."""
        return [{"name": k, "value": getattr(self, k), "why": f.description}
                for k, f in type(self).model_fields.items()]


def band_text(fraction: float) -> str:
    """'±55%': a band as printed beside an estimate (whole percent, rounded up: never narrower than fitted)."""
    return f"±{math.ceil(round(fraction * 100, 6)):.0f}%"


def parse_overrides(items: list[str], base: Assumptions | None = None) -> Assumptions:
    """Apply `NAME=VALUE` overrides; unknown names or bad values are InputErrors."""
    data = (base or Assumptions()).model_dump()
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in data:
            raise InputError(f"--assume {item!r}: unknown assumption",
                             "known: " + ", ".join(Assumptions.model_fields))
        if not sep or not value.strip():
            raise InputError(f"--assume {item!r}: no value (expected NAME=VALUE)",
                             f"e.g. --assume {name}={data[name]}")
        data[name] = value.strip()
    try:
        return Assumptions.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"--assume {err['loc'][0]}: {err['msg']}",
                         "see `budget plan --json` (assumptions) for every default and its meaning") from None

"""Every number the memory, speed and cost models assume that is not in a catalog: named,
documented, with its source, and overridable (`budget plan --assume NAME=VALUE`).
`planner.calibration` fits the speed factors per GPU x quantization, the fixed costs per provider and
the memory margins from measurements; a fitted value replaces the default for that rig only."""

from __future__ import annotations

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
    # ---- speed
    prefill_efficiency: float = Field(0.40, gt=0, le=1, description=(
        "fraction of the card's dense FP16 tensor TFLOPS reached in prefill and the vision encoder"))
    bandwidth_efficiency: float = Field(0.70, gt=0, le=1, description=(
        "fraction of memory bandwidth reached when decode streams the weights"))
    decode_overhead_ms_per_layer: float = Field(0.45, ge=0, description=(
        "per-decoder-layer launch/Python overhead of a transformers generate step; with the two above it "
        "reproduces 7B fp16 ~40 tok/s and Llama-2-13B 37 ms/token on A100 (FACTS)"))
    nf4_decode_slowdown: float = Field(1.4, gt=0, description=(
        "bitsandbytes NF4 decode time vs fp16 at batch 1 (FACTS: Llama-2-13B on A100, 52.0 vs 37.0 ms/token)"))
    nf4_prefill_slowdown: float = Field(1.15, gt=0, description="NF4 prefill vs fp16 (weights dequantized per matmul)")
    int8_decode_slowdown: float = Field(4.0, gt=0, description=(
        "LLM.int8 decode vs fp16 (FACTS: reports from ~15% of fp16 speed to 5x slower; bnb #181, #490)"))
    int8_prefill_slowdown: float = Field(2.0, gt=0, description="LLM.int8 prefill vs fp16 (outlier decomposition)")
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

    def describe(self) -> list[dict[str, object]]:
        """Every assumption with its value and why, for --json output and the README."""
        return [{"name": k, "value": getattr(self, k), "why": f.description}
                for k, f in type(self).model_fields.items()]


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

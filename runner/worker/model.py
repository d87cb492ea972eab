"""Load the model the job names: `AutoModelForImageTextToText` + `AutoProcessor`, in fp32/fp16/bf16 or
quantized by bitsandbytes (nf4 with optional double quant, LLM.int8), optionally keeping the vision
tower 16-bit, placed by accelerate (`device_map="auto"` + `max_memory`) across the GPUs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import tiny


class LoadError(Exception):
    """The model cannot be loaded as asked; the message says why and what to do."""


# FACTS: the bare name "visual" matches nothing, and a custom skip list must name lm_head again.
VISION_SKIP_MODULES = ["model.visual", "lm_head"]


def pick_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise LoadError("the job asks for CUDA but torch sees no GPU (driver or CUDA build missing?)")
    return "cuda" if requested in ("cuda", "auto") and torch.cuda.is_available() else "cpu"


def dtypes(quant: str, device: str, compute_dtype: str = "auto"):
    """(weights dtype, bitsandbytes compute dtype) for a quantization on this device. The compute
    dtype of nf4/int8 (what the unquantized parts and the matmuls run in) is `compute_dtype`, or by
    default bf16 where the card has it, fp16 on older cards, fp32 on CPU."""
    import torch

    bf16_ok = device == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False)
    if "bf16" in (quant, compute_dtype) and not bf16_ok:
        name = torch.cuda.get_device_name(0)
        cc = ".".join(map(str, torch.cuda.get_device_capability(0)))
        raise LoadError(f"bf16 is not supported on {name} (compute capability {cc}); use fp16")
    if quant == "int8" and device == "cuda" and torch.cuda.get_device_capability(0) < (7, 5):
        raise LoadError(f"LLM.int8 needs compute capability 7.5 or newer; {torch.cuda.get_device_name(0)} is older")
    fixed = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if quant in fixed:
        return fixed[quant], None
    if compute_dtype != "auto":
        compute = fixed[compute_dtype]
    else:
        compute = torch.float32 if device == "cpu" else (torch.bfloat16 if bf16_ok else torch.float16)
    return compute, compute


def quantization_config(quant: str, compute_dtype, double_quant: bool, keep_vision_16bit: bool):
    from transformers import BitsAndBytesConfig

    skip = VISION_SKIP_MODULES if keep_vision_16bit else None
    if quant == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)
    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return None


@dataclass
class Loaded:
    model: object
    processor: object
    quantization: str
    device: str
    dtype: str
    load_s: float
    memory_after_load: list[dict]
    footprint_bytes: int
    device_map: dict
    params: int


def logical_params(model) -> int:
    """Parameters as the architecture counts them: bitsandbytes' 4-bit tensors are stored packed
    (two values per byte, flattened), their quant_state keeps the real shape."""
    import math

    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += math.prod(state.shape) if state is not None and getattr(state, "shape", None) else p.numel()
    return total


def resolve_source(job_model) -> str:
    src = job_model.source
    if job_model.recipe:
        if job_model.recipe != tiny.NAME:
            raise LoadError(f"unknown model recipe {job_model.recipe!r} (this worker builds {tiny.NAME})")
        tiny.ensure(Path(src))
    return src


def load(job, quant: str, device: str, memory) -> Loaded:
    """Load model + processor for `quant` on `device`; `memory` reports what the load took."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    src = resolve_source(job.model)
    weights_dtype, compute = dtypes(quant, device, job.compute_dtype)
    kwargs: dict = {"dtype": weights_dtype}
    qc = quantization_config(quant, compute, job.double_quant, job.keep_vision_16bit)
    if qc is not None:
        kwargs["quantization_config"] = qc
    if device == "cuda":
        kwargs["device_map"] = "auto"
        if job.max_memory:
            kwargs["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in job.max_memory.items()}
    else:
        kwargs["device_map"] = "cpu"
    if job.model.revision:
        kwargs["revision"] = job.model.revision
    started = time.monotonic()
    try:
        model = AutoModelForImageTextToText.from_pretrained(src, **kwargs).eval()
        processor = AutoProcessor.from_pretrained(src, **({"revision": job.model.revision} if job.model.revision else {}))
    except OSError as e:
        hint = "" if Path(src).exists() else " (not a local directory: is the hub reachable, or pass a downloaded copy?)"
        raise LoadError(f"cannot load {src}: {str(e).splitlines()[0]}{hint}") from None
    except (ValueError, ImportError) as e:
        raise LoadError(f"cannot load {src} as {quant}: {str(e).splitlines()[0]}") from None
    processor.tokenizer.padding_side = "left"  # decoder-only batching: pad on the left
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    load_s = time.monotonic() - started
    if device == "cuda":
        torch.cuda.synchronize()
    return Loaded(model=model, processor=processor, quantization=quant, device=device,
                  dtype=str(weights_dtype).removeprefix("torch."), load_s=load_s,
                  memory_after_load=memory.current(), footprint_bytes=int(model.get_memory_footprint()),
                  device_map={k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {"": device}).items()},
                  params=logical_params(model))


def unload(loaded: Loaded) -> None:
    import gc

    import torch

    loaded.model = None
    loaded.processor = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

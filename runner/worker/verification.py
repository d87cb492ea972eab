"""The fp16_verify tasks' phase: the 16-bit reference model re-runs single-image samples the quantized
model answered, after that model is unloaded. Each verify task that cannot run is skipped with the reason:
the model is already 16-bit, its task is not single-image, or the 16-bit weights do not fit (judged
before loading where the size is known, else learnt from the load running out of memory)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .model import LoadError

log = logging.getLogger("gpubudget.worker")


def run(job, work, phases, status) -> None:
    from .model import pick_device
    from .tasks.fp16_verify import SINGLE_TURN

    if job.quantization in ("fp16", "bf16", "fp32"):
        work.skip(work.verify, f"the model already runs in {job.quantization}: nothing to verify")
        return
    import torch

    device = pick_device(job.device)
    bf16 = device == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False)
    ref_quant = "bf16" if bf16 else "fp16"
    runnable = []
    for t in work.verify:
        of = job.task(t.of_task)
        if of.kind not in SINGLE_TURN:
            work.skip([t], f"verification re-runs single-image tasks; {of.name} is {of.kind}")
            continue
        quantized = {x["id"]: x for x in work.results[of.name].lines if x.get("status") == "ok"}
        # samples the quantized model could not answer (OOM) have nothing to verify
        work.keep(t.name, quantized)
        status.progress(t.name, work.progress(t.name))
        phases.extra.setdefault("quantized_lines", {}).update(quantized)
        runnable.append(t)
    if not work.pending(runnable):
        return
    reason = _reference_fits(job, phases.params, device)
    if reason:
        work.skip(runnable, reason)
        log.info("fp16 verification skipped: %s", reason)
        return
    try:
        phases.run(job, work, ref_quant, runnable)
    except (LoadError, RuntimeError, MemoryError) as e:
        from .engine import is_oom, release

        if not (isinstance(e, LoadError) or is_oom(e)):
            raise
        release()
        reason = f"the 16-bit model could not be loaded: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
        work.skip(runnable, reason)
        log.warning("fp16 verification skipped: %s", reason)


def _reference_fits(job, params: int, device: str) -> str:
    """'' when the 16-bit model fits the memory the quantized one freed, else why not."""
    from .engine import Memory
    from .model import resolve_source

    need = 2 * params if params else None  # counted on the quantized model this attempt
    src = Path(resolve_source(job.model))
    if need is None:  # resumed with only verification left: the checkpoint's own size (16-bit on the hub)
        try:
            index = json.loads((src / "model.safetensors.index.json").read_text())
            need = int(index["metadata"]["total_size"])
        except (OSError, ValueError, KeyError):
            shards = list(src.glob("*.safetensors")) if src.is_dir() else []
            need = sum(p.stat().st_size for p in shards) or None
    if need is None:
        return ""  # unknown: try, and skip if the load runs out of memory
    need = int(need * 1.2)  # Qwen: real use is at least 1.2x the weights
    free = Memory(device).free_bytes() if device == "cpu" else _cuda_free(job.max_memory)
    if need > free:
        return (f"the 16-bit model needs about {need / 2**30:.1f} GiB and only {free / 2**30:.1f} GiB "
                f"is free after unloading the quantized one")
    return ""


def _cuda_free(max_memory: dict) -> int:
    import torch

    free = 0
    for i in range(torch.cuda.device_count()):
        f = torch.cuda.mem_get_info(i)[0]
        cap = max_memory.get(str(i)) if max_memory else None
        free += min(f, _bytes(cap)) if cap else f
    return free


def _bytes(text: str) -> int:
    units = {"gib": 2**30, "gb": 10**9, "mib": 2**20, "mb": 10**6, "kib": 2**10, "kb": 10**3, "b": 1}
    t = str(text).strip().lower()
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)

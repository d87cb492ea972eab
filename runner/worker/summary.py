"""summary.json, the run's last word, rewritten whenever it ends (done, stopped or failed): per-task metrics
recomputed from the results files on disk (so resumed attempts add up), what was skipped and why, each
model load, the batch size used, and the software and GPUs it ran on."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from . import files
from .status import now

SCHEMA = "gpubudget.summary/1"


def write(out: Path, job, status, *, loads: list[dict], batching, skipped: dict[str, str], stopped: str | None,
          error: str | None, elapsed_s: float) -> None:
    from .tasks import KINDS

    tasks = {}
    for t in (job.tasks if job else []):
        rf = files.ResultFile(out / "results" / f"{t.name}.jsonl")
        total = status.fields["tasks"].get(t.name, {}).get("total")
        entry = {"kind": t.kind, "total": total, **KINDS[t.kind].summarize(t, rf.lines)}
        if t.name in skipped:
            entry["skipped"] = skipped[t.name]
        tasks[t.name] = entry
    complete = bool(tasks) and all(v["done"] >= (v["total"] or 0) or "skipped" in v for v in tasks.values())
    summary = {
        "schema": SCHEMA, "run_id": job.run_id if job else None,
        "model": job.model.name if job else None, "quantization": job.quantization if job else None,
        "attempt": status.attempt, "complete": complete and not error,
        "stopped": stopped, "error": error, "elapsed_s": round(elapsed_s, 3),
        "batch_size": {"requested": job.batch_size if job else None, "used": batching.auto, "note": batching.note},
        "loads": loads, "tasks": tasks,
        "peak_memory_bytes": max([v.get("peak_memory_bytes") or 0 for v in tasks.values()] or [0]),
        "environment": _environment(), "finished_at": now().isoformat(),
    }
    files.write_json(out / "summary.json", summary)


def _environment() -> dict:
    env = {"python": platform.python_version(), "host": platform.node()}
    for name in ("torch", "transformers", "accelerate", "bitsandbytes"):
        mod = sys.modules.get(name)
        env[name] = getattr(mod, "__version__", None) if mod else None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env

"""Memory sweep: one generation per resolution (alone, batch 1), recording peak memory, latency and
the visual tokens the processor really produced. An out-of-memory is a result, not a failure: it is
recorded, its memory released, and the sweep goes on. `sweep_memory_cap_mib` simulates a smaller card."""

from __future__ import annotations

from ..generation import OutOfMemory
from . import base

PROMPT = "Describe this image."

batch_size = 1


def lines_per_sample(task: dict) -> int:
    """One line per resolution for each sample (datasets.resolve)."""
    return len(task.get("resolutions") or ())


def run_batch(ctx, task, samples):
    lines = []
    for s in samples:
        prompt = task.prompt or PROMPT
        fields = {"resolution": list(s.size), "prompt": prompt}
        try:
            with ctx.memory.cap(ctx.job.sweep_memory_cap_mib):
                batch = ctx.engine.run([base.image_request(prompt, s.image)], ctx.max_new_tokens(task))
        except OutOfMemory as e:
            lines.append(base.oom_line(ctx, task, s.id, str(e), **fields))
            continue
        out = batch.outputs[0]
        lines.append(base.line(ctx, task, s.id, status="ok", **fields, prediction=out.text,
                               **base.measures(out, batch, 1)))
    return lines


def summarize(task, lines):
    out = base.accounting(lines)
    sized = sorted((x for x in lines if _pixels(x)), key=_pixels)  # (the controller sums lines it fetched)
    out["by_resolution"] = [
        {"resolution": x["resolution"], "status": x["status"], "visual_tokens": x.get("visual_tokens"),
         "peak_memory_bytes": x.get("peak_memory_bytes"), "latency_s": x.get("latency_s")} for x in sized]
    fits = [x for x in sized if x["status"] == "ok"]
    out["largest_ok"] = fits[-1]["resolution"] if fits else None
    return out


def _pixels(line: dict) -> int:
    """A line's width x height, 0 for a resolution that is not two sizes in pixels."""
    r = line.get("resolution")
    if isinstance(r, list) and len(r) == 2 and all(type(v) is int and 0 < v <= 1 << 16 for v in r):
        return r[0] * r[1]
    return 0

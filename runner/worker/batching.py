"""How a task's samples are cut into batches: the size (the job's, or `auto`: from the memory the first
sample took over the loaded model and what is free), and a batch taken apart when one of its samples is
unusable, so a bad file costs that sample and not its neighbours."""

from __future__ import annotations

import logging

MAX_AUTO_BATCH = 32

log = logging.getLogger("gpubudget.worker")


class Batching:
    def __init__(self, status):
        self.status = status
        self.auto: int | None = None  # chosen once, then kept for every task and phase of this attempt
        self.note = ""

    def size(self, kind_module, requested, first_peak: int | None, baseline: int, memory) -> int:
        if getattr(kind_module, "batch_size", None) == 1:
            return 1
        if requested != "auto":
            return requested
        if self.auto is not None:
            return self.auto
        if first_peak is None:
            return 1  # measure one sample first
        per_sample = max(first_peak - baseline, 1)
        self.auto = max(1, min(MAX_AUTO_BATCH, int(0.8 * memory.free_bytes() / per_sample)))
        self.note = (f"auto: one sample took {per_sample / 2**20:.0f} MiB over the loaded model; "
                     f"{memory.free_bytes() / 2**30:.1f} GiB free -> batch {self.auto} (cap {MAX_AUTO_BATCH})")
        log.info("batch size %s", self.note)
        self.status.update(batch_size=self.auto)
        return self.auto


def run_chunk(ctx, kind, task, chunk) -> list[dict]:
    """A batch; when one of its samples has unusable input, the others run alone and that one is
    recorded as `status: error` (a bad file must not end a paid run)."""
    from .tasks.base import SampleError, error_line

    bad = [s for s in chunk if getattr(s, "error", "")]
    if bad:  # rows the dataset could not make into samples: their errors, then the rest as usual
        for s in bad:
            log.warning("task %s sample %s: %s", task.name, s.id, s.error)
        good = [s for s in chunk if not getattr(s, "error", "")]
        return [error_line(ctx, task, s.id, s.error) for s in bad] + (run_chunk(ctx, kind, task, good)
                                                                      if good else [])
    try:
        return kind.run_batch(ctx, task, chunk)
    except SampleError as e:
        if len(chunk) == 1:
            log.warning("task %s sample %s: %s", task.name, chunk[0].id, e)
            return [error_line(ctx, task, chunk[0].id, str(e))]
    return [x for s in chunk for x in run_chunk(ctx, kind, task, [s])]

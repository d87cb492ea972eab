"""Task kinds, one module each, all with the same small interface (see base.py)."""

from __future__ import annotations

from . import caption, digits, document, fp16_verify, memory_sweep, multiturn_vqa, poetry, video

KINDS = {"caption": caption, "document": document, "multiturn_vqa": multiturn_vqa, "poetry": poetry,
         "memory_sweep": memory_sweep, "video": video, "fp16_verify": fp16_verify, "digits": digits}


def most_lines(task: dict, limit: int | None) -> int | None:
    """The most result lines a task of a job (its dict in job.json) can have - each a distinct sample id -, as
    datasets.resolve builds its samples: `samples` (at most the job's limit), times the resolutions for a
    memory sweep (one image per resolution). None when the task does not say."""
    n = task.get("samples")
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    n = min(n, limit) if isinstance(limit, int) else n
    per = getattr(KINDS.get(task.get("kind")), "lines_per_sample", None)
    return n * per(task) if per else n

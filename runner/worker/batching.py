"""How a task's samples are cut into batches: their order, the batch size, and a batch taken apart when one
of its samples is unusable (a bad file costs that sample and not its neighbours).

Order (`order`, applied by work.Work to what is left to do): a batch is left-padded to its longest sample, so
every shorter sample pays the longest one's compute and KV cache. The single-image kinds (and fp16_verify,
which re-runs them) run their samples sorted by `input_tokens`, an estimate that needs no model - the image's
pixels as the processor will resize them, plus the prompt's bytes - so that a batch holds samples of similar
length. Multi-turn conversations sort by turn count first (a batch runs as many rounds as its longest
conversation), then the same estimate. Video keeps the dataset's order: a clip's frame count is known only
once it is decoded. The memory sweep keeps the plan's order and runs one sample at a time: each line is the
peak of one resolution alone, and a batch would report the largest image's peak for all of them. The sort is
stable (ties keep the dataset's order) and runs after the samples already in the results file are dropped -
ids, not positions, decide what is done - so a resumed attempt runs exactly the missing ids.

Size: the job's number, or `auto`: the largest batch the memory model admits, at most MAX_AUTO_BATCH. A
batch's peak over the loaded model grows with n x (longest input + longest answer) tokens: the KV cache holds
every position of every sequence padded to the longest one, and prefill's activations grow with the padded
input. Every batch of a kind that batches is logged on the phase's Memory (`seen`, by run_chunk); the cost
per sample-token is the LARGEST seen so far, (peak - baseline) / (n x tokens), and the next batch admits
n = 0.8 x available / (cost x (longest input to come + max_new_tokens)). The first batch of each kind is one
sample (nothing is known yet). The size is re-checked before every batch: with `upcoming` (the token
estimates of the samples to come, in order) against the batch it would really cut; without, against the
last batch's longest input - in bucketed order the next batch is at least that long, and a longer bucket
re-sizes as soon as its first batch is measured (a batch that still runs out of memory is split in halves,
tasks/base.split_on_oom). Video, whose input has no estimate, is sized per sample: the largest per-sample
peak seen over its batches."""

from __future__ import annotations

import logging
import math
import os
import stat
from dataclasses import dataclass

# The largest auto batch. Not a memory limit (the model above is): a batch's samples all wait for its longest
# answer, and a stop request or an OOM costs the whole batch. 32 is the largest batch benchmarks/engine_check.py
# measures; raise it only with a measurement that shows more in flight is faster on the card.
MAX_AUTO_BATCH = 32
HEADROOM = 0.8  # of the memory available: allocator fragmentation, the sampler's 5 ms blind spots on CPU
PIXELS_PER_TOKEN = 32 * 32  # Qwen3-VL: 16-px patches, merged 2x2 into one visual token
TEXT_BYTES_PER_TOKEN = 3  # Qwen's BPE: ~4 UTF-8 bytes an English token, 3-4.5 a Chinese one; over is the safe side
BUCKETED = ("caption", "document", "poetry", "digits", "fp16_verify", "multiturn_vqa")

log = logging.getLogger("gpubudget.worker")


# --------------------------------------------------------------------------- order


def image_size(image) -> tuple[int, int] | None:
    """(width, height) of a PIL image, or of an image file from its header (no pixel is decoded); None when
    unknown (a missing or unreadable file: the run records its error when it gets there)."""
    if image is None:
        return None
    if hasattr(image, "convert"):  # a PIL image (synthetic samples)
        return tuple(image.size)
    try:
        if not stat.S_ISREG(os.stat(image).st_mode):  # a FIFO would block the header read for ever
            return None
        from PIL import Image

        with Image.open(image) as im:
            return im.size
    except (OSError, ValueError, TypeError):
        return None


def visual_tokens(size: tuple[int, int] | None, limits: dict) -> int:
    """The visual tokens of an image of `size` once the processor has resized it into the job's pixel limits."""
    if not size:
        return 0
    pixels = min(max(size[0] * size[1], limits["min_pixels"]), limits["max_pixels"])
    return math.ceil(pixels / PIXELS_PER_TOKEN)


def input_tokens(sample, task, limits: dict) -> int:
    """An estimate of a sample's input tokens that needs no model: its image (or the memory sweep's size)
    and its text - the sample's prompt, the task's prompt and every turn of a conversation."""
    size = getattr(sample, "size", None) or image_size(getattr(sample, "image", None))
    text = "\n".join([sample.prompt or "", task.prompt or "", *getattr(sample, "turns", [])])
    return visual_tokens(size, limits) + math.ceil(len(text.encode("utf-8")) / TEXT_BYTES_PER_TOKEN)


def order(kind: str, task, samples: list, limits: dict) -> list:
    """`samples` in the order they should run (see the module docstring); `task` gives the prompt."""
    if kind not in BUCKETED:
        return list(samples)
    turns = (lambda s: len(s.turns)) if kind == "multiturn_vqa" else (lambda s: 0)
    return sorted(samples, key=lambda s: (turns(s), input_tokens(s, task, limits)))


# --------------------------------------------------------------------------- size


@dataclass
class Seen:
    """One measured batch: n samples, the longest input (estimated tokens; None: no estimate), its longest
    answer, the task's max_new_tokens, and the batch's peak (bytes, the largest device's)."""

    kind: str
    n: int
    input: int | None
    generated: int
    max_new: int
    peak: int


class Batching:
    def __init__(self, status):
        self.status = status
        self.auto: int | None = None  # the last auto size chosen (summary.json's batch_size.used)
        self.note = ""

    def size(self, kind_module, requested, first_peak: int | None, baseline: int, memory, upcoming=None) -> int:
        """The next batch's size. `first_peak`: the peak of the task's first batch (used only where `memory`
        keeps no log of batches); `upcoming`: token estimates (input + max_new_tokens) of the samples to come."""
        if getattr(kind_module, "batch_size", None) == 1:
            return 1
        if requested != "auto":
            return requested
        seen = getattr(memory, "seen", None)
        if seen is None:  # an engine whose memory keeps no log: today's rule, from the first batch
            if first_peak is None:
                return self.auto or 1
            return self._choose(first_peak - baseline, memory, "its first batch")
        kind = kind_module.__name__.rsplit(".", 1)[-1]
        mine = [s for s in seen if s.kind == kind]
        if not mine:
            return 1  # measure one sample of this kind first
        if all(s.input is not None for s in mine):
            cost = max((s.peak - baseline) / (s.n * max(1, s.input + s.generated)) for s in mine)
            if upcoming:
                return self._choose_upcoming(max(cost, 1.0), list(upcoming), memory)
            tokens = mine[-1].input + mine[-1].max_new
            return self._choose(cost * tokens, memory, f"the last batch's longest, {tokens} tokens")
        per_sample = max((s.peak - baseline) / s.n for s in mine)
        return self._choose(per_sample, memory, "the largest per-sample peak so far")

    def _choose(self, per_sample: float, memory, what: str) -> int:
        free = memory.free_bytes()
        per_sample = max(per_sample, 1.0)
        n = max(1, min(MAX_AUTO_BATCH, int(HEADROOM * free / per_sample)))
        return self._set(n, f"auto: {per_sample / 2**20:.0f} MiB a sample over the loaded model ({what}); "
                            f"{free / 2**30:.1f} GiB free -> batch {n} (cap {MAX_AUTO_BATCH})")

    def _choose_upcoming(self, cost: float, upcoming: list[int], memory) -> int:
        free = memory.free_bytes()
        n, longest = 0, 0
        for k, tokens in enumerate(upcoming[:MAX_AUTO_BATCH], 1):
            if k * cost * max(longest, tokens) > HEADROOM * free:
                break
            n, longest = k, max(longest, tokens)
        n = max(1, n)
        return self._set(n, f"auto: {cost / 2**10:.0f} KiB a sample-token over the loaded model, the batch's "
                            f"longest {longest} tokens; {free / 2**30:.1f} GiB free -> batch {n} "
                            f"(cap {MAX_AUTO_BATCH})")

    def _set(self, n: int, note: str) -> int:
        if n != self.auto:
            log.info("batch size %s", note)
            self.status.update(batch_size=n)
        self.auto, self.note = n, note
        return n


def tokens(ctx, task, samples) -> list[int]:
    """Token estimates (input + max_new_tokens) of `samples`, for Batching.size's `upcoming`."""
    estimate = ctx.job.task(task.of_task) if task.kind == "fp16_verify" else task
    max_new = ctx.max_new_tokens(estimate)
    return [input_tokens(s, estimate, ctx.job.image_limits) + max_new for s in samples]


def observe(ctx, task, kind, chunk, lines) -> None:
    """Log each measured batch of `lines` on the phase's memory (Batching.size reads it). Kinds that run one
    sample at a time (the memory sweep probes the card's edge on purpose) are not batches to learn from."""
    seen = getattr(ctx.memory, "seen", None)
    if seen is None or getattr(kind, "batch_size", None) == 1:
        return
    by_id = {s.id: s for s in chunk}
    estimate = ctx.job.task(task.of_task) if task.kind == "fp16_verify" else task
    groups: dict[tuple, list[dict]] = {}
    for x in lines:  # the lines of one batch share its size, latency and peak (tasks/base.measures)
        if x.get("status") == "ok" and x.get("peak_memory_bytes") is not None and x.get("batch_size"):
            groups.setdefault((x["batch_size"], x.get("latency_s"), x["peak_memory_bytes"]), []).append(x)
    for (n, _, peak), group in groups.items():
        known = task.kind in BUCKETED and all(x["id"] in by_id for x in group)
        longest = max(input_tokens(by_id[x["id"]], estimate, ctx.job.image_limits) for x in group) if known else None
        seen.append(Seen(kind=task.kind, n=n, input=longest, generated=max(x.get("decode_tokens") or 0 for x in group),
                         max_new=ctx.max_new_tokens(estimate), peak=peak))


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
        lines = kind.run_batch(ctx, task, chunk)
    except SampleError as e:
        if len(chunk) == 1:
            log.warning("task %s sample %s: %s", task.name, chunk[0].id, e)
            return [error_line(ctx, task, chunk[0].id, str(e))]
    else:
        observe(ctx, task, kind, chunk, lines)
        return lines
    return [x for s in chunk for x in run_chunk(ctx, kind, task, [s])]

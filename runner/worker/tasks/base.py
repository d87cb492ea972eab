"""What every task kind shares. A kind is a module with `prepare(ctx, task, samples)` (optional),
`run_batch(ctx, task, samples) -> list[dict]` (one result line per sample) and
`summarize(task, lines) -> dict` (run on the controller too, over the lines it fetched), and
`lines_per_sample(task)` (optional: more than one line per sample, see tasks.most_lines); single-turn image
kinds only define PROMPT and `score()`."""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..generation import Batch, OutOfMemory, Output, Request

if TYPE_CHECKING:
    from ..generation import Engine, Memory


@dataclass
class Context:
    job: object
    engine: Engine
    memory: Memory
    quantization: str
    attempt: int
    extra: dict = field(default_factory=dict)

    def max_new_tokens(self, task) -> int:
        return task.max_new_tokens or self.job.generation["max_new_tokens"]


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def image_request(prompt: str, image) -> Request:
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
    return Request(messages=[{"role": "user", "content": content}], images=[image] if image is not None else [])


class SampleError(Exception):
    """One sample's input is unusable (unreadable image or video); it is recorded, the run goes on."""


MAX_IMAGE_PIXELS = 2**26  # 64 Mpx: past this a file is a decompression bomb, not a photo (PIL warns at 89 Mpx)


def regular_file(src) -> None:
    """Refuse what is not a regular file before opening it (a FIFO or device would block the run forever)."""
    try:
        mode = os.stat(src).st_mode
    except OSError as e:
        raise SampleError(f"cannot read {src}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise SampleError(f"{src} is not a regular file")


def load_image(src):
    from PIL import Image

    if hasattr(src, "convert"):
        return src.convert("RGB")
    regular_file(src)
    try:
        with Image.open(src) as im:  # lazy: the header gives the size before any pixel is decoded
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise SampleError(f"image {src} is {im.width}x{im.height}: over the {MAX_IMAGE_PIXELS >> 20} Mpx cap")
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise SampleError(f"cannot read image {src}: {e}") from None


def measures(out: Output, batch: Batch, batch_size: int) -> dict:
    """The measurements every result line carries. latency_s is the whole batch's (what the sample
    waited; the batch's time is shared by its lines); ttft_s the sample's own where the engine measured it
    per request (a server), else the batch's; tokens_per_s is the batch's decode throughput."""
    ttft = out.ttft_s if out.ttft_s is not None else batch.ttft_s
    return {
        "prefill_tokens": out.prefill_tokens, "visual_tokens": out.visual_tokens, "decode_tokens": out.decode_tokens,
        "latency_s": round(batch.latency_s, 4), "ttft_s": round(ttft, 4), "batch_size": batch_size,
        "tokens_per_s": round(batch.decode_tokens / batch.latency_s, 2) if batch.latency_s > 0 else None,
        "peak_memory": batch.peak_memory, "peak_memory_bytes": batch.peak_bytes,
    }


def line(ctx: Context, task, sample_id: str, **fields) -> dict:
    return {"id": sample_id, "task": task.name, "kind": task.kind, "quantization": ctx.quantization,
            "attempt": ctx.attempt, **fields, "finished_at": now()}


def oom_line(ctx: Context, task, sample_id: str, error: str, **fields) -> dict:
    return line(ctx, task, sample_id, status="oom", error=error, **fields)


def error_line(ctx: Context, task, sample_id: str, error: str) -> dict:
    return line(ctx, task, sample_id, status="error", error=error)


def split_on_oom(samples: list, attempt, on_oom) -> list[dict]:
    """`attempt(samples)` -> lines; when the batch runs out of memory (already released), retry it in
    halves; a lone sample that still does not fit becomes `on_oom(sample, error)`."""
    try:
        return attempt(samples)
    except OutOfMemory as e:
        if len(samples) == 1:
            return [on_oom(samples[0], str(e))]
    half = len(samples) // 2
    return split_on_oom(samples[:half], attempt, on_oom) + split_on_oom(samples[half:], attempt, on_oom)


def single_turn(ctx: Context, task, samples, prompt_of, score) -> list[dict]:
    """One image+prompt turn per sample, as a batch (split on OOM)."""
    def attempt(batch_samples):
        requests = [image_request(prompt_of(s), load_image(s.image) if s.image is not None else None)
                    for s in batch_samples]
        batch = ctx.engine.run(requests, ctx.max_new_tokens(task))
        return [line(ctx, task, s.id, status="ok", prompt=prompt_of(s), prediction=out.text,
                     **score(s, out.text), **measures(out, batch, len(batch_samples)))
                for s, out in zip(batch_samples, batch.outputs, strict=True)]

    return split_on_oom(samples, attempt, lambda s, e: oom_line(ctx, task, s.id, e, prompt=prompt_of(s)))


def mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 6) if xs else None


def counts(lines: list[dict]) -> dict:
    """How many lines there are, by status (status.json's progress and every summary)."""
    status = [x.get("status") for x in lines]
    return {"done": len(lines), "ok": status.count("ok"), "oom": status.count("oom"), "errors": status.count("error")}


def accounting(lines: list[dict]) -> dict:
    """Totals every task summary carries, recomputed from the result lines (so resumed runs add up)."""
    ok = [x for x in lines if x.get("status") == "ok"]
    # Each line carries its batch's latency: a batch took latency_s once, shared by batch_size lines.
    busy = sum(x["latency_s"] / x["batch_size"] for x in ok)
    decode = sum(x["decode_tokens"] for x in ok)
    return {
        **counts(lines),
        "prefill_tokens": sum(x["prefill_tokens"] for x in ok),
        "visual_tokens": _sum_known(x["visual_tokens"] for x in ok),
        "decode_tokens": decode, "busy_s": round(busy, 4),
        "samples_per_s": round(len(ok) / busy, 4) if busy else None,
        "decode_tokens_per_s": round(decode / busy, 2) if busy else None,
        "mean_latency_s": mean(x["latency_s"] for x in ok), "mean_ttft_s": mean(x["ttft_s"] for x in ok),
        "peak_memory_bytes": max((x["peak_memory_bytes"] for x in ok if x["peak_memory_bytes"] is not None),
                                 default=None),
    }


def _sum_known(values) -> int | None:
    """The sum of the counts an engine reported; None when it reported none (a server's visual tokens)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def summary(lines: list[dict], rescore=None, **means: str) -> dict:
    """accounting() plus, for each NAME=KEY, the mean of the lines' KEY over the answered samples. With
    `rescore(line) -> fields`, each answered line's scores are computed again from its own prediction and
    references first (the controller summarizes the lines it fetched: a score a line claims is not taken; a
    line whose fields cannot be scored counts as answered with no score)."""
    ok = [x for x in lines if x.get("status") == "ok"]
    if rescore is not None:
        ok = [_rescored(x, rescore, means.values()) for x in ok]
    return {**accounting(lines), **{name: mean(x[key] for x in ok) for name, key in means.items()}}


def _rescored(line: dict, rescore, keys) -> dict:
    try:
        return {**line, **rescore(line)}
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
        return {**line, **dict.fromkeys(keys)}

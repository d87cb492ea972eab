"""FP16 verification: re-run a subset of another task's samples on the 16-bit model and measure how
often the quantized answers agree with it (normalized exact match and token F1). The worker runs
these tasks last, after unloading the quantized model, so the 16-bit model only needs the memory
the quantized one had freed; when it cannot fit, the task is skipped with the reason."""

from __future__ import annotations

from .. import metrics
from . import base

SINGLE_TURN = ("caption", "document", "poetry", "digits")


def run_batch(ctx, task, samples):
    quantized = ctx.extra["quantized_lines"]  # id -> the of_task's result line
    max_new = ctx.max_new_tokens(ctx.job.task(task.of_task))

    def attempt(batch_samples):
        requests = [base.image_request(quantized[s.id]["prompt"], base.load_image(s.image)) for s in batch_samples]
        batch = ctx.engine.run(requests, max_new)
        lines = []
        for s, out in zip(batch_samples, batch.outputs, strict=True):
            q = quantized[s.id]["prediction"]
            lines.append(base.line(ctx, task, s.id, status="ok", prompt=quantized[s.id]["prompt"],
                                   prediction=out.text, quantized_prediction=q,
                                   quantized_as=quantized[s.id]["quantization"], agree=metrics.exact_match(q, out.text),
                                   agreement_f1=round(metrics.token_f1(q, out.text), 6),
                                   **base.measures(out, batch, len(batch_samples))))
        return lines

    return base.split_on_oom(samples, attempt, lambda s, e: base.oom_line(ctx, task, s.id, e))


def summarize(task, lines):
    # agree: True counts 1; of_task says whose answers were checked (the cost-of-quality report joins on it)
    return {**base.summary(lines, _agreement, agreement="agree", agreement_f1="agreement_f1"), "of_task": task.of_task}


def _agreement(x: dict) -> dict:
    q, p = x["quantized_prediction"], x["prediction"]
    if not isinstance(q, str) or not isinstance(p, str):
        raise TypeError("prediction")
    return {"agree": metrics.exact_match(q, p), "agreement_f1": round(metrics.token_f1(q, p), 6)}

"""Reading numbers: a picture holding a number (an amount, a date, an invoice number among other labelled
values), a prompt naming which one; scored by exact match and character accuracy against the number as
printed (metrics.digits_exact, metrics.char_accuracy: the prediction's number-like span, separators kept).
Pictures are drawn from the job's seed (digit_images.py) or come from a manifest of the user's own
(`image`, `answer`, optionally `prompt`)."""

from __future__ import annotations

from .. import metrics
from . import base

QUESTION = "Read the number in this image exactly as printed."  # a sample without a prompt of its own
PROMPT = "Reply with the number only, digits and separators (, . - / :) exactly as printed."


def prompt_of(task):
    def build(s):
        return f"{s.prompt or QUESTION}\n{task.prompt or PROMPT}"
    return build


def scores(prediction: str, answer: str) -> dict:
    return {"answer": answer, "exact": metrics.digits_exact(prediction, answer),
            "char_accuracy": round(metrics.char_accuracy(prediction, answer), 6)}


def score(sample, prediction: str) -> dict:
    return scores(prediction, sample.answers[0] if sample.answers else "")


def run_batch(ctx, task, samples):
    return base.single_turn(ctx, task, samples, prompt_of(task), score)


def summarize(task, lines):
    """exact_match and char_accuracy: means over the answered lines, each scored again from its own
    prediction and answer (a line's claimed score is not taken; metrics.char_accuracy bounds the work)."""
    def rescore(x):
        if not isinstance(x["answer"], str) or not isinstance(x["prediction"], str):
            raise TypeError("answer")
        return scores(x["prediction"], x["answer"])
    return base.summary(lines, rescore, exact_match="exact", char_accuracy="char_accuracy")

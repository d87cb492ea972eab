"""Document understanding: a question about a page; ANLS (threshold 0.5) against accepted answers."""

from __future__ import annotations

from .. import metrics
from . import base

PROMPT = "Answer the question about this document with a short phrase."


def prompt_of(task):
    def build(s):
        question = s.prompt or "What is the total amount?"
        return f"{task.prompt or PROMPT}\n{question}"
    return build


def score(sample, prediction: str) -> dict:
    return {"answers": sample.answers, "anls": round(metrics.anls(prediction, sample.answers), 6)}


def run_batch(ctx, task, samples):
    return base.single_turn(ctx, task, samples, prompt_of(task), score)


def summarize(task, lines):
    return base.summary(lines, anls="anls")

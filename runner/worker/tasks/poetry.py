"""Chinese classical-poetry image understanding: Chinese prompts, recall of the reference keywords
(imagery such as 月, 山, 舟) in the answer. Text stays UTF-8 end to end (ensure_ascii=False)."""

from __future__ import annotations

from .. import metrics
from . import base

PROMPT = "请用中文描述这幅画的意境，并写出一句与之相符的古诗。"


def prompt_of(task):
    return lambda s: s.prompt or task.prompt or PROMPT


def score(sample, prediction: str) -> dict:
    found = metrics.keywords_found(prediction, sample.keywords)
    return {"keywords": sample.keywords, "keywords_found": found,
            "keyword_recall": round(len(found) / len(sample.keywords), 6) if sample.keywords else 0.0}


def run_batch(ctx, task, samples):
    return base.single_turn(ctx, task, samples, prompt_of(task), score)


def summarize(task, lines):
    return base.summary(lines, keyword_recall="keyword_recall")

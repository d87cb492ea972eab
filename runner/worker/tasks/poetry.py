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
    return base.summary(lines, lambda x: score(_Keywords(x["keywords"]), x["prediction"]),
                        keyword_recall="keyword_recall")


class _Keywords:
    """A line's reference keywords as the sample they were scored against."""

    def __init__(self, keywords):
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise TypeError("keywords")
        self.keywords = keywords

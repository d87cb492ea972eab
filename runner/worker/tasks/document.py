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


RESCORE_CELLS = 50_000_000  # edit-distance cells one summary may spend scoring lines again (seconds, not hours)


def summarize(task, lines):
    spent = [0]

    def rescore(x):
        answers, prediction = x["answers"], x["prediction"]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) \
                or not isinstance(prediction, str):
            raise TypeError("answers")
        spent[0] += len(prediction) * sum(len(a) for a in answers)
        if spent[0] > RESCORE_CELLS:  # lines far longer than answers are: not scored again, not counted
            raise ValueError("too long to score")
        return score(_Answers(answers), prediction)
    return base.summary(lines, rescore, anls="anls")


class _Answers:
    """A line's accepted answers as the sample they were scored against."""

    def __init__(self, answers: list[str]):
        self.answers = answers

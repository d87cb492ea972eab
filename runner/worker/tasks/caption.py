"""Image captioning (COCO-style): corpus BLEU-4 and CIDEr-D against the reference captions."""

from __future__ import annotations

from .. import metrics
from . import base

PROMPT = "Describe this image in one sentence."


def prompt_of(task):
    return lambda s: s.prompt or task.prompt or PROMPT


def score(sample, prediction: str) -> dict:
    return {"references": sample.references}


def run_batch(ctx, task, samples):
    return base.single_turn(ctx, task, samples, prompt_of(task), score)


def summarize(task, lines):
    ok = [x for x in lines if x["status"] == "ok" and x.get("references")]
    out = base.accounting(lines)
    if ok:
        hyps = [metrics.tokenize(x["prediction"]) for x in ok]
        refs = [[metrics.tokenize(r) for r in x["references"]] for x in ok]
        out["bleu4"] = round(metrics.bleu(hyps, refs)[0][3], 6)
        out["cider_d"] = round(metrics.cider_d(hyps, refs)[0], 6)
    return out

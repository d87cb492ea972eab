"""Multi-turn visual QA: N turns about one image in one conversation (the image enters at turn 1, the
model's own answers stay in the history). Per turn: latency, tokens, peak memory; per conversation:
memory growth from the first to the last turn, and whether a repeated question gets the same answer."""

from __future__ import annotations

from .. import metrics
from ..generation import Request
from . import base


def _conversations(ctx, task, samples) -> list[list[dict]]:
    images = [base.load_image(s.image) for s in samples]
    history = [[] for _ in samples]
    turns = [[] for _ in samples]
    for t in range(max(len(s.turns) for s in samples)):
        live = [i for i, s in enumerate(samples) if t < len(s.turns)]
        requests = []
        for i in live:
            content = ([{"type": "image"}] if t == 0 else []) + [{"type": "text", "text": samples[i].turns[t]}]
            history[i].append({"role": "user", "content": content})
            requests.append(Request(messages=list(history[i]), images=[images[i]]))
        batch = ctx.engine.run(requests, ctx.max_new_tokens(task))
        for i, out in zip(live, batch.outputs, strict=True):
            history[i].append({"role": "assistant", "content": [{"type": "text", "text": out.text}]})
            turns[i].append({"question": samples[i].turns[t], "answer": out.text,
                             **base.measures(out, batch, len(live))})
    return turns


def _consistency(turns: list[dict]) -> dict:
    seen: dict[str, str] = {}
    exact, f1 = [], []
    for turn in turns:
        key = metrics.tokenize(turn["question"])
        if key in seen:
            exact.append(1.0 if metrics.exact_match(seen[key], turn["answer"]) else 0.0)
            f1.append(metrics.token_f1(seen[key], turn["answer"]))
        else:
            seen[key] = turn["answer"]
    return {"repeats": len(exact), "consistency": base.mean(exact), "consistency_f1": base.mean(f1)}


def run_batch(ctx, task, samples):
    return base.split_on_oom(samples, lambda batch_samples: _lines(ctx, task, batch_samples),
                             lambda s, e: base.oom_line(ctx, task, s.id, e))


def _lines(ctx, task, samples):
    lines = []
    for s, turns in zip(samples, _conversations(ctx, task, samples), strict=True):
        peaks = [t["peak_memory_bytes"] for t in turns]
        lines.append(base.line(
            ctx, task, s.id, status="ok", turns=turns, **_consistency(turns),
            prediction=turns[-1]["answer"],
            prefill_tokens=sum(t["prefill_tokens"] for t in turns),
            visual_tokens=turns[0]["visual_tokens"], decode_tokens=sum(t["decode_tokens"] for t in turns),
            # every turn of this batch ran with the same batch size: the conversation's time is their sum
            latency_s=round(sum(t["latency_s"] for t in turns), 4), ttft_s=turns[0]["ttft_s"],
            batch_size=turns[0]["batch_size"], tokens_per_s=None,
            peak_memory=max((t["peak_memory"] for t in turns), key=lambda m: max((x["bytes"] for x in m), default=0)),
            peak_memory_bytes=None if None in peaks else max(peaks),
            memory_growth_bytes=None if None in peaks else peaks[-1] - peaks[0]))
    return lines


def summarize(task, lines):
    out = base.summary(lines, consistency="consistency", consistency_f1="consistency_f1",
                       mean_memory_growth_bytes="memory_growth_bytes")
    ok = [x for x in lines if x["status"] == "ok"]
    n = max((len(x["turns"]) for x in ok), default=0)
    out["mean_turn_latency_s"] = [base.mean(x["turns"][t]["latency_s"] for x in ok if len(x["turns"]) > t)
                                  for t in range(n)]
    return out

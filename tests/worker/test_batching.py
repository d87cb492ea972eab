"""Left-padded batches: greedy outputs of a batch equal those of the same samples run one by one,
with images of different sizes and prompts of different lengths (so padding really happens), and
each answer stays with its own sample (lmms-eval #648/#970 mixed them up)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from runner.worker.synthetic import noise

from .conftest import job, lines, run_inline, write_job

SIZES = [(64, 64), (160, 96), (96, 128), (64, 192), (128, 128), (224, 64), (64, 96)]
PROMPTS = ["Describe this image.", "What is this?", "Describe every shape in this picture, with its colour and size.",
           "Colour?", "Tell me about the picture in two sentences.", "What do you see?", "Shapes?"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rows = []
    for i, (size, prompt) in enumerate(zip(SIZES, PROMPTS, strict=True)):
        noise(size, random.Random(40 + 10 * i)).save(root / f"img{i}.png")  # seeded: the same answers every run
        rows.append({"id": f"s{i}", "image": f"img{i}.png", "prompt": prompt, "references": ["a noisy grey picture"]})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "captions.jsonl"


@pytest.mark.parametrize("quant", ["fp32", "nf4"])
def test_batch_equals_unbatched(tiny_model, manifest, tmp_path, quant):
    task = {"name": "cap", "kind": "caption", "samples": len(SIZES), "dataset": {"kind": "local", "path": str(manifest)}}
    results = {}
    for bs in (1, 3, len(SIZES)):
        out = tmp_path / f"b{bs}"
        doc = job(tiny_model, [task], quant, batch_size=bs, generation={"max_new_tokens": 10, "do_sample": False},
                  image_limits={"min_pixels": 1024, "max_pixels": 65536})
        assert run_inline(write_job(tmp_path / f"j{bs}", doc), out) == 0
        got = lines(out, "cap")
        assert [x["batch_size"] for x in got] == ([1] * 7 if bs == 1 else [3, 3, 3, 3, 3, 3, 1] if bs == 3 else [7] * 7)
        results[bs] = {x["id"]: (x["prediction"], x["decode_tokens"], x["prefill_tokens"], x["visual_tokens"]) for x in got}
    assert results[1] == results[3] == results[len(SIZES)]
    # padding happened: prompts of different lengths shared batches
    assert len({v[2] for v in results[1].values()}) == len(SIZES)
    # and the answers differ by sample, so a mix-up would show
    assert len({v[0] for v in results[1].values()}) == len(SIZES)


# --------------------------------------------------------------------------- order: length buckets
# (id, image size, prompt) -> estimated input tokens with LIMITS_ORDER: visual ceil(clamp(w*h)/1024), text
# ceil(bytes/3): b 4+3, e 4+3 (b's twin), a 16+7, c 4+22 (small image, long prompt), d 35+2; f has no image file
ROWS = [("a", (128, 128), "Describe this image."), ("b", (64, 64), "Colour?"),
        ("c", (64, 64), "Describe every shape in this picture, with its colour and size."), ("d", (224, 160), "What?"),
        ("e", (64, 64), "Colour?"), ("f", None, "Missing?")]
LIMITS_ORDER = {"min_pixels": 1024, "max_pixels": 65536}


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    root = tmp_path_factory.mktemp("sized")
    rows = []
    for i, (sid, size, prompt) in enumerate(ROWS):
        if size:
            noise(size, random.Random(i)).save(root / f"{sid}.png")
        rows.append({"id": sid, "image": f"{sid}.png", "prompt": prompt, "references": ["noise"]})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "m.jsonl"


def _work(tmp_path, tasks, out, **extra):
    from runner.worker import job as jobmod
    from runner.worker.work import Work

    doc = job(tmp_path / "no-model", tasks, image_limits=LIMITS_ORDER, **extra)
    return Work(jobmod.parse(doc), out, tmp_path)


def _cap(manifest):
    return {"name": "cap", "kind": "caption", "samples": len(ROWS), "dataset": {"kind": "local", "path": str(manifest)}}


def test_todo_is_ordered_by_input_size_stably_and_deterministically(sized, tmp_path):
    w = _work(tmp_path, [_cap(sized)], tmp_path / "out")
    ids = [s.id for s in w.todo["cap"]]
    # the unreadable row first (its error is recorded when it runs), then by estimated tokens: c's long prompt
    # outweighs a's larger image; b and e tie and keep the manifest's order
    assert ids == ["f", "b", "e", "a", "c", "d"]
    assert [s.id for s in w.samples["cap"]] == [r[0] for r in ROWS]  # the dataset itself keeps its order
    assert [s.id for s in _work(tmp_path, [_cap(sized)], tmp_path / "out2").todo["cap"]] == ids


def test_resumed_todo_is_exactly_the_missing_ids_in_bucket_order(sized, tmp_path):
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    done = [{"id": i, "task": "cap", "status": "ok"} for i in ("e", "a", "f")]
    (out / "results" / "cap.jsonl").write_text("".join(json.dumps(x) + "\n" for x in done))
    w = _work(tmp_path, [_cap(sized)], out)
    assert [s.id for s in w.todo["cap"]] == ["b", "c", "d"]


def test_sweep_and_video_keep_their_order_multiturn_goes_by_turns_first(tmp_path):
    from runner.worker.batching import order
    from runner.worker.sample import Sample
    from runner.worker.synthetic import noise as img

    sweep = [{"name": "sweep", "kind": "memory_sweep", "resolutions": [[512, 512], [64, 64], [256, 256]]},
             {"name": "vid", "kind": "video", "samples": 3}]
    w = _work(tmp_path, sweep, tmp_path / "out")
    assert [s.id for s in w.todo["sweep"]] == ["512x512-0", "64x64-0", "256x256-0"]
    assert [s.id for s in w.todo["vid"]] == ["syn-0", "syn-1", "syn-2"]

    class T:
        prompt = ""
    small, big = img((64, 64), random.Random(0)), img((256, 256), random.Random(0))
    convs = [Sample("long-small", image=small, turns=["q"] * 3), Sample("short-big", image=big, turns=["q"]),
             Sample("short-small", image=small, turns=["q"])]
    assert [s.id for s in order("multiturn_vqa", T, convs, LIMITS_ORDER)] == ["short-small", "short-big", "long-small"]


@pytest.mark.timeout(300)
def test_a_resumed_run_runs_exactly_the_missing_ids(tiny_model, sized, tmp_path):
    """Through the real worker: a first attempt's lines for three ids are kept; the second runs the other
    three, each once, and leaves the finished lines as they were."""
    task = _cap(sized)
    first = tmp_path / "first"
    doc = job(tiny_model, [task], batch_size=2, image_limits=LIMITS_ORDER)
    assert run_inline(write_job(tmp_path / "j", doc), first) == 0
    full = {x["id"]: x for x in lines(first, "cap")}
    assert [x["id"] for x in lines(first, "cap")] == ["f", "b", "e", "a", "c", "d"]  # the file follows the buckets
    kept = [full[i] for i in ("d", "b", "f")]
    out = tmp_path / "resumed"
    (out / "results").mkdir(parents=True)
    (out / "results" / "cap.jsonl").write_text("".join(json.dumps(x) + "\n" for x in kept))
    assert run_inline(write_job(tmp_path / "j", doc), out) == 0
    got = lines(out, "cap")
    assert got[:3] == kept and [x["id"] for x in got[3:]] == ["e", "a", "c"]
    assert all(x["prediction"] == full[x["id"]]["prediction"] for x in got[3:] if x["status"] == "ok")


# --------------------------------------------------------------------------- size: the memory model

MiB = 2**20


class FakeMemory:
    """A card with `free` bytes available; `seen` is the log batching.observe writes."""

    def __init__(self, free: int):
        self.free = free
        self.seen: list = []

    def free_bytes(self) -> int:
        return self.free


def _ctx(memory, max_new=10):
    from runner.worker import job as jobmod
    from runner.worker.tasks.base import Context

    tasks = [{"name": "cap", "kind": "caption"}, {"name": "vid", "kind": "video"}]
    j = jobmod.parse(job(Path("m"), tasks, generation={"max_new_tokens": max_new, "do_sample": False},
                         image_limits=LIMITS_ORDER))
    return Context(job=j, engine=None, memory=memory, quantization="fp32", attempt=1)


def _batch(ctx, kind, samples, per_token: float, generated: int, baseline: int, name="cap"):
    """Log a batch of `samples` whose peak is `per_token` bytes for each sample-token over `baseline`."""
    from runner.worker.batching import input_tokens, observe

    task = ctx.job.task(name)
    longest = max(input_tokens(s, task, LIMITS_ORDER) for s in samples)
    peak = baseline + int(len(samples) * per_token * (longest + generated))
    lines = [{"id": s.id, "status": "ok", "batch_size": len(samples), "latency_s": 1.0, "peak_memory_bytes": peak,
              "decode_tokens": generated} for s in samples]
    observe(ctx, task, kind, samples, lines)


def _samples(prefix: str, size, prompt: str, n: int):
    from runner.worker.sample import Sample

    return [Sample(f"{prefix}{i}", image=noise(size, random.Random(i)), prompt=prompt) for i in range(n)]


def test_auto_batch_follows_the_longest_inputs_and_the_largest_cost_seen():
    from runner.worker import tasks
    from runner.worker.batching import MAX_AUTO_BATCH, Batching

    class Status:
        def update(self, **kw):
            self.batch_size = kw.get("batch_size")

    base = 1000 * MiB
    mem = FakeMemory(200 * MiB)
    ctx = _ctx(mem)
    b, cap = Batching(Status()), tasks.caption
    assert b.size(cap, "auto", None, base, mem) == 1  # nothing measured yet: one sample first
    short = _samples("s", (64, 64), "Colour?", 12)  # 4 visual + 3 text tokens; answers of at most 10
    _batch(ctx, cap, short[:1], MiB, 10, base)
    # 1 MiB a sample-token x (7 + 10 tokens) a sample: 0.8 x 200 MiB / 17 MiB -> 9
    assert b.size(cap, "auto", None, base, mem) == 9 and b.status.batch_size == 9
    _batch(ctx, cap, short[1:10], MiB / 2, 4, base)  # a cheaper batch does not raise the size again
    assert b.size(cap, "auto", None, base, mem) == 9
    long = _samples("l", (224, 160), "What?", 4)  # the next bucket: 35 + 2 tokens
    _batch(ctx, cap, long[:3], MiB, 10, base)
    assert b.size(cap, "auto", None, base, mem) == 3  # re-sized for the longer bucket: 160 / 47
    # told what comes, the batch is sized by its longest sample, not its first
    assert b.size(cap, "auto", None, base, mem, upcoming=[17, 17, 17, 47, 47]) == 3
    assert b.size(cap, "auto", None, base, mem, upcoming=[17, 17, 17, 17, 17]) == 5
    mem.free = 10**6 * MiB
    assert b.size(cap, "auto", None, base, mem) == MAX_AUTO_BATCH
    assert "GiB free" in b.note and f"batch {MAX_AUTO_BATCH}" in b.note and b.auto == MAX_AUTO_BATCH


def test_auto_batch_per_kind_sweep_alone_video_by_its_largest_sample():
    from runner.worker import tasks
    from runner.worker.batching import Batching

    class Status:
        def update(self, **kw):
            pass

    base, mem = 0, FakeMemory(100 * MiB)
    ctx, b = _ctx(mem), Batching(Status())
    _batch(ctx, tasks.caption, _samples("s", (64, 64), "Colour?", 1), MiB, 3, base)
    assert b.size(tasks.document, "auto", None, base, mem) == 1  # another kind: measured on its own first
    assert b.size(tasks.memory_sweep, "auto", None, base, mem) == 1 and b.size(tasks.caption, 4, None, base, mem) == 4
    clips = [type("Clip", (), {"id": f"v{i}", "image": None, "prompt": "", "turns": []})() for i in range(3)]
    vid = ctx.job.task("vid")
    observe_lines = [{"id": c.id, "status": "ok", "batch_size": 2, "latency_s": 2.0, "peak_memory_bytes": 40 * MiB,
                      "decode_tokens": 5} for c in clips[:2]]
    from runner.worker.batching import observe

    observe(ctx, vid, tasks.video, clips[:2], observe_lines)
    observe(ctx, vid, tasks.video, clips[2:], [{**observe_lines[0], "id": "v2", "batch_size": 1, "latency_s": 1.0,
                                                "peak_memory_bytes": 30 * MiB}])
    assert b.size(tasks.video, "auto", None, base, mem) == 2  # the largest per-sample peak: 30 MiB -> 80 / 30
    # an engine whose memory keeps no log (a server's): sized from the first batch's peak, as before
    no_log, fresh = type("M", (), {"free_bytes": lambda self: 100 * MiB})(), Batching(Status())
    assert fresh.size(tasks.caption, "auto", None, base, no_log) == 1
    assert fresh.size(tasks.caption, "auto", 10 * MiB, base, no_log) == 8


def test_free_memory_counts_the_allocators_unused_cache(monkeypatch):
    import torch

    from runner.worker.engine import Memory

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((5, 9)[i] * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: (20, 12)[i] * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: (14, 11)[i] * 2**30)
    # card 0: 5 free + 6 cached unused; card 1: 9 + 1 -> the smaller is what a batch split across both gets
    assert Memory("cuda").free_bytes() == 10 * 2**30

"""Left-padded batches: greedy outputs of a batch equal those of the same samples run one by one,
with images of different sizes and prompts of different lengths (so padding really happens), and
each answer stays with its own sample (lmms-eval #648/#970 mixed them up)."""

from __future__ import annotations

import json
import random

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

"""The tuned HF path (job.engine.compile): generate with a static KV cache and a CompileConfig. On CPU
transformers skips the compilation (it compiles on CUDA only) but the static cache runs, so greedy answers,
token counts and result lines must equal the default path's - with a left-padded batch, where a static cache
is easiest to get wrong. The tiny model is loaded once for the module."""

from __future__ import annotations

import random

import pytest

from runner.worker.synthetic import noise

from .conftest import job

LIMITS = {"min_pixels": 1024, "max_pixels": 65536}
PROMPTS = ["Colour?", "Describe every shape in this picture, with its colour and size, and where it is."]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from runner.worker import job as jobmod
    from runner.worker.engine import Memory
    from runner.worker.model import load

    task = {"name": "cap", "kind": "caption", "samples": 2}
    j = jobmod.parse(job(tiny_model, [task], generation={"max_new_tokens": 12, "do_sample": False},
                         image_limits=LIMITS, device="cpu"))
    memory = Memory("cpu")
    return j, load(j, "fp32", "cpu", memory), memory


def _lines(loaded, compile: bool, calls: list):
    from runner.worker.engine import Engine
    from runner.worker.sample import Sample
    from runner.worker.tasks import caption
    from runner.worker.tasks.base import Context

    j, model, memory = loaded
    generate = model.model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return generate(*args, **kwargs)

    engine = Engine(model, memory, j.generation, j.image_limits, j.seed, lambda: False, compile=compile)
    samples = [Sample(f"s{i}", image=noise(size, random.Random(i)), prompt=p)
               for i, (size, p) in enumerate(zip([(64, 96), (160, 96)], PROMPTS, strict=True))]
    ctx = Context(job=j, engine=engine, memory=memory, quantization="fp32", attempt=1)
    model.model.generate = spy
    try:
        return caption.run_batch(ctx, j.task("cap"), samples)
    finally:
        del model.model.generate  # the class's generate again


def test_compiled_path_answers_as_the_default_one(loaded):
    from transformers import CompileConfig

    calls: list = []
    off, on = _lines(loaded, False, calls), _lines(loaded, True, calls)
    assert "cache_implementation" not in calls[0] and "compile_config" not in calls[0]
    assert calls[1]["cache_implementation"] == "static" and isinstance(calls[1]["compile_config"], CompileConfig)
    prompt_len = max(x["prefill_tokens"] for x in on)
    assert calls[1].get("max_cache_len", 256) == 256 >= prompt_len + 12  # a power of two, at least 256
    assert len({x["prefill_tokens"] for x in off}) == 2  # the short prompt was left-padded
    same = ("prediction", "decode_tokens", "prefill_tokens", "visual_tokens", "batch_size", "status")
    assert [{k: x[k] for k in same} for x in on] == [{k: x[k] for k in same} for x in off]
    assert [sorted(x) for x in on] == [sorted(x) for x in off]  # the result lines carry the same fields
    assert all(x["decode_tokens"] > 0 for x in on)


@pytest.mark.parametrize(("tokens", "length"), [(1, 256), (256, 256), (257, 512), (5000, 8192)])
def test_static_cache_length_is_a_power_of_two(tokens, length):
    from runner.worker.engine import static_cache_len

    assert static_cache_len(tokens) == length


def test_static_cache_is_sized_per_call_not_by_the_largest_ever(loaded):
    """A long input (a memory sweep's large image) must not leave every later batch a cache of its size."""
    from runner.worker.engine import Engine
    from runner.worker.tasks.base import image_request

    j, model, memory = loaded
    engine = Engine(model, memory, j.generation, j.image_limits, j.seed, lambda: False, compile=True)
    image = noise((256, 256), random.Random(0))  # 64 visual tokens at these limits
    long = engine.run([image_request("Describe every shape, its colour and size. " * 30, image)], 4)
    assert long.outputs[0].prefill_tokens + 4 > 512
    assert model.model._previous_max_cache_length == 1024  # transformers' record of the cache it built
    engine.run([image_request("Colour?", image)], 4)
    assert model.model._previous_max_cache_length == 256

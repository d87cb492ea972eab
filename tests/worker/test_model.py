"""Model loading as the worker does it: what bitsandbytes quantizes and what it leaves 16-bit."""

from __future__ import annotations

import pytest

from runner.worker import job as jobmod
from runner.worker.engine import Memory
from runner.worker.model import LoadError, load


def _job(model, **kw):
    return jobmod.parse({"schema": "gpubudget.job/1", "run_id": "r", "model": {"name": "tiny", "source": str(model)},
                         "quantization": "nf4", "tasks": [{"name": "c", "kind": "caption"}], **kw})


def _linear_kinds(model) -> dict[str, set[str]]:
    import torch

    kinds: dict[str, set[str]] = {"visual": set(), "language": set(), "lm_head": set()}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            part = "lm_head" if name == "lm_head" else "visual" if ".visual." in f".{name}." else "language"
            kinds[part].add(type(mod).__name__)
    return kinds


@pytest.mark.parametrize("quant, packed", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_vision_tower_quantized_unless_kept_16bit(tiny_model, quant, packed):
    plain = load(_job(tiny_model, quantization=quant), quant, "cpu", Memory("cpu"))
    kinds = _linear_kinds(plain.model)
    assert kinds["language"] == {packed} and kinds["visual"] == {packed}  # transformers quantizes the ViT too
    assert kinds["lm_head"] == {"Linear"}  # the output embedding stays 16-bit
    kept = load(_job(tiny_model, quantization=quant, keep_vision_16bit=True), quant, "cpu", Memory("cpu"))
    kinds = _linear_kinds(kept.model)
    assert kinds["language"] == {packed} and kinds["visual"] == {"Linear"} and kinds["lm_head"] == {"Linear"}
    assert kept.footprint_bytes > plain.footprint_bytes
    assert plain.load_s > 0 and plain.memory_after_load[0]["device"] == "cpu"


def test_missing_model_is_a_load_error(tmp_path):
    with pytest.raises(LoadError, match="cannot load .*nowhere"):
        load(_job(tmp_path / "nowhere"), "fp32", "cpu", Memory("cpu"))


def test_cuda_requested_without_gpu():
    import torch

    from runner.worker.model import pick_device

    if torch.cuda.is_available():
        assert pick_device("cuda") == "cuda"
    else:
        with pytest.raises(LoadError, match="asks for CUDA but torch sees no GPU"):
            pick_device("cuda")
        assert pick_device("auto") == "cpu"


@pytest.mark.parametrize("quant", ["fp32", "nf4", "int8"])
def test_parameter_count_survives_quantization(tiny_model, quant):
    from planner.architecture import load_config, param_breakdown

    loaded = load(_job(tiny_model, quantization=quant), quant, "cpu", Memory("cpu"))
    assert loaded.params == param_breakdown(load_config(tiny_model / "config.json")).total


def test_compute_dtype_of_a_quantized_model(tiny_model):
    import torch

    auto = load(_job(tiny_model), "nf4", "cpu", Memory("cpu"))
    assert auto.model.config.quantization_config.bnb_4bit_compute_dtype == torch.float32  # CPU default
    bf16 = load(_job(tiny_model, compute_dtype="bf16"), "nf4", "cpu", Memory("cpu"))
    assert bf16.model.config.quantization_config.bnb_4bit_compute_dtype == torch.bfloat16
    with pytest.raises(jobmod.JobError, match="job.compute_dtype: 'int4' is not auto"):
        _job(tiny_model, compute_dtype="int4")

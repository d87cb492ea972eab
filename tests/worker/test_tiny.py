"""The tiny model the worker builds is the one the planner's catalog describes."""

from __future__ import annotations

import json
from pathlib import Path

from planner.architecture import load_config, param_breakdown
from runner.worker import tiny

REPO = Path(__file__).resolve().parents[2]


def test_recipe_matches_the_planner_catalog():
    catalog = json.loads((REPO / "planner" / "data" / "models" / "tiny-random-qwen3-vl.json").read_text())
    built = tiny.config_dict()
    assert {k: built["text_config"][k] for k in catalog["text_config"]} == catalog["text_config"]
    assert built["vision_config"] == catalog["vision_config"]
    assert built["tie_word_embeddings"] == catalog["tie_word_embeddings"]


def test_built_model_has_the_planned_parameter_count(tiny_model):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32)
    planned = param_breakdown(load_config(tiny_model / "config.json"))
    assert sum(p.numel() for p in model.parameters()) == planned.total
    # widths >= 64 and multiples of 64 where bitsandbytes packs 4-bit rows on avx512_bf16 CPUs (FACTS.md)
    assert tiny.TEXT_CONFIG["hidden_size"] % 64 == 0 and tiny.VISION_CONFIG["hidden_size"] % 64 == 0
    proc = AutoProcessor.from_pretrained(tiny_model)
    ids = proc.tokenizer("明月 <|image_pad|>")["input_ids"]
    assert proc.tokenizer.decode(ids) == "明月 <|image_pad|>"  # byte-level BPE: any UTF-8 round-trips
    assert model.config.image_token_id == proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_ensure_reuses_a_finished_build(tmp_path):
    dest = tiny.build(tmp_path / "m")
    stamp = (dest / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure(dest) == dest and (dest / "model.safetensors").stat().st_mtime_ns == stamp
    (dest / "gpubudget-recipe.json").unlink()  # an interrupted or foreign directory is rebuilt
    tiny.ensure(dest)
    assert json.loads((dest / "gpubudget-recipe.json").read_text())["recipe"] == tiny.RECIPE_VERSION

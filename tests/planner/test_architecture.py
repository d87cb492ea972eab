"""Parameter counts: exact against FACTS.md and against transformers' own classes on the meta device."""

import copy
import json
from pathlib import Path

import pytest

from planner.architecture import load_config, param_breakdown, spec_from_config
from planner.catalog import load_catalog
from planner.errors import ModelConfigError

FACTS_TOTALS = {  # FACTS.md, from transformers' classes on the meta device
    "Qwen3-VL-2B-Instruct": 2_127_532_032,
    "Qwen3-VL-4B-Instruct": 4_437_815_808,
    "Qwen3-VL-8B-Instruct": 8_767_123_696,
    "Qwen3-VL-32B-Instruct": 33_357_390_064,
    "Qwen3-VL-30B-A3B-Instruct": 31_070_754_032,
    "Qwen3-VL-235B-A22B-Instruct": 235_670_022_896,
}
DATA = Path(__file__).resolve().parents[2] / "planner" / "data" / "models"


@pytest.mark.parametrize("name,total", FACTS_TOTALS.items())
def test_catalog_totals_match_facts(name, total):
    b = param_breakdown(load_catalog().model(name))
    assert b.total == total
    assert b.total == b.vision + b.embeddings + b.lm_head + b.attention + b.mlp + b.norms


def test_tied_models_share_lm_head_and_moe_active_params():
    cat = load_catalog()
    two = param_breakdown(cat.model("2b"))
    assert two.tied and two.lm_head == 0 and two.embeddings == 151936 * 2048
    eight = param_breakdown(cat.model("8b"))
    assert not eight.tied and eight.lm_head == eight.embeddings == 151936 * 4096
    moe = param_breakdown(cat.model("30b-a3b"))
    # "A3B": about 3 B active of 31 B
    assert 2.8e9 < moe.active < 4.0e9 < moe.total


def _meta_count(cfg: dict) -> int:
    """Parameters of transformers' own class for `cfg`, built on the meta device."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    conf = tf.AutoConfig.for_model(**{k: v for k, v in copy.deepcopy(cfg).items() if not k.startswith("_")})
    auto = tf.AutoModelForImageTextToText if "vision_config" in cfg else tf.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(conf)
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once


def _tiny(moe: bool, tie: bool, layout: str) -> dict:
    """Odd-sized configs (not the catalog's) in transformers 4.57's or 5.x's saved layout."""
    text = dict(vocab_size=1000, hidden_size=192, intermediate_size=320, num_hidden_layers=5, num_attention_heads=6,
                num_key_value_heads=2, head_dim=40, attention_bias=layout == "4.57")
    if moe:
        text.update(moe_intermediate_size=96, num_experts_per_tok=2, decoder_sparse_step=2, mlp_only_layers=[3])
        text["num_experts" if layout == "4.57" else "num_local_experts"] = 6
    rope = {"rope_type": "default", "mrope_section": [8, 6, 6], "mrope_interleaved": True}
    if layout == "4.57":
        text.update(rope_scaling=rope, rope_theta=10000, tie_word_embeddings=tie)
        top = {"tie_word_embeddings": tie}  # 4.57 wrote the flag in both places
    else:
        text.update(rope_parameters={**rope, "rope_theta": 10000})
        top = {"tie_word_embeddings": tie}
    vision = dict(depth=3, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=192,
                  num_position_embeddings=144, deepstack_visual_indexes=[0, 2], patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    return {"model_type": "qwen3_vl_moe" if moe else "qwen3_vl", "text_config": text, "vision_config": vision, **top}


def _qwen2_vl(version: str, layout: str, tie: bool) -> dict:
    """Qwen2-VL / Qwen2.5-VL with odd widths, flat (as released) or with a nested text_config (as
    transformers 5.x saves)."""
    text = dict(vocab_size=1200, hidden_size=160, intermediate_size=288, num_hidden_layers=3, num_attention_heads=5,
                num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})
    if version == "2":
        vision = dict(depth=3, embed_dim=96, hidden_size=160, mlp_ratio=3, num_heads=3, in_chans=3, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
    else:
        vision = dict(depth=4, hidden_size=96, intermediate_size=200, out_hidden_size=160, num_heads=3, in_chans=3,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[1, 3])
    cfg = {"model_type": "qwen2_vl" if version == "2" else "qwen2_5_vl", "vision_config": vision,
           "tie_word_embeddings": tie}
    return {**cfg, "text_config": text} if layout == "nested" else {**cfg, **text}


def _text_only(model_type: str, tie: bool = False, **extra) -> dict:
    cfg = dict(model_type=model_type, vocab_size=1100, hidden_size=176, intermediate_size=304, num_hidden_layers=3,
               num_attention_heads=11, num_key_value_heads=1, tie_word_embeddings=tie, **extra)
    if model_type == "qwen3_moe":
        cfg.update(num_experts=5, num_experts_per_tok=2, moe_intermediate_size=72, decoder_sparse_step=2,
                   mlp_only_layers=[2])
    return cfg


CASES = {
    "2B tied (release layout)": lambda: json.loads((DATA / "Qwen3-VL-2B-Instruct.json").read_text()),
    "8B (release layout)": lambda: json.loads((DATA / "Qwen3-VL-8B-Instruct.json").read_text()),
    "32B (release layout)": lambda: json.loads((DATA / "Qwen3-VL-32B-Instruct.json").read_text()),
    "30B-A3B MoE (release layout)": lambda: json.loads((DATA / "Qwen3-VL-30B-A3B-Instruct.json").read_text()),
    "tiny dense tied, 4.57 layout": lambda: _tiny(False, True, "4.57"),
    "tiny dense untied, 5.x layout": lambda: _tiny(False, False, "5.x"),
    "tiny MoE tied, 4.57 layout": lambda: _tiny(True, True, "4.57"),
    "tiny MoE untied, 5.x layout": lambda: _tiny(True, False, "5.x"),
    "Qwen2.5-7B-Instruct (catalog, qwen2)": lambda: json.loads((DATA / "Qwen2.5-7B-Instruct.json").read_text()),
    "Qwen3-8B (catalog, qwen3)": lambda: json.loads((DATA / "Qwen3-8B.json").read_text()),
    "Qwen2-VL flat (release layout)": lambda: _qwen2_vl("2", "flat", False),
    "Qwen2-VL nested text_config, tied": lambda: _qwen2_vl("2", "nested", True),
    "Qwen2.5-VL flat (release layout), tied": lambda: _qwen2_vl("2.5", "flat", True),
    "Qwen2.5-VL nested text_config": lambda: _qwen2_vl("2.5", "nested", False),
    "qwen2": lambda: _text_only("qwen2"),
    "qwen2 tied": lambda: _text_only("qwen2", tie=True),
    "qwen3 (default head_dim 128)": lambda: _text_only("qwen3"),
    "qwen3 head_dim 24, attention_bias": lambda: _text_only("qwen3", head_dim=24, attention_bias=True),
    "qwen3_moe": lambda: _text_only("qwen3_moe", head_dim=32),
    "llama": lambda: _text_only("llama"),
    "llama attention and mlp biases, tied": lambda: _text_only("llama", tie=True, attention_bias=True, mlp_bias=True),
    "mistral head_dim null": lambda: _text_only("mistral", head_dim=None),
    "mistral head_dim 40": lambda: _text_only("mistral", head_dim=40),
}


@pytest.mark.parametrize("case", CASES)
def test_params_match_transformers_meta_device(case):
    cfg = CASES[case]()
    ours = param_breakdown(spec_from_config(cfg, case)).total
    theirs = _meta_count(cfg)
    assert abs(ours - theirs) / theirs < 0.005, (ours, theirs)
    assert ours == theirs  # in fact exact


def test_tie_flag_only_in_text_config_is_untied_like_transformers_5():
    cfg = _tiny(False, True, "4.57")
    del cfg["tie_word_embeddings"]
    spec = spec_from_config(cfg, "x")
    assert not spec.tie_word_embeddings
    assert param_breakdown(spec).total == _meta_count(cfg)


def test_config_saved_by_installed_transformers_parses(tmp_path: Path):
    """The layout the installed transformers writes (save_pretrained), dense and MoE."""
    tf = pytest.importorskip("transformers")
    for moe in (False, True):
        cfg = _tiny(moe, False, "5.x")
        conf = (tf.Qwen3VLMoeConfig if moe else tf.Qwen3VLConfig)(**cfg)
        conf.save_pretrained(tmp_path / str(moe))
        spec = load_config(tmp_path / str(moe))
        assert param_breakdown(spec).total == _meta_count(cfg)


@pytest.mark.parametrize("cfg,needle", [
    ({"model_type": "gemma3"}, "supported model types: qwen3_vl, qwen3_vl_moe, qwen2_vl, qwen2_5_vl, qwen2"),
    ({"model_type": "qwen3_vl"}, "text_config and vision_config"),
    ({"model_type": "qwen3_vl", "text_config": {"hidden_size": "big"}, "vision_config": {}}, "hidden_size"),
    ({"model_type": "qwen3_vl", "text_config": {}, "vision_config": {"deepstack_visual_indexes": "x"}},
     "deepstack_visual_indexes"),
    ([1, 2], "JSON object"),
])
def test_bad_configs_are_clear_errors(cfg, needle):
    with pytest.raises(ModelConfigError, match=needle):
        spec_from_config(cfg, "x")


def test_load_config_file_errors(tmp_path: Path):
    with pytest.raises(ModelConfigError, match="no such file"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelConfigError, match="not a readable JSON"):
        load_config(tmp_path)

"""Qwen3-VL architectures: read a Hugging Face `config.json` into a `ModelSpec`, and list every
parameter tensor group the way transformers builds the model (`modeling_qwen3_vl*.py`).

The inventory is what the memory model prices: which groups are `nn.Linear` (bitsandbytes
quantizes those), which stay 16-bit (embeddings, norms, the Conv3d patch embedding, the vision
position table, MoE experts stored as fused 3-D parameters, the router), and where each lives
(vision tower and embeddings on the first card, decoder layers spread, lm_head with the last).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelConfigError
from .models import ModelSpec, ParamBreakdown, TextArch, VisionArch

# Defaults of transformers' own config classes, used when a config.json omits a field.
_TEXT_DEFAULTS = {
    "qwen3_vl": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                     num_attention_heads=32, head_dim=128, attention_bias=False),
    "qwen3_vl_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                         num_attention_heads=16, attention_bias=False, num_experts=60, num_experts_per_tok=4,
                         moe_intermediate_size=1408, decoder_sparse_step=1),
}
_VISION_DEFAULTS = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, in_channels=3,
                        patch_size=16, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=3584,
                        num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])


@dataclass(frozen=True, slots=True)
class ParamGroup:
    """`count` identical tensors of `numel` weights (+ `bias` each). `linear` groups are what
    bitsandbytes quantizes; `out_features` sizes LLM.int8's per-row scales. `where` is
    'vision', 'embed', 'layer', 'final' or 'lm_head'; `layer` indexes decoder layers."""

    name: str
    component: str  # vision | embeddings | lm_head | attention | mlp | norms
    where: str
    numel: int
    count: int = 1
    bias: int = 0
    linear: bool = False
    out_features: int = 0
    layer: int = -1

    @property
    def params(self) -> int:
        return (self.numel + self.bias) * self.count


# --------------------------------------------------------------------------- config.json -> spec


def _int(d: dict[str, Any], key: str, where: str, default: Any = None) -> int:
    v = d.get(key, default)
    if v is None:
        raise ModelConfigError(f"config.json: {where}.{key} is missing",
                               "pass a complete Hugging Face config.json of a Qwen3-VL model")
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ModelConfigError(f"config.json: {where}.{key} must be a non-negative integer, got {v!r}",
                               "fix the value in config.json")
    return v


def _int_list(d: dict[str, Any], key: str, where: str, default: list[int]) -> list[int]:
    v = d.get(key, default)
    if v is None:
        return list(default)
    if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ModelConfigError(f"config.json: {where}.{key} must be a list of integers, got {v!r}",
                               "fix the value in config.json")
    return list(v)


def spec_from_config(cfg: Any, name: str, hf_id: str = "", source: str = "") -> ModelSpec:
    """Build a ModelSpec from a parsed config.json (dense `qwen3_vl` or MoE `qwen3_vl_moe`, as
    written by transformers 4.57 or 5.x). Raises ModelConfigError with the offending field."""
    if not isinstance(cfg, dict):
        raise ModelConfigError("config.json: top level must be a JSON object", "pass a Hugging Face config.json")
    model_type = cfg.get("model_type")
    if model_type not in _TEXT_DEFAULTS:
        raise ModelConfigError(f"config.json: model_type {model_type!r} is not a Qwen3-VL model",
                               "gpubudget models Qwen3-VL (model_type qwen3_vl or qwen3_vl_moe)")
    tc, vc = cfg.get("text_config"), cfg.get("vision_config")
    if not isinstance(tc, dict) or not isinstance(vc, dict):
        raise ModelConfigError("config.json: text_config and vision_config must both be objects",
                               "pass the full config.json of a Qwen3-VL checkpoint")
    td = _TEXT_DEFAULTS[model_type]
    heads = _int(tc, "num_attention_heads", "text_config", td["num_attention_heads"])
    hidden = _int(tc, "hidden_size", "text_config", td["hidden_size"])
    text = dict(
        vocab_size=_int(tc, "vocab_size", "text_config", td["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=_int(tc, "intermediate_size", "text_config", td["intermediate_size"]),
        num_hidden_layers=_int(tc, "num_hidden_layers", "text_config", td["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=_int(tc, "num_key_value_heads", "text_config", heads),
        # transformers: dense defaults head_dim to 128, MoE to hidden // heads
        head_dim=_int(tc, "head_dim", "text_config", td.get("head_dim") or (hidden // max(heads, 1))),
        attention_bias=bool(tc.get("attention_bias", False)),
    )
    if heads == 0 or hidden == 0 or text["num_hidden_layers"] == 0:
        raise ModelConfigError("config.json: text_config has zero heads, width or layers", "fix config.json")
    if model_type == "qwen3_vl_moe":
        # 4.57 wrote num_experts; 5.x maps num_experts onto num_local_experts
        experts_key = "num_experts" if "num_experts" in tc else "num_local_experts"
        text.update(
            num_experts=_int(tc, experts_key, "text_config", td["num_experts"]),
            num_experts_per_tok=_int(tc, "num_experts_per_tok", "text_config", td["num_experts_per_tok"]),
            moe_intermediate_size=_int(tc, "moe_intermediate_size", "text_config", td["moe_intermediate_size"]),
            decoder_sparse_step=_int(tc, "decoder_sparse_step", "text_config", td["decoder_sparse_step"]),
            mlp_only_layers=_int_list(tc, "mlp_only_layers", "text_config", []),
        )
    vc = dict(vc)
    for alias, key in (("num_hidden_layers", "depth"), ("num_attention_heads", "num_heads")):
        if alias in vc and key not in vc:  # transformers' attribute_map spellings
            vc[key] = vc[alias]
    vision = {k: _int_list(vc, k, "vision_config", d) if isinstance(d, list) else _int(vc, k, "vision_config", d)
              for k, d in _VISION_DEFAULTS.items()}
    # transformers 5.x ties on the top-level flag only (4.57 read text_config's; released configs set
    # both). A flag only in text_config is therefore untied under 5.x, the worker's version - and an
    # untied head is also the safe side for memory.
    tie = cfg.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ModelConfigError(f"config.json: tie_word_embeddings must be true or false, got {tie!r}",
                               "fix config.json")
    return ModelSpec(name=name, hf_id=hf_id, model_type=model_type, text=TextArch(**text),
                     vision=VisionArch(**vision), tie_word_embeddings=tie, source=source)


def load_config(path: str | Path, name: str = "", hf_id: str = "") -> ModelSpec:
    """Read `path` (a config.json or a directory holding one) into a ModelSpec."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelConfigError(f"{p}: no such file", "pass a path to a config.json or a model directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelConfigError(f"{p}: not a readable JSON file ({e})", "pass a Hugging Face config.json") from None
    # the config's own name when it has one, never the folder it sits in (often a snapshot hash)
    label = name or hf_id or str(raw.get("_name_or_path") or "").strip().rstrip("/").rpartition("/")[2]
    try:
        spec = spec_from_config(raw, label or "?", hf_id=hf_id, source=str(p))
    except ModelConfigError as e:
        raise ModelConfigError(f"{p}: {e.message.removeprefix('config.json: ')}", e.hint) from None
    if not label:
        family = "Qwen3-VL-MoE" if spec.model_type == "qwen3_vl_moe" else "Qwen3-VL"
        spec = spec.model_copy(update={"name": f"{family} ({param_breakdown(spec).total / 1e9:.2f} B params)"})
    return spec


# --------------------------------------------------------------------------- inventory


def vision_groups(v: VisionArch) -> list[ParamGroup]:
    h, m = v.hidden_size, v.hidden_size * v.spatial_merge_size**2
    n_merge = 1 + len(v.deepstack_visual_indexes)
    d = v.depth
    return [
        ParamGroup("visual.patch_embed", "vision", "vision",
                   v.in_channels * v.temporal_patch_size * v.patch_size**2 * h, bias=h),
        ParamGroup("visual.pos_embed", "vision", "vision", v.num_position_embeddings * h),
        ParamGroup("visual.blocks.norm", "vision", "vision", h, count=2 * d, bias=h),
        ParamGroup("visual.blocks.attn.qkv", "vision", "vision", h * 3 * h, count=d, bias=3 * h,
                   linear=True, out_features=3 * h),
        ParamGroup("visual.blocks.attn.proj", "vision", "vision", h * h, count=d, bias=h, linear=True, out_features=h),
        ParamGroup("visual.blocks.mlp.fc1", "vision", "vision", h * v.intermediate_size, count=d,
                   bias=v.intermediate_size, linear=True, out_features=v.intermediate_size),
        ParamGroup("visual.blocks.mlp.fc2", "vision", "vision", v.intermediate_size * h, count=d, bias=h,
                   linear=True, out_features=h),
        # the merger normalises before the 2x2 shuffle; deepstack mergers after it
        ParamGroup("visual.merger.norm", "vision", "vision", h, bias=h),
        ParamGroup("visual.deepstack.norm", "vision", "vision", m, count=n_merge - 1, bias=m),
        ParamGroup("visual.mergers.fc1", "vision", "vision", m * m, count=n_merge, bias=m, linear=True, out_features=m),
        ParamGroup("visual.mergers.fc2", "vision", "vision", m * v.out_hidden_size, count=n_merge,
                   bias=v.out_hidden_size, linear=True, out_features=v.out_hidden_size),
    ]


def is_sparse_layer(t: TextArch, i: int) -> bool:
    return t.num_experts > 0 and i not in t.mlp_only_layers and (i + 1) % max(t.decoder_sparse_step, 1) == 0


def layer_groups(t: TextArch, i: int) -> list[ParamGroup]:
    h, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    b = t.attention_bias
    g = [
        ParamGroup("attn.q_proj", "attention", "layer", h * q, bias=q if b else 0, linear=True, out_features=q, layer=i),
        ParamGroup("attn.kv_proj", "attention", "layer", h * kv, count=2, bias=kv if b else 0, linear=True,
                   out_features=kv, layer=i),
        ParamGroup("attn.o_proj", "attention", "layer", q * h, bias=h if b else 0, linear=True, out_features=h, layer=i),
        ParamGroup("attn.qk_norm", "norms", "layer", t.head_dim, count=2, layer=i),
        ParamGroup("layernorms", "norms", "layer", h, count=2, layer=i),
    ]
    if is_sparse_layer(t, i):
        e, f = t.num_experts, t.moe_intermediate_size
        g += [
            ParamGroup("mlp.router", "mlp", "layer", e * h, layer=i),
            # fused 3-D expert tensors: not nn.Linear, so bitsandbytes leaves them 16-bit
            ParamGroup("mlp.experts", "mlp", "layer", e * 3 * h * f, layer=i),
        ]
    else:
        f = t.intermediate_size
        g += [
            ParamGroup("mlp.gate_up_proj", "mlp", "layer", h * f, count=2, linear=True, out_features=f, layer=i),
            ParamGroup("mlp.down_proj", "mlp", "layer", f * h, linear=True, out_features=h, layer=i),
        ]
    return g


def inventory(spec: ModelSpec) -> list[ParamGroup]:
    """Every parameter group of the model; tied lm_head is absent (it is the embedding)."""
    t = spec.text
    groups = vision_groups(spec.vision)
    groups.append(ParamGroup("embed_tokens", "embeddings", "embed", t.vocab_size * t.hidden_size))
    for i in range(t.num_hidden_layers):
        groups += layer_groups(t, i)
    groups.append(ParamGroup("norm", "norms", "final", t.hidden_size))
    if not spec.tie_word_embeddings:
        # transformers never quantizes the output embedding
        groups.append(ParamGroup("lm_head", "lm_head", "lm_head", t.vocab_size * t.hidden_size))
    return groups


def param_breakdown(spec: ModelSpec) -> ParamBreakdown:
    """Exact parameter counts by component, plus the parameters active per token (MoE top-k)."""
    by: dict[str, int] = {c: 0 for c in ("vision", "embeddings", "lm_head", "attention", "mlp", "norms")}
    inactive = 0
    t = spec.text
    for g in inventory(spec):
        by[g.component] += g.params
        if g.name == "mlp.experts" and t.num_experts:
            inactive += g.params * (t.num_experts - t.num_experts_per_tok) // t.num_experts
    total = sum(by.values())
    return ParamBreakdown(**by, total=total, active=total - inactive, tied=spec.tie_word_embeddings)

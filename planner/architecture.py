"""Model architectures: read a Hugging Face `config.json` into a `ModelSpec`, and list every
parameter tensor group the way transformers builds the model (`modeling_qwen3_vl*.py`,
`modeling_qwen2_vl.py`, `modeling_qwen2_5_vl.py`, and the text-only `qwen2`, `qwen3`, `qwen3_moe`,
`llama`, `mistral` decoders).

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
from .models import MODEL_TYPES, ModelSpec, ParamBreakdown, TextArch, VisionArch

# Defaults of transformers' own config classes, used when a config.json omits a field.
_QWEN2_TEXT = dict(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                   num_attention_heads=64, num_key_value_heads=8, attention_bias=False, qkv_bias=True, qk_norm=False)
_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3_vl": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                     num_attention_heads=32, head_dim=128, attention_bias=False),
    "qwen3_vl_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                         num_attention_heads=16, attention_bias=False, num_experts=60, num_experts_per_tok=4,
                         moe_intermediate_size=1408, decoder_sparse_step=1),
    "qwen2_vl": _QWEN2_TEXT,
    "qwen2_5_vl": dict(_QWEN2_TEXT, vocab_size=152064, hidden_size=8192),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, attention_bias=False, qkv_bias=True, qk_norm=False),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, attention_bias=False),
    "qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                      num_attention_heads=32, num_key_value_heads=4, head_dim=128, attention_bias=False,
                      num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, decoder_sparse_step=1),
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, attention_bias=False, qk_norm=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, attention_bias=False, qk_norm=False),
}
_VISION_DEFAULTS = {
    "qwen3": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, in_channels=3, patch_size=16,
                  temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=3584, num_position_embeddings=2304,
                  deepstack_visual_indexes=[8, 16, 24]),
    # Qwen2-VL's vision_config names its width embed_dim and its output width hidden_size
    "qwen2": dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, in_channels=3, patch_size=14,
                  temporal_patch_size=2, spatial_merge_size=2, hidden_size=3584),
    "qwen2_5": dict(depth=32, hidden_size=3584, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
                    temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=3584, window_size=112,
                    fullatt_block_indexes=[7, 15, 23, 31]),
}
_VISION_KIND = {"qwen3_vl": "qwen3", "qwen3_vl_moe": "qwen3", "qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2_5"}
MOE_TYPES = ("qwen3_vl_moe", "qwen3_moe")
FAMILY = {"qwen3_vl": "Qwen3-VL", "qwen3_vl_moe": "Qwen3-VL-MoE", "qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL",
          "qwen2": "Qwen2", "qwen3": "Qwen3", "qwen3_moe": "Qwen3-MoE", "llama": "Llama", "mistral": "Mistral"}


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
                               "pass a complete Hugging Face config.json")
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


def _bool(d: dict[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ModelConfigError(f"config.json: {key} must be true or false, got {v!r}", "fix config.json")
    return v


def _text(tc: dict[str, Any], model_type: str) -> TextArch:
    td = _TEXT_DEFAULTS[model_type]
    heads = _int(tc, "num_attention_heads", "text_config", td["num_attention_heads"])
    hidden = _int(tc, "hidden_size", "text_config", td["hidden_size"])
    if heads == 0 or hidden == 0:
        raise ModelConfigError("config.json: text_config has zero heads or width", "fix config.json")
    # transformers: qwen3 / qwen3_vl default head_dim to 128, the others to hidden // heads (mistral and llama
    # write head_dim: null for that)
    hd_default = td.get("head_dim") or hidden // heads
    text: dict[str, Any] = dict(
        vocab_size=_int(tc, "vocab_size", "text_config", td["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=_int(tc, "intermediate_size", "text_config", td["intermediate_size"]),
        num_hidden_layers=_int(tc, "num_hidden_layers", "text_config", td["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=_int(tc, "num_key_value_heads", "text_config", td.get("num_key_value_heads", heads)),
        head_dim=hd_default if tc.get("head_dim") is None else _int(tc, "head_dim", "text_config", hd_default),
        # Qwen2's q/k/v biases are fixed by its code, not by a config field
        attention_bias=False if td.get("qkv_bias") else _bool(tc, "attention_bias", td["attention_bias"]),
        qkv_bias=td.get("qkv_bias", False),
        qk_norm=td.get("qk_norm", True),
        mlp_bias=_bool(tc, "mlp_bias", False) if model_type == "llama" else False,
    )
    if text["num_hidden_layers"] == 0:
        raise ModelConfigError("config.json: text_config has zero layers", "fix config.json")
    if model_type in MOE_TYPES:
        # 4.57 wrote num_experts; 5.x maps num_experts onto num_local_experts
        experts_key = "num_experts" if "num_experts" in tc else "num_local_experts"
        text.update(
            num_experts=_int(tc, experts_key, "text_config", td["num_experts"]),
            num_experts_per_tok=_int(tc, "num_experts_per_tok", "text_config", td["num_experts_per_tok"]),
            moe_intermediate_size=_int(tc, "moe_intermediate_size", "text_config", td["moe_intermediate_size"]),
            decoder_sparse_step=_int(tc, "decoder_sparse_step", "text_config", td["decoder_sparse_step"]),
            mlp_only_layers=_int_list(tc, "mlp_only_layers", "text_config", []),
        )
    return TextArch(**text)


def _vision(vc: dict[str, Any], kind: str) -> VisionArch:
    vc = dict(vc)
    for alias, key in (("num_hidden_layers", "depth"), ("num_attention_heads", "num_heads"), ("in_chans", "in_channels")):
        if alias in vc and key not in vc:  # transformers' attribute_map spellings, and released Qwen2-VL files
            vc[key] = vc[alias]
    d = _VISION_DEFAULTS[kind]
    got = {k: _int_list(vc, k, "vision_config", dv) if isinstance(dv, list) else _int(vc, k, "vision_config", dv)
           for k, dv in d.items() if k != "mlp_ratio"}
    if kind == "qwen2":  # width embed_dim, MLP embed_dim x mlp_ratio, output width hidden_size
        ratio = vc.get("mlp_ratio", d["mlp_ratio"])
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
            raise ModelConfigError(f"config.json: vision_config.mlp_ratio must be a positive number, got {ratio!r}",
                                   "fix the value in config.json")
        width = got.pop("embed_dim")
        got.update(out_hidden_size=got["hidden_size"], hidden_size=width, intermediate_size=int(width * ratio),
                   num_position_embeddings=0)
    elif kind == "qwen2_5":
        got["num_position_embeddings"] = 0
    if got["depth"] == 0 or got["hidden_size"] == 0 or got["num_heads"] == 0:
        raise ModelConfigError("config.json: vision_config has zero depth, width or heads", "fix config.json")
    return VisionArch(kind=kind, **got)


def spec_from_config(cfg: Any, name: str, hf_id: str = "", source: str = "") -> ModelSpec:
    """Build a ModelSpec from a parsed config.json: Qwen3-VL (dense `qwen3_vl`, MoE `qwen3_vl_moe`, as
    written by transformers 4.57 or 5.x), Qwen2-VL / Qwen2.5-VL (the released flat layout or a nested
    text_config), or a text-only decoder (qwen2, qwen3, qwen3_moe, llama, mistral). Raises
    ModelConfigError with the offending field."""
    if not isinstance(cfg, dict):
        raise ModelConfigError("config.json: top level must be a JSON object", "pass a Hugging Face config.json")
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ModelConfigError(f"config.json: model_type {model_type!r} is not supported (supported model types: "
                               f"{', '.join(MODEL_TYPES)})",
                               "pass the config.json of one of those, or describe the model in that form")
    kind = _VISION_KIND.get(model_type)
    tc, vc = cfg.get("text_config"), cfg.get("vision_config")
    if kind is None:  # a text-only decoder: its fields sit at the top level
        tc, vc = cfg, None
    elif model_type in ("qwen2_vl", "qwen2_5_vl") and tc is None:
        tc = cfg  # the released files are flat; transformers 5.x saves a nested text_config
    if not isinstance(tc, dict) or (kind is not None and not isinstance(vc, dict)):
        raise ModelConfigError("config.json: text_config and vision_config must both be objects",
                               f"pass the full config.json of a {FAMILY[model_type]} checkpoint")
    text = _text(tc, model_type)
    vision = _vision(vc, kind) if kind is not None and isinstance(vc, dict) else None
    # transformers 5.x ties on the top-level flag only (4.57 read text_config's; released configs set
    # both). A flag only in text_config is therefore untied under 5.x, the worker's version - and an
    # untied head is also the safe side for memory.
    tie = cfg.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ModelConfigError(f"config.json: tie_word_embeddings must be true or false, got {tie!r}",
                               "fix config.json")
    return ModelSpec(name=name, hf_id=hf_id, model_type=model_type, text=text, vision=vision,
                     tie_word_embeddings=tie, source=source)


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
        family = FAMILY[spec.model_type]
        spec = spec.model_copy(update={"name": f"{family} ({param_breakdown(spec).total / 1e9:.2f} B params)"})
    return spec


# --------------------------------------------------------------------------- inventory


def vision_groups(v: VisionArch) -> list[ParamGroup]:
    h, m = v.hidden_size, v.hidden_size * v.spatial_merge_size**2
    d, f = v.depth, v.intermediate_size

    def lin(name: str, n_in: int, n_out: int, count: int = d) -> ParamGroup:
        return ParamGroup(name, "vision", "vision", n_in * n_out, count=count, bias=n_out, linear=True,
                          out_features=n_out)

    conv = v.in_channels * v.temporal_patch_size * v.patch_size**2 * h
    blocks = [lin("visual.blocks.attn.qkv", h, 3 * h), lin("visual.blocks.attn.proj", h, h)]
    if v.kind == "qwen2_5":  # RMSNorm (weight only), gated MLP with biases, one merger, no position table
        return [ParamGroup("visual.patch_embed", "vision", "vision", conv),
                ParamGroup("visual.blocks.norm", "vision", "vision", h, count=2 * d), *blocks,
                lin("visual.blocks.mlp.gate_up_proj", h, f, 2 * d), lin("visual.blocks.mlp.down_proj", f, h),
                ParamGroup("visual.merger.norm", "vision", "vision", h),
                lin("visual.merger.fc1", m, m, 1), lin("visual.merger.fc2", m, v.out_hidden_size, 1)]
    blocks += [lin("visual.blocks.mlp.fc1", h, f), lin("visual.blocks.mlp.fc2", f, h)]
    if v.kind == "qwen2":  # LayerNorm, fc1/fc2, one merger, no position table, no conv bias
        return [ParamGroup("visual.patch_embed", "vision", "vision", conv),
                ParamGroup("visual.blocks.norm", "vision", "vision", h, count=2 * d, bias=h), *blocks,
                ParamGroup("visual.merger.norm", "vision", "vision", h, bias=h),
                lin("visual.merger.fc1", m, m, 1), lin("visual.merger.fc2", m, v.out_hidden_size, 1)]
    n_merge = 1 + len(v.deepstack_visual_indexes)
    return [
        ParamGroup("visual.patch_embed", "vision", "vision", conv, bias=h),
        ParamGroup("visual.pos_embed", "vision", "vision", v.num_position_embeddings * h),
        ParamGroup("visual.blocks.norm", "vision", "vision", h, count=2 * d, bias=h), *blocks,
        # the merger normalises before the 2x2 shuffle; deepstack mergers after it
        ParamGroup("visual.merger.norm", "vision", "vision", h, bias=h),
        ParamGroup("visual.deepstack.norm", "vision", "vision", m, count=n_merge - 1, bias=m),
        lin("visual.mergers.fc1", m, m, n_merge), lin("visual.mergers.fc2", m, v.out_hidden_size, n_merge),
    ]


def is_sparse_layer(t: TextArch, i: int) -> bool:
    return t.num_experts > 0 and i not in t.mlp_only_layers and (i + 1) % max(t.decoder_sparse_step, 1) == 0


def layer_groups(t: TextArch, i: int) -> list[ParamGroup]:
    h, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    b, qkv_b = t.attention_bias, t.attention_bias or t.qkv_bias
    g = [
        ParamGroup("attn.q_proj", "attention", "layer", h * q, bias=q if qkv_b else 0, linear=True, out_features=q,
                   layer=i),
        ParamGroup("attn.kv_proj", "attention", "layer", h * kv, count=2, bias=kv if qkv_b else 0, linear=True,
                   out_features=kv, layer=i),
        ParamGroup("attn.o_proj", "attention", "layer", q * h, bias=h if b else 0, linear=True, out_features=h, layer=i),
        ParamGroup("layernorms", "norms", "layer", h, count=2, layer=i),
    ]
    if t.qk_norm:
        g.append(ParamGroup("attn.qk_norm", "norms", "layer", t.head_dim, count=2, layer=i))
    if is_sparse_layer(t, i):
        e, f = t.num_experts, t.moe_intermediate_size
        g += [
            ParamGroup("mlp.router", "mlp", "layer", e * h, layer=i),
            # fused 3-D expert tensors: not nn.Linear, so bitsandbytes leaves them 16-bit
            ParamGroup("mlp.experts", "mlp", "layer", e * 3 * h * f, layer=i),
        ]
    else:
        f, mb = t.intermediate_size, t.mlp_bias
        g += [
            ParamGroup("mlp.gate_up_proj", "mlp", "layer", h * f, count=2, bias=f if mb else 0, linear=True,
                       out_features=f, layer=i),
            ParamGroup("mlp.down_proj", "mlp", "layer", f * h, bias=h if mb else 0, linear=True, out_features=h,
                       layer=i),
        ]
    return g


def inventory(spec: ModelSpec) -> list[ParamGroup]:
    """Every parameter group of the model; tied lm_head is absent (it is the embedding)."""
    t = spec.text
    groups = vision_groups(spec.vision) if spec.vision is not None else []
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

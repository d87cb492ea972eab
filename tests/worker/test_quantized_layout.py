"""What bitsandbytes really quantizes when the worker loads a model, against the planner's weight model.

The worker's own loader (runner.worker.model.load: its BitsAndBytesConfig and skip list) loads the tiny
random Qwen3-VL with untied and tied embeddings, as nf4 and int8, with and without keep_vision_16bit;
every parameter is mapped to the planner's inventory group (planner.architecture.inventory) and, group
by group, the test asserts that transformers quantized exactly what planner.memory.bnb_quantizes says
(lm_head above all: transformers keeps the output embedding 16-bit, tied or not) and that the bytes
bitsandbytes stores match planner.memory.group_bytes / weight_layout.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from planner.architecture import inventory as planner_inventory
from planner.architecture import load_config
from planner.memory import bnb_quantizes, group_bytes, weight_layout
from runner.worker import job as jobmod
from runner.worker import tiny
from runner.worker.engine import Memory
from runner.worker.model import load

# transformers' parameter names (Qwen3-VL, 5.x) -> the planner's inventory group names
_GROUPS = [
    (r"model\.visual\.patch_embed\.", "visual.patch_embed"),
    (r"model\.visual\.pos_embed\.", "visual.pos_embed"),
    (r"model\.visual\.blocks\.\d+\.norm[12]\.", "visual.blocks.norm"),
    (r"model\.visual\.blocks\.\d+\.attn\.qkv\.", "visual.blocks.attn.qkv"),
    (r"model\.visual\.blocks\.\d+\.attn\.proj\.", "visual.blocks.attn.proj"),
    (r"model\.visual\.blocks\.\d+\.mlp\.linear_fc1\.", "visual.blocks.mlp.fc1"),
    (r"model\.visual\.blocks\.\d+\.mlp\.linear_fc2\.", "visual.blocks.mlp.fc2"),
    (r"model\.visual\.merger\.norm\.", "visual.merger.norm"),
    (r"model\.visual\.deepstack_merger_list\.\d+\.norm\.", "visual.deepstack.norm"),
    (r"model\.visual\.(merger|deepstack_merger_list\.\d+)\.linear_fc1\.", "visual.mergers.fc1"),
    (r"model\.visual\.(merger|deepstack_merger_list\.\d+)\.linear_fc2\.", "visual.mergers.fc2"),
    (r"model\.language_model\.embed_tokens\.", "embed_tokens"),
    (r"model\.language_model\.layers\.\d+\.self_attn\.q_proj\.", "attn.q_proj"),
    (r"model\.language_model\.layers\.\d+\.self_attn\.[kv]_proj\.", "attn.kv_proj"),
    (r"model\.language_model\.layers\.\d+\.self_attn\.o_proj\.", "attn.o_proj"),
    (r"model\.language_model\.layers\.\d+\.self_attn\.[qk]_norm\.", "attn.qk_norm"),
    (r"model\.language_model\.layers\.\d+\.(input|post_attention)_layernorm\.", "layernorms"),
    (r"model\.language_model\.layers\.\d+\.mlp\.(gate|up)_proj\.", "mlp.gate_up_proj"),
    (r"model\.language_model\.layers\.\d+\.mlp\.down_proj\.", "mlp.down_proj"),
    (r"model\.language_model\.norm\.", "norm"),
    (r"lm_head\.", "lm_head"),
]
PACKED = {"nf4": "Linear4bit", "int8": "Linear8bitLt"}
CODEBOOK_MAX = 1100  # bytes per 4-bit Linear the planner leaves out: 16 + 256 fp32 code values, an fp32 offset


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    """The tiny model with tie_word_embeddings=true (as Qwen3-VL-2B/4B; the plain fixture is untied, as 8B)."""
    cfg = tiny.config_dict()
    cfg["tie_word_embeddings"] = True
    return tiny.build(tmp_path_factory.mktemp("models") / "tiny-tied", config=cfg)


def _key(param_name: str) -> tuple[str, int]:
    for pattern, group in _GROUPS:
        if re.match(pattern, param_name):
            m = re.match(r"model\.language_model\.layers\.(\d+)\.", param_name)
            return group, int(m.group(1)) if m else -1
    raise AssertionError(f"{param_name}: no planner group (a new parameter the planner does not price?)")


def _stored(p) -> tuple[int, int, int, bool]:
    """(logical parameters, bytes the planner models, codebook bytes it leaves out, quantized) of one
    parameter as bitsandbytes stores it."""
    import math

    qs = getattr(p, "quant_state", None)
    if qs is not None:  # Params4bit: packed codes + absmax (8-bit + fp32 per 256 blocks when nested)
        data = p.numel() * p.element_size() + qs.absmax.numel() * qs.absmax.element_size()
        code = qs.code.numel() * qs.code.element_size()
        if qs.nested:
            data += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
            code += qs.state2.code.numel() * qs.state2.code.element_size() + 4  # + the fp32 offset
        return math.prod(qs.shape), data, code, True
    scb = getattr(p, "SCB", None)
    if scb is not None:  # Int8Params: int8 weights + one fp32 scale per output row
        return p.numel(), p.numel() * p.element_size() + scb.numel() * scb.element_size(), 0, True
    return p.numel(), p.numel() * p.element_size(), 0, False


def _measure(model):
    """Per planner group: params, modelled bytes, codebook bytes, quantized flags, module classes."""
    import torch

    params, data, code = defaultdict(int), defaultdict(int), defaultdict(int)
    quantized, kinds = defaultdict(set), defaultdict(set)
    for name, p in model.named_parameters():  # a tied lm_head.weight is the embedding: listed once
        k = _key(name)
        n, d, c, q = _stored(p)
        params[k] += n
        data[k] += d
        code[k] += c
        if not name.endswith(".bias"):
            quantized[k].add(q)
            assert q or p.dtype == torch.bfloat16, f"{name} stays {p.dtype}, not 16-bit"
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            kinds[_key(name + ".weight")].add(type(mod).__name__)
    return params, data, code, quantized, kinds


# each packing once untied (as 8B) and once tied (as 2B/4B), the vision tower kept 16-bit once per packing
@pytest.mark.parametrize("tied, quant, vision16", [(False, "nf4", False), (False, "int8", True), (True, "nf4", True),
                                                   (True, "int8", False)],
                         ids=["untied-nf4", "untied-int8-vision16", "tied-nf4-vision16", "tied-int8"])
def test_planner_prices_what_bitsandbytes_stores(tiny_model, tiny_tied, tied, quant, vision16):
    import torch

    src = tiny_tied if tied else tiny_model
    job = jobmod.parse({"schema": "gpubudget.job/1", "run_id": "r", "model": {"name": "tiny", "source": str(src)},
                        "quantization": quant, "compute_dtype": "bf16" if quant in PACKED else "auto",
                        "double_quant": True, "keep_vision_16bit": vision16,
                        "tasks": [{"name": "c", "kind": "caption"}]})
    model = load(job, quant, "cpu", Memory("cpu")).model
    spec = load_config(src / "config.json")
    assert spec.tie_word_embeddings is tied and model.config.tie_word_embeddings is tied
    params, data, code, quantized, kinds = _measure(model)
    inv = planner_inventory(spec)
    groups = {(g.name, g.layer): g for g in inv}
    assert set(groups) == set(params)  # same groups: a tied lm_head is absent on both sides

    # lm_head: what transformers 5.x does with the worker's BitsAndBytesConfig
    if tied:
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    else:
        assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
        assert kinds["lm_head", -1] == {"Linear"}

    for key, g in groups.items():
        expect_q = bnb_quantizes(g, quant, vision16)
        assert params[key] == g.params, key
        assert quantized[key] == {expect_q}, f"{key}: planner says quantized={expect_q}, bnb did {quantized[key]}"
        if g.linear or key[0] == "lm_head":  # nn.Linear modules: packed exactly where the planner quantizes
            assert kinds[key] == {PACKED[quant] if expect_q else "Linear"}, key
        else:
            assert not kinds[key], key
        # nf4's nested absmax is whole fp32 values per 256 blocks (ceil) where the planner prices 4/256 B
        # per block: a few bytes per tensor
        assert data[key] == pytest.approx(group_bytes(g, quant, expect_q, True), abs=4 * g.count), key

    w = weight_layout(spec, inv, quant, vision16, True)
    place: dict = defaultdict(int)  # the layout's placements: vision, embed, each layer, final (+ lm_head)
    slack: dict = defaultdict(int)  # the nested-absmax rounding allowed above, summed per placement
    for key, b in data.items():
        g = groups[key]
        where = ("layer", g.layer) if g.where == "layer" else g.where if g.where in ("vision", "embed") else "final"
        place[where] += b
        slack[where] += 4 * g.count
    assert place["vision"] == pytest.approx(w.vision, abs=slack["vision"])
    assert place["embed"] == w.embed
    assert place["final"] == w.final  # final norm + untied lm_head, 16-bit
    for i, b in enumerate(w.layers):
        assert place["layer", i] == pytest.approx(b, abs=slack["layer", i]), f"layer {i}"
    # all of it, with the per-Linear codebooks the planner leaves out (~1 KiB each: noise at real sizes)
    n_packed = sum(type(m).__name__ == PACKED.get(quant) for m in model.modules())
    total = sum(data.values()) + sum(code.values())
    assert w.total * 0.999 <= total <= w.total * 1.001 + CODEBOOK_MAX * n_packed

"""Memory model: bitsandbytes facts, hand-computed cases, the seed's claims, multi-card splits."""

import pytest

from planner.architecture import ParamGroup, inventory
from planner.assumptions import Assumptions
from planner.catalog import load_catalog
from planner.memory import Peak, dynamic, estimate, group_bytes, weight_layout
from planner.models import GIB, ImageLimits, VideoSpec
from planner.workload import image_tokens, smart_resize, video_frames, video_tokens

CAT = load_catalog()


def gib(spec_name: str, quant: str, **kw) -> float:
    s = CAT.model(spec_name)
    return weight_layout(s, inventory(s), quant, **kw).total / GIB


@pytest.mark.parametrize("name,quant,kw,facts", [
    ("2b", "nf4", {}, 1.46), ("4b", "nf4", {}, 2.68), ("8b", "nf4", {}, 5.94), ("32b", "nf4", {}, 18.2),
    ("8b", "nf4", {"keep_vision_16bit": True}, 6.73),
    ("2b", "int8", {}, 2.28), ("4b", "int8", {}, 4.50), ("8b", "int8", {}, 9.33), ("32b", "int8", {}, 32.5),
])
def test_weights_match_bitsandbytes_facts(name, quant, kw, facts):
    assert gib(name, quant, **kw) == pytest.approx(facts, abs=0.05)


def test_seed_claim_8b_int4_4gb_is_not_repeated():
    # the seed says 4 GB for 8B-INT4: an ideal 4-bit format ignoring what bnb keeps 16-bit
    assert 8.767e9 * 0.5 / 1e9 == pytest.approx(4.38, abs=0.01)
    assert gib("8b", "nf4") > 5.9
    assert gib("8b", "nf4", double_quant=False) > gib("8b", "nf4")


def test_moe_experts_stay_16bit():
    # FACTS: NF4 "30B-A3B" is ~56 GiB, not 15 GB
    assert gib("30b-a3b", "nf4") == pytest.approx(56, abs=0.5)
    assert gib("30b-a3b", "bf16") - gib("30b-a3b", "nf4") < 3


def test_group_bytes_by_hand():
    g = ParamGroup("w", "mlp", "layer", numel=4096 * 4096, out_features=4096, linear=True, bias=4096)
    assert group_bytes(g, "bf16", True, True) == 2 * (4096 * 4096 + 4096)
    # 4 bits + one fp32 absmax per 64 values = 4.5 bits
    assert group_bytes(g, "nf4", True, False) == 4096 * 4096 * 4.5 / 8 + 2 * 4096
    # double quant: 8-bit absmax + fp32 per 256 blocks = ~4.127 bits
    assert group_bytes(g, "nf4", True, True) == pytest.approx(4096 * 4096 * 4.127 / 8 + 2 * 4096, rel=1e-4)
    # LLM.int8: 1 byte per weight + an fp32 scale per output row
    assert group_bytes(g, "int8", True, True) == 4096 * 4096 + 4 * 4096 + 2 * 4096
    assert group_bytes(g, "int8", False, True) == 2 * (4096 * 4096 + 4096)  # skipped module
    emb = ParamGroup("embed", "embeddings", "embed", numel=1000)
    assert group_bytes(emb, "nf4", True, True) == 2000  # not nn.Linear: 16-bit


def test_kv_and_activations_by_hand():
    s = CAT.model("8b")
    a = Assumptions()
    peak = Peak(kv_tokens=4 * 1000, prefill_tokens=4 * 900, prefill_len=900, batch=4, vit_patches=4 * 1200,
                vit_longest=1200, visual_tokens=4 * 300)
    d = dynamic(s, peak, a)
    assert d.kv_per_layer * 36 == 4000 * 144 * 1024  # 144 KiB per token (FACTS)
    expect_llm = 3600 * (4 * 4096 + 3 * 12288) * 2 + 4 * 151936 * 8 + 4 * 900**2 * 2
    assert d.llm_act == expect_llm
    expect_vit = 4800 * (6 * 1152 + 2 * 4304) * 2 + 4 * 1200 * 4096 * 2
    assert d.vision_act == expect_vit


def test_single_card_total_is_sum_of_parts_and_floor():
    s = CAT.model("8b")
    w = weight_layout(s, inventory(s), "bf16")
    peak = Peak(100, 80, 80, 1, 256, 256, 64)
    m = estimate(s, w, "bf16", peak, 1, 80 * GIB, Assumptions())
    g = m.per_gpu[0]
    assert g.weights == w.total and g.layers == 36
    parts = g.weights + g.kv_cache + max(g.activations, g.vision_activations) + g.dequant_scratch + g.cuda_context \
        + g.allocator_slack
    assert g.total == max(parts, int(1.2 * g.weights))  # Qwen: at least 1.2x the weights
    assert g.floor_adjust == g.total - parts
    assert m.fits


def test_multi_card_split_keeps_layers_whole_and_balances():
    s = CAT.model("32b")
    w = weight_layout(s, inventory(s), "bf16")
    peak = Peak(4000, 3000, 3000, 1, 4096, 4096, 1024)
    one = estimate(s, w, "bf16", peak, 1, 80 * GIB, Assumptions())
    two = estimate(s, w, "bf16", peak, 2, 40 * GIB, Assumptions())
    four = estimate(s, w, "bf16", peak, 4, 24 * GIB, Assumptions())
    for m, n in ((two, 2), (four, 4)):
        assert sum(g.layers for g in m.per_gpu) == 64
        assert sum(g.weights for g in m.per_gpu) == w.total
        assert m.per_gpu[0].vision_activations > 0 and all(g.vision_activations == 0 for g in m.per_gpu[1:])
        worst = max(g.total for g in m.per_gpu)
        assert worst < one.per_gpu[0].total
        # balanced: no card carries more than one layer's worth above the lightest
        layer = max(w.layers) * 1.2 + m.per_gpu[0].kv_cache / max(m.per_gpu[0].layers, 1)
        assert worst - min(g.total for g in m.per_gpu) < (w.vision + w.embed + w.final) * 1.2 + 2 * layer
    assert two.fits and four.fits
    # 62 GiB of weights x 1.2 headroom = 74.5 GiB: three 22 GiB cards are too small whatever the split
    assert not estimate(s, w, "bf16", peak, 3, 22 * GIB, Assumptions()).fits


def test_rejection_reason_names_need_and_card():
    s = CAT.model("8b")
    w = weight_layout(s, inventory(s), "bf16")
    m = estimate(s, w, "bf16", Peak(500, 400, 400, 1, 1200, 1200, 300), 1, 15360 * 1024**2, Assumptions())
    assert not m.fits and m.reason.startswith("needs ") and "GiB per GPU" in m.reason


def test_visual_tokens_follow_qwen_resize():
    s = CAT.model("8b")
    lim = ImageLimits()
    assert image_tokens((448, 448), lim, s) == (196, 784)  # FACTS: 448x448 -> 196 tokens; ViT sees 4x
    assert smart_resize(480, 640, lim) == (480, 640)
    assert smart_resize(10, 10, lim) == (256, 256)  # up to min_pixels (64 tokens)
    cap = ImageLimits(max_pixels=1_605_632)  # lmms-eval's cap
    h, w = smart_resize(4000, 3000, cap)
    assert h * w <= 1_605_632 and h % 32 == 0 and w % 32 == 0


def test_video_frames_sampled_not_all():
    # the seed: 10 s at 30 fps is 300 frames; sampling 1 fps keeps 10 (5 temporal pairs)
    v = VideoSpec(duration_s=10, source_fps=30, fps=1, frame_size=(640, 360))
    assert video_frames(v) == 10
    tokens, patches = video_tokens(v, ImageLimits(), CAT.model("8b"))
    assert tokens == 5 * (20 * 11 + 6) and patches == 5 * 220 * 4
    assert video_frames(VideoSpec(duration_s=10, source_fps=30, fps=30, max_frames=768)) == 300


def test_seed_video_claim_every_frame_vs_one_fps():
    """The seed: a 10 s clip at 30 fps (300 frames) blows past 24 GB even on 8B-INT4; sampling
    1 fps fixes it. We model both with the plan's attention implementation and print them."""
    from planner.memory import peak_of, weight_layout
    from planner.workload import Pass

    s = CAT.model("8b")
    w = weight_layout(s, inventory(s), "nf4")
    lim = ImageLimits()

    def peak_gib(fps: float, attn: str) -> float:
        v = VideoSpec(duration_s=10, source_fps=30, fps=fps, max_frames=768, frame_size=(640, 360))
        vis, patches = video_tokens(v, lim, s)
        p = Pass(prefill=vis + 40, new=128, visual=vis, vit_seqs=(patches,))
        a = Assumptions(attn_implementation=attn)
        return estimate(s, w, "nf4", peak_of([(p, 1)]), 1, 80 * GIB, a).per_gpu[0].total / GIB

    every, sampled = peak_gib(30, "sdpa"), peak_gib(1, "sdpa")
    eager = peak_gib(30, "eager")
    print(f"8B nf4, 10 s clip: every frame {every:.1f} GiB (sdpa) / {eager:.0f} GiB (eager); 1 fps {sampled:.1f} GiB")
    assert sampled < 10 < every  # sampling is what makes video affordable
    assert eager > 24  # the seed's ">24 GB" holds for eager attention

"""Time model: decode calibration against FACTS, bnb slowdowns, the multi-card pipeline and the
seed's "2xT4 is 40% slower than 1x3090" claim."""

import pytest

from planner.architecture import inventory
from planner.assumptions import Assumptions, parse_overrides
from planner.catalog import load_catalog
from planner.errors import InputError
from planner.plans import load_plan
from planner.speed import ModelCost, pass_seconds, plan_time
from planner.workload import Pass, task_loads

CAT = load_catalog()
A = Assumptions()


def mc(name="8b"):
    s = CAT.model(name)
    return ModelCost(s, inventory(s))


def tok_per_s(gpu: str, quant: str, cards: int = 1, name: str = "8b") -> float:
    p = Pass(prefill=1, new=1000, visual=0, vit_seqs=())
    return 1000 / pass_seconds(mc(name), p, 1, quant, CAT.gpus[gpu], cards, A)


def test_decode_calibration_matches_reported_numbers():
    # FACTS: 7B-class fp16 decode ~40 tok/s with transformers 4.46 on one GPU; the worker's transformers 5.x
    # pays more host time per layer (fitted on our H200 rows: 1.11 vs 0.86 ms), so fewer
    assert 20 < tok_per_s("A100-80GB", "bf16") < 40
    # both have 36 layers: launch-bound at batch 1, the 4B is no slower and barely faster
    assert tok_per_s("A100-80GB", "bf16", name="4b") >= tok_per_s("A100-80GB", "bf16")


def test_bitsandbytes_saves_memory_not_time_at_batch_one():
    """The fit on our H200 rows: a launch-bound step costs the same in NF4 as in 16-bit, LLM.int8 adds host
    time per linear (outlier decomposition)."""
    fp16, nf4, int8 = (tok_per_s("RTX3090", q) for q in ("fp16", "nf4", "int8"))
    assert nf4 == pytest.approx(fp16, rel=0.05)
    assert int8 < 0.8 * nf4


@pytest.mark.parametrize("gpu", ["T4", "A10G", "A100-40GB"])
def test_multi_card_is_a_pipeline_never_faster(gpu):
    one, two = tok_per_s(gpu, "fp16"), tok_per_s(gpu, "fp16", cards=2)
    assert two < one  # one card works at a time, plus a hop per pass
    assert two > 0.8 * one  # but the hop is small next to the weights streaming


def test_seed_claim_two_t4_vs_one_3090():
    """The seed measured 2xT4 40% slower than 1x3090 for 8B. Our model agrees on the direction and
    predicts more than the claim: the hops of the split, and the T4's 320 GB/s vs the 3090's 936 GB/s where a
    step is not launch-bound (long prompts' attention, the 16-bit check); the printed ratio is in the README."""
    plan = load_plan(None)
    s = CAT.model("8b")
    loads = task_loads(plan, s, A)
    t4 = plan_time(mc(), loads, "nf4", "fp16", CAT.gpus["T4"], 2, "csdn", A, True, {})
    r3090 = plan_time(mc(), loads, "nf4", "bf16", CAT.gpus["RTX3090"], 1, "csdn", A, True, {})
    work = lambda t: sum(t.tasks.values())
    slower = work(t4) / work(r3090) - 1
    print(f"2xT4 vs 1x3090, 8B nf4 plan: {slower:.0%} slower (seed: 40%)")
    assert slower > 0.40 * 0.5  # at least half the seed's claim: clearly slower
    assert slower < 3.0


def test_fixed_costs_and_overrides():
    plan = load_plan(None)
    s = CAT.model("8b")
    loads = task_loads(plan, s, A)
    base = plan_time(mc(), loads, "bf16", "bf16", CAT.gpus["A10G"], 1, "aws", A, True, {})
    assert base.boot_s == A.boot_s_aws and base.install_s == A.install_s
    # the bf16 checkpoint (17.5 GB) at 50 MB/s
    assert base.download_s == pytest.approx(2 * 8_767_123_696 / 50e6)
    faster = parse_overrides(["download_mb_s=500"])
    t = plan_time(mc(), loads, "bf16", "bf16", CAT.gpus["A10G"], 1, "aws", faster, True, {})
    assert t.download_s == pytest.approx(base.download_s / 10)
    spot = plan_time(mc(), loads, "bf16", "bf16", CAT.gpus["A10G"], 1, "aws", A, True, {}, spot=True)
    assert spot.total_s == pytest.approx(base.total_s * (1 + A.spot_overhead))
    skipped = plan_time(mc(), loads, "bf16", "bf16", CAT.gpus["A10G"], 1, "aws", A, True, {"video": "why"})
    assert "video" not in skipped.tasks and skipped.total_s < base.total_s


def test_override_errors():
    with pytest.raises(InputError, match="unknown assumption"):
        parse_overrides(["warp_factor=9"])
    with pytest.raises(InputError, match="prefill_efficiency"):
        parse_overrides(["prefill_efficiency=-1"])

"""Serving engines in the planner: the engine stacks' host terms are the fit of Qwen's published vLLM and SGLang rows
(held-out rows predicted within +-25% on >= 85%), each engine runs only the quantizations it supports, a server's
memory fraction holds its concurrency, and the plan chooses the engine with the rig and says why the others lost."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from planner import engines as eng
from planner.architecture import inventory
from planner.assumptions import Assumptions
from planner.catalog import load_catalog
from planner.optimize import optimize
from planner.plans import load_plan
from planner.speed import ModelCost
from planner.timefit import (
    ENGINE_STACKS,
    KERNEL,
    TimeModel,
    band,
    cross_validate,
    engine_names,
    engine_rows,
    fit_engines,
    published_specs,
    stack_coefficients,
)
from planner.workload import task_loads

CAT = load_catalog()
PLAN = load_plan(None)
A = Assumptions()


@pytest.fixture(scope="module")
def model() -> TimeModel:
    return TimeModel(engine_rows(), (published_specs() | CAT.models).__getitem__, CAT.gpu)


def test_the_engine_tables_are_read_with_their_own_speed_definitions(model):
    by = {s: [r for r in model.rows if r.stack == s] for s in ENGINE_STACKS}
    assert len(by[eng.VLLM_STACK]) == 109 and len(by[eng.SGLANG_STACK]) == 96
    v = next(r for r in by[eng.VLLM_STACK] if r.model == "Qwen2.5-7B-Instruct" and r.quant == "bf16"
             and r.shape.prefill == 1)
    s = next(r for r in by[eng.SGLANG_STACK] if r.model == "Qwen3-8B" and r.quant == "bf16"
             and r.shape.prefill == 30720)
    assert v.definition == "generated" and v.seconds == pytest.approx(2048 / 84.28)
    assert s.definition == "prompt+generated" and s.seconds == pytest.approx((30720 + 2048) / 832.67)
    assert {r.gpu_count for r in by[eng.SGLANG_STACK] if r.model == "Qwen3-235B-A22B"} == {4, 8}  # tensor-parallel


def test_the_engine_terms_are_the_fit_and_far_below_hfs_host_time(model):
    """The shipped STACK_TERMS are fit_engines' values (the card's efficiencies held at the worker stack's fit): a
    graph-launched decode layer costs a small fraction of a transformers one, an MoE expert hit a fraction of its."""
    x = fit_engines(model, stack_coefficients(A))
    for stack, terms in eng.STACK_TERMS.items():
        for name, value in terms.items():
            key = f"attention@{KERNEL[stack]}" if name == "attention" else f"{name}@{stack}"
            assert x[key] == pytest.approx(value, rel=0.01, abs=1e-4), (stack, name)
    for terms in eng.STACK_TERMS.values():
        assert terms["layer"] < 0.2 * A.decode_overhead_ms_per_layer
    assert eng.STACK_TERMS[eng.SGLANG_STACK]["expert"] < 0.1 * A.moe_expert_overhead_ms


def test_held_out_engine_rows_are_predicted_within_25_percent(model):
    """Four folds of the engine rows (the rule of tests/planner/test_timefit.py), each predicted by a fit of the
    engine terms on the other three: at least 85% within +-25%."""
    rows = list(range(len(model.rows)))
    res = cross_validate(model, rows, start=stack_coefficients(A), free=engine_names(model))
    within = sum(abs(e) <= 0.25 for e in res.values()) / len(res)
    print(f"engine rows held out: {len(res)}, {within:.1%} within +-25%, 90% band +-{band(list(res.values())):.0%}")
    assert within >= 0.85


@pytest.mark.parametrize("engine,quant,model,gpu,count,why", [
    ("hf", "fp8", "8b", "H100", 1, "no fp8 path"),
    ("transformers", "fp8", "8b", "H100", 1, "no fp8 path"),
    ("hf", "int8", "8b", "T4", 1, None),
    ("vllm", "int8", "8b", "H100", 1, "run no bitsandbytes"),
    ("sglang", "int8", "8b", "H100", 1, "run no bitsandbytes"),
    ("vllm", "nf4", "30b-a3b", "H100", 1, "run no bitsandbytes"),
    ("sglang", "nf4", "30b-a3b", "H100", 1, "run no bitsandbytes"),
    ("vllm", "nf4", "8b", "T4", 1, "run no bitsandbytes"),  # the pinned CLI has none (engine_cli snapshot)
    ("sglang", "nf4", "8b", "T4", 1, "run no bitsandbytes"),
    ("transformers", "nf4", "8b", "T4", 1, None),
    ("transformers", "int8", "8b", "T4", 1, None),
    ("vllm", "fp8", "8b", "T4", 1, "fp8 needs compute capability >= 8.0"),
    ("vllm", "fp8", "8b", "A100-80GB", 1, None),
    ("sglang", "bf16", "8b", "V100-16GB", 1, "compute capability >= 7.5"),
    ("vllm", "fp16", "8b", "V100-16GB", 1, None),
    ("vllm", "bf16", "8b", "A100-40GB", 3, "tensor parallelism over 3 cards"),
    ("vllm", "bf16", "235b-a22b", "H100", 8, None),
])
def test_each_engine_runs_only_what_it_supports(engine, quant, model, gpu, count, why):
    got = eng.refusal(engine, quant, CAT.model(model), CAT.gpu(gpu), count)
    assert (got is None) if why is None else (why in got), got


def test_fp8_is_w8a8_from_compute_capability_89_and_weight_only_below():
    assert [eng.fp8_kind(CAT.gpu(g)) for g in ("A10G", "A100-80GB", "L4", "RTX4090", "H100")] == [
        "W8A16", "W8A16", "W8A8", "W8A8", "W8A8"]
    a100, h100 = CAT.gpu("A100-80GB"), CAT.gpu("H100")
    assert eng.coefficients("vllm", "fp8", a100, A)[1] == 1.0  # Marlin: a 16-bit prefill
    assert eng.coefficients("vllm", "fp8", h100, A)[1] < 1.0  # FP8 tensor cores


@pytest.mark.parametrize("gpu", ["H100", "H200"])
def test_vllm_decodes_a_dense_model_at_least_as_fast_as_hf(gpu):
    """Every dense catalog model, bf16, batch 1, on an H100-class card: the engine's decode beats the in-process
    generate (Qwen2.5-7B on A100: 84.28 vs 40.38 tokens/s published)."""
    card = CAT.gpu(gpu)
    for name, spec in CAT.models.items():
        if spec.text.num_experts or spec.vision is None:
            continue
        mc = ModelCost(spec, inventory(spec))
        hf = eng.decode_tokens_per_s(mc, "hf", "bf16", card, 1, A, 1)
        vllm = eng.decode_tokens_per_s(mc, "vllm", "bf16", card, 1, A, 1)
        assert vllm >= hf, (name, vllm, hf)
        if "-8B" in name:
            assert vllm >= 2.1 * hf, (vllm, hf)


def test_a_servers_fraction_holds_its_concurrency_at_most_092():
    spec = CAT.model("8b")
    loads = task_loads(PLAN, spec, A)
    skipped = {t.name: w for t in loads if (w := eng.skips("vllm", t, "bf16"))}
    assert set(skipped) == {"memory_sweep", "fp16_check"}
    w = eng.server_weights(inventory(spec), "bf16")
    for gpu in ("L4", "A100-80GB", "H100"):
        card = CAT.gpu(gpu)
        usable = card.memory_mib * 2**20
        m = eng.server_memory(spec, w, loads, skipped, card, 1, usable, A)
        per_seq = eng.kv_bytes_per_token(spec, 1) * m.max_model_len
        assert 0 < m.fraction <= 0.92 and 1 <= m.concurrency <= 64
        assert m.total <= m.fraction * usable + 1
        assert m.weights + max(m.activations, m.vision_activations) + m.overhead + m.concurrency * per_seq <= m.total
        assert m.max_model_len % 256 == 0 and m.max_model_len >= max(t.peak_tokens for t in loads
                                                                       if t.name not in skipped)
    tiny = eng.server_memory(spec, w, loads, skipped, CAT.gpu("T4"), 1, CAT.gpu("T4").memory_mib * 2**20, A)
    assert isinstance(tiny, str) and "its weights and one 2560-token sequence" in tiny and "92% of T4" in tiny


def test_the_30b_a3b_plan_prices_the_engines_side_by_side_and_says_why_hf_lost():
    """`budget plan --model 30b-a3b --yuan 2000`: a server engine wins; HF's cost on the same offer is there with
    its reason, and HF's own best rows are among the candidates."""
    spec = CAT.model("30b-a3b")
    res = optimize(PLAN, spec, CAT, Decimal(2000))
    rec = res.report.recommendation
    assert rec.engine in ("vllm", "sglang") and rec.engine_memory_fraction <= 0.92
    assert rec.max_model_len >= 2048 and rec.concurrency >= 1
    hf = next(o for o in rec.other_engines if o.engine == "hf")
    assert hf.cost_cny > rec.cost_cny and re.fullmatch(r"\d+\.\dx the time, [\d.]+ CNY more", hf.reason), hf
    assert any(c.option.engine == "hf" for c in res.candidates)
    assert rec.time.engine_install_s > 0 and rec.time.engine_start_s > 0
    only_hf = optimize(PLAN, spec, CAT, Decimal(2000), engines=["hf"]).report.recommendation
    assert only_hf.engine == "hf" and only_hf.cost_cny == hf.cost_cny


@pytest.mark.parametrize("model", ["2b", "30b-a3b", "235b-a22b"])
def test_the_plan_never_picks_an_engine_for_a_quantization_it_refuses(model):
    spec = CAT.model(model)
    plan = PLAN.model_copy(update={"quantizations": ["bf16", "fp16", "fp8", "int8", "nf4"]})
    res = optimize(plan, spec, CAT, Decimal(200000))
    shown = [res.report.recommendation, *res.report.alternatives]
    for c in res.candidates:  # replicas: each card runs a whole model (no tensor parallelism over the rig)
        cards = c.option.gpu_count // c.option.replicas
        assert eng.refusal(c.option.engine, c.option.quant, spec, c.option.gpu, cards) is None
    assert all(s.quantization != "fp8" or s.engine in eng.SERVERS for s in shown)
    assert all(s.quantization != "int8" or s.engine not in eng.SERVERS for s in shown)
    if model == "235b-a22b":  # it needs tensor parallelism over 80 GB cards
        assert all(s.gpu_count >= 4 for s in shown if s.engine in eng.SERVERS)


@pytest.mark.parametrize("engine", ["hf", "vllm", "sglang", "transformers"])
def test_the_planner_skips_what_the_worker_skips(engine):
    """The worker cannot import the planner: each keeps its own list of the task kinds a server engine does not
    run (runner/worker/serving.py cannot_run, planner/engines.py skips). They must name the same kinds, or the
    plan would price tasks the run skips (or the reverse)."""
    from planner.workload import task_loads
    from runner.worker.serving import cannot_run

    loads = task_loads(load_plan("plans/smoke.yaml"), CAT.model("tiny-random-qwen3-vl"), A)
    assert {t.kind for t in loads if eng.skips(engine, t, "fp8")} == set(cannot_run(engine))

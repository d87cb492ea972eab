"""Calibration against recorded measurements (benchmarks/measured/, real Qwen3-VL 2B/4B/8B architectures on
an H200): fitting set A lowers the time error on a disjoint set B, and never lets a memory estimate fall
below a measured peak; the fit's provenance is kept; degenerate inputs give a scale, not nonsense."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.architecture import inventory
from planner.assumptions import Assumptions
from planner.calibration import Calibration, Measurement, Predictor, calibrate, mean_abs, relative_error
from planner.catalog import load_catalog
from planner.memory import card_parts, peak_of, weight_layout
from runner.calibrate import read_measurements

MEASURED = Path(__file__).resolve().parents[2] / "benchmarks" / "measured" / "nvidia-h200.jsonl"
CAT = load_catalog()
# the defaults are fitted on these very rows (planner.timefit); calibration is tested from another stack's
# factors: transformers 4.46's host time per layer (Qwen2.5's table) and no LLM.int8 term
OTHER = Assumptions(decode_overhead_ms_per_layer=0.86, int8_overhead_ms_per_linear=0.0)


def _rows() -> list[Measurement]:
    return read_measurements(MEASURED, CAT)


def _card_bytes(m: Measurement, a: Assumptions) -> int:
    spec = CAT.model(m.model)
    w = weight_layout(spec, inventory(spec), m.quantization, double_quant=m.double_quant)
    return max(p[-1] for p in card_parts(spec, w, m.quantization, peak_of([(m.shape(), m.batch)]), 1, a))


def test_the_recorded_measurements_cover_three_models_three_quantizations():
    rows = _rows()
    assert len(rows) == 60 and {r.model for r in rows} == {f"Qwen3-VL-{s}-Instruct" for s in ("2B", "4B", "8B")}
    assert {r.quantization for r in rows} == {"bf16", "nf4", "int8"} and {r.device for r in rows} == {"H200"}
    assert all(r.peak_allocated_bytes and r.ttft_s > 0 and r.decode_s > 0 for r in rows)


def test_calibrating_on_a_lowers_the_error_on_disjoint_b_and_memory_stays_above_every_peak():
    rows = _rows()
    big = [r for r in rows if r.visual_tokens > 500 or r.prefill_tokens > 4000]  # B: shapes A never saw
    a_rows = [r for r in rows if r not in big]
    pr = Predictor(CAT.model, CAT.gpu)
    base = OTHER
    cal = calibrate(pr, a_rows, [], base, "2026-11-28T00:00:00+00:00")
    assert {(f.device, f.quantization) for f in cal.rigs} == {("H200", q) for q in ("bf16", "nf4", "int8")}

    def fitted(m: Measurement) -> Assumptions:
        return cal.for_rig(base, m.device, m.quantization)[0]

    before = mean_abs([relative_error(pr.call_s(m, base), m.ttft_s + m.decode_s) for m in big])
    after = mean_abs([relative_error(pr.call_s(m, fitted(m)), m.ttft_s + m.decode_s) for m in big])
    assert after < before * 0.85, (before, after)
    for m in big + a_rows:  # the card's estimate, as `budget plan` prices it, covers every measured peak
        assert _card_bytes(m, fitted(m)) >= m.peak_allocated_bytes, m.source
        assert _card_bytes(m, fitted(m)) >= min(_card_bytes(m, base), m.peak_allocated_bytes)


def test_the_fit_keeps_its_provenance_and_says_so():
    pr = Predictor(CAT.model, CAT.gpu)
    cal = calibrate(pr, _rows(), [], OTHER, "2026-11-28T00:00:00+00:00")
    fit = cal.rig("H200", "int8")
    assert fit is not None and fit.samples + len(fit.outliers) == 15 and len(fit.sources) == fit.samples
    assert all(s.startswith("file:nvidia-h200.jsonl:") for s in fit.sources)
    assert fit.error_after < fit.error_before
    a, said = cal.for_rig(OTHER, "H200", "int8")
    assert said == f"calibrated from {fit.samples} measurements (nvidia-h200.jsonl) on H200/int8"
    assert a.int8_overhead_ms_per_linear == fit.factors["int8_overhead_ms_per_linear"] > 0
    # another GPU keeps the defaults, and says nothing
    assert cal.for_rig(Assumptions(), "T4", "nf4") == (Assumptions(), "")
    # stored and read back unchanged
    assert Calibration.model_validate_json(cal.model_dump_json()) == cal


def test_rows_that_cannot_separate_two_factors_leave_the_unseen_one_where_it_was():
    """One model, one short shape: the step is launch-bound, so the rows say nothing of the bandwidth - the
    damped fit moves the host's per-layer time to fit them and leaves the bandwidth efficiency as it was,
    rather than driving either to nonsense."""
    one = [m for m in _rows() if m.model.endswith("4B-Instruct") and m.quantization == "bf16" and m.batch == 1
           and m.visual_tokens == 0 and m.prefill_tokens < 200]
    assert len(one) == 2
    pr = Predictor(CAT.model, CAT.gpu)
    fit = calibrate(pr, one, [], OTHER, "x").rig("H200", "bf16")
    assert fit.factors["bandwidth_efficiency"] == pytest.approx(OTHER.bandwidth_efficiency, rel=1e-3)
    assert fit.factors["decode_overhead_ms_per_layer"] < OTHER.decode_overhead_ms_per_layer  # the 4B runs fast
    assert fit.error_after < fit.error_before


def test_the_calibration_line_counts_runs_not_their_tasks():
    """A run gives a row per task (and per sweep size, under one source): the line counts runs and file rows."""
    from planner.calibration import RigFit

    fit = RigFit(device="CPU", quantization="bf16", factors={}, samples=6, error_before=None, error_after=None,
                 sources=["r1:captions", "r1:documents", "r2:captions", "r2:sweep", "file:m.jsonl:3"])
    cal = Calibration(created_at="x", rigs=[fit])
    assert cal.for_rig(Assumptions(), "CPU", "bf16")[1] == "calibrated from 2 runs and 1 measurements (m.jsonl) on CPU/bf16"


def test_the_memory_band_printed_beside_estimates_is_the_models_residuals_on_measured_peaks():
    """90% of the H200 rows' allocator peaks lie within the band; the rest are the 8B nf4 rows, whose measured
    weights sit below what bitsandbytes stores (tests/worker/test_quantized_layout.py: the planner prices exactly
    what transformers 5.x quantizes - lm_head stays 16-bit)."""
    from planner.calibration import memory_errors
    from planner.timefit import band

    rows = _rows()
    errs = memory_errors(Predictor(CAT.model, CAT.gpu), rows, Assumptions())
    assert Assumptions().memory_band == band(errs) == 0.03
    over = [r for r, e in zip(rows, errs, strict=True) if abs(e) > 0.03]
    assert {(r.model, r.quantization) for r in over} == {("Qwen3-VL-8B-Instruct", "nf4")}

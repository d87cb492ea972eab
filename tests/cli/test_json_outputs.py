"""README's "`--json` output" table against the models that print it: every row names exactly its model's
keys, in order, and every model of runner/outputs.py has its row - so neither can change without the other."""

from __future__ import annotations

import re
from pathlib import Path

from planner.calibration import Calibration
from planner.estimate import RequestEstimate
from planner.models import DeadlineReport, InspectReport, PlanReport, PriceList
from runner import outputs

README = Path(__file__).resolve().parents[2] / "README.md"

ROWS = {
    "`budget plan`": PlanReport,
    "*deadline*": DeadlineReport,
    "`budget estimate`": RequestEstimate,
    "`budget calibrate`": Calibration,
    "`budget calibrate --show`": outputs.CalibrationCheck,
    "*finished run*": outputs.RunCheck,
    "`budget prices list`": PriceList,
    "`budget model inspect`": InspectReport,
    "`budget eval`": outputs.EvalSummary,
    "`budget compare`": outputs.CompareSummary,
    "*batch size*": outputs.BatchSize,
    "*load*": outputs.Load,
    "*memory*": outputs.MemoryUse,
    "`budget status`": outputs.RunList,
    "*run*": outputs.RunRow,
    "`budget status RUN`": outputs.RunDetail,
    "*ledger run*": outputs.LedgerRun,
    "*instance*": outputs.Instance,
    "*replica*": outputs.Replica,
    "*task*": outputs.TaskRow,
    "*event*": outputs.Event,
    "`budget sweep`": outputs.Sweep,
    "*resource*": outputs.Resource,
    "`budget ledger check`": outputs.LedgerCheck,
    "`budget ledger rebuild`": outputs.LedgerRebuild,
    "`budget pool list`": outputs.PoolList,
    "*pool*": outputs.Pool,
    "`budget pool show`, `create`, `set-cap`": outputs.PoolDetail,
    "*cap change*": outputs.CapChange,
    "*pool run*": outputs.PoolRun,
}


def readme_rows() -> dict[str, str]:
    """The section's table: {first cell: second cell}."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## `--json` output\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and len(cells) == 2 and cells != ["output", "keys"] and not cells[0].startswith("---"):
            assert cells[0] not in rows, f"two rows for {cells[0]}"
            rows[cells[0]] = cells[1]
    return rows


def keys(cell: str, rows: dict[str, str]) -> list[str]:
    """A row's keys in order: `key` as it is, *name* replaced by that row's keys; (...) is prose."""
    while (plain := re.sub(r"\([^()]*\)", "", cell)) != cell:
        cell = plain
    out = []
    for entry in (e.strip() for e in cell.split(",")):
        if m := re.fullmatch(r"`(\w+)`", entry):
            out.append(m.group(1))
        elif re.fullmatch(r"\*[^*]+\*", entry):
            out += keys(rows[entry], rows)
        else:
            raise AssertionError(f"{entry!r} is neither `key` nor *row*")
    return out


def fields(model) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def test_every_row_lists_its_models_keys_in_order():
    rows = readme_rows()
    assert sorted(rows) == sorted(ROWS), "README rows and the models they document differ"
    for label, model in ROWS.items():
        assert keys(rows[label], rows) == fields(model), f"README's {label} row vs {model.__name__}"


def test_every_output_model_has_a_row():
    models = {m for m in vars(outputs).values()
              if isinstance(m, type) and issubclass(m, outputs.Output) and m is not outputs.Output}
    assert models <= set(ROWS.values()), sorted(m.__name__ for m in models - set(ROWS.values()))


def test_output_models_refuse_unknown_keys():
    assert all(m.model_config.get("extra") == "forbid" for m in ROWS.values())


def test_plan_and_estimate_documents_name_the_engine():
    """What the runner reads of a plan (issue 24): each candidate's engine, the memory fraction, context and
    concurrency a server engine is started with, the other engines' verdicts; a rejection's engine; the estimate's."""
    from planner.models import EngineComparison, Recommendation, Rejection, TimeEstimate

    rec = fields(Recommendation)
    assert rec[rec.index("quantization") + 1:rec.index("spot")] == [
        "engine", "engine_memory_fraction", "max_model_len", "concurrency", "other_engines"]
    assert fields(EngineComparison) == ["engine", "quantization", "hours", "cost_cny", "reason"]
    assert fields(Rejection)[-1] == "engine"
    assert {"engine_install_s", "engine_start_s"} <= set(fields(TimeEstimate))
    est = fields(RequestEstimate)
    assert est[est.index("quantization") + 1] == "engine" and est[est.index("fits") + 1] == "engine_memory_fraction"

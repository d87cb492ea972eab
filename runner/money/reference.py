"""The reference comparison of the cost of quality: each `budget compare` run of the plan (a hosted model's answers
to the first cases of its tasks, runner/compare.py) beside each quantization, on the same cases - the cases both
answered, each side's metric recomputed over exactly those from the result lines held here (a corpus metric such
as CIDEr-D is not an average of per-case scores: it is computed again on the subset) - and what a case cost
each: the quantization's cost per answered sample of the task, the reference's metered calls per case. One
headline per quantization and reference in the seed's terms: "nf4: 86% of gpt-4o's score at 2% of its cost per
case". A hosted model's score depends on its version and the date it was asked: the note says so."""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction
from pathlib import Path

from planner.money import display

from .. import inbound
from . import results
from .ledger import Ledger

QUANT = "api"  # a compare run's quantization in the ledger: the hosted model's own, unknown to us
NOTE = ("a hosted model's score depends on its version and the date it was asked; both sides are scored on the "
        "cases both answered; a quantization's cost per case is its run's cost per answered sample of the task")


def is_reference(run: dict) -> bool:
    return run["quantization"] == QUANT


def _ok_ids(out: Path, task: str) -> set[str]:
    return {x["id"] for x in inbound.lines(out / "results" / f"{task}.jsonl", task) if x.get("status") == "ok"}


def _pct(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def section(led: Ledger, chosen: list[dict], per_sample: dict[tuple[str, str], Fraction | None],
            shares: dict[str, dict[str, Fraction]], metric: dict[str, tuple[str, str]]) -> dict | None:
    """The `reference` block of the cost of quality, or None without a compare run. `per_sample`: (task, quant)
    -> the quantization's cost per answered sample (the main table's); `shares`: run -> task -> its share of
    the run's cost; `metric`: kind -> (summary key, label)."""
    refs = [r for r in chosen if is_reference(r)]
    if not refs:
        return None
    latest: dict[str, list[dict]] = defaultdict(list)  # quant -> its runs, newest first
    for r in sorted((r for r in chosen if not is_reference(r)), key=lambda r: r["created_at"], reverse=True):
        latest[r["quantization"]].append(r)
    rows, models, missing = [], [], []
    heads: dict[tuple[str, str], list] = defaultdict(list)  # (quant, model) -> [(score %, q cost, r cost, cases)]
    for ref in refs:
        held = results.held_lines(ref)
        if held is None:
            missing.append(ref["id"])
            continue
        r_out, r_job = held
        model = ref["offer"]
        models += [model] if model not in models else []
        spent = Fraction(led.spent_run(ref["id"]))
        for task, rs in results.summarize(r_out, r_job).items():
            key, label = metric.get(rs.get("kind"), (None, None))
            if key is None or not rs.get("ok"):
                continue
            r_ids = _ok_ids(r_out, task)
            r_case = spent * (shares.get(ref["id"]) or {}).get(task, Fraction(0)) / rs["ok"]
            for q, runs in latest.items():
                for run in runs:  # the newest run of the quantization that answered some of these cases
                    q_held = results.held_lines(run)
                    common = r_ids & _ok_ids(q_held[0], task) if q_held else set()
                    if common:
                        break
                else:
                    continue
                q_value = results.summarize(q_held[0], q_held[1], {task: common}).get(task, {}).get(key)
                r_value = results.summarize(r_out, r_job, {task: common}).get(task, {}).get(key)
                q_case = per_sample.get((task, q))
                score = q_value / r_value * 100 if q_value is not None and r_value else None
                cost = float(q_case / r_case * 100) if q_case is not None and r_case else None
                rows.append({"task": task, "metric": label, "cases": len(common), "reference": model, "quant": q,
                             "reference_value": None if r_value is None else f"{r_value:.4f}",
                             "value": None if q_value is None else f"{q_value:.4f}",
                             "score_pct": None if score is None else _pct(score),
                             "reference_cny_per_case": display(r_case, 4),
                             "cny_per_case": None if q_case is None else display(q_case, 4),
                             "cost_pct": None if cost is None else _pct(cost)})
                if score is not None and q_case is not None and r_case:
                    heads[(q, model)].append((score, q_case, r_case, len(common)))
    if not rows and not missing:
        return None
    return {"models": models, "rows": rows, "headlines": headlines(heads), "note": NOTE
            + (f"; results of {', '.join(missing)} are not on this machine" if missing else "")}


def headlines(heads: dict[tuple[str, str], list]) -> list[str]:
    """One line per quantization and reference: its mean share of the reference's score over the tasks, at its
    cost per case over theirs (all the compared cases together)."""
    out = []
    for (q, model), xs in heads.items():
        score = sum(x[0] for x in xs) / len(xs)
        cost = float(sum(x[1] * x[3] for x in xs) / sum(x[2] * x[3] for x in xs) * 100)
        cases = max(x[3] for x in xs)
        out.append(f"{q}: {_pct(score)}% of {model}'s score at {_pct(cost)}% of its cost per case "
                   f"({cases} case{'s' * (cases != 1)} of {len(xs)} task{'s' * (len(xs) != 1)})")
    return out

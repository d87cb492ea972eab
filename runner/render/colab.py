"""Printers of the free Colab path: the notebook `budget colab` wrote, and the run `budget import` recorded."""

from __future__ import annotations

from ..units import duration
from . import base
from .base import styled


def notebook(path, job: dict, rec, plan_arg: str, terms) -> None:
    out = base.out
    samples = sum(int(t.get("samples") or 0) if not job.get("limit") else min(int(t.get("samples") or 0), job["limit"])
                  for t in job["tasks"])
    out.print(styled(("Wrote", "bold green"), f" {path}: run {job['run_id']} on Colab's free {rec.gpu} - "
                     f"{rec.quantization}, {rec.engine}; {len(job['tasks'])} tasks, {samples} samples; about "
                     f"{duration(rec.time.total_s)} there, 0 CNY"), soft_wrap=True)
    for step in terms.steps(plan_arg):
        out.print(f"  {step}", soft_wrap=True)
    out.print("  its limits (the notebook lists them with their sources): "
              + "; ".join(f"{t.fact}: {t.value.split(':')[0]}" for t in terms.limits), soft_wrap=True)


def imported_run(r) -> None:
    out = base.out
    if r.again:
        out.print(f"already imported: run {r.run_id} (plan {r.plan}, {r.state}, {r.samples_done}/{r.samples_total} "
                  "samples) holds this zip; nothing changed", soft_wrap=True)
        return
    verb = "replaced the results of" if r.replaced else "recorded"
    out.print(styled(("Imported", "bold green"), f": {verb} run {r.run_id} - plan {r.plan}, provider colab, 0.00 CNY; "
                     f"{r.state}, {r.samples_done}/{r.samples_total} samples; files in {r.run_dir / 'out'}"),
              soft_wrap=True)
    for why in r.skipped:
        base.err.print(f"not taken: {why}", soft_wrap=True)
    out.print(f"  see it with `budget report --plan {r.plan}` or `budget status {r.run_id}`", soft_wrap=True)

"""The one sample-count rule: a sample is done when its result line is held here - a whole line in
out/results/<task>.jsonl of the run directory - never because the instance says so. The planned total is the
worker's (its status or summary of this run: how many samples each task that runs has), never below what
is held. Every count of samples - the ledger's, `budget status`, a stop, a reconcile - is this one."""

from __future__ import annotations

from pathlib import Path

from ..evaluate import read_json


def held(run_dir: Path) -> int:
    """Whole result lines held in the run directory."""
    res = Path(run_dir) / "out" / "results"
    if not res.is_dir():
        return 0
    return sum(f.read_bytes().count(b"\n") for f in res.glob("*.jsonl"))


def planned(run_dir: Path, run_id: str | None = None) -> int:
    """The samples the worker plans over the tasks that run (a skipped task plans none): from its summary of
    this run when there is one, else its last status."""
    out = Path(run_dir) / "out"
    summary = read_json(out / "summary.json")
    tasks = summary.get("tasks") if run_id is None or summary.get("run_id") == run_id else None
    if not isinstance(tasks, dict):
        tasks = read_json(out / "status.json").get("tasks")
    if not isinstance(tasks, dict):
        return 0
    total = 0
    for t in tasks.values():
        if isinstance(t, dict) and "skipped" not in t and isinstance(t.get("total"), int) and t["total"] > 0:
            total += t["total"]
    return total


def count(run_dir: Path, run_id: str | None = None) -> tuple[int, int]:
    """(samples done, samples planned) by the rule above."""
    done = held(run_dir)
    return done, max(done, planned(run_dir, run_id))

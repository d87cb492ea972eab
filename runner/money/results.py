"""What runs produced, kept in the ledger beside their money: each task's summary (for reports and the cost of
quality) and `budget calibrate`'s fits (for plan, estimate and run). Plain functions over the ledger's
connection."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from .. import inbound
from .ledger import Ledger


def summarize(out: Path, job: dict, only: dict[str, set[str]] | None = None) -> dict[str, dict]:
    """Each task's summary, computed here from the result lines held in `out` (valid lines of the job's tasks,
    the last line of each sample id, at most the samples the task asks for) with the worker's own summarize -
    never the instance's summary.json: its counts are kept beside as `reported_by_instance`, and a task it
    says it skipped says so. A task with no line held and no word from the instance has no summary. `only`:
    the summaries of those tasks over those sample ids alone (the same cases as another run's)."""
    from ..worker.tasks import KINDS, base, most_lines

    reported = inbound.summary(out).tasks or inbound.status(out).tasks
    done = {}
    for spec in job.get("tasks") or []:
        name, kind = spec["name"], spec["kind"]
        if only is not None and name not in only:
            continue
        cap, by_id = most_lines(spec, job.get("limit")), {}
        for x in inbound.lines(Path(out) / "results" / f"{name}.jsonl", name):
            if x["id"] in by_id or cap is None or len(by_id) < cap:  # never more samples than the task has
                by_id[x["id"]] = x
        lines = list(by_id.values())
        if only is not None:
            lines = [x for x in lines if x["id"] in only[name]]
        try:
            s = KINDS[kind].summarize(SimpleNamespace(**spec), lines)
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as e:  # lines of the right shape
            s = {**base.counts(lines), "note": f"the lines held could not be scored ({e.__class__.__name__})"}
        said = reported.get(name)
        if not lines and said is None:
            continue
        if said is not None:
            s["reported_by_instance"] = {"done": said.done, "ok": said.ok, "total": said.total}
            if said.skipped and not lines:
                s["skipped"] = said.skipped
        done[name] = {"kind": kind, "total": cap, **s}
    return done


def record_tasks(led: Ledger, run_id: str, out: Path, job: dict) -> None:
    """The run's task summaries into the ledger (what reports and the cost of quality read), by summarize()."""
    save_tasks(led, run_id, summarize(out, job))


def save_tasks(led: Ledger, run_id: str, tasks: dict[str, dict]) -> None:
    with led.transaction():
        for name, t in tasks.items():
            led.db.execute("INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?,?)",
                           (run_id, name, t["kind"], int(t.get("done") or 0), int(t.get("ok") or 0),
                            json.dumps(t, ensure_ascii=False, default=str)))


def held_lines(run: dict) -> tuple[Path, dict] | None:
    """Where a run's result lines are held here and its job (request.json's for a rented run, out/job.json for
    one run from this machine); None when its directory is gone."""
    import json

    if not run.get("dir"):
        return None
    d = Path(run["dir"])
    for path, key in ((d / "request.json", "job"), (d / "out" / "job.json", None)):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        job = doc.get(key) if key else doc
        if isinstance(job, dict) and isinstance(job.get("tasks"), list):
            return d / "out", job
    return None


def tasks(led: Ledger, run_id: str) -> list[dict]:
    return [dict(r) for r in led.db.execute("SELECT * FROM tasks WHERE run_id=? ORDER BY task", (run_id,))]


def save_calibration(led: Ledger, doc: str, now: float) -> None:
    with led.transaction():
        led.db.execute("INSERT INTO calibrations (created_at, doc) VALUES (?, ?)", (now, doc))


def calibration(led: Ledger) -> str | None:
    """The newest calibration's JSON, if any."""
    row = led.db.execute("SELECT doc FROM calibrations ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None

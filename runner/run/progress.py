"""The one sample-count rule: a sample is done when its result line is held here - a valid line of one of the
job's tasks in out/results/<task>.jsonl of the run directory (runner/inbound.py took it), counted once per
sample id and never past what the job asks of that task - never because the instance says so. The planned
total is the job's (request.json, written here before the launch): each task's samples, less the tasks the
worker skipped, and never below what is held. Every count of samples - the ledger's, `budget status`, a stop,
a reconcile, the report's cost per sample - is this one."""

from __future__ import annotations

import json
from pathlib import Path

from .. import inbound


def tasks_of(run_dir: Path) -> dict[str, int | None]:
    """The job's tasks and how many samples each asks for (None: not known here), from request.json; {} when
    the run directory has none (then every task file held counts)."""
    from ..worker.tasks import most_lines

    try:
        job = json.loads((Path(run_dir) / "request.json").read_bytes()[: 4 << 20]).get("job") or {}
        return {t["name"]: most_lines(t, job.get("limit")) for t in job.get("tasks") or []}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


_SEEN: dict[tuple[str, str], tuple[int, int, set]] = {}  # (file, task) -> (inode, bytes read, ids)


def _distinct(f: Path, task: str, cap: int | None) -> int:
    """Distinct sample ids in a result file, at most `cap` of them kept. Result files here only grow (fetch
    appends), so each look reads only the bytes added since the last one; a file replaced is read anew."""
    st, key = f.stat(), (str(f), task)
    ino, done, ids = _SEEN.get(key, (st.st_ino, 0, set()))
    if ino != st.st_ino or st.st_size < done:
        done, ids = 0, set()
    if st.st_size > done:
        for line, end in inbound.lines_from(f, task, done):
            if line is not None and (cap is None or len(ids) < cap):
                ids.add(line["id"])
            done = end
    if len(_SEEN) > 1024:
        _SEEN.clear()
    _SEEN[key] = (st.st_ino, done, ids)
    return len(ids)


def per_task(run_dir: Path) -> dict[str, int]:
    """Samples done per task: the distinct ids of the valid lines held, at most what the job asks."""
    res = Path(run_dir) / "out" / "results"
    wanted = tasks_of(run_dir)
    done = {}
    for f in sorted(res.glob("*.jsonl")) if res.is_dir() else []:
        task = f.stem
        if wanted and task not in wanted:
            continue
        done[task] = _distinct(f, task, wanted.get(task))
    return done


def held(run_dir: Path) -> int:
    """Samples done, by the rule above."""
    return sum(per_task(run_dir).values())


def planned(run_dir: Path, run_id: str | None = None) -> int:
    """The samples the job plans over the tasks that run. The worker's word (its summary of this run, else its
    last status) can only lower it: a task it skipped, or one whose data has fewer samples than asked."""
    out = Path(run_dir) / "out"
    summary = inbound.summary(out)
    reported = summary.tasks if run_id is None or summary.run_id == run_id else {}
    reported = reported or inbound.status(out).tasks
    wanted = tasks_of(run_dir) or dict.fromkeys(reported)
    total = 0
    for name, asked in wanted.items():
        t = reported.get(name)
        if t is not None and t.skipped:
            continue
        known = [n for n in (asked, t.total if t is not None else None) if n is not None]
        total += min(known, default=0)
    return total


def count(run_dir: Path, run_id: str | None = None) -> tuple[int, int]:
    """(samples done, samples planned) by the rule above."""
    done = held(run_dir)
    return done, max(done, planned(run_dir, run_id))

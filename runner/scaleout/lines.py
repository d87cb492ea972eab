"""What comes back from the cluster, through the one boundary (runner/inbound.py): the result lines the lease
actor collected and the dict each task returns. Nothing a node sent is believed, billed or written before it
passed here.

- `Merger`: result lines into the run directory's out/results/<task>.jsonl - only lines runner/inbound.py's
  `line_of` takes (a JSON object of at most LINE_CAP bytes, a string id, its file's task, a known status, every
  number finite and bounded), of one of the job's tasks, on one line, and each sample id once whoever ran it (a
  shard retried on another node pushes the lines it resumed from again; they are not written twice). This is
  the one new entry point beside inbound.fetch / inbound.take_object: lines that arrive as strings in memory
  rather than as a file on an instance.
- `result_of`: a task's returned dict as a typed record (pydantic, strict), or None.
- `status_doc`: out/status.json for the run from the shards' last status.json (each parsed by inbound.Status):
  per task the total over every shard (known only when every shard said) and a task the worker skipped - so
  the sample count (run/progress.py) plans what the worker really runs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import inbound

WORKER_LOG = 64 << 10  # of a shard's worker.log kept with the run (task.py sends at most this)
TaskResultLines = dict[inbound.TaskName, list[Annotated[str, Field(max_length=inbound.LINE_CAP)]]]


class TaskResult(BaseModel):
    """What a task (task.py) returns: its shard, node and worker's exit code, when it ran, what stopped it, the
    worker's last status.json (text) and the lines the actor could not take."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    key: Annotated[str, Field(min_length=1, max_length=64)]
    shard: Annotated[int, Field(ge=0, le=10**6)]
    node: inbound.Text = ""
    pid: int | None = None
    exit: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    stopped: inbound.Text = ""
    status: Annotated[str, Field(max_length=inbound.DOC_CAP)] = ""
    lines: TaskResultLines = Field(default_factory=dict)
    log: inbound.Text = ""
    worker_log: Annotated[str, Field(max_length=WORKER_LOG)] = ""
    seeded: Annotated[int, Field(ge=0)] = 0  # lines of its shard it started from (a retry resumes after them)


def result_of(obj) -> tuple[TaskResult | None, str]:
    """(the record, "") or (None, why it is refused)."""
    if not isinstance(obj, dict):
        return None, f"a {type(obj).__name__}, not a task's result"
    try:
        return TaskResult.model_validate(obj), ""
    except ValidationError as e:
        err = e.errors()[0]
        return None, f"{'.'.join(str(p) for p in err['loc']) or '(result)'}: {err['msg']}"[:200]


class Merger:
    def __init__(self, out: Path, job: dict):
        self.dir = Path(out) / "results"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tasks = [t["name"] for t in job.get("tasks") or [] if inbound.task_of(f"{t['name']}.jsonl")]
        self.seen = {t: {x["id"] for x in inbound.lines(self.dir / f"{t}.jsonl", t)} for t in self.tasks}
        self.refused = 0

    def add(self, lines: Iterable[tuple[str, str]]) -> int:
        """Write the new valid lines (task, line) once per sample id; returns how many were written."""
        new: dict[str, list[bytes]] = {}
        for task, raw in lines:
            data = raw.encode("utf-8") if isinstance(raw, str) else b""
            doc = inbound.line_of(data, task) if task in self.seen and b"\n" not in data and b"\r" not in data else None
            if doc is None:
                self.refused += 1
                continue
            if doc["id"] in self.seen[task]:
                continue
            self.seen[task].add(doc["id"])
            new.setdefault(task, []).append(data + b"\n")
        for task, chunks in new.items():
            path = self.dir / f"{task}.jsonl"
            if path.exists() and path.stat().st_size >= inbound.RESULTS_CAP:
                self.refused += len(chunks)
                continue
            with open(path, "ab") as f:
                f.write(b"".join(chunks))
                f.flush()
                os.fsync(f.fileno())
        return sum(len(c) for c in new.values())

    def held(self) -> int:
        return sum(len(ids) for ids in self.seen.values())


def append_log(out: Path, header: str, text: str) -> None:
    """A shard's worker.log into the run's out/worker.log (what `budget logs RUN` shows, escaped when printed),
    under a header naming the shard and node; the run's log is kept to inbound.LOG_CAP."""
    path = Path(out) / "worker.log"
    if not text or (path.exists() and path.stat().st_size >= inbound.LOG_CAP):
        return
    with open(path, "a", encoding="utf-8", errors="replace") as f:
        f.write(f"== {header} ==\n{text if text.endswith(chr(10)) else text + chr(10)}")


def status_doc(run_id: str, job: dict, shards: int, statuses: dict[int, str], phase: str, stopped: str | None,
               error: str | None) -> dict:
    """The run's status.json from each shard's last word (shard -> its status.json text)."""
    said = {}
    for k, text in statuses.items():
        doc, _ = inbound.parse(inbound.Status, text.encode("utf-8"))
        if doc is not None:
            said[k] = doc
    tasks = {}
    for spec in job.get("tasks") or []:
        name = spec["name"]
        per = [s.tasks[name] for s in said.values() if name in s.tasks]
        totals = [p.total for p in per if p.total is not None]
        entry = {"kind": spec["kind"], "done": sum(p.done for p in per), "ok": sum(p.ok for p in per),
                 "total": sum(totals) if len(said) == shards and len(totals) == shards else None}
        skipped = next((p.skipped for p in per if p.skipped), None)
        if skipped and not entry["done"]:
            entry["skipped"] = skipped
        tasks[name] = entry
    return {"schema": "gpubudget.status/1", "run_id": run_id, "phase": phase, "tasks": tasks, "stopped": stopped,
            "error": error, "shards": shards, "reported_by": sorted(said)}


def write_status(out: Path, doc: dict) -> None:
    path = Path(out) / "status.json"
    tmp = path.with_name("status.json.part")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)

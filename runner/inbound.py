"""The one boundary for everything read back from an instance: its status.json and summary.json, its result
lines, its logs, the names it lists and the S3 objects it uploaded. Nothing the instance wrote is believed,
billed or written here before it passed this module:

- names: a file name the instance lists or uploads is taken only if it is a safe name (planner/names.py:
  `[A-Za-z0-9._-]`, no `/`, no leading `.`), so nothing it names can land outside the run's `out/`;
- sizes: every read is capped - a status or summary at DOC_CAP, a result line at LINE_CAP, one read of one
  file at READ_CAP, one fetch at FETCH_CAP, a log kept here at LOG_CAP. Nothing is `read()` whole; a line
  longer than its cap is a bad line, skipped a READ_CAP at a time, never held;
- shapes: documents are parsed into typed records (pydantic, strict types, unknown keys ignored); a result
  line must be a JSON object with a string `id`, its file's task and a known status. A document that fails is
  not written here (the last good one stays, so a bad status is a missed heartbeat); a line that fails is
  skipped and counted.

What failed is returned as `Fetched.bad` (what, why) for the caller to log as an event; nothing here raises on
what the instance sent. How many samples are done is then counted here from the lines held (run/progress.py),
never from what the instance claims."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from planner import names

from .units import capped_float, capped_int, no_constant, printable

DOC_CAP = 1 << 20        # status.json / summary.json: the worker's are a few KiB
LINE_CAP = 1 << 20       # one result line (the worker's are well under 64 KiB; a prompt is capped at 65,536)
READ_CAP = 8 << 20       # one read of one file in one fetch
FETCH_CAP = 64 << 20     # all one fetch takes (the rest comes at the next one)
LOG_CAP = 64 << 20       # what is kept here of one log
RESULTS_CAP = 1 << 30    # what is held here of one result file (thousands of samples are a few MB)
FILES_CAP = 256          # result files taken from one listing
REFUSALS_CAP = 20        # refusals said for one fetch (then one line for the rest)
DOCS = ("status.json", "summary.json")
LOGS = ("worker.log", "worker.stderr.log")
OFFSETS = ".fetched.json"  # where each appended file was read up to on the instance (bad lines are not held)

TEXT_CAP = 4000  # what is kept of one string the instance wrote (an error message may be longer: cut, not refused)
Text = Annotated[str, AfterValidator(lambda s: printable(s[:TEXT_CAP]))]
TaskName = Annotated[str, AfterValidator(lambda n: names.check(n, "task"))]
Count = Annotated[int, Field(ge=0, le=10**9)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class TaskProgress(_Doc):
    kind: Text = ""
    total: Count | None = None
    done: Count = 0
    ok: Count = 0
    skipped: Text | None = None


class Replica(_Doc):
    """One GPU's worker process of a job run by replicas (runner/worker/replicas.py)."""

    replica: Count = 0
    gpu: Text = ""
    shard: Count | None = None
    phase: Text | None = None
    lost: bool = False
    runs: Count = 0


class Status(_Doc):
    """status.json as the controller reads it (what the worker reports; only `updated_at` - the heartbeat -
    and the words it stopped or failed with are used)."""

    run_id: Text | None = None
    updated_at: Text | None = None
    task: Text | None = None
    eta_s: Annotated[float, Field(ge=0)] | None = None
    stopped: Text | None = None
    error: Text | None = None
    tasks: dict[TaskName, TaskProgress] = Field(default_factory=dict, max_length=FILES_CAP)
    replicas: list[Replica] = Field(default_factory=list, max_length=64)


class Summary(Status):
    """summary.json, the worker's last word: how it ended. Its counts and scores are shown as reported by the
    instance at most; the ledger's are recomputed from the lines held (money/results.py)."""

    complete: bool = False


class Line(_Doc):
    id: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    task: Text
    status: Literal["ok", "error", "oom"]


def parse(model: type[_Doc], data: bytes) -> tuple[_Doc | None, str]:
    """(the record, "") or (None, why it is refused)."""
    if len(data) > DOC_CAP:
        return None, f"{len(data)} bytes, over the {DOC_CAP >> 10} KiB cap"
    try:
        return model.model_validate_json(data), ""
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        return None, f"{where}: {err['msg']}"[:200]
    except RecursionError:
        return None, "nested too deep"


def read(path: Path, model: type[_Doc]):
    """A document held here (written by fetch only after it passed), or the empty record when it is missing
    or damaged here since."""
    try:
        with open(path, "rb") as f:
            data = f.read(DOC_CAP + 1)
    except OSError:
        return model()
    doc, _ = parse(model, data)
    return doc if doc is not None else model()


def status(out: Path) -> Status:
    return read(Path(out) / "status.json", Status)


def summary(out: Path) -> Summary:
    return read(Path(out) / "summary.json", Summary)


def line_of(raw: bytes, task: str) -> dict | None:
    """One result line (without its newline) as a dict, or None when it is not one of this task's lines."""
    if len(raw) > LINE_CAP:
        return None
    try:
        doc = json.loads(raw, parse_int=capped_int, parse_float=capped_float, parse_constant=no_constant)
        if not isinstance(doc, dict):
            return None
        line = Line.model_validate(doc)
    except (ValueError, ValidationError, RecursionError):
        return None
    return doc if line.task == task else None


def lines(path: Path, task: str):
    """The lines of a result file held here that are this task's (each a dict), streamed."""
    for doc, _ in lines_from(path, task, 0):
        if doc is not None:
            yield doc


def lines_from(path: Path, task: str, offset: int):
    """(line or None when it is not one of this task's, the offset after it) for each whole line of a file held
    here from `offset` on."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            at = offset
            for raw in f:
                if not raw.endswith(b"\n"):  # a torn tail (fetch appends whole lines only): not yet a line
                    return
                at += len(raw)
                yield line_of(raw[:-1], task), at
    except OSError:
        return


def task_of(name: str) -> str | None:
    """The task a result file of that name holds, None for a name that is not taken."""
    stem = name.removesuffix(".jsonl")
    return stem if name.endswith(".jsonl") and names.is_safe(stem) else None


# ------------------------------------------------------------------------------------------ fetching


@dataclass
class Fetched:
    got: int = 0                                        # bytes written here
    bad: list[tuple[str, str]] = field(default_factory=list)  # (what, why) refused this time

    def refuse(self, what: str, why: str) -> None:
        if len(self.bad) < REFUSALS_CAP:
            self.bad.append((what, why))
        elif len(self.bad) == REFUSALS_CAP:
            self.bad.append(("...", "more refused in this fetch, not listed"))


@dataclass
class _Cursor:
    """Where an appended file was read up to on the instance, and whether it is inside a line over the cap."""

    at: int
    skipping: bool = False


class _Offsets:
    def __init__(self, out: Path):
        self.path = out / OFFSETS
        try:
            raw = json.loads(self.path.read_bytes()[:DOC_CAP])
            self.doc = {k: _Cursor(int(v[0]), bool(v[1])) for k, v in raw.items()} if isinstance(raw, dict) else {}
        except (OSError, ValueError, TypeError, IndexError, KeyError):
            self.doc = {}
        self.was = json.dumps({k: [c.at, c.skipping] for k, c in self.doc.items()})

    def get(self, rel: str, local: Path) -> _Cursor:  # else what is held (earlier fetches held every byte)
        return self.doc.get(rel) or _Cursor(local.stat().st_size if local.exists() else 0)

    def save(self) -> None:
        text = json.dumps({k: [c.at, c.skipping] for k, c in self.doc.items()})
        if text != self.was:  # most ticks of a quiet worker change nothing
            tmp = self.path.with_name(OFFSETS + ".part")
            tmp.write_text(text)
            tmp.replace(self.path)


def forget_offsets(out: Path) -> None:
    """A new instance was given what is held here: its files start from what is held."""
    (Path(out) / OFFSETS).unlink(missing_ok=True)


def fetch(session, out_rel: str, local_out: Path, tasks: Collection[str] | None = None) -> Fetched:
    """Bring the worker's output up to date here: result lines and logs appended past what was read (whole,
    valid lines only; a line the worker is still writing waits for the next fetch), status.json and
    summary.json replaced whole once they pass. Only the result files of `tasks` (the job's; None: any safe
    name). Bounded: READ_CAP per file, FETCH_CAP in all, RESULTS_CAP held of one result file."""
    local_out = Path(local_out)
    (local_out / "results").mkdir(parents=True, exist_ok=True)
    f, offsets, budget = Fetched(), _Offsets(local_out), [FETCH_CAP]
    listed = session.listdir(f"{out_rel}/results")
    results = []
    for name in listed:
        if task_of(name) is not None and (tasks is None or task_of(name) in tasks):
            results.append(name)
        elif name.endswith(".jsonl") or "/" in name or name.startswith("."):
            f.refuse(f"results/{_shown(name)}", "a result file of no task of the job, or a name that is not "
                                                "taken (letters, digits, '.', '_', '-')")
    if len(results) > FILES_CAP:
        f.refuse("results/", f"{len(results)} result files, over the {FILES_CAP} cap: the first {FILES_CAP} taken")
    for name in LOGS:
        _append(session, out_rel, local_out, name, None, offsets, budget, f)
    for name in results[:FILES_CAP]:
        _append(session, out_rel, local_out, f"results/{name}", task_of(name), offsets, budget, f)
    offsets.save()
    for name in DOCS:
        _whole(session, f"{out_rel}/{name}", local_out / name, Status if name == "status.json" else Summary, f)
    return f


def _shown(name: str) -> str:
    return ascii(name[:80])[1:-1]


def _append(session, out_rel: str, out: Path, rel: str, task: str | None, offsets: _Offsets, budget: list[int],
            f: Fetched) -> None:
    dest = out / rel
    cur = offsets.get(rel, dest)
    size = session.size(f"{out_rel}/{rel}")
    if size is None or size <= cur.at or budget[0] <= 0:
        return
    if dest.exists() and dest.stat().st_size >= (LOG_CAP if task is None else RESULTS_CAP):
        if task is not None and cur.at < size:
            f.refuse(rel, f"over the {RESULTS_CAP >> 20} MiB held of one result file: the rest is not taken")
        offsets.doc[rel] = _Cursor(size)  # past its cap here: the rest stays on the instance
        return
    data = session.read(f"{out_rel}/{rel}", cur.at, min(size - cur.at, READ_CAP, budget[0])) or b""
    budget[0] -= len(data)
    if task is None:
        keep, cur = data, _Cursor(cur.at + len(data))
    else:
        keep, cur = _whole_lines(data, cur, rel, task, f)
    offsets.doc[rel] = cur
    if keep:
        with open(dest, "ab") as fh:
            fh.write(keep)
        f.got += len(keep)


def _whole_lines(data: bytes, cur: _Cursor, rel: str, task: str, f: Fetched) -> tuple[bytes, _Cursor]:
    """The valid whole lines of `data` read at `cur`, and the cursor after what was used up."""
    start = 0
    if cur.skipping:  # inside a line over the cap (counted when it was found): drop up to its end
        nl = data.find(b"\n")
        if nl < 0:
            return b"", _Cursor(cur.at + len(data), True)
        start = nl + 1
    end = max(start, data.rfind(b"\n") + 1)
    kept, bad = [], 0
    for raw in data[start:end].split(b"\n")[:-1]:
        if line_of(raw, task) is None:
            bad += 1
        else:
            kept.append(raw + b"\n")
    over = len(data) - end >= LINE_CAP  # a line still unfinished and already over the cap: skip it, never hold it
    if bad or over:
        f.refuse(rel, f"{bad + over} line(s) that are not result lines of {task} (malformed, or over "
                      f"{LINE_CAP >> 10} KiB)")
    return b"".join(kept), _Cursor(cur.at + (len(data) if over else end), over)


def _whole(session, rel: str, dest: Path, model: type[_Doc], f: Fetched) -> None:
    size = session.size(rel)
    if size is None:
        return
    if size > DOC_CAP:
        f.refuse(dest.name, f"{size} bytes, over the {DOC_CAP >> 10} KiB cap")
        return
    data = session.read(rel, 0, DOC_CAP + 1)
    if not data:
        return
    doc, why = parse(model, data)
    if doc is None:
        f.refuse(dest.name, why)
        return
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    f.got += len(data)


# ------------------------------------------------------------------------------------------ objects


def name_taken(rel: str) -> bool:
    """Whether a file the instance uploaded under out/ is one that is taken: a document, a log or a result
    file of a safe name."""
    parts = rel.split("/")
    return rel in DOCS or rel in LOGS or (len(parts) == 2 and parts[0] == "results" and task_of(parts[1]) is not None)


def take_object(rel: str, read: Callable[[int], bytes], out: Path) -> str:
    """One object the instance uploaded (S3: gpubudget/RUN/out/<rel>) into `out`, through the same checks:
    "" when taken whole, else what was not taken. `read(n)` reads at most n more bytes of its body."""
    if not name_taken(rel):
        return f"{_shown(rel)}: a name that is not taken"
    dest, task = Path(out) / rel, task_of(rel.split("/")[-1]) if rel.startswith("results/") else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    why = ""
    with open(tmp, "wb") as fh:
        if rel in DOCS:
            data = read(DOC_CAP + 1)
            doc, why = parse(Status if rel == "status.json" else Summary, data)
            if doc is not None:
                fh.write(data)
        elif task is None:  # a log: its first LOG_CAP, a READ_CAP at a time
            kept = 0
            while kept < LOG_CAP and (chunk := read(min(READ_CAP, LOG_CAP - kept))):
                fh.write(chunk)
                kept += len(chunk)
        else:
            why = _stream_lines(read, task, fh)
    if rel in DOCS and why:
        tmp.unlink()
        return f"{rel}: {why}"
    os.replace(tmp, dest)
    return why and f"{rel}: {why}"


def _stream_lines(read: Callable[[int], bytes], task: str, fh) -> str:
    """Copy the valid lines of a body to fh, a READ_CAP at a time, at most RESULTS_CAP of it; a line over the
    cap is skipped, not held; a last line with no newline is torn (skipped)."""
    pending, skipping, bad, taken = b"", False, 0, 0
    while True:
        chunk = read(READ_CAP) if taken < RESULTS_CAP else b""
        taken += len(chunk)
        if not chunk:
            bad += bool(pending)
            break
        data = pending + chunk
        if skipping:
            nl = data.find(b"\n")
            if nl < 0:
                pending = b""
                continue
            data, skipping = data[nl + 1:], False
        *whole, pending = data.split(b"\n")
        for raw in whole:
            if line_of(raw, task) is None:
                bad += 1
            else:
                fh.write(raw + b"\n")
        if len(pending) >= LINE_CAP:
            pending, skipping, bad = b"", True, bad + 1
    return f"{bad} line(s) skipped: not result lines of {task}" if bad else ""

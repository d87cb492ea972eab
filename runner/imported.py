"""`budget import RESULTS.zip`: a Colab notebook's results (runner/colab.py) recorded as a 0 CNY run, so that
`budget report` and the cost of quality (`budget report --plan P`) count it beside paid runs.

The zip is untrusted input, and this module is its one boundary. Before anything is written here:
- the archive: a regular file of at most ZIP_CAP, at most MEMBERS_CAP members;
- each member: a relative name with no `..`, no backslash, no drive; a regular file (a symlink or any other
  type is refused, whatever it points at); not encrypted, stored or deflated; one of the names a worker writes
  (runner/inbound.py's rule: job.json, status.json, summary.json, worker.log, worker.stderr.log,
  results/<task>.jsonl of a safe name) and never twice; a declared size within MEMBER_CAP, a declared
  compression ratio within RATIO_CAP (small members excepted), all declared sizes within TOTAL_CAP.
Then, while extracting, the bytes are counted - a declared size can lie: past its declared size, its ratio
allowance or the total, the import is refused; a member whose data does not match its header (CRC) too.
Every member passes through runner/inbound.py as a fetched file does (documents typed and capped, result
lines one by one: a line that is not a result line of its task is skipped and counted), into a staging folder.
job.json is parsed by the worker's own rules; with --plan, the job must be the plan's (paths aside).

Then the run: $BUDGET_HOME/runs/<the job's run id>/out holds the files; the ledger gets the run (provider colab,
pool `colab`, cap 0), one instance admitted at price 0 and settled - a spend row of 0 CNY over the worker's
elapsed time - and the task summaries recomputed from the result lines (money/results.py), never believed from
summary.json. The run id is the job's: the same zip imported twice is one run (its hash is recorded; a newer
zip of the same run replaces its results). Each step is idempotent, so an import cut short is completed by the
next one."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from planner.errors import InputError

from . import inbound
from .clock import SYSTEM, Clock
from .colab import PROVIDER
from .worker.downloads import file_sha256

ZIP_CAP = 256 << 20      # the archive on disk
MEMBERS_CAP = inbound.FILES_CAP + 8
MEMBER_CAP = 64 << 20    # one member, declared and read
TOTAL_CAP = 256 << 20    # every member together, declared and read
RATIO_CAP = 200          # uncompressed / compressed: result lines compress ~10x; a bomb 1000x and more
RATIO_FREE = 1 << 20     # a member this small may compress any amount (a run of one repeated line)
JOB_CAP = 4 << 20        # job.json (prompts included)
MAX_ELAPSED_S = 7 * 86400  # what a summary may claim its worker ran for (a longer claim is not believed)
POOL = "colab"
HINT = "import the zip the notebook's last cell wrote (`budget colab PLAN` makes the notebook), unchanged"
_RUN_ID = re.compile(r"(?P<plan>.+)-\d{8}-\d{6}-[0-9a-f]{4}")  # runner/run/request.py new_run_id


class Refused(InputError):
    pass


@dataclass
class Imported:
    run_id: str
    plan: str
    run_dir: Path
    state: str
    samples_done: int
    samples_total: int
    sha256: str
    again: bool = False        # the same zip was imported before: nothing changed
    replaced: bool = False     # the run was imported before from another zip: its results are this one's
    skipped: list[str] = field(default_factory=list)  # what was not taken, and why


def _refuse(path: Path, why: str) -> Refused:
    return Refused(f"{path.name}: {why}; nothing was imported", HINT)


def check_members(zf: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    """The members to take, each checked by its header; Refused naming the first that is not."""
    infos = zf.infolist()
    if len(infos) > MEMBERS_CAP:
        raise _refuse(path, f"{len(infos)} members, over the {MEMBERS_CAP} a results zip holds")
    seen: set[str] = set()
    taken, declared = [], 0
    for i in infos:
        name, shown = i.filename, ascii(i.filename[:80])
        parts = name.split("/")
        if name.startswith("/") or re.match(r"[A-Za-z]:", name):
            raise _refuse(path, f"member {shown} has an absolute path")
        if "\\" in name or "\0" in name or ".." in parts:
            raise _refuse(path, f"member {shown} leaves the folder it is extracted to")
        mode = i.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _refuse(path, f"member {shown} is a symbolic link")
        if name == "results/" and i.is_dir():
            continue  # the results folder itself, as some zip tools list it
        if i.is_dir() or (stat.S_IFMT(mode) not in (0, stat.S_IFREG)):
            raise _refuse(path, f"member {shown} is not a regular file")
        if name != "job.json" and not inbound.name_taken(name):
            raise _refuse(path, f"member {shown} is not a file the worker writes (job.json, status.json, "
                                "summary.json, worker.log, results/<task>.jsonl)")
        if name in seen:
            raise _refuse(path, f"member {shown} is in it twice")
        seen.add(name)
        if i.flag_bits & 0x1:
            raise _refuse(path, f"member {shown} is encrypted")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(path, f"member {shown} is compressed with method {i.compress_type} (stored or deflated only)")
        if i.file_size > MEMBER_CAP:
            raise _refuse(path, f"member {shown} declares {i.file_size:,} bytes, over the cap of {MEMBER_CAP:,}")
        if i.file_size > max(RATIO_FREE, RATIO_CAP * i.compress_size):
            raise _refuse(path, f"member {shown} declares a compression ratio over {RATIO_CAP}:1 (a zip bomb?)")
        declared += i.file_size
        if declared > TOTAL_CAP:
            raise _refuse(path, f"its members declare over {TOTAL_CAP >> 20} MiB in all")
        taken.append(i)
    if "job.json" not in seen:
        raise _refuse(path, "no job.json in it")
    return taken


class _Reader:
    """A member's bytes, counted against its declared size, its ratio allowance and the archive's total."""

    def __init__(self, f, info: zipfile.ZipInfo, total: list[int], path: Path):
        self.f, self.info, self.total, self.path, self.got = f, info, total, path, 0
        self.allowed = min(MEMBER_CAP, max(RATIO_FREE, RATIO_CAP * info.compress_size))

    def __call__(self, n: int) -> bytes:
        try:
            data = self.f.read(n)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
            raise _refuse(self.path, f"member {self.info.filename!a} is damaged ({e.__class__.__name__}: "
                                     f"{str(e)[:80]})") from None
        self.got += len(data)
        self.total[0] += len(data)
        name = ascii(self.info.filename)
        if self.got > self.info.file_size:
            raise _refuse(self.path, f"member {name} holds more bytes than its header declares")
        if self.got > self.allowed:
            raise _refuse(self.path, f"member {name} expands past {self.allowed} bytes (a zip bomb?)")
        if self.total[0] > TOTAL_CAP:
            raise _refuse(self.path, f"its members expand past {TOTAL_CAP >> 20} MiB in all")
        return data


def extract(path: Path, dest: Path) -> tuple[dict, list[str]]:
    """The checked members of the zip at `path` into `dest` (the worker's output layout): (its job, what was
    skipped and why). Refused when the archive or any member is not what a notebook writes."""
    from .worker.job import JobError
    from .worker.job import parse as parse_job

    try:
        if not path.is_file():
            raise _refuse(path, "not a file")
        if path.stat().st_size > ZIP_CAP:
            raise _refuse(path, f"{path.stat().st_size} bytes, over the {ZIP_CAP >> 20} MiB a results zip may be")
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise _refuse(path, f"not a zip archive ({e.__class__.__name__})") from None
    skipped: list[str] = []
    total = [0]
    job = None
    with zf:
        for info in check_members(zf, path):
            with zf.open(info) as f:
                read = _Reader(f, info, total, path)
                if info.filename == "job.json":
                    job = _job(read(JOB_CAP + 1), path, parse_job, JobError)
                    (dest / "job.json").write_text(json.dumps(job, indent=1, ensure_ascii=False), encoding="utf-8")
                    finally_read(read)
                    continue
                why = inbound.take_object(info.filename, read, dest)
                if why:
                    skipped.append(why)
                finally_read(read)
    assert job is not None  # check_members refuses a zip without one
    return job, skipped


def finally_read(read: _Reader) -> None:
    """A member read to its end: the CRC is checked there, and bytes past the declared size are refused."""
    while read(1 << 16):
        pass


def _job(data: bytes, path: Path, parse_job, JobError) -> dict:
    if len(data) > JOB_CAP:
        raise _refuse(path, f"job.json is over {JOB_CAP >> 20} MiB")
    try:
        job = json.loads(data)
        parse_job(job)
    except (ValueError, RecursionError) as e:
        raise _refuse(path, f"job.json is not a job the worker runs ({str(e)[:120]})") from None
    except JobError as e:
        raise _refuse(path, f"job.json: {e}") from None
    return job


def _core(job: dict) -> str:
    """What makes two jobs the same work, wherever their files were (runner/jobs.py fingerprint, paths aside)."""
    job = json.loads(json.dumps(job))
    for k in ("run_id", "deadline", "cache_dir"):
        job.pop(k, None)
    job["model"].pop("source", None)
    for t in job["tasks"]:
        (t.get("dataset") or {}).pop("path", None)
    return json.dumps(job, sort_keys=True)


def plan_of(job: dict, plan_path: Path | None, catalog, home: Path) -> tuple[str, str, float | None]:
    """(plan name, plan path as given, the planner's estimate of its seconds on the Colab offer) the job is of: the
    plan given (its job must be this one), else the name in the run id `budget colab` gave it (no estimate)."""
    from planner.plans import load_plan, plan_file

    from . import colab, jobs

    if plan_path is None:
        m = _RUN_ID.fullmatch(job["run_id"])
        if m is None:
            raise InputError(f"run id {job['run_id']!r} does not say its plan", "pass --plan PLAN (its YAML)")
        return m.group("plan"), "", None
    plan = load_plan(plan_path)
    mine = jobs.build(plan, plan_file(plan_path), catalog, home, quantization=job["quantization"],
                      limit=job.get("limit"), batch_size=job.get("batch_size"), device=job.get("device", "auto"),
                      run_id=job["run_id"], engine=job.get("engine"))
    if _core(mine) != _core(job):
        a, b = json.loads(_core(mine)), json.loads(_core(job))
        differs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise InputError(f"the zip's job is not plan {plan.name}'s (differs in: {', '.join(differs) or 'its form'})",
                         "pass the plan the notebook was made from (--plan PLAN), or leave --plan out")
    try:  # what `budget run` records beside a run: the estimate it was started on (calibrate --show compares)
        estimate = colab.choose(plan, catalog, job["quantization"]).time.total_s
    except InputError:
        estimate = None
    return plan.name, str(plan_path), estimate


# --------------------------------------------------------------------------- the run


def run(path: Path, plan_path: Path | None, home: Path, catalog, clock: Clock = SYSTEM) -> Imported:
    """Import the results zip at `path` into $BUDGET_HOME `home` (see the module's docstring)."""
    from . import home as homes

    path = Path(path)
    offer = next((o for o in catalog.offers if o.provider == PROVIDER), None)
    if offer is None:
        raise InputError(f"the catalog has no {PROVIDER} offer to record the run on",
                         f"restore offers/{PROVIDER}.csv (see `budget prices list --provider {PROVIDER}`)")
    runs = Path(home).absolute() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".import-", dir=runs))  # not a run directory: no request.json, no journal
    try:
        out = stage / "out"
        (out / "results").mkdir(parents=True)
        job, skipped = extract(path, out)
        skipped += _strays(out, job)
        digest = file_sha256(path)
        plan, plan_arg, estimate = plan_of(job, plan_path, catalog, home)
        rid = job["run_id"]
        run_dir = homes.directory(Path(home).absolute(), rid)
        led = homes.ledger(home, clock)
        try:
            before = led.run(rid)
            if before is not None and before["provider"] != PROVIDER:
                raise InputError(f"run {rid} is in the ledger already, a run on {before['provider']}: the zip's "
                                 "run id is another run's", HINT)
            if before is not None and _recorded(led, rid) == digest:
                return Imported(rid, before["plan"], run_dir, before["state"], before["samples_done"],
                                before["samples_total"], digest, again=True, skipped=skipped)
            if before is None and ((run_dir / "money.jsonl").exists() or (run_dir / "request.json").exists()):
                raise InputError(f"{run_dir} holds a run the ledger does not know", "`budget ledger check` shows it")
            run_dir.mkdir(exist_ok=True)
            if (run_dir / "out").exists():  # a newer zip of this run (or an import cut short): its files replace
                os.replace(run_dir / "out", stage / "replaced")
            os.replace(out, run_dir / "out")
            done = _record(led, run_dir, job, (plan, plan_arg, estimate), offer, clock)
            led.event(rid, "imported", f"sha256:{digest} from {path.name[:120]}" +
                      (f"; {len(skipped)} thing(s) not taken" if skipped else ""))
            return Imported(rid, plan, run_dir, *done, digest, replaced=before is not None, skipped=skipped)
        finally:
            led.close()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _recorded(led, run_id: str) -> str | None:
    """The hash of the zip the run was last imported from."""
    got = [e["detail"] for e in led.events(run_id) if e["kind"] == "imported"]
    return got[-1].split(" ", 1)[0].removeprefix("sha256:") if got else None


def _strays(out: Path, job: dict) -> list[str]:
    """Result files of no task of the job, and documents of another run, are not kept."""
    tasks = {t["name"] for t in job["tasks"]}
    gone = []
    for f in sorted((out / "results").glob("*.jsonl")):
        if f.stem not in tasks:
            f.unlink()
            gone.append(f"results/{f.name}: no task of the job has that name")
    for name, doc in (("status.json", inbound.status(out)), ("summary.json", inbound.summary(out))):
        if (out / name).exists() and doc.run_id is not None and doc.run_id != job["run_id"]:
            (out / name).unlink()
            gone.append(f"{name}: of another run ({doc.run_id[:60]})")
    return gone


def _elapsed(out: Path) -> float:
    """How long the worker says it ran (summary.json), believed within [0, MAX_ELAPSED_S]: it bills nothing, it
    only spans the run's 0 CNY spend row."""
    try:
        with open(out / "summary.json", "rb") as f:
            x = json.loads(f.read(inbound.DOC_CAP)).get("elapsed_s")
    except (OSError, ValueError, AttributeError, RecursionError):
        return 0.0
    ok = isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= MAX_ELAPSED_S
    return float(x) if ok else 0.0


def _record(led, run_dir: Path, job: dict, of: tuple, offer, clock: Clock) -> tuple[str, int, int]:
    """The run in the ledger, from whatever part of it an earlier import recorded: (state, samples done, planned).
    `of`: (plan name, plan path, the planner's estimate in seconds or None)."""
    from .money import results
    from .money.guard import Policy
    from .money.ledger import LIVE
    from .worker.tasks import most_lines

    rid, out, now = job["run_id"], run_dir / "out", clock.now()
    plan, plan_arg, estimate = of
    start = now - _elapsed(out)
    if led.run(rid) is None:
        led.ensure_pool(POOL, Decimal(0), now, "free runs recorded by `budget import`")
        led.create_run(id=rid, pool=POOL, plan=plan, plan_path=plan_arg, provider=PROVIDER,
                       offer=f"{offer.provider}:{offer.instance_type}", quantization=job["quantization"], spot=0,
                       cap_cny=Decimal(0), estimate_cny=Decimal(0), estimate_s=estimate, dir=str(run_dir),
                       created_at=start)
    if not led.instances(run_id=rid):
        d, iid = led.admit(rid, offer=offer, price_cny_h=Decimal(0), price_original_h=Decimal(0), spot=False,
                           provider=PROVIDER, now=start, policy=Policy())
        if iid is None:
            raise InputError(f"the ledger refused to admit run {rid} at 0 CNY ({d.reason})",
                             f"see `budget pool show {POOL}`")
        led.set_instance(iid, provider_id=f"notebook:{rid}", state="running", launched_at=start)
    for inst in led.instances(run_id=rid):
        if inst.state in LIVE:
            led.settle(inst.id, max(now, inst.started_at), "terminated")
    results.record_tasks(led, rid, out, job)  # recomputed from the result lines held, as a finished run's are
    said = {t["task"]: json.loads(t["summary"]) for t in results.tasks(led, rid)}
    done = sum(int(t.get("done") or 0) for t in said.values())
    planned = sum(0 if said.get(t["name"], {}).get("skipped") else
                  max(most_lines(t, job.get("limit")) or 0, int(said.get(t["name"], {}).get("done") or 0))
                  for t in job["tasks"])
    summary, status = inbound.summary(out), inbound.status(out)
    if summary.complete:
        state, reason = "done", ""
    elif summary.error or status.error:
        state, reason = "failed", f"the notebook's worker failed: {(summary.error or status.error)[:200]}"
    else:
        state, reason = "stopped", "the notebook's worker did not finish: rerun its run cell, then import the new zip"
    led.update_run(rid, state=state, phase=state, reason=reason, finished_at=now, samples_done=done,
                   samples_total=max(done, planned))
    return state, done, max(done, planned)

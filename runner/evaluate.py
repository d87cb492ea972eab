"""`budget eval`: run the worker on this machine — no provider, no ledger. The output directory is
the worker's own (job.json, status.json, results/, summary.json, worker.log); rerunning the same
command resumes in it. Ctrl-C asks the worker to stop cleanly (SIGTERM), so finished samples stay; if
`budget eval` is killed outright its worker gets SIGTERM too, and a directory still held by a worker is
refused (one writer per output directory)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from planner.errors import GpuBudgetError, InputError

from . import jobs
from .clock import SYSTEM, Clock
from .worker import files
from .worker.run import EXIT_DONE, EXIT_STOPPED
from .worker.server import die_with_parent


class EvalFailed(GpuBudgetError):
    exit_code = 1


@dataclass
class Outcome:
    out: Path
    exit_code: int
    status: dict
    summary: dict


def prepare(out: Path, job: dict, fresh: bool) -> None:
    """Write job.json into `out`. A directory holding another job's results is refused (or wiped with
    fresh=True) so results of different settings never mix; the same job resumes."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a directory", "pass a directory for the results (--out DIR)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create the directory ({e.strerror})",
                         "pass a directory you can write (--out DIR)") from None
    holder = files.locked(out)
    if holder:  # e.g. the worker of a `budget eval` killed a moment ago, still finishing its batch
        raise InputError(f"{holder}: its results would mix with this run's",
                         "wait for it to finish (or stop it), or pass another --out")
    existing = out / "job.json"
    if existing.exists() and not fresh:
        try:
            old = json.loads(existing.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if jobs.fingerprint(old) != jobs.fingerprint(job):
            changed = sorted(k for k in set(old) | set(job)
                             if k not in ("run_id", "deadline", "replicas") and old.get(k) != job.get(k))
            raise InputError(f"{out} holds results of a different job (differs in: {', '.join(changed) or 'schema'})",
                             "pass another --out, or --fresh to discard those results")
        job = dict(job, run_id=old.get("run_id", job["run_id"]))
    if fresh:
        for name in ("results", "shards", "status.json", "summary.json", "worker.log", "STOP"):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    (out / "job.json").write_text(json.dumps(job, indent=1, ensure_ascii=False), encoding="utf-8")


def worker_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "runner.worker", str(out / "job.json"), str(out)]


def run(out: Path, on_status: Callable[[dict], None], poll_s: float = 0.5, clock: Clock = SYSTEM) -> Outcome:
    """Run the worker to its end, calling `on_status` with each new status.json."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    root = Path(__file__).resolve().parent.parent  # the worker runs from the package, as on an instance
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    with open(out / "worker.stderr.log", "ab") as errlog:
        proc = subprocess.Popen(worker_command(out), stdout=errlog, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=die_with_parent)
        last = None
        try:
            while proc.poll() is None:
                last = _emit(out, last, on_status)
                clock.sleep(poll_s)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)  # the worker finishes its files and exits 3
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _emit(out, last, on_status)
    status = read_json(out / "status.json")
    return Outcome(out=out, exit_code=proc.returncode, status=status, summary=read_json(out / "summary.json"))


def read_json(path: Path) -> dict:
    """A JSON object the worker wrote, or {} when it is missing, half-written or not an object at all."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def last_line(path: Path, width: int = 200) -> str:
    """The last line of a log ("" when there is none), cut to `width` characters."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:width] if lines else ""


def _emit(out: Path, last, on_status):
    status = read_json(out / "status.json")
    if status and status.get("updated_at") != last:
        on_status(status)
        return status.get("updated_at")
    return last


def check(outcome: Outcome) -> None:
    """Turn a worker that did not finish into one clear error line."""
    code, out = outcome.exit_code, outcome.out
    if code == EXIT_DONE:
        return
    if code == EXIT_STOPPED:
        why = outcome.status.get("stopped") or "stop"
        raise EvalFailed(f"the evaluation stopped early ({why}); finished samples are kept in {out}",
                         "rerun the same command to finish the rest")
    error = outcome.status.get("error") or f"the worker exited with code {code}"
    tail = ""
    if not outcome.status.get("error"):
        last = last_line(out / "worker.stderr.log")
        tail = f" (last output: {last})" if last else ""
    raise EvalFailed(f"evaluation failed: {error}{tail}", f"details in {out}/worker.log and {out}/worker.stderr.log")

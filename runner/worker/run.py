"""The worker's entry point: job.json in; status.json, results/<task>.jsonl, summary.json, worker.log out.

Exit codes: 0 the plan is done; 3 it stopped early on purpose (deadline, stop file, SIGTERM/SIGINT) with
everything finished so far flushed; 2 the job is malformed; 4 another worker holds the output directory
(files.lock_out); 1 anything else failed (the reason is in
status.json and worker.log). Restarted on the same output directory, it skips every sample already in
results/ and finishes the rest."""

from __future__ import annotations

import logging
import signal
import sys
import time
import traceback
from pathlib import Path

from . import files, summary, verification
from . import job as jobmod
from .model import LoadError
from .phases import Phases, Stopped
from .sample import DatasetError
from .serving import cannot_run
from .status import Status, now
from .work import Work

EXIT_DONE, EXIT_FAILED, EXIT_BAD_JOB, EXIT_STOPPED, EXIT_BUSY = 0, 1, 2, 3, 4
STOP_FILE = "STOP"

log = logging.getLogger("gpubudget.worker")


class Worker:
    """One run of the worker over `out`. `serving`: arguments for a server engine's client that only a caller in
    the same process can give (`budget compare` runs the loop itself with its meter); `error` is what failed."""

    def __init__(self, job_path: Path, out: Path, serving: dict | None = None):
        self.job_path = Path(job_path)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results").mkdir(exist_ok=True)
        self.job = None
        self.work: Work | None = None
        self.stop_reason: str | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.status = Status(self.out / "status.json")
        self.phases = Phases(self.status, self.should_stop, self.out, serving)

    def should_stop(self) -> bool:
        if self.stop_reason:
            return True
        if (self.out / STOP_FILE).exists():
            self.stop_reason = "stop_file"
        elif self.job and self.job.deadline and now() >= self.job.deadline:
            self.stop_reason = "deadline"
        return self.stop_reason is not None

    def _signal(self, signum, frame) -> None:
        self.stop_reason = self.stop_reason or signal.Signals(signum).name.lower()

    def main(self) -> int:
        try:
            with files.holding(self.out, self._signal):  # the lock is held while this runs; any death releases it
                return self._main()
        except files.Busy as e:
            print(f"worker: {e}; not starting a second one", file=sys.stderr)
            return EXIT_BUSY

    def _main(self) -> int:
        try:
            self.job = jobmod.load(self.job_path)
        except jobmod.JobError as e:
            return self._fail(f"bad job: {e}", EXIT_BAD_JOB)
        self.status.update(run_id=self.job.run_id, quantization=self.job.quantization, phase="preparing")
        self.status.heartbeat(self.job.heartbeat_s)
        log.info("attempt %d of run %s: %s as %s", self.status.attempt, self.job.run_id, self.job.model.source,
                 self.job.quantization)
        try:
            code = self._run()
        except (LoadError, DatasetError) as e:
            self.error = e
            return self._fail(str(e), EXIT_FAILED)
        except Exception as e:  # noqa: BLE001 - the worker's last word goes to status.json
            self.error = e
            log.error("%s", traceback.format_exc())
            return self._fail(f"{type(e).__name__}: {e}", EXIT_FAILED)
        return code

    def _fail(self, message: str, code: int) -> int:
        log.error("failed: %s", message)
        self.status.update(phase="failed", error=message)
        self._write_summary(error=message)
        print(f"worker: {message}", file=sys.stderr)
        return code

    def _run(self) -> int:
        job = self.job
        self.work = work = Work(job, self.out, self.job_path.parent)
        for kind, why in cannot_run(job.engine.kind).items():  # what this engine cannot run is skipped, with why
            work.skip([t for t in job.tasks if t.kind == kind], why)
        work.main = [t for t in work.main if t.name not in work.skipped]
        work.verify = [t for t in work.verify if t.name not in work.skipped]
        self.status.update(tasks={t.name: work.progress(t.name) for t in job.tasks})
        try:
            if work.pending(work.main):
                self.phases.run(job, work, job.quantization, work.main)
            if work.verify:
                verification.run(job, work, self.phases, self.status)
        except Stopped as e:
            self.stop_reason = self.stop_reason or e.reason
        self.status.skip(work.skipped)
        if self.should_stop():
            log.info("stopped: %s", self.stop_reason)
            self._write_summary()
            self.status.update(phase="stopped", stopped=self.stop_reason, task=None)
            return EXIT_STOPPED
        self._write_summary()
        self.status.update(phase="done", task=None, eta_s=0.0)
        log.info("done in %.1f s", time.monotonic() - self.started)
        return EXIT_DONE

    def _write_summary(self, error: str | None = None) -> None:
        summary.write(self.out, self.job, self.status, loads=self.phases.loads, batching=self.phases.batching,
                      skipped=self.work.skipped if self.work else {}, stopped=self.stop_reason, error=error,
                      elapsed_s=time.monotonic() - self.started)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print("usage: python -m worker JOB.json OUT_DIR", file=sys.stderr)
        return EXIT_BAD_JOB
    if _replicas(Path(argv[0])) > 1:  # one worker process per GPU, this one supervising them
        from .replicas import Supervisor

        return Supervisor(Path(argv[0]), Path(argv[1])).main()
    return Worker(Path(argv[0]), Path(argv[1])).main()


def _replicas(job_path: Path) -> int:
    """The job's replica count, read before anything else (a job that is not JSON is the worker's to refuse)."""
    doc = files.read_json(job_path)
    n = doc.get("replicas", 1) if isinstance(doc, dict) else 1
    return n if isinstance(n, int) and not isinstance(n, bool) else 1

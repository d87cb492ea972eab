"""One machine, many GPUs: a job with `replicas: N` runs as N worker processes, each pinned to one GPU
(CUDA_VISIBLE_DEVICES) and each running one shard of the job (worker/shards.py) in out/shards/<k>/, and this
supervisor merges their result lines into out/results/ as they finish - the one results folder the controller
and `budget eval` read, appended in finishing order (the controller pulls it by offset while the run goes), a
sample's line once, whoever ran it. The memory sweep and the fp16 check are shard 0's: they run once.

A replica that dies (killed, its GPU lost) gives its slot up: its shard goes back to the queue and the next
replica to come free resumes it in the same shard directory (the worker skips what is done there) - nothing
lost, nothing run twice. A replica that fails on its own (a bad job, a model that does not load) fails the run:
the others would fail the same way. Stopped (SIGTERM, the STOP file, the job's deadline), every replica is asked
to stop and its finished lines are merged before this exits 3. Restarted on the same directory it resumes every
shard; restarted with another replica count, the finished lines already merged are handed to the new shards.

Exit codes are the worker's (worker/run.py). Files written: status.json (the replicas' progress summed, and
`replicas`: one entry per slot), summary.json (recomputed from the merged lines), worker.log."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import files, shards
from . import job as jobmod
from .status import now

log = logging.getLogger("gpubudget.worker")
EXIT_DONE, EXIT_FAILED, EXIT_BAD_JOB, EXIT_STOPPED, EXIT_BUSY = 0, 1, 2, 3, 4
MAX_STARTS = 4  # a shard started this often in one run (each time on a replica that died under it) fails the run
HELD_WAIT_S = 300.0  # a shard directory another worker holds (an earlier run's, still stopping) is waited for this long


def die_with_parent() -> None:
    from .server import die_with_parent as pdeath

    pdeath()


class Slot:
    """One GPU and the replica process on it (None between shards); `lost` once a replica died on it."""

    def __init__(self, gpu: str):
        self.gpu, self.proc, self.shard, self.lost, self.runs = gpu, None, None, False, 0
        self.last: int | None = None  # the shard it ran last


class Merged:
    """out/results/<task>.jsonl as the union of the shards' result files: every new, complete, well-formed line
    appended once per sample id, in the order it is found (a torn last line waits for the next pass)."""

    def __init__(self, out: Path, tasks):
        self.files = {t.name: files.ResultFile(out / "results" / f"{t.name}.jsonl") for t in tasks}
        self.seen = {name: rf.done_ids for name, rf in self.files.items()}
        self.offsets: dict[tuple[str, str], int] = {}

    def lines(self, task: str) -> list[dict]:
        return self.files[task].lines

    def take(self, dirs) -> None:
        for d in dirs:
            for name, rf in self.files.items():
                path = d / "results" / f"{name}.jsonl"
                key = (str(d), name)
                try:
                    with open(path, "rb") as f:
                        f.seek(self.offsets.get(key, 0))
                        data = f.read()
                except OSError:
                    continue
                end = data.rfind(b"\n") + 1
                new = []
                for raw in data[:end].split(b"\n")[:-1]:
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(line, dict) and isinstance(line.get("id"), str) and line["id"] not in self.seen[name]:
                        self.seen[name].add(line["id"])
                        new.append(line)
                rf.append(new)
                self.offsets[key] = self.offsets.get(key, 0) + end


class Supervisor:
    def __init__(self, job_path: Path, out: Path, *, sleep: Callable[[float], None] = time.sleep,
                 poll_s: float = 0.5, gpus: list[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 worker: tuple[str, ...] = (sys.executable, "-m", "runner.worker")):
        """`worker`: the command of one replica, given its shard's job.json and directory."""
        self.job_path, self.out, self.worker = Path(job_path), Path(out), list(worker)
        self.sleep, self.poll_s, self.clock = sleep, poll_s, clock
        self.held_since: dict[int, float] = {}  # shard -> when it was first found held by another worker
        self.gpus = gpus
        self.stop_reason: str | None = None
        self.error: str | None = None
        self.started = now().isoformat()

    # ------------------------------------------------------------------ entry

    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            with files.holding(self.out, self._signal):
                return self._main()
        except files.Busy as e:
            print(f"worker: {e}; not starting a second one", file=sys.stderr)
            return EXIT_BUSY

    def _signal(self, signum, frame) -> None:
        self.stop_reason = self.stop_reason or signal.Signals(signum).name.lower()

    def _main(self) -> int:
        try:
            doc = json.loads(self.job_path.read_text(encoding="utf-8"))
            self.job = jobmod.parse(doc)
        except (OSError, ValueError, jobmod.JobError) as e:
            return self._finish("failed", f"bad job: {e}", EXIT_BAD_JOB)
        n = self.job.replicas
        gpus = self.gpus or _visible(n)
        self.slots = [Slot(g) for g in gpus[:n]]
        self.merged = Merged(self.out, self.job.tasks)
        self.shard_dirs = self._shards(doc, n)
        self.starts = {k: 0 for k in range(n)}
        todo = [k for k in range(n) if _phase(self.shard_dirs[k]) != "done"]
        log.info("%d replicas on GPUs %s; shards to run: %s", n, ",".join(s.gpu for s in self.slots), todo)
        self._write_status("running")
        while (todo and not self.stop_reason or self._running()) and not self.error:  # stopped: no more starts
            if self._should_stop():
                self._stop_all()
            for k in list(todo):  # in queue order, each to the next free slot; a held shard waits its turn
                if self.stop_reason or (slot := self._free()) is None:
                    break
                if not self._held(k):
                    todo.remove(k)
                    self._start(slot, k)
            self.sleep(self.poll_s)
            for slot in self.slots:
                code = slot.proc.poll() if slot.proc else None
                if slot.proc is None or code is None:
                    continue
                k, slot.proc, slot.shard, slot.last = slot.shard, None, None, slot.shard
                self._ended(slot, k, code, todo)
            self.merged.take(self.shard_dirs.values())
            self._write_status("running")
            if todo and not self._running() and self._free() is None and not self.stop_reason:
                self.error = f"every replica died; shards {todo} are unfinished (rerun to resume them)"
        self._stop_all()
        self._wait_all()
        self.merged.take(self.shard_dirs.values())
        if self.error:
            return self._finish("failed", self.error, EXIT_FAILED)
        if self.stop_reason or any(_phase(self.shard_dirs[k]) != "done" for k in self.shard_dirs):
            self.stop_reason = self.stop_reason or "stopped"
            return self._finish("stopped", None, EXIT_STOPPED)
        return self._finish("done", None, EXIT_DONE)

    # ------------------------------------------------------------------ shards and replicas

    def _shards(self, doc: dict, n: int) -> dict[int, Path]:
        """out/shards/<k>/ with each shard's job; shards of another count are merged, then replaced by new ones
        that start from every line merged so far (a finished sample is never run again)."""
        root = self.out / "shards"
        count = root / "count"
        if root.exists() and count.exists() and count.read_text().strip() != str(n):
            self.merged.take(sorted(root.glob("[0-9]*")))
            shutil.rmtree(root)
        root.mkdir(exist_ok=True)
        count.write_text(str(n))
        dirs = {}
        for k, sub in enumerate(shards.jobs(doc, n)):
            d = root / str(k)
            if not d.exists():
                (d / "results").mkdir(parents=True)
                for name, rf in self.merged.files.items():  # the lines merged before: the shard skips its own among them
                    if rf.lines:
                        files.ResultFile(d / "results" / f"{name}.jsonl").append(rf.lines)
            sub["cache_dir"] = doc.get("cache_dir") or str((self.out / "cache").resolve())  # one download, one engine install
            (d / "job.json").write_text(json.dumps(sub, indent=1, ensure_ascii=False), encoding="utf-8")
            dirs[k] = d
        return dirs

    def _held(self, k: int) -> bool:
        """Whether another worker holds shard k's directory - one of an earlier run, still stopping (its supervisor
        was killed and it flushes its batch): its replica would exit busy at once, so it is not started yet. Held past
        HELD_WAIT_S, the run fails naming the holder."""
        holder = files.locked(self.shard_dirs[k])
        if holder is None:
            self.held_since.pop(k, None)
            return False
        if k not in self.held_since:
            self.held_since[k] = self.clock()
            log.info("shard %d waits: %s", k, holder)
        since = self.held_since[k]
        if self.clock() - since >= HELD_WAIT_S and not self.error:
            self.error = (f"shard {k} was held for {self.clock() - since:.0f} s: {holder}; stop that worker (one of an "
                          f"earlier run?), then rerun to resume")
        return True

    def _free(self) -> Slot | None:
        return next((s for s in self.slots if s.proc is None and not s.lost), None)

    def _running(self) -> bool:
        return any(s.proc is not None for s in self.slots)

    def _start(self, slot: Slot, k: int) -> None:
        d = self.shard_dirs[k]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=slot.gpu)
        if "OMP_NUM_THREADS" not in os.environ:  # the replicas share the CPU cores (torch would give each all of them)
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self.slots)))
        self.starts[k] += 1
        slot.runs += 1
        with open(d / "worker.stderr.log", "ab") as err:
            slot.proc = subprocess.Popen([*self.worker, str(d / "job.json"), str(d)],
                                         stdout=err, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=die_with_parent)  # noqa: PLW1509 - the supervisor has no threads
        slot.shard = k
        log.info("shard %d started on GPU %s (pid %d)", k, slot.gpu, slot.proc.pid)

    def _ended(self, slot: Slot, k: int, code: int, todo: list[int]) -> None:
        if code == EXIT_DONE:
            log.info("shard %d done on GPU %s", k, slot.gpu)
        elif code == EXIT_STOPPED:
            self.stop_reason = self.stop_reason or (_read(self.shard_dirs[k] / "status.json").get("stopped") or "stopped")
        elif code == EXIT_BUSY:  # its directory was taken between _held and the start: waited for like any held one
            self.starts[k] -= 1
            todo.append(k)
        elif code < 0:  # killed (a lost GPU, the OOM killer, kill -9): another replica resumes it
            slot.lost = True
            log.warning("the replica on GPU %s ended (signal %d) during shard %d; it goes back to the queue", slot.gpu,
                        -code, k)
            if self.starts[k] >= MAX_STARTS:
                self.error = f"shard {k} was started {self.starts[k]} times and never finished"
            else:
                todo.insert(0, k)
        else:
            said = _read(self.shard_dirs[k] / "status.json").get("error")
            self.error = f"replica on GPU {slot.gpu} (shard {k}) failed: {said or f'exit code {code}'}"

    def _should_stop(self) -> bool:
        if not self.stop_reason and (self.out / "STOP").exists():
            self.stop_reason = "stop_file"
        return self.stop_reason is not None

    def _stop_all(self) -> None:
        for s in self.slots:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)  # each flushes its batch and exits 3

    def _wait_all(self) -> None:
        for s in self.slots:
            if s.proc is not None:
                try:
                    s.proc.wait(timeout=300)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()
                s.proc = None

    # ------------------------------------------------------------------ merge and report

    def _status(self, phase: str) -> dict:
        per = {k: _read(d / "status.json") for k, d in self.shard_dirs.items()}
        tasks: dict[str, dict] = {}
        for st in per.values():
            for name, p in (st.get("tasks") or {}).items():
                agg = tasks.setdefault(name, {})
                for key, v in p.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        agg[key] = agg.get(key, 0) + v
                    elif key == "skipped":
                        agg[key] = v
        for t in self.job.tasks:  # the merged lines are the truth for done/ok; the shards' totals add up
            from .tasks.base import counts

            tasks.setdefault(t.name, {"total": 0}).update(counts(self.merged.lines(t.name)))
        slots = [{"replica": i, "gpu": s.gpu, "shard": s.shard if s.shard is not None else s.last,
                  "pid": s.proc.pid if s.proc else None, "lost": s.lost, "runs": s.runs,
                  "phase": "lost" if s.lost else per.get(s.shard, {}).get("phase") if s.shard is not None else
                  per.get(s.last, {}).get("phase") if s.last is not None else "idle"} for i, s in enumerate(self.slots)]
        rates = [st.get("samples_per_s") for st in per.values() if st.get("phase") == "running"]
        etas = [st.get("eta_s") for st in per.values() if st.get("phase") == "running" and st.get("eta_s") is not None]
        return {"schema": "gpubudget.status/1", "run_id": self.job.run_id, "phase": phase, "attempt": 1,
                "pid": os.getpid(), "host": os.uname().nodename, "started_at": self.started,
                "updated_at": now().isoformat(), "task": None, "tasks": tasks,
                "tokens": {k: sum((st.get("tokens") or {}).get(k, 0) for st in per.values()) for k in ("prefill", "decode")},
                "peak_memory_bytes": max([st.get("peak_memory_bytes") or 0 for st in per.values()] or [0]),
                "memory": [], "batch_size": None, "samples_per_s": round(sum(r for r in rates if r), 3) if rates else None,
                "eta_s": max(etas) if etas else None, "stopped": self.stop_reason, "error": self.error,
                "replicas": slots}

    def _write_status(self, phase: str) -> None:
        files.write_json(self.out / "status.json", self._status(phase))

    def _finish(self, phase: str, error: str | None, code: int) -> int:
        self.error = error
        if hasattr(self, "merged"):
            self._write_summary(error)
            self._write_status(phase)
        else:
            files.write_json(self.out / "status.json", {"schema": "gpubudget.status/1", "phase": phase, "error": error})
        (log.error if error else log.info)("replicas %s%s", phase, f": {error}" if error else "")
        return code

    def _write_summary(self, error: str | None) -> None:
        """summary.json over the merged lines (sorted by id: the same whoever ran what), the shards' loads."""
        from .summary import SCHEMA, _environment
        from .tasks import KINDS

        per = {k: _read(d / "summary.json") for k, d in self.shard_dirs.items()}
        status = {k: _read(d / "status.json") for k, d in self.shard_dirs.items()}
        tasks = {}
        for t in self.job.tasks:
            lines = sorted(self.merged.lines(t.name), key=lambda x: x["id"])
            totals = [(st.get("tasks") or {}).get(t.name, {}).get("total") for st in status.values()]
            entry = {"kind": t.kind, "total": sum(x for x in totals if isinstance(x, int)) if any(
                isinstance(x, int) for x in totals) else None, **KINDS[t.kind].summarize(t, lines)}
            skipped = [s["tasks"][t.name]["skipped"] for s in per.values()
                       if t.name in (s.get("tasks") or {}) and "skipped" in s["tasks"][t.name]]
            if skipped and not lines:
                entry["skipped"] = skipped[0]
            tasks[t.name] = entry
        complete = all(v["done"] >= (v["total"] or 0) or "skipped" in v for v in tasks.values())
        files.write_json(self.out / "summary.json", {
            "schema": SCHEMA, "run_id": self.job.run_id, "model": self.job.model.name,
            "quantization": self.job.quantization, "attempt": 1, "complete": complete and not error,
            "stopped": self.stop_reason, "error": error,
            "elapsed_s": max([s.get("elapsed_s") or 0 for s in per.values()] or [0]),
            "batch_size": {"requested": self.job.batch_size, "used": max(used) if (used := [
                b["used"] for s in per.values() if isinstance(b := s.get("batch_size"), dict) and
                isinstance(b.get("used"), int)]) else None, "note": "; ".join(dict.fromkeys(
                    b["note"] for s in per.values() if isinstance(b := s.get("batch_size"), dict) and b.get("note")))},
            "loads": [dict(x, shard=k) for k, s in per.items() for x in (s.get("loads") or [])], "tasks": tasks,
            "peak_memory_bytes": max([v.get("peak_memory_bytes") or 0 for v in tasks.values()] or [0]),
            "environment": _environment(), "finished_at": now().isoformat(), "replica_count": len(self.slots)})


def _visible(n: int) -> list[str]:
    """The GPUs to pin replicas to: this process's CUDA_VISIBLE_DEVICES when set (its first n), else 0..n-1."""
    said = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return said[:n] if len(said) >= n else [str(i) for i in range(n)]


def _read(path: Path) -> dict:
    doc = files.read_json(path)
    return doc if isinstance(doc, dict) else {}


def _phase(d: Path) -> str | None:
    return _read(d / "status.json").get("phase")

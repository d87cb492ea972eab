"""The Ray task of a ray run: one shard of the job on one node (one GPU, or one CPU on a cluster without GPUs).
It runs there, so it imports only the standard library, ray and the worker package (runner/ ships with the run's
runtime_env as a py_module).

In a temp directory of its own it seeds results/<task>.jsonl with the lines the lease actor holds for its shard
(so a shard Ray retried on another node resumes after them: the worker skips what is done), writes the shard's
job.json and runs `python -m runner.worker job.json out` in a subprocess (SIGTERMed by the kernel if this
process dies: worker/server.py die_with_parent). About every `poll_s` it pushes the new complete result lines
to the actor and asks whether its lease still holds; when the lease lapsed or a stop was asked it SIGTERMs the
worker (which flushes its batch and exits 3), SIGKILLs it after `grace_s`, pushes the last lines and returns a
small dict (shard, node, exit code, times, what stopped it). If the actor cannot be reached past the lease it
last heard of, the task stops its worker on its own: the lease bounds it either way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXIT_DONE, EXIT_STOPPED = 0, 3  # the worker's (worker/run.py)
READ_CAP = 8 << 20              # new lines read from one result file per poll
RETURN_CAP = 64 << 20           # lines returned with the result when the actor could not take them
STATUS_CAP = 1 << 20            # the worker's status.json returned (inbound.DOC_CAP)
LOG_TAIL = 2000                 # of the worker's logs, said with an exit code that failed the run
WORKER_LOG = 64 << 10           # of worker.log returned for the run's own (budget logs RUN)


def run_shard(spec: dict, actor) -> dict:
    """Run one shard (`spec`: run_id, key, shard, job, lease_until, poll_s, grace_s) against the lease actor."""
    return Shard(spec, actor).run()


class Shard:
    def __init__(self, spec: dict, actor):
        import ray

        self.ray, self.actor = ray, actor
        self.key, self.shard, self.run_id = spec["key"], int(spec["shard"]), spec["run_id"]
        self.job, self.poll_s, self.grace_s = spec["job"], float(spec["poll_s"]), float(spec["grace_s"])
        self.lease_until = float(spec["lease_until"])
        self.tasks = [t["name"] for t in self.job.get("tasks") or []]
        self.why = ""  # what stopped it

    def call(self, ref, timeout: float | None = None):
        """The actor's answer, or None when it cannot be reached in time (the lease then decides alone)."""
        try:
            return self.ray.get(ref, timeout=timeout or max(2.0, 2 * self.poll_s))
        except Exception:  # noqa: BLE001 - an actor gone, a timeout, a lost node: all mean "no answer"
            return None

    def verdict(self, v: dict | None) -> None:
        if v is None:
            if time.time() > self.lease_until and not self.why:
                self.why = "its lease lapsed and the lease actor cannot be reached"
            return
        if v.get("lease_until", 0) > 0:
            self.lease_until = float(v["lease_until"])
        if v.get("stop") and not self.why:
            self.why = str(v.get("why") or "stop asked")

    def run(self) -> dict:
        started = time.time()
        node = self.ray.get_runtime_context().get_node_id()
        result = {"key": self.key, "shard": self.shard, "node": node, "pid": os.getpid(), "exit": None,
                  "started_at": started, "ended_at": None, "stopped": "", "status": "", "lines": {}, "log": "",
                  "worker_log": "", "seeded": 0}
        tmp = Path(tempfile.mkdtemp(prefix=f"gpubudget-{self.run_id}-s{self.shard}-"))
        try:
            self.verdict(self.call(self.actor.register.remote(self.key, self.shard, node, os.getpid())))
            if self.why:  # stopped before it began (a stop asked, a lease that lapsed while it was queued)
                result.update(stopped=self.why, ended_at=time.time())
                self.call(self.actor.ended.remote(self.key, self.shard, {}))
                return result
            out = tmp / "out"
            offsets, result["seeded"] = self._seed(out)
            (tmp / "job.json").write_text(json.dumps(self._job(tmp), ensure_ascii=False), encoding="utf-8")
            code, pending = self._supervise(tmp, out, offsets)
            left = self.call(self.actor.ended.remote(self.key, self.shard, pending))
            result.update(exit=code, stopped=self.why, ended_at=time.time(), status=_read(out / "status.json", STATUS_CAP),
                          lines={} if left is not None else _capped(pending),
                          worker_log=_tail(out / "worker.log", WORKER_LOG))
            if code not in (EXIT_DONE, EXIT_STOPPED):
                result["log"] = (_tail(out / "worker.stderr.log", LOG_TAIL) + _tail(out / "worker.log", LOG_TAIL))[-LOG_TAIL:]
            return result
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _seed(self, out: Path) -> tuple[dict[str, int], int]:
        """results/<task>.jsonl with the lines the actor holds for this shard; where each file was read up to, and
        how many lines it was seeded with (a retry resumes after them)."""
        (out / "results").mkdir(parents=True)
        seed = self.call(self.actor.seed.remote(self.shard)) or {}
        offsets, seeded = {}, 0
        for task in self.tasks:
            held = [line for line in seed.get(task) or [] if isinstance(line, str)]
            data = "".join(line + "\n" for line in held).encode("utf-8")
            (out / "results" / f"{task}.jsonl").write_bytes(data)
            offsets[task], seeded = len(data), seeded + len(held)
        return offsets, seeded

    def _job(self, tmp: Path) -> dict:
        """The shard's job as this node runs it: a model the recipe builds is built here when its path is not
        on this node (a cluster that does not share the controller's disk)."""
        job = json.loads(json.dumps(self.job))
        model = job.get("model") or {}
        if model.get("recipe") and not Path(model.get("source", "")).exists():
            model["source"] = str(tmp / "models" / model["recipe"])
        return job

    def _supervise(self, tmp: Path, out: Path, offsets: dict[str, int]) -> tuple[int, dict]:
        """Run the worker to its end, pushing lines and asking the lease every poll; (its exit code, the lines
        the actor has not acknowledged)."""
        from ..worker.server import die_with_parent

        root = str(Path(__file__).resolve().parents[2])  # the folder holding the runner package
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        with open(out / "worker.stderr.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "runner.worker", str(tmp / "job.json"), str(out)], cwd=tmp,
                                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=die_with_parent)
        signalled = None
        while True:
            code = proc.poll()
            new, ends = _new_lines(out, offsets)
            v = self.call(self.actor.report.remote(self.key, self.shard, new))
            if v is not None:
                offsets.update(ends)
            self.verdict(v)
            if code is not None:
                return code, _new_lines(out, offsets)[0]
            if self.why and signalled is None:
                proc.send_signal(signal.SIGTERM)  # the worker flushes its batch and exits 3
                signalled = time.time()
            elif signalled is not None and time.time() > signalled + self.grace_s:
                proc.kill()
            time.sleep(self.poll_s)


def _new_lines(out: Path, offsets: dict[str, int]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The complete lines appended to each result file since `offsets`, and where they end."""
    new, ends = {}, {}
    for task, at in offsets.items():
        try:
            with open(out / "results" / f"{task}.jsonl", "rb") as f:
                f.seek(at)
                data = f.read(READ_CAP)
        except OSError:
            continue
        end = data.rfind(b"\n") + 1
        if end:
            new[task] = data[:end].decode("utf-8", "replace").split("\n")[:-1]
            ends[task] = at + end
    return new, ends


def _capped(lines: dict[str, list[str]]) -> dict[str, list[str]]:
    out, size = {}, 0
    for task, raws in lines.items():
        for raw in raws:
            size += len(raw)
            if size > RETURN_CAP:
                return out
            out.setdefault(task, []).append(raw)
    return out


def _tail(path: Path, cap: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - cap))
            return f.read(cap).decode("utf-8", "replace")
    except OSError:
        return ""


def _read(path: Path, cap: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(cap).decode("utf-8", "replace")
    except OSError:
        return ""

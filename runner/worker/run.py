"""The worker's main loop: job.json in; status.json, results/<task>.jsonl, summary.json, worker.log out.

Exit codes: 0 the plan is done; 3 it stopped early on purpose (deadline, stop file, SIGTERM/SIGINT) with
everything finished so far flushed; 2 the job is malformed; 4 another worker holds the output directory
(files.lock_out); 1 anything else failed (the reason is in
status.json and worker.log). Restarted on the same output directory, it skips every sample already in
results/ and finishes the rest."""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from . import datasets, files
from . import job as jobmod
from .model import LoadError

EXIT_DONE, EXIT_FAILED, EXIT_BAD_JOB, EXIT_STOPPED, EXIT_BUSY = 0, 1, 2, 3, 4
STATUS_SCHEMA = "gpubudget.status/1"
SUMMARY_SCHEMA = "gpubudget.summary/1"
STOP_FILE = "STOP"
MAX_AUTO_BATCH = 32

log = logging.getLogger("gpubudget.worker")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Stopped(Exception):
    pass


class Worker:
    def __init__(self, job_path: Path, out: Path):
        self.job_path = Path(job_path)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results").mkdir(exist_ok=True)
        self.job = None
        self._lock = threading.Lock()
        self.stop_reason: str | None = None
        self.started = time.monotonic()
        previous = files.read_json(self.out / "status.json") or {}
        self.attempt = int(previous.get("attempt", 0)) + 1
        self.status: dict = {
            "schema": STATUS_SCHEMA, "run_id": previous.get("run_id"), "phase": "starting", "attempt": self.attempt,
            "pid": os.getpid(), "host": platform.node(), "started_at": _now().isoformat(), "updated_at": None,
            "task": None, "tasks": {}, "tokens": {"prefill": 0, "decode": 0}, "peak_memory_bytes": 0,
            "memory": [], "batch_size": None, "samples_per_s": None, "eta_s": None, "stopped": None, "error": None,
        }
        self.loads: list[dict] = []
        self.skipped: dict[str, str] = {}
        self.batch_size_note = ""
        self.extra: dict = {}  # shared with the task kinds (fp16_verify reads the quantized answers)
        self._running_since: float | None = None
        self.params = 0  # the model's parameter count, as loaded (sizes the 16-bit reference)
        self._samples_done = 0

    # ------------------------------------------------------------------ status + stop

    def update(self, **fields) -> None:
        with self._lock:
            self.status.update(fields)
            self.status["updated_at"] = _now().isoformat()
            files.write_json(self.out / "status.json", self.status)

    def _heartbeat(self) -> None:
        while True:
            time.sleep(self.job.heartbeat_s if self.job else 5.0)
            if self.status["phase"] in ("done", "stopped", "failed"):
                return
            try:
                self.update()
            except OSError:  # a full disk must not kill the run from a side thread
                log.exception("heartbeat write failed")

    def should_stop(self) -> bool:
        if self.stop_reason:
            return True
        if (self.out / STOP_FILE).exists():
            self.stop_reason = "stop_file"
        elif self.job and self.job.deadline and _now() >= self.job.deadline:
            self.stop_reason = "deadline"
        return self.stop_reason is not None

    def _signal(self, signum, frame) -> None:
        self.stop_reason = self.stop_reason or signal.Signals(signum).name.lower()

    # ------------------------------------------------------------------ main

    def main(self) -> int:
        try:
            lock = files.lock_out(self.out)  # held while this runs; any death releases it
        except files.Busy as e:
            print(f"worker: {e}; not starting a second one", file=sys.stderr)
            return EXIT_BUSY
        handler = self._logging()
        previous = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._main()
        finally:
            os.close(lock)
            for sig, h in previous.items():
                signal.signal(sig, h)
            logging.getLogger("gpubudget").removeHandler(handler)
            handler.close()

    def _main(self) -> int:
        try:
            self.job = jobmod.load(self.job_path)
        except jobmod.JobError as e:
            return self._fail(f"bad job: {e}", EXIT_BAD_JOB)
        self.update(run_id=self.job.run_id, quantization=self.job.quantization, phase="preparing")
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        log.info("attempt %d of run %s: %s as %s", self.attempt, self.job.run_id, self.job.model.source,
                 self.job.quantization)
        try:
            code = self._run()
        except (LoadError, datasets.DatasetError) as e:
            return self._fail(str(e), EXIT_FAILED)
        except Exception as e:  # noqa: BLE001 - the worker's last word goes to status.json
            log.error("%s", traceback.format_exc())
            return self._fail(f"{type(e).__name__}: {e}", EXIT_FAILED)
        return code

    def _logging(self) -> logging.Handler:
        handler = logging.FileHandler(self.out / "worker.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger("gpubudget")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        return handler

    def _fail(self, message: str, code: int) -> int:
        log.error("failed: %s", message)
        self.update(phase="failed", error=message)
        self._write_summary(error=message)
        print(f"worker: {message}", file=sys.stderr)
        return code

    def _run(self) -> int:
        from .tasks import KINDS

        job = self.job
        cache = Path(job.cache_dir) if job.cache_dir else self.out / "cache"
        base_dir = self.job_path.parent
        main_tasks = [t for t in job.tasks if t.kind != "fp16_verify"]
        verify_tasks = [t for t in job.tasks if t.kind == "fp16_verify"]
        samples = {t.name: datasets.resolve(t, job, base_dir, cache) for t in main_tasks}
        for t in verify_tasks:
            samples[t.name] = samples[t.of_task][:t.samples if job.limit is None else min(t.samples, job.limit)]
        results = {t.name: files.ResultFile(self.out / "results" / f"{t.name}.jsonl") for t in job.tasks}
        for name, rf in results.items():
            if rf.damaged:
                log.warning("results/%s.jsonl: %d damaged line(s) skipped; their samples run again", name, rf.damaged)
        self.update(tasks={t.name: self._progress(results[t.name], len(samples[t.name])) for t in job.tasks})
        todo = {t.name: [s for s in samples[t.name] if s.id not in results[t.name].done_ids] for t in job.tasks}

        try:
            if any(todo[t.name] for t in main_tasks):
                self._phase(job.quantization, main_tasks, todo, results, samples, KINDS)
            if verify_tasks:
                self._verify(verify_tasks, todo, results, samples, KINDS)
        except Stopped:
            pass
        with self._lock:  # a skipped task has nothing left to do: the bar's total and the ETA leave it out
            for name, why in self.skipped.items():
                self.status["tasks"][name]["skipped"] = why
            self._eta()
        if self.should_stop():
            log.info("stopped: %s", self.stop_reason)
            self._write_summary()
            self.update(phase="stopped", stopped=self.stop_reason, task=None)
            return EXIT_STOPPED
        self._write_summary()
        self.update(phase="done", task=None, eta_s=0.0)
        log.info("done in %.1f s", time.monotonic() - self.started)
        return EXIT_DONE

    def _progress(self, rf, total: int) -> dict:
        from .tasks.base import counts

        return {**counts(rf.lines), "total": total}

    def _phase(self, quant, tasks, todo, results, samples, kinds) -> None:
        from .engine import Engine, Memory
        from .model import load, pick_device, unload
        from .tasks.base import Context

        job = self.job
        if self.should_stop():  # e.g. restarted after the deadline: do not pay for a model load
            raise Stopped()
        device = pick_device(job.device)
        memory = Memory(device)
        self.update(phase="loading", device=device)
        loaded = load(job, quant, device, memory)
        self.loads.append({"quantization": quant, "dtype": loaded.dtype, "device": device, "load_s": round(loaded.load_s, 3),
                           "memory_after_load": loaded.memory_after_load, "footprint_bytes": loaded.footprint_bytes,
                           "device_map": loaded.device_map})
        log.info("loaded %s in %.1f s (%s)", quant, loaded.load_s, loaded.memory_after_load)
        self.params = self.params or loaded.params
        engine = Engine(loaded, memory, job.generation, job.image_limits, job.seed, self.should_stop)
        ctx = Context(job=job, engine=engine, memory=memory, quantization=quant, attempt=self.attempt,
                      extra=self.extra)
        baseline = max(m["bytes"] for m in loaded.memory_after_load)
        self.update(phase="running", memory=loaded.memory_after_load)
        self._running_since = self._running_since or time.monotonic()
        try:
            for task in tasks:
                self._task(ctx, task, todo[task.name], results[task.name], len(samples[task.name]), kinds, baseline)
        finally:
            unload(loaded)

    def _batch_size(self, kind_module, first_peak: int | None, baseline: int, memory) -> int:
        if getattr(kind_module, "batch_size", None) == 1:
            return 1
        if self.job.batch_size != "auto":
            return self.job.batch_size
        if self.status["batch_size"] is not None:
            return self.status["batch_size"]
        if first_peak is None:
            return 1  # measure one sample first
        per_sample = max(first_peak - baseline, 1)
        size = max(1, min(MAX_AUTO_BATCH, int(0.8 * memory.free_bytes() / per_sample)))
        self.batch_size_note = (f"auto: one sample took {per_sample / 2**20:.0f} MiB over the loaded model; "
                                f"{memory.free_bytes() / 2**30:.1f} GiB free -> batch {size} (cap {MAX_AUTO_BATCH})")
        log.info("batch size %s", self.batch_size_note)
        self.update(batch_size=size)
        return size

    def _task(self, ctx, task, todo, rf, total, kinds, baseline) -> None:
        from .engine import Interrupted

        kind = kinds[task.kind]
        self.update(task=task.name)
        first_peak = None
        i = 0
        while i < len(todo):
            if self.should_stop():
                raise Stopped()
            size = self._batch_size(kind, first_peak, baseline, ctx.memory)
            chunk = todo[i:i + size]
            try:
                lines = self._run_chunk(ctx, kind, task, chunk)
            except Interrupted:
                raise Stopped() from None
            rf.append(lines)
            i += len(chunk)
            ok = [x for x in lines if x.get("status") == "ok"]
            if ok and first_peak is None:
                first_peak = max(x["peak_memory_bytes"] for x in ok)
            self._samples_done += len(lines)
            with self._lock:
                tok = self.status["tokens"]
                tok["prefill"] += sum(x.get("prefill_tokens", 0) for x in ok)
                tok["decode"] += sum(x.get("decode_tokens", 0) for x in ok)
                self.status["peak_memory_bytes"] = max([self.status["peak_memory_bytes"]] + [x["peak_memory_bytes"] for x in ok])
                self.status["tasks"][task.name] = self._progress(rf, total)
                self._eta()
            self.update(memory=ctx.memory.current())

    def _eta(self) -> None:
        """Samples per second over this attempt's running time and the time the rest would take at
        that rate (sweeps and multi-turn samples cost more than captions: a rough guide)."""
        running = time.monotonic() - (self._running_since or time.monotonic())
        if running <= 0 or not self._samples_done:
            return
        rate = self._samples_done / running
        left = sum(max(0, t["total"] - t["done"]) for t in self.status["tasks"].values() if "skipped" not in t)
        self.status["samples_per_s"] = round(rate, 3)
        self.status["eta_s"] = round(left / rate, 1)

    def _run_chunk(self, ctx, kind, task, chunk) -> list[dict]:
        """A batch; when one of its samples has unusable input, the others run alone and that one is
        recorded as `status: error` (a bad file must not end a paid run)."""
        from .tasks.base import SampleError, error_line

        bad = [s for s in chunk if getattr(s, "error", "")]
        if bad:  # rows the dataset could not make into samples: their errors, then the rest as usual
            for s in bad:
                log.warning("task %s sample %s: %s", task.name, s.id, s.error)
            good = [s for s in chunk if not getattr(s, "error", "")]
            return [error_line(ctx, task, s.id, s.error) for s in bad] + (self._run_chunk(ctx, kind, task, good)
                                                                           if good else [])
        try:
            return kind.run_batch(ctx, task, chunk)
        except SampleError as e:
            if len(chunk) == 1:
                log.warning("task %s sample %s: %s", task.name, chunk[0].id, e)
                return [error_line(ctx, task, chunk[0].id, str(e))]
        return [x for s in chunk for x in self._run_chunk(ctx, kind, task, [s])]

    def _verify(self, tasks, todo, results, samples, kinds) -> None:
        from .model import pick_device
        from .tasks.fp16_verify import SINGLE_TURN

        job = self.job
        if job.quantization in ("fp16", "bf16", "fp32"):
            for t in tasks:
                self.skipped[t.name] = f"the model already runs in {job.quantization}: nothing to verify"
            return
        import torch

        device = pick_device(job.device)
        bf16 = device == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False)
        ref_quant = "bf16" if bf16 else "fp16"
        run = []
        for t in tasks:
            of = job.task(t.of_task)
            if of.kind not in SINGLE_TURN:
                self.skipped[t.name] = f"verification re-runs single-image tasks; {of.name} is {of.kind}"
                continue
            quantized = {x["id"]: x for x in results[of.name].lines if x.get("status") == "ok"}
            # samples the quantized model could not answer (OOM) have nothing to verify
            samples[t.name] = [s for s in samples[t.name] if s.id in quantized]
            todo[t.name] = [s for s in todo[t.name] if s.id in quantized]
            with self._lock:
                self.status["tasks"][t.name] = self._progress(results[t.name], len(samples[t.name]))
            self.extra.setdefault("quantized_lines", {}).update(quantized)
            run.append(t)
        if not any(todo[t.name] for t in run):
            return
        reason = self._reference_fits(device)
        if reason:
            for t in run:
                self.skipped[t.name] = reason
            log.info("fp16 verification skipped: %s", reason)
            return
        try:
            self._phase(ref_quant, run, todo, results, samples, kinds)
        except (LoadError, RuntimeError, MemoryError) as e:
            from .engine import is_oom, release

            if not (isinstance(e, LoadError) or is_oom(e)):
                raise
            release()
            reason = f"the 16-bit model could not be loaded: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
            for t in run:
                self.skipped[t.name] = reason
            log.warning("fp16 verification skipped: %s", reason)

    def _reference_fits(self, device: str) -> str:
        """'' when the 16-bit model fits the memory the quantized one freed, else why not."""
        import json

        from .engine import Memory
        from .model import resolve_source

        need = 2 * self.params if self.params else None  # counted on the quantized model this attempt
        src = Path(resolve_source(self.job.model))
        if need is None:  # resumed with only verification left: the checkpoint's own size (16-bit on the hub)
            try:
                index = json.loads((src / "model.safetensors.index.json").read_text())
                need = int(index["metadata"]["total_size"])
            except (OSError, ValueError, KeyError):
                shards = list(src.glob("*.safetensors")) if src.is_dir() else []
                need = sum(p.stat().st_size for p in shards) or None
        if need is None:
            return ""  # unknown: try, and skip if the load runs out of memory
        need = int(need * 1.2)  # Qwen: real use is at least 1.2x the weights
        free = Memory(device).free_bytes() if device == "cpu" else _cuda_free(self.job.max_memory)
        if need > free:
            return (f"the 16-bit model needs about {need / 2**30:.1f} GiB and only {free / 2**30:.1f} GiB "
                    f"is free after unloading the quantized one")
        return ""

    # ------------------------------------------------------------------ summary

    def _write_summary(self, error: str | None = None) -> None:
        from .tasks import KINDS

        job = self.job
        tasks = {}
        for t in (job.tasks if job else []):
            rf = files.ResultFile(self.out / "results" / f"{t.name}.jsonl")
            total = self.status["tasks"].get(t.name, {}).get("total")
            entry = {"kind": t.kind, "total": total, **KINDS[t.kind].summarize(t, rf.lines)}
            if t.name in self.skipped:
                entry["skipped"] = self.skipped[t.name]
            tasks[t.name] = entry
        complete = bool(tasks) and all(v["done"] >= (v["total"] or 0) or "skipped" in v for v in tasks.values())
        summary = {
            "schema": SUMMARY_SCHEMA, "run_id": job.run_id if job else None,
            "model": job.model.name if job else None, "quantization": job.quantization if job else None,
            "attempt": self.attempt, "complete": complete and not error,
            "stopped": self.stop_reason, "error": error, "elapsed_s": round(time.monotonic() - self.started, 3),
            "batch_size": {"requested": job.batch_size if job else None, "used": self.status["batch_size"],
                           "note": self.batch_size_note},
            "loads": self.loads, "tasks": tasks,
            "peak_memory_bytes": max([v.get("peak_memory_bytes") or 0 for v in tasks.values()] or [0]),
            "environment": _environment(), "finished_at": _now().isoformat(),
        }
        files.write_json(self.out / "summary.json", summary)


def _cuda_free(max_memory: dict) -> int:
    import torch

    free = 0
    for i in range(torch.cuda.device_count()):
        f = torch.cuda.mem_get_info(i)[0]
        cap = max_memory.get(str(i)) if max_memory else None
        free += min(f, _bytes(cap)) if cap else f
    return free


def _bytes(text: str) -> int:
    units = {"gib": 2**30, "gb": 10**9, "mib": 2**20, "mb": 10**6, "kib": 2**10, "kb": 10**3, "b": 1}
    t = str(text).strip().lower()
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


def _environment() -> dict:
    env = {"python": platform.python_version(), "host": platform.node()}
    for name in ("torch", "transformers", "accelerate", "bitsandbytes"):
        mod = sys.modules.get(name)
        env[name] = getattr(mod, "__version__", None) if mod else None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print("usage: python -m worker JOB.json OUT_DIR", file=sys.stderr)
        return EXIT_BAD_JOB
    return Worker(Path(argv[0]), Path(argv[1])).main()

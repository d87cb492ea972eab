"""The task loop. A phase loads the model in one quantization, runs its tasks batch by batch - each
batch's lines appended to the task's results file before the next starts, and counted in status.json -
then unloads it. Asked to stop, it stops at a batch boundary, so nothing finished is lost."""

from __future__ import annotations

import contextlib
import logging

from .batching import MAX_AUTO_BATCH, Batching, run_chunk, tokens

log = logging.getLogger("gpubudget.worker")


class Stopped(Exception):
    """The phase stopped at a batch boundary; `reason` when it stopped for a reason of its own (a meter that
    cannot pay the next batch: "budget"), else the worker's stop request is the reason."""

    def __init__(self, reason: str | None = None):
        super().__init__(reason)
        self.reason = reason


class Phases:
    def __init__(self, status, should_stop, out=None, serving: dict | None = None):
        self.status = status
        self.serving = serving or {}  # the controller's own arguments for a server engine's client (a meter)
        self.out = out  # the output directory (a started engine's log goes there)
        self.should_stop = should_stop
        self.batching = Batching(status)
        self.loads: list[dict] = []
        self.params = 0  # the model's parameter count, as loaded (sizes the 16-bit reference)
        self.extra: dict = {}  # shared with the task kinds (fp16_verify reads the quantized answers)
        self.alone = False  # a metered engine could not pay a batch whole: one sample at a time from then on

    def run(self, job, work, quant: str, tasks) -> None:
        from .tasks import KINDS
        from .tasks.base import Context

        if self.should_stop():  # e.g. restarted after the deadline: do not pay for a model load
            raise Stopped()
        opened = self._hf(job, quant) if job.engine.kind == "hf" else self._served(job, quant, self.out)
        with opened as (engine, memory, baseline):
            ctx = Context(job=job, engine=engine, memory=memory, quantization=quant, attempt=self.status.attempt,
                          extra=self.extra)
            self.status.update(phase="running", memory=memory.current())
            self.status.running()
            for task in tasks:
                self._task(ctx, task, KINDS[task.kind], work, baseline)

    @contextlib.contextmanager
    def _hf(self, job, quant: str):
        """The model loaded in this process (transformers generate), unloaded on the way out."""
        from .engine import Engine, Memory
        from .model import load, pick_device, unload

        device = pick_device(job.device)
        memory = Memory(device)
        self.status.update(phase="loading", device=device)
        loaded = load(job, quant, device, memory)
        self.loads.append({"quantization": quant, "engine": "hf", "dtype": loaded.dtype, "device": device,
                           "load_s": round(loaded.load_s, 3), "memory_after_load": loaded.memory_after_load,
                           "footprint_bytes": loaded.footprint_bytes, "device_map": loaded.device_map})
        log.info("loaded %s in %.1f s (%s)", quant, loaded.load_s, loaded.memory_after_load)
        self.params = self.params or loaded.params
        try:
            yield (Engine(loaded, memory, job.generation, job.image_limits, job.seed, self.should_stop,
                          compile=job.engine.compile), memory,
                   max(m["bytes"] for m in loaded.memory_after_load))
        finally:
            unload(loaded)

    @contextlib.contextmanager
    def _served(self, job, quant: str, out):
        """A server engine (serving.py): started here and stopped on the way out, or one already running."""
        from .serving import serve

        try:
            with serve(job, quant, out, self.status, self.should_stop, **self.serving) as served:
                self.loads.append(served.load)
                log.info("engine %s serving %s (%s)", job.engine.kind, quant, served.load)
                yield served.engine, served.memory, 0
        except InterruptedError:  # asked to stop while the engine was starting
            raise Stopped() from None

    def _task(self, ctx, task, kind, work, baseline: int) -> None:
        from .generation import Interrupted

        todo, rf = work.todo[task.name], work.results[task.name]
        self.status.update(task=task.name)
        first_peak = None
        i = 0
        while i < len(todo):
            if self.should_stop():
                raise Stopped()
            # a server batches the requests in flight itself: a batch here is what is sent at once
            requested = ctx.job.batch_size if ctx.job.engine.kind == "hf" else ctx.job.engine.concurrency
            upcoming = tokens(ctx, task, todo[i:i + MAX_AUTO_BATCH]) if requested == "auto" else None
            size = self.batching.size(kind, requested, first_peak, baseline, ctx.memory, upcoming=upcoming)
            chunk = todo[i:i + (1 if self.alone else size)]
            try:
                lines = run_chunk(ctx, kind, task, chunk)
            except Interrupted as e:
                if getattr(e, "smaller", False) and len(chunk) > 1:  # a meter could not pay the batch whole
                    self.alone = True
                    continue
                raise Stopped(getattr(e, "reason", None)) from None
            rf.append(lines)
            i += len(chunk)
            ok = [x for x in lines if x.get("status") == "ok"]
            if ok and first_peak is None and ok[0]["peak_memory_bytes"] is not None:
                first_peak = max(x["peak_memory_bytes"] for x in ok)
            self.status.record(task.name, lines, work.progress(task.name))
            self.status.update(memory=ctx.memory.current())

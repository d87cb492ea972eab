"""The task loop. A phase loads the model in one quantization, runs its tasks batch by batch - each
batch's lines appended to the task's results file before the next starts, and counted in status.json -
then unloads it. Asked to stop, it stops at a batch boundary, so nothing finished is lost."""

from __future__ import annotations

import logging

from .batching import Batching, run_chunk

log = logging.getLogger("gpubudget.worker")


class Stopped(Exception):
    pass


class Phases:
    def __init__(self, status, should_stop):
        self.status = status
        self.should_stop = should_stop
        self.batching = Batching(status)
        self.loads: list[dict] = []
        self.params = 0  # the model's parameter count, as loaded (sizes the 16-bit reference)
        self.extra: dict = {}  # shared with the task kinds (fp16_verify reads the quantized answers)

    def run(self, job, work, quant: str, tasks) -> None:
        from .engine import Engine, Memory
        from .model import load, pick_device, unload
        from .tasks import KINDS
        from .tasks.base import Context

        if self.should_stop():  # e.g. restarted after the deadline: do not pay for a model load
            raise Stopped()
        device = pick_device(job.device)
        memory = Memory(device)
        self.status.update(phase="loading", device=device)
        loaded = load(job, quant, device, memory)
        self.loads.append({"quantization": quant, "dtype": loaded.dtype, "device": device, "load_s": round(loaded.load_s, 3),
                           "memory_after_load": loaded.memory_after_load, "footprint_bytes": loaded.footprint_bytes,
                           "device_map": loaded.device_map})
        log.info("loaded %s in %.1f s (%s)", quant, loaded.load_s, loaded.memory_after_load)
        self.params = self.params or loaded.params
        engine = Engine(loaded, memory, job.generation, job.image_limits, job.seed, self.should_stop)
        ctx = Context(job=job, engine=engine, memory=memory, quantization=quant, attempt=self.status.attempt,
                      extra=self.extra)
        baseline = max(m["bytes"] for m in loaded.memory_after_load)
        self.status.update(phase="running", memory=loaded.memory_after_load)
        self.status.running()
        try:
            for task in tasks:
                self._task(ctx, task, KINDS[task.kind], work, baseline)
        finally:
            unload(loaded)

    def _task(self, ctx, task, kind, work, baseline: int) -> None:
        from .engine import Interrupted

        todo, rf = work.todo[task.name], work.results[task.name]
        self.status.update(task=task.name)
        first_peak = None
        i = 0
        while i < len(todo):
            if self.should_stop():
                raise Stopped()
            size = self.batching.size(kind, ctx.job.batch_size, first_peak, baseline, ctx.memory)
            chunk = todo[i:i + size]
            try:
                lines = run_chunk(ctx, kind, task, chunk)
            except Interrupted:
                raise Stopped() from None
            rf.append(lines)
            i += len(chunk)
            ok = [x for x in lines if x.get("status") == "ok"]
            if ok and first_peak is None:
                first_peak = max(x["peak_memory_bytes"] for x in ok)
            self.status.record(task.name, lines, work.progress(task.name))
            self.status.update(memory=ctx.memory.current())

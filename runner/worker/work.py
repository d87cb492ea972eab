"""What this attempt has left to do, task by task: its samples, its results file (what earlier attempts
finished there is never run again) and the samples not in it yet, in the order they run (batching.order:
similar input lengths side by side); and the tasks skipped, with why."""

from __future__ import annotations

import logging
from pathlib import Path

from . import batching, datasets, files, shards

log = logging.getLogger("gpubudget.worker")


class Work:
    def __init__(self, job, out: Path, base_dir: Path):
        cache = Path(job.cache_dir) if job.cache_dir else out / "cache"
        self.main = [t for t in job.tasks if t.kind != "fp16_verify"]  # on the job's quantization
        self.verify = [t for t in job.tasks if t.kind == "fp16_verify"]  # on the 16-bit reference, after
        self.samples = {t.name: datasets.resolve(t, job, base_dir, cache) for t in self.main}
        if job.shard:  # this process runs one shard of the job: its own samples only (worker/shards.py)
            index, count = job.shard
            once = shards.once_counts(job.tasks, job.limit)
            for t in self.main:
                self.samples[t.name] = shards.keep(self.samples[t.name], t.kind, index, count, once.get(t.name, 0))
        for t in self.verify:
            n = t.samples if job.limit is None else min(t.samples, job.limit)
            n = 0 if job.shard and job.shard[0] != 0 else n  # the fp16 check runs on shard 0 alone
            self.samples[t.name] = self.samples[t.of_task][:n]
        self.results = {t.name: files.ResultFile(out / "results" / f"{t.name}.jsonl") for t in job.tasks}
        for name, rf in self.results.items():
            if rf.damaged:
                log.warning("results/%s.jsonl: %d damaged line(s) skipped; their samples run again", name, rf.damaged)
        # ids, not positions, decide what is done: the order is applied to what is left
        self.todo = {t.name: batching.order(t.kind, job.task(t.of_task) if t.kind == "fp16_verify" else t,
                                            [s for s in self.samples[t.name] if s.id not in self.results[t.name].done_ids],
                                            job.image_limits)
                     for t in job.tasks}
        self.skipped: dict[str, str] = {}

    def progress(self, task: str) -> dict:
        from .tasks.base import counts

        ids = {s.id for s in self.samples[task]}  # a shard's file may hold lines of other shards' samples
        return {**counts([x for x in self.results[task].lines if x["id"] in ids]), "total": len(self.samples[task])}

    def pending(self, tasks) -> bool:
        return any(self.todo[t.name] for t in tasks)

    def keep(self, task: str, ids) -> None:
        """Only the samples whose id is in `ids` stay this task's, done or to do."""
        self.samples[task] = [s for s in self.samples[task] if s.id in ids]
        self.todo[task] = [s for s in self.todo[task] if s.id in ids]

    def skip(self, tasks, why: str) -> None:
        for t in tasks:
            self.skipped[t.name] = why

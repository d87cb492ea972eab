"""Which samples a shard of a job holds: the one rule that splits a plan's samples into disjoint shards for
replicas (one worker process per GPU: runner/worker/replicas.py) and for Ray tasks (runner/scaleout/).

A job's `shard: {"index": k, "count": K}` keeps, of each task's samples (in the task's own order, before
`limit`'s cut is applied by the dataset), those at positions i with i % K == k - except what runs once: the
memory sweep, the fp16 check and the samples the fp16 check re-runs (the first N of its task) all belong to
shard 0, so the sweep and the 16-bit reference load happen once, not per replica. Every sample is in exactly
one shard, whatever K; a shard may hold none of a task's samples. Pure: the standard library only."""

from __future__ import annotations

import copy

ONCE_KINDS = ("memory_sweep", "fp16_verify")  # run once per job: on shard 0


def owner(position: int, count: int, once: int = 0) -> int:
    """The shard that holds the sample at `position` of a task whose first `once` samples run on shard 0."""
    return 0 if position < once else position % count


def once_counts(tasks, limit: int | None) -> dict[str, int]:
    """For each task the fp16 check re-runs: how many of its first samples it re-runs (they stay on shard 0)."""
    out: dict[str, int] = {}
    for t in tasks:
        if t.kind == "fp16_verify":
            n = t.samples if limit is None else min(t.samples, limit)
            out[t.of_task] = max(out.get(t.of_task, 0), n)
    return out


def keep(samples: list, kind: str, index: int, count: int, once: int = 0) -> list:
    """The samples of one task that shard `index` of `count` holds."""
    if kind in ONCE_KINDS:
        return list(samples) if index == 0 else []
    return [s for i, s in enumerate(samples) if owner(i, count, once) == index]


def jobs(job: dict, count: int) -> list[dict]:
    """`job` (a job document) as `count` shard jobs, in shard order. The replicas field is not theirs."""
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shards: between 1 and {MAX_SHARDS}, not {count}")
    base = {k: v for k, v in job.items() if k not in ("replicas", "shard")}
    return [dict(copy.deepcopy(base), shard={"index": k, "count": count}) for k in range(count)]


MAX_SHARDS = 4096
MAX_REPLICAS = 64

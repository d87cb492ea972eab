"""Layouts: how a plan uses the cards of a multi-GPU offer. Owns which layouts an offer is costed in, the replicas
layout's memory and time, the reasons a layout cannot run, and what a row says about the other layout on its offer;
and the `Option` (a rig x quantization x engine x layout that fits), the optimizer's unit, which carries its layout.

- `single`: a 1-GPU offer.
- `split`: one model spread over the cards - accelerate's device_map for hf (one card works at a time, a hop per
  pass: planner/speed.py), tensor parallelism for vllm/sglang (planner/engines.py). Its memory is planner/memory.py's
  per-card split. This is what the seed's multi-card trap is about ("2xT4 is 40% slower than 1x3090").
- `replicas`: a full copy of the model on every card, each taking a share of the samples, no communication between
  cards (for vllm/sglang: one server per GPU - data parallelism). The memory must fit ONE card, exactly as on a 1-card
  rig of that card (the seed's rule of thumb - several cards only when one card holds >= 1.2x what the model needs -
  is a test of this model, tests/planner/test_replicas.py, not a constant). The samples are sharded as the worker
  shards them (runner/worker/shards.py: position i of a task goes to replica i % N; the memory sweep, the fp16
  check and the samples it re-runs stay on replica 0, run once), so the timed work is the slowest replica's - about
  1/N of one card's. Each replica loads its own copy at the same time: boot, install, download, load and an
  engine's install and start are paid once in wall time; the offer bills them as any run's (planner/money.py).

`budget plan` and `budget run` cost both (the runner starts a worker per GPU for replicas: runner/worker/replicas.py,
with `Recommendation.replicas`); the optimizer takes a narrower `layouts` where asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import lru_cache

from . import engines as eng
from .memory import Parts, from_parts
from .models import EvalPlan, Gpu, MemoryEstimate, Rejection, TimeEstimate
from .money import billed_seconds, charge, display
from .workload import TaskLoad

LAYOUTS = ("split", "replicas")
ONCE_KINDS = ("memory_sweep", "fp16_verify")  # runner/worker/shards.py: run once, on replica 0


@dataclass(slots=True)
class Option:
    """A (GPU, count, quantization, engine, layout) that fits, with everything offers of it share (the optimizer's
    unit: planner/optimize.py)."""

    gpu: Gpu
    gpu_count: int
    usable_mib: int
    quant: str
    parts: Parts  # per card, planner/memory.py's card_parts (a server engine: what it preallocates)
    weights_total: int
    skipped: dict[str, str]
    notes: list[str]
    times: dict[tuple[bool, bool], TimeEstimate] = field(default_factory=dict)  # (aws, spot) -> time
    _memory: MemoryEstimate | None = None
    engine: str = "hf"
    server: eng.ServerMemory | None = None  # vllm/sglang: memory fraction, concurrency, max_model_len
    replicated: bool = False  # a model per card (the replicas layout), not one model over the cards

    @property
    def layout(self) -> str:
        return "replicas" if self.replicated else "single" if self.gpu_count == 1 else "split"

    @property
    def replicas(self) -> int:
        return self.gpu_count if self.replicated else 1

    @property
    def concurrency(self) -> int | None:
        return self.server.concurrency if self.server else (1 if self.engine == "transformers" else None)

    @property
    def memory(self) -> MemoryEstimate:
        """The per-card estimate (built when asked: only shown options need it)."""
        if self._memory is None:
            self._memory = from_parts(self.parts, self.quant, self.weights_total, self.usable_mib * 1024**2)
        return self._memory


def checked(layouts: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The layouts to cost a multi-GPU offer in, known and in order (None: both). ValueError otherwise."""
    got = tuple(dict.fromkeys(layouts or LAYOUTS))
    if bad := [x for x in got if x not in LAYOUTS]:
        raise ValueError(f"unknown layout {bad[0]!r} (use {', '.join(LAYOUTS)})")
    return got


def options(option: Callable[..., Option | str], gpu: Gpu, count: int, usable_mib: int, quant: str, engine: str,
            layouts: tuple[str, ...]) -> tuple[list[Option], list[str]]:
    """The options `engine` runs `quant` in on `count` x `gpu`, one per layout (a 1-GPU offer: its one), and the
    reason each other layout cannot run. Both layouts refused for the same reason: that reason once, as it is; else
    each reason names its layout ("replicas: needs 19.7 GiB per GPU; T4 has 15.0 GiB")."""
    if count == 1:
        got = option(gpu, 1, usable_mib, quant, engine)
        return ([], [got]) if isinstance(got, str) else ([got], [])
    tried = [(lay, option(gpu, count, usable_mib, quant, engine, lay == "replicas")) for lay in layouts]
    runnable = [o for _, o in tried if not isinstance(o, str)]
    refused = [(lay, o) for lay, o in tried if isinstance(o, str)]
    if len(refused) == 2 and refused[0][1] == refused[1][1]:
        return runnable, [refused[0][1]]
    return runnable, [why if lay == "split" and len(layouts) == 1 else f"{lay}: {why}" for lay, why in refused]


def replicate(one: Option, count: int) -> Option:
    """`count` replicas of a 1-card option: every card holds what the one card holds."""
    server = one.server is not None
    said = (f"{count} replicas: one {one.engine} server per GPU (data parallelism, no tensor parallelism), each "
            if server else f"{count} replicas: a whole model per GPU, no communication between cards, each ")
    said += (f"answering its share of the samples (about 1/{count}); the times shown are the slowest replica's"
             + ("" if server else "; the memory sweep and the fp16 check run once, on the first"))
    return Option(one.gpu, count, one.usable_mib, one.quant, one.parts * count, one.weights_total, dict(one.skipped),
                  [said, *one.notes], engine=one.engine, server=one.server, replicated=True)


def shard_loads(plan: EvalPlan, loads: list[TaskLoad], count: int) -> list[Sequence[TaskLoad]]:
    """The tasks each of `count` replicas runs (the distinct sets, replica 0's first; one replica: `loads`), as
    runner/worker/shards.py splits them: position i of a task to replica i % count, except what runs once - the
    memory sweep, the fp16 check and the first samples of a task the fp16 check re-runs - on replica 0."""
    if count == 1:
        return [loads]
    once: dict[str, int] = {}
    for t in plan.tasks:
        if t.kind == "fp16_verify":
            once[t.of_task] = max(once.get(t.of_task, 0), t.samples)
    return list(_shards(tuple(loads), tuple(sorted(once.items())), count))


@lru_cache(maxsize=1024)
def _shards(loads: tuple[TaskLoad, ...], once_items: tuple[tuple[str, int], ...], count: int
            ) -> tuple[tuple[TaskLoad, ...], ...]:
    once = dict(once_items)
    out: dict[tuple[TaskLoad, ...], None] = {}
    for k in range(count):
        shard = []
        for t in loads:
            if t.kind in ONCE_KINDS:
                n = t.samples if k == 0 else 0
            else:
                first = min(once.get(t.name, 0), t.samples)
                n = (first if k == 0 else 0) + len(range(first + (k - first) % count, t.samples, count))
            if n:
                shard.append(t if n == t.samples else replace(t, samples=n, batch=min(t.batch, n)))
        out.setdefault(tuple(shard), None)
    return tuple(out)


def slowest(per_shard: list[dict[str, float]]) -> dict[str, float]:
    """The tasks' seconds of the replica that finishes last (the run's wall time is its)."""
    return max(per_shard, key=lambda tasks: sum(tasks.values()))


def over_budget(over: dict[tuple, list], best: dict[tuple, list], budget: Decimal, named: bool) -> list[Rejection]:
    """The over-budget rejections, one per (GPU, count, quantization, engine, layout): from its cheapest cost. With
    layouts `named`, a multi-GPU one says its layout, and a split whose rig runs replicas within the budget (`best`:
    each group's ranked rows within it) says so: it lost to them."""
    out = []
    for (g, c, q, e, lay), (row, k) in over.items():
        reason = f"over budget{f' as {lay}' if named and c > 1 else ''}: from {display(row[-1])} CNY > " \
                 f"{display(budget)} CNY"
        if named and lay == "split" and best.get((g, c, q, e, "replicas")):
            reason += "; replicas on the same rig fit it"
        out.append(Rejection(gpu=g, gpu_count=c, quantization=q, offers=k, example=row[4].id, engine=e, reason=reason))
    return out


def versus(option: Callable[..., Option | str], time: Callable, row: tuple) -> str | None:
    """What the other layout would do on a multi-GPU row's offer and market: its time and cost against the row's
    ("replicas on this offer: 0.27x the time, 1.20 CNY less"), or why it cannot run there."""
    o, opt, is_spot, price, t, cost = row[4], row[5], row[6], row[7], row[8], row[-1]
    if opt.gpu_count == 1:
        return None
    other = "split" if opt.replicated else "replicas"
    got = option(opt.gpu, opt.gpu_count, opt.usable_mib, opt.quant, opt.engine, not opt.replicated)
    if isinstance(got, str):
        return f"{other} cannot run on this offer: {got}"
    te = time(got, o.provider == "aws", is_spot)
    c = charge(price, billed_seconds(te.total_s, o.billing_increment_s, o.billing_minimum_s))
    money = "the same cost" if c == cost else f"{display(abs(c - cost))} CNY {'more' if c > cost else 'less'}"
    return f"{other} on this offer: {te.total_s / t.total_s:.2f}x the time, {money}"

"""The `--json` documents of the runner's commands, one pydantic model each: `status`, `status RUN`, `eval`,
`calibrate --show`, `sweep`, `ledger check` / `rebuild`, `pool list` / `show` / `create` / `set-cap`. (The
planner's own - `plan`, `estimate`, `prices list`, `model inspect`, `calibrate` - are planner/ models; `report
--json` is money/documents.py's.) The commands build them from what runs, calibrate, sweep, money/pools,
money/recovery and the worker return, so a key that appears, goes or changes type fails here instead of
changing a user's script without a word. README's "`--json` output" section lists every key; a test holds
the two together.

Money is Decimal, written as a decimal string ("12.5", never a float); `*_at` are epoch seconds (UTC)
unless the worker wrote them."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from planner.calibration import Calibration

from .money import ledger


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- budget status [RUN]


class LedgerRun(Output):
    """A run as the ledger's `runs` table holds it, column for column (so `spot` is 0 or 1)."""

    id: str
    pool: str
    plan: str
    plan_path: str
    provider: str
    offer: str
    quantization: str
    spot: int
    cap_cny: Decimal
    estimate_cny: Decimal | None
    estimate_s: float | None
    state: str
    reason: str | None
    phase: str | None
    dir: str
    controller_pid: int | None
    samples_done: int
    samples_total: int
    created_at: float
    finished_at: float | None
    stop_requested: int
    controller_start: str | None


class RunRow(LedgerRun):
    """A run in `budget status`: its row, what it has spent and whether a controller is driving it."""

    spent_cny: Decimal
    controller_alive: bool


class RunList(Output):
    """`budget status --json`: every run, newest first."""

    runs: list[RunRow]


def _row_model(cls: type, doc: str) -> type[Output]:
    """An output model with the fields of a ledger row's dataclass, in its order: one definition of the row."""
    hints = get_type_hints(cls)
    return create_model(cls.__name__, __base__=Output, __doc__=doc, **{
        f.name: (hints[f.name], ... if f.default is dataclasses.MISSING else f.default) for f in dataclasses.fields(cls)})


Instance = _row_model(ledger.Instance, """An instance of a run as the ledger holds it (prices at launch;
    `market_price_h`: a spot market price in the offer's currency, where the provider said it; `attempt`: which
    launch of its run, from 0; `offer_index`: which of the run's offers, 0 its own, then the planner's
    fallbacks).""")


class TaskRow(Output):
    """A task's result as recorded at the end of a run (`summary`: the worker's summary of it, as JSON text)."""

    run_id: str
    task: str
    kind: str
    samples: int
    ok: int
    summary: str


class Event(Output):
    id: int
    run_id: str
    instance_id: int | None
    at: float
    kind: str
    detail: str


class Replica(Output):
    """One GPU's worker process on the instance (a plan run as replicas: runner/worker/replicas.py), as its
    status.json said it last, through runner/inbound.py."""

    replica: int
    gpu: str
    shard: int | None
    phase: str | None
    lost: bool
    runs: int


class RunDetail(LedgerRun):
    """`budget status RUN --json`: one run with its money, instances, tasks and events."""

    controller_alive: bool
    spent_cny: Decimal
    pool_spent_cny: Decimal
    pool_cap_cny: Decimal | None
    instances: list[Instance]
    tasks: list[TaskRow]
    events: list[Event]
    replicas: list[Replica] = []  # a replicas run: each GPU's worker (empty otherwise)


# --------------------------------------------------------------------------- budget eval


class BatchSize(Output):
    requested: int | str | None
    used: int | None
    note: str


class MemoryUse(Output):
    device: str
    bytes: int
    source: str | None = None  # a server engine's: nvidia-smi | server-rss (hf: torch's allocator, or RSS on CPU)


class Load(Output):
    """One model load of the worker (hf), or one server engine made ready: in what, where, how long, how much
    memory. A server has no dtype, footprint or device map the worker can see; one it started has its
    install and start times."""

    quantization: str
    engine: str = "hf"
    dtype: str | None = None
    device: str
    load_s: float
    memory_after_load: list[MemoryUse]
    footprint_bytes: int | None = None
    device_map: dict[str, str] = {}
    install_s: float | None = None
    start_s: float | None = None
    shard: int | None = None  # the replica's shard that loaded it (budget eval --replicas)


class EvalSummary(Output):
    """`budget eval --json`: the worker's summary.json. `tasks` maps each task to its summary, whose keys
    depend on its kind (runner/worker/tasks/); `environment` is the software (and GPUs) it ran on."""

    schema_: str = Field(alias="schema")  # `schema` would shadow a BaseModel attribute
    run_id: str | None
    model: str | None
    quantization: str | None
    attempt: int
    complete: bool
    stopped: str | None
    error: str | None
    elapsed_s: float
    batch_size: BatchSize
    loads: list[Load]
    tasks: dict[str, dict[str, Any]]
    peak_memory_bytes: int
    environment: dict[str, Any]
    finished_at: str
    replica_count: int = 1  # worker processes, one per GPU (budget eval --replicas)


# --------------------------------------------------------------------------- budget calibrate --show


class RunCheck(Output):
    """A finished run: its hours and cost against the estimate at launch (`*_before`) and the planner's
    estimate now, with the stored calibration (`*_after`; null when the plan or request is gone)."""

    run: str
    plan: str
    provider: str
    quantization: str
    actual_h: float
    actual_cny: Decimal
    estimate_h: float
    estimate_cny: Decimal | None
    error_before: float | None
    estimate_after_h: float | None
    error_after: float | None


class CalibrationCheck(Output):
    """`budget calibrate --show --json`: every finished run, the stored calibration (null when none), and the
    mean |relative error| of the hours before and after it."""

    runs: list[RunCheck]
    calibration: Calibration | None
    mean_error_before: float | None
    mean_error_after: float | None


# --------------------------------------------------------------------------- budget sweep


class Resource(Output):
    """A resource tagged as ours: a leak (`why` a live run does not own it) or kept (`why` it is kept);
    `deleted` and `error` after --yes."""

    provider: str
    kind: str
    id: str
    run: str | None
    region: str
    detail: str
    leak: bool
    why: str
    cny_per_h: Decimal | None
    deleted: bool
    error: str | None


class Sweep(Output):
    """`budget sweep --json`: `unchecked` lists the places that could not be looked at (then it exits 1)."""

    resources: list[Resource]
    leaks: int
    leak_cny_per_h: Decimal
    deleted: bool
    unchecked: list[str]
    assumptions: str


# --------------------------------------------------------------------------- budget ledger


class LedgerCheck(Output):
    """`budget ledger check --json` (exits 1 when not `ok`)."""

    ok: bool
    ledger: str
    problems: list[str]
    runs_on_disk: int
    runs_in_ledger: int
    live_instances: int


class LedgerRebuild(Output):
    """`budget ledger rebuild --json`: the new ledger, where the old one went, what was replayed into it."""

    ledger: str
    moved_aside: str | None
    runs: int
    instances: int


# --------------------------------------------------------------------------- budget pool


class Pool(Output):
    """A pool's money: committed = spent + what live instances may still bill up to their leases;
    left = cap - committed."""

    name: str
    cap_cny: Decimal
    spent_cny: Decimal
    committed_cny: Decimal
    left_cny: Decimal
    runs: int
    active_runs: int
    live_instances: int
    created_at: float


class PoolList(Output):
    """`budget pool list --json`."""

    pools: list[Pool]


class CapChange(Output):
    at: float
    kind: str
    old_cap_cny: Decimal | None
    new_cap_cny: Decimal
    detail: str


class PoolRun(Output):
    id: str
    state: str
    cap_cny: Decimal
    spent_cny: Decimal
    created_at: float


class PoolDetail(Pool):
    """`budget pool show|create|set-cap --json`: the pool, every change of its cap, its runs (newest first)."""

    cap_history: list[CapChange]
    run_list: list[PoolRun]


# --------------------------------------------------------------------------- budget compare


class CompareSummary(Output):
    """`budget compare --json`: the comparison run (a run in the ledger, provider `api`), its metered calls
    (tokens and CNY billed from the server's usage) and each task's summary over the cases it answered."""

    run_id: str
    run_dir: str
    reference: str
    state: str
    reason: str
    resumed: bool
    cap_cny: str
    spent_cny: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    tasks: dict[str, dict[str, Any]]
    skipped: dict[str, str]

    @classmethod
    def from_outcome(cls, o) -> CompareSummary:
        from planner.money import unrounded

        return cls(run_id=o.run_id, run_dir=str(o.run_dir), reference=o.reference, state=o.state, reason=o.reason or "",
                   resumed=o.resumed, cap_cny=str(unrounded(o.cap_cny)), spent_cny=str(unrounded(o.spent_cny)),
                   calls=o.calls["calls"], prompt_tokens=o.calls["prompt_tokens"],
                   completion_tokens=o.calls["completion_tokens"], tasks=o.tasks, skipped=o.skipped)

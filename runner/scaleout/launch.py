"""`budget run PLAN --provider ray [--address ADDR]`: before anything is written or spent, the price of one task
(--price-yuan-hour per GPU-hour, or --offer's price per GPU - one is required), the cap (the pool rule of
money/pools.py: the printed cap is the enforced cap), the job, what the cluster has (GPUs, else CPUs), how many
tasks run at once (its GPUs or CPUs, capped by --replicas) and in how many shards (3x that, at most the largest
task's sample count, or --shards); then the run written (ledger row, request.json, ray.json) and driven.

A plan that reads files of this machine (a local dataset, --model-path) is refused for a cluster that does not
share this disk (anything but no --address, `auto` or a loopback address): its nodes could not read them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from planner.catalog import Catalog
from planner.errors import InputError
from planner.models import EvalPlan, Offer

from .. import config as configmod
from .. import home as homes
from .. import jobs
from ..clock import SYSTEM, Clock
from ..errors import RunError
from ..money import pools
from ..money.guard import Policy
from ..run.request import Request, new_run_id, policy_doc
from ..worker import shards as shardmod
from . import actor as actormod
from . import cluster as clustermod
from .controller import Controller, Setup

POLL_S = 1.0                  # a task pushes its lines and asks its lease this often
DEFAULT_TEARDOWN_S = 30.0     # a task's stop: SIGTERM, the worker flushes its batch, SIGKILL after the grace
MIN_TEARDOWN_S = 3 * POLL_S + 1.0  # the stop's grace is the teardown less three polls (ask, notice, be seen)
SHARDS_PER_SLOT = 3           # more shards than slots: a fast node takes more of them


@dataclass(frozen=True)
class Ask:
    plan: Path
    address: str | None = None
    yuan: Decimal | None = None
    pool: str = "default"
    price_yuan_h: Decimal | None = None
    offer_id: str | None = None
    quant: str | None = None
    engine: str | None = None
    limit: int | None = None
    batch_size: int | str | None = None
    model_path: Path | None = None
    replicas: int | None = None
    shards: int | None = None
    per_task: str | None = None  # gpu | cpu (default: gpu where the cluster has GPUs)


@dataclass
class Launch:
    setup: Setup
    plan: EvalPlan
    plan_path: Path
    cap: pools.RunCap
    address: str | None
    quantization: str
    available: int
    teardown_raised: bool

    @property
    def run_id(self) -> str:
        return self.setup.run_id

    def banner(self) -> dict:
        """What `budget run` prints before it asks (render/runs.py cluster_estimate)."""
        s, c = self.setup, self.cap
        return {"run_id": s.run_id, "plan": self.plan.name, "where": self.address or "a Ray started on this machine",
                "kind": s.kind, "gpu": s.offer.gpu, "available": self.available, "slots": s.slots, "shards": s.shards,
                "quantization": self.quantization, "price_cny_h": s.price_cny_h, "cap_cny": c.cap_cny, "pool": c.pool,
                "pool_cap_cny": c.pool_cap_cny, "pool_spent_cny": c.pool_spent_cny, "pool_left_cny": c.pool_left_cny,
                "tick_s": s.policy.tick_s, "lease_s": s.policy.lease_s, "teardown_s": s.policy.teardown_s,
                "grace_s": s.grace_s, "teardown_raised": self.teardown_raised, "results": str(s.run_dir / "out")}


def price(ask: Ask, catalog: Catalog) -> tuple[Decimal, Decimal, str, str | None]:
    """(CNY per task-hour, the same in the offer's currency, that currency, the offer's GPU) from
    --price-yuan-hour (per GPU-hour, CNY) or --offer (its price per GPU); refused when neither or both."""
    if ask.price_yuan_h is not None and ask.offer_id:
        raise InputError("--price-yuan-hour and --offer both give the price of a ray run's GPU-hour",
                         "pass one: --price-yuan-hour P (CNY per GPU-hour) or --offer ID (its price per GPU)")
    if ask.price_yuan_h is not None:
        return ask.price_yuan_h, ask.price_yuan_h, "CNY", None
    if not ask.offer_id:
        raise InputError("--provider ray needs the price of one GPU-hour on the cluster (the ledger bills each task "
                         "by it; nothing was started)", "pass --price-yuan-hour P (CNY per GPU-hour; per CPU-hour for "
                         "CPU tasks), or --offer ID to bill at an offer's price per GPU (see `budget prices list`)")
    found = [o for o in catalog.offers if o.id == ask.offer_id or o.id.startswith(ask.offer_id + "@")]
    if not found:
        raise InputError(f"no offer {ask.offer_id!r} in the catalog", "see `budget prices list` for offer ids")
    o = found[0]
    per_gpu = o.price / o.gpu_count
    return catalog.cny(per_gpu, o.currency), per_gpu, o.currency, o.gpu


def local_files(job: dict) -> list[str]:
    """The files of this machine the job reads: a model path (not one the worker builds) and local manifests."""
    found = []
    model = job.get("model") or {}
    if not model.get("recipe") and Path(str(model.get("source", ""))).is_absolute():
        found.append(f"model {model['source']}")
    for t in job.get("tasks") or []:
        ds = t.get("dataset") or {}
        if ds.get("kind") == "local":
            found.append(f"task {t['name']}: {ds.get('path')}")
    return found


def policy(cfg) -> tuple[Policy, float, bool]:
    """The run's guard policy (config.yaml's run section; a teardown long enough for a task's stop), the stop's
    grace, and whether the configured teardown was raised to cover it."""
    asked = cfg.run.teardown_s if cfg.run.teardown_s is not None else DEFAULT_TEARDOWN_S
    teardown = max(asked, MIN_TEARDOWN_S)
    return (Policy(tick_s=cfg.run.tick_s, teardown_s=teardown, reserve_cny=cfg.run.reserve_yuan, lease_s=cfg.run.lease_s),
            teardown - 3 * POLL_S, teardown > asked)


def shard_count(job: dict, slots: int, asked: int | None) -> int:
    """--shards, else 3 per slot, at most the largest task's sample count (a shard of nothing is a wasted load)."""
    if asked is not None:
        return min(asked, shardmod.MAX_SHARDS)
    limit = job.get("limit")
    sizes = [t.get("samples") or 1 for t in job.get("tasks") or [] if t.get("kind") not in shardmod.ONCE_KINDS]
    largest = max([min(n, limit) if limit else n for n in sizes] or [1])
    return max(1, min(SHARDS_PER_SLOT * slots, largest, shardmod.MAX_SHARDS))


def prepare(ask: Ask, home: Path, catalog: Catalog, clock: Clock = SYSTEM,
            cluster: clustermod.RayCluster | None = None) -> tuple[Launch, clustermod.RayCluster]:
    """Everything checked and chosen, the cluster connected (the caller closes it); nothing written."""
    from planner.plans import load_plan, plan_file

    clustermod.need_ray()
    plan = load_plan(ask.plan)
    path = plan_file(ask.plan)
    cny_h, original_h, currency, offer_gpu = price(ask, catalog)
    homes.writable(home)
    led = homes.ledger(home, clock)
    try:
        cap = pools.run_cap(led, ask.pool, ask.yuan, plan.budget_yuan)
    finally:
        led.close()
    quant = ask.quant or plan.quantizations[0]
    run_id = new_run_id(plan.name, clock.now())
    engine = {"kind": ask.engine} if ask.engine and ask.engine != "hf" else None
    job = jobs.build(plan, path, catalog, home, quantization=quant, model_path=ask.model_path, limit=ask.limit,
                     batch_size=ask.batch_size, run_id=run_id, engine=engine)
    if not clustermod.shares_disk(ask.address) and (files := local_files(job)):
        raise InputError(f"the nodes of the Ray cluster at {ask.address} cannot read this machine's files, and the "
                         f"plan reads {len(files)}: {'; '.join(files[:3])}{' ...' if len(files) > 3 else ''}",
                         "give the model as a hub id and the data as url or builtin datasets, or run on a cluster "
                         "that shares this disk (--address auto on its head node)")
    pol, grace, raised = policy(configmod.load(home))
    cl = cluster or clustermod.RayCluster(ask.address)
    cl.connect()
    try:
        capacity = cl.capacity(ask.per_task)
        slots = capacity.available if ask.replicas is None else (
            min(ask.replicas, capacity.available) if capacity.available else ask.replicas)
        if slots < 1:
            raise InputError(f"the Ray cluster at {ask.address or 'this machine'} has no {capacity.kind.upper()} for a "
                             "task", "pass --replicas N for a cluster that scales up from zero, or --per-task cpu")
    except BaseException:
        cl.close()
        raise
    offer = Offer(provider="ray", instance_type=f"ray-{capacity.kind}", gpu=offer_gpu or capacity.gpu, gpu_count=1,
                  price=original_h, currency=currency, billing_increment_s=1, billing_minimum_s=0,
                  source="--price-yuan-hour" if ask.price_yuan_h is not None else f"--offer {ask.offer_id}")
    setup = Setup(run_id=run_id, run_dir=homes.directory(home, run_id), job=job, shards=shard_count(job, slots, ask.shards),
                  slots=slots, kind=capacity.kind, offer=offer, price_cny_h=cny_h, price_original_h=original_h,
                  policy=pol, grace_s=grace, poll_s=POLL_S)
    return Launch(setup, plan, path, cap, ask.address, quant, capacity.available, raised), cl


def create(launch: Launch, home: Path, clock: Clock = SYSTEM) -> None:
    """The run's ledger row (its pool made if new), its directory, request.json, ray.json and out/job.json."""
    s, cap = launch.setup, launch.cap
    led = homes.ledger(home, clock)
    try:
        pool_cap = led.ensure_pool(cap.pool, cap.cap_cny, clock.now(), f"created by run {s.run_id}")
        if pool_cap < cap.cap_cny:
            raise InputError(f"pool {cap.pool!r}'s cap changed to {pool_cap} CNY since this run's cap ({cap.cap_cny} "
                             "CNY) was shown; nothing was started",
                             f"run again, or raise it with `budget pool set-cap {cap.pool} {cap.cap_cny}`")
        (s.run_dir / "out").mkdir(parents=True)
        Request(run_id=s.run_id, plan_path=str(launch.plan_path),
                provider="ray", offer=s.offer.model_dump(mode="json"), quantization=launch.quantization, spot=False,
                price_cny_h=str(s.price_cny_h), price_original_h=str(s.price_original_h), job=s.job,
                policy=policy_doc(s.policy)).save(s.run_dir / "request.json")
        (s.run_dir / "ray.json").write_text(json.dumps(
            {"address": launch.address, "namespace": actormod.NAMESPACE, "actor": actormod.name_of(s.run_id),
             "kind": s.kind, "slots": s.slots, "shards": s.shards, "grace_s": s.grace_s, "poll_s": s.poll_s}, indent=1))
        (s.run_dir / "out" / "job.json").write_text(json.dumps(s.job, indent=1, ensure_ascii=False), encoding="utf-8")
        led.create_run(id=s.run_id, pool=cap.pool, plan=launch.plan.name, plan_path=str(launch.plan_path),
                       provider="ray", offer=f"ray:{(launch.address or 'local').removeprefix('ray://')}", quantization=launch.quantization, spot=0,
                       cap_cny=cap.cap_cny, estimate_cny=None, estimate_s=None, dir=str(s.run_dir), created_at=clock.now())
    finally:
        led.close()


def drive(launch: Launch, home: Path, cluster: clustermod.RayCluster, on_progress=lambda _: None,
          clock: Clock = SYSTEM) -> str:
    """Make the run's lease actor and drive the run to its end; its final state."""
    s = launch.setup
    led = homes.ledger(home, clock)
    try:
        try:
            cluster.start(s.run_id, [t["name"] for t in s.job["tasks"]], s.policy.lease_s, s.grace_s, s.poll_s)
        except BaseException as e:  # Ray's own errors, Ctrl-C: the run ended before any task was admitted
            why = f"the run's lease actor could not be made on the cluster ({type(e).__name__}: {str(e).strip()[:150]})"
            led.update_run(s.run_id, state="failed", phase="failed", finished_at=clock.now(), reason=why)
            if not isinstance(e, Exception):
                raise
            raise RunError(why + "; nothing was admitted or billed", "check the cluster (`ray status` on its head): the "
                           "actor needs the head node and the runtime_env's py_modules") from None
        return Controller(led, cluster, s, clock, on_progress).run()
    finally:
        cluster.close()
        led.close()

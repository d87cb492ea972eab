"""The optimizer: enumerate offers x GPU count x quantization x spot/on-demand, drop what cannot
run (memory with headroom, bf16 / LLM.int8 support, the plan's quality floor) with a reason, cost
every survivor for the whole plan under its offer's billing rules, rank by cost (or time) and keep
the budget.

Memory and time depend only on (GPU, count, quantization), so they are computed once per such
group and shared by every offer of it; an offer then costs one Decimal product (planner/money.py's billing
rule: exact, rounded only where it is shown). That is what lets a 100,000-offer catalog plan in well under
the 2 s target.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from decimal import Decimal

from .architecture import inventory, param_breakdown
from .assumptions import Assumptions
from .calibration import Calibration
from .catalog import Catalog
from .errors import BudgetTooSmall, CatalogError, InputError
from .memory import Parts, Peak, WeightLayout, card_parts, from_parts, peak_of, plan_peak, weight_layout
from .money import billed_seconds, charge, display, unrounded
from .models import (
    GIB,
    QUALITY_RANK,
    EvalPlan,
    Gpu,
    MemoryEstimate,
    ModelSpec,
    ModelSummary,
    Offer,
    PlanReport,
    Recommendation,
    Rejection,
    TimeEstimate,
)
from .speed import ModelCost, plan_time
from .workload import task_loads


@dataclass(slots=True)
class Option:
    """A (GPU, count, quantization) that fits, with everything offers of it share."""

    gpu: Gpu
    gpu_count: int
    usable_mib: int
    quant: str
    memory: MemoryEstimate
    skipped: dict[str, str]
    notes: list[str]
    times: dict[tuple[bool, bool], TimeEstimate] = field(default_factory=dict)  # (aws, spot) -> time


@dataclass(slots=True)
class Candidate:
    offer: Offer
    option: Option
    spot: bool
    price_cny_h: Decimal
    time: TimeEstimate
    billed_s: int
    cost_cny: Decimal
    fits_budget: bool

    @property
    def hours(self) -> float:
        return self.time.total_s / 3600

    @classmethod
    def of(cls, row: tuple, budget: Decimal) -> Candidate:
        o, opt, spot, price, t, billed, cost = row[4:]
        return cls(o, opt, spot, price, t, billed, cost, cost <= budget)


@dataclass
class Optimization:
    report: PlanReport
    rows: list[tuple]  # every candidate within budget + the cheapest over-budget row per rig

    @property
    def candidates(self) -> list[Candidate]:
        """Candidate objects for the rows (built on demand: a big catalog has hundreds of thousands)."""
        return [Candidate.of(row, self.report.budget_cny) for row in self.rows]

    def shortfall(self, plan: str, model: str) -> BudgetTooSmall | None:
        """The error to raise when nothing fits the budget: it names the cheapest option."""
        if self.report.recommendation is not None:
            return None
        if not self.rows:
            return BudgetTooSmall(f"nothing can run plan {plan} on {model}: every candidate was rejected",
                                  "see the rejected table; allow nf4, a larger GPU, or more GPUs per instance")
        c = Candidate.of(min(self.rows, key=lambda r: r[-1]), self.report.budget_cny)
        return BudgetTooSmall(
            f"{self.report.budget_cny} CNY is not enough for plan {plan}: the cheapest option is {c.offer.id} "
            f"({c.option.gpu.name} x{c.option.gpu_count}, {c.option.quant}{', spot' if c.spot else ''}) at "
            f"{display(c.cost_cny)} CNY",
            "raise --yuan, or make the plan smaller (fewer samples, smaller images)")


def _sixteen(gpu: Gpu, allowed: list[str]) -> str | None:
    """The 16-bit dtype this card runs: bf16 where supported and allowed, else fp16."""
    if gpu.bf16 and "bf16" in allowed:
        return "bf16"
    return "fp16" if "fp16" in allowed else None


def _gib(b: float) -> float:
    return round(b / GIB, 2)


class _Planner:
    def __init__(self, plan: EvalPlan, spec: ModelSpec, a: Assumptions, calibration: Calibration | None = None) -> None:
        self.plan, self.spec, self.a, self.cal = plan, spec, a, calibration
        self.inv = inventory(spec)
        self.mc = ModelCost(spec, self.inv)
        self.loads = task_loads(plan, spec, a)
        self.peak = plan_peak(self.loads)
        self.verify_peak = plan_peak(self.loads, sixteen_bit=True)
        self.sweep = [(t.name, p) for t in self.loads if t.kind == "memory_sweep" for p in t.passes]
        self.layouts: dict[str, WeightLayout] = {}
        self.parts: dict[tuple[str, int, Peak], Parts] = {}

    def _parts(self, quant: str, peak: Peak, count: int) -> Parts:
        """Card totals do not depend on the card's size: split once per (quant, count, peak)."""
        key = (quant, count, peak)
        if key not in self.parts:
            self.parts[key] = card_parts(self.spec, self.layout(quant), quant, peak, count, self.a)
        return self.parts[key]

    def memory(self, quant: str, peak: Peak, count: int, usable: int) -> MemoryEstimate:
        return from_parts(self._parts(quant, peak, count), quant, self.layout(quant).total, usable)

    def fits(self, quant: str, peak: Peak, count: int, usable: int) -> bool:
        return max(p[-1] for p in self._parts(quant, peak, count)) <= usable

    def layout(self, quant: str) -> WeightLayout:
        if quant not in self.layouts:
            key = "bf16" if quant == "fp16" else quant
            self.layouts[quant] = self.layouts.get(key) or weight_layout(
                self.spec, self.inv, quant, self.plan.keep_vision_16bit, self.plan.double_quant)
        return self.layouts[quant]

    def option(self, gpu: Gpu, count: int, usable_mib: int, quant: str) -> Option | str:
        """An Option if `quant` runs on count x gpu, else the one-line reason it cannot."""
        if quant == "bf16" and not gpu.bf16:
            return f"no bf16 on {gpu.name} (compute capability {gpu.compute_capability}); allow fp16"
        if quant == "int8" and gpu.compute_capability < 7.5:
            return f"LLM.int8 needs compute capability >= 7.5; {gpu.name} has {gpu.compute_capability}"
        usable = usable_mib * 1024**2
        peak = self.peak or self.verify_peak or peak_of([(p, 1) for _, p in self.sweep])
        mem = self.memory(quant, peak, count, usable)
        if not mem.fits:
            return f"{mem.reason}; {gpu.name} has {usable_mib / 1024:.1f} GiB"
        skipped: dict[str, str] = {}
        sixteen = _sixteen(gpu, ["bf16", "fp16"])
        for t in self.loads:
            if not t.sixteen_bit:
                continue
            if quant in ("fp16", "bf16"):
                skipped[t.name] = "the plan already runs in 16-bit"
                continue
            assert self.verify_peak is not None and sixteen is not None
            m16 = self.memory(sixteen, self.verify_peak, count, usable)
            if not m16.fits:
                skipped[t.name] = f"16-bit model {m16.reason}; {gpu.name} has {usable_mib / 1024:.1f} GiB"
        notes = []
        oom = [f"{p.visual} visual tokens ({name})" for name, p in self.sweep
               if not self.fits(quant, peak_of([(p, 1)]), count, usable)]
        if oom:
            notes.append("memory sweep predicted to run out of memory at " + ", ".join(oom) +
                         " (recorded as a result, the run goes on)")
        return Option(gpu, count, usable_mib, quant, mem, skipped, notes)

    def time(self, opt: Option, aws: bool, spot: bool) -> TimeEstimate:
        key = (aws, spot)
        if key not in opt.times:
            sixteen = _sixteen(opt.gpu, ["bf16", "fp16"]) or "fp16"
            provider = "aws" if aws else "ssh"  # every other offer is a host the runner reaches over SSH
            a = self.a
            if self.cal is not None:  # this rig's fitted factors, where `budget calibrate` has some
                a, said = self.cal.for_rig(self.a, opt.gpu.name, opt.quant, provider)
                if said and said not in opt.notes:
                    opt.notes.append(said)
            opt.times[key] = plan_time(self.mc, self.loads, opt.quant, sixteen, opt.gpu, opt.gpu_count,
                                       provider, a, not self.plan.keep_vision_16bit, opt.skipped, spot=spot)
        return opt.times[key]


def optimize(plan: EvalPlan, spec: ModelSpec, catalog: Catalog, budget_cny: Decimal, *,
             assumptions: Assumptions | None = None, providers: list[str] | None = None,
             spot: bool | None = None, objective: str = "cost", top: int = 5,
             quantizations: list[str] | None = None, calibration: Calibration | None = None) -> Optimization:
    """Rank every candidate for `plan` on `spec` within `budget_cny`.

    `spot`: None considers both, True only spot prices, False only on-demand. `calibration`: fitted
    factors per GPU x quantization and per provider (`budget calibrate`), used where they exist. Raises InputError
    for a non-positive budget or an empty (filtered) catalog; a budget too small for anything is
    not an error here: the report has no recommendation and the CLI says so."""
    if budget_cny <= 0:
        raise InputError(f"budget must be positive, got {budget_cny} CNY", "pass --yuan with an amount above 0")
    if objective not in ("cost", "time"):
        raise InputError(f"unknown objective {objective!r}", "use --objective cost or --objective time")
    a = assumptions or Assumptions()
    offers = [o for o in catalog.offers if (not providers or o.provider in providers)
              and (spot is not True or o.spot_price is not None)]
    if not offers:
        raise CatalogError("no offers to plan over" + (f" for provider(s) {', '.join(providers)}" if providers else "")
                           + (" with a spot price" if spot else ""),
                           "check `budget prices list`; add offers with `budget prices import FILE`")
    pl = _Planner(plan, spec, a, calibration)
    allowed = list(quantizations or plan.quantizations)
    unknown = [q for q in allowed if q not in QUALITY_RANK]
    if unknown:
        raise InputError(f"unknown quantization {unknown[0]!r}", "use fp16, bf16, int8 or nf4")
    floor = QUALITY_RANK[plan.quality_floor]
    rejected: dict[tuple[str, int, str | None, str], list[Offer]] = {}
    for q in allowed:
        if QUALITY_RANK[q] < floor:
            rejected[("*", 0, q, f"below the plan's quality floor ({plan.quality_floor})")] = offers
    quants = [q for q in allowed if QUALITY_RANK[q] >= floor]
    # fp16 and bf16 cost the same: a card runs the one it supports (bf16 preferred)
    groups: dict[tuple[str, int, int], list[Offer]] = {}
    resolved: dict[str, Gpu | None] = {}
    for o in offers:
        gpu = resolved[o.gpu] if o.gpu in resolved else resolved.setdefault(o.gpu, catalog.gpu(o.gpu))
        if gpu is None:
            raise CatalogError(f"offer {o.id} names unknown GPU {o.gpu!r}", "add it to $BUDGET_HOME/catalog/gpus.csv")
        usable = min(gpu.memory_mib, o.gpu_memory_mib or gpu.memory_mib)
        groups.setdefault((gpu.name, o.gpu_count, usable), []).append(o)

    fx = {c: r.cny_per_unit for c, r in catalog.fx.items()}
    # Rows are plain tuples that sort by the objective, then an index (so payloads are never compared):
    # (key1, key2, key3, index, offer, option, spot, price CNY/h, time, billed s, cost CNY)
    within: list[tuple] = []
    over: dict[tuple[str, int, str], list] = {}  # (gpu, count, quant) -> [cheapest row, count]
    by_time = objective == "time"
    n = 0
    for (gname, count, usable), gofs in groups.items():
        gpu = catalog.gpus[gname]
        sixteen = _sixteen(gpu, quants)
        # offers that share billing, market and boot time share the billed seconds of an option
        priced: dict[tuple[bool, bool, int, int], list[tuple[Offer, Decimal]]] = {}
        for o in gofs:
            rate = fx.get(o.currency)
            if rate is None:
                raise CatalogError(f"no exchange rate for {o.currency} (offer {o.id})", f"pass --fx {o.currency}=RATE")
            for is_spot, price in ((False, o.price), (True, o.spot_price)):
                if price is not None and (spot is None or spot == is_spot):
                    key = (o.provider == "aws", is_spot, o.billing_increment_s, o.billing_minimum_s)
                    priced.setdefault(key, []).append((o, price * rate))
        for q in quants:
            if q in ("fp16", "bf16") and q != sixteen:
                if sixteen is None:
                    rejected[(gname, count, q, f"no bf16 on {gname} (compute capability {gpu.compute_capability}); "
                              "allow fp16")] = gofs
                continue
            opt = pl.option(gpu, count, usable, q)
            if isinstance(opt, str):
                rejected[(gname, count, q, opt)] = gofs
                continue
            quality = -QUALITY_RANK[q]
            for (aws, is_spot, inc, minimum), items in priced.items():
                t = pl.time(opt, aws, is_spot)
                billed = billed_seconds(t.total_s, inc, minimum)
                for o, price_cny in items:
                    cost = charge(price_cny, billed)
                    row = ((t.total_s, cost, quality) if by_time else (cost, quality, t.total_s)) + (
                        n, o, opt, is_spot, price_cny, t, billed, cost)
                    n += 1
                    if cost <= budget_cny:
                        within.append(row)
                    else:
                        g = over.setdefault((gname, count, q), [row, 0])
                        g[0] = min(g[0], row)
                        g[1] += 1
    shown = heapq.nsmallest(max(top, 1), within)
    if len(shown) < top:
        shown += sorted(g[0] for g in over.values())[: top - len(shown)]
    rej = [Rejection(gpu=g, gpu_count=c, quantization=q, reason=r, offers=len(os_), example=os_[0].id)
           for (g, c, q, r), os_ in rejected.items()]
    rej += [Rejection(gpu=g, gpu_count=c, quantization=q, offers=k, example=row[4].id,
                      reason=f"over budget: from {display(row[-1])} CNY > {display(budget_cny)} CNY")
            for (g, c, q), (row, k) in over.items()]
    pb = param_breakdown(spec)
    report = PlanReport(
        budget_cny=budget_cny, objective=objective, plan=plan.name,
        recommendation=_out(shown[0], budget_cny) if within else None,
        alternatives=[_out(c, budget_cny) for c in (shown[1:] if within else shown)],
        rejected=rej,
        model=ModelSummary(name=spec.name, hf_id=spec.hf_id, model_type=spec.model_type, params=pb,
                           weights_gib={q: _gib(pl.layout(q).total) for q in ("bf16", "int8", "nf4")}),
        assumptions=a.describe(), catalog=catalog.files, candidates=n + sum(len(v) for v in rejected.values()),
        feasible=n, within_budget=len(within))
    return Optimization(report, within + [g[0] for g in over.values()])


def _out(row: tuple, budget: Decimal) -> Recommendation:
    c = Candidate.of(row, budget)
    o, opt = c.offer, c.option
    cost = unrounded(c.cost_cny)  # exact (planner/money.py's billing rule): rounded only where it is shown
    inc = o.billing_increment_s
    billing = ("per started hour" if inc == 3600 else f"per {inc} s") + (
        f", minimum {o.billing_minimum_s} s" if o.billing_minimum_s > inc else "")
    return Recommendation(
        provider=o.provider, instance_type=o.instance_type, region=o.region, gpu=opt.gpu.name,
        gpu_count=opt.gpu_count, quantization=opt.quant, spot=c.spot, price_cny_per_hour=unrounded(c.price_cny_h),
        price_original_per_hour=(o.spot_price if c.spot else o.price) or Decimal(0), currency=o.currency,
        billing=billing, gpu_memory_gib=round(opt.usable_mib / 1024, 2),
        memory_per_gpu_gib=_gib(max(g.total for g in opt.memory.per_gpu)), memory=opt.memory.per_gpu,
        hours=round(c.hours, 3), time=c.time, billed_hours=round(c.billed_s / 3600, 4), cost_cny=cost,
        fits_budget=c.fits_budget, budget_left_cny=unrounded(budget - cost),  # adds up with the cost (to 28 digits)
        plan_fits_times=int(budget // c.cost_cny) if c.cost_cny > 0 else 0,
        notes=list(opt.notes) + [f"{k} skipped: {v}" for k, v in opt.skipped.items()],
        offer_source=o.source, offer_date=o.date)

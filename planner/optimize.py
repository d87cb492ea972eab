"""The optimizer: enumerate offers x GPU count x quantization x engine x spot/on-demand, drop what cannot
run (memory with headroom, bf16 / LLM.int8 support, what each engine runs, the plan's quality floor) with a
reason, cost every survivor for the whole plan under its offer's billing rules, rank by cost (or time) and keep
the budget; every row shown says what the other engines would cost on its offer, or why they cannot run there.

Memory and time depend only on (GPU, count, usable memory, quantization, engine), so they are computed once per
such group (an Option) and shared by every offer of it. Within a group, offers that share billing rule,
market (spot or not) and boot time (AWS or not) - a bucket - share the billed seconds of an option, and
a cost (planner/money.py's billing rule: exact, never rounded) never falls as the price rises. So each
bucket's prices are sorted once, and for each option a binary search finds how many fit the budget, the
cheapest few are the ranking's candidates and the first one past the budget is the cheapest over it: no
per-offer work per option. Every count the report prints (candidates, runnable, within budget, offers per
rejection) stays exact; the rows kept are the best `top` within budget per (GPU, count, quantization) -
the overall best are among them - and the cheapest over budget of each (per engine too).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING

from . import deadline as dl
from . import engines as eng
from . import layouts as lay
from .architecture import inventory, param_breakdown
from .assumptions import Assumptions, band_text
from .catalog import Catalog
from .errors import BudgetTooSmall, CatalogError, InputError
from .layouts import Option
from .memory import Parts, Peak, WeightLayout, card_parts, from_parts, peak_of, plan_peak, weight_layout
from .models import (
    ENGINE_NAMES,
    GIB,
    QUALITY_RANK,
    EngineComparison,
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
from .money import billed_seconds, charge, display, unrounded
from .offers import OfferTable
from .speed import ModelCost, verifies, with_fixed
from .workload import task_loads

if TYPE_CHECKING:
    from .calibration import Calibration


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
    # the best `top` rows within budget per (GPU, count, quantization), in enumeration order, then the cheapest
    # over-budget row per (GPU, count, quantization); every figure of the report counts all candidates
    rows: list[tuple]
    deadline: dl.Deadline | None = None

    @property
    def candidates(self) -> list[Candidate]:
        """Candidate objects for the rows kept."""
        return [Candidate.of(row, self.report.budget_cny) for row in self.rows]

    def shortfall(self, plan: str, model: str) -> BudgetTooSmall | None:
        """The error to raise when nothing fits the budget: it names the cheapest option."""
        if self.report.recommendation is not None:
            return None
        if self.deadline is not None and (d := self.report.deadline) and (d.nearest is not None or self.rows):
            return dl.refusal(self.deadline, self.report.budget_cny, d.nearest)
        if not self.rows:
            return BudgetTooSmall(f"nothing can run plan {plan} on {model}: every candidate was rejected",
                                  "see the rejected table; allow nf4, a larger GPU, or more GPUs per instance")
        c = Candidate.of(min(self.rows, key=lambda r: r[-1]), self.report.budget_cny)
        return BudgetTooSmall(
            f"{self.report.budget_cny} CNY is not enough for plan {plan}: the cheapest option is {c.offer.id} "
            f"({c.option.gpu.name} x{c.option.gpu_count}{f' {c.option.layout}' if c.option.gpu_count > 1 else ''}, "
            f"{c.option.quant}, {c.option.engine}{', spot' if c.spot else ''}) at "
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
    """What offers of one (GPU, count, usable memory, quantization) share: memory, the reason it cannot run, time."""

    def __init__(self, plan: EvalPlan, spec: ModelSpec, a: Assumptions, calibration: Calibration | None = None) -> None:
        self.plan, self.spec, self.a, self.cal = plan, spec, a, calibration
        self.inv = inventory(spec)
        self.mc = ModelCost(spec, self.inv)
        self.loads = task_loads(plan, spec, a)
        self.peak = plan_peak(self.loads)
        self.verify_peak = plan_peak(self.loads, sixteen_bit=True)
        self.sweep = [(t.name, p) for t in self.loads if t.kind == "memory_sweep" for p in t.passes]
        self.sweep_peaks = [peak_of([(p, 1)]) for _, p in self.sweep]
        self.layouts: dict[str, WeightLayout] = {}
        self.parts: dict[tuple[str, int, Peak], Parts] = {}
        self.times: dict[tuple, tuple[Assumptions, dict[str, float]]] = {}  # a rig's seconds by task
        self.options: dict[tuple, Option | str] = {}
        self.task_times: dict[tuple, float] = {}  # a task's batch's seconds on a rig (hf and transformers share them)
        self.server_weights: dict[str, int] = {}

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

    def option(self, gpu: Gpu, count: int, usable_mib: int, quant: str, engine: str = "hf",
               replicas: bool = False) -> Option | str:
        """An Option if `engine` runs `quant` on count x gpu (`replicas`: a model per card), else the one-line reason
        it cannot (computed once)."""
        key = (gpu.name, id(gpu), count, usable_mib, quant, engine, replicas)
        got = self.options.get(key)
        if got is None:
            why = eng.refusal(engine, quant, self.spec, gpu, count) if not replicas else None
            if replicas:  # what one card of this rig runs, on every card
                one = self.option(gpu, 1, usable_mib, quant, engine)
                got = one if isinstance(one, str) else lay.replicate(one, count)
            elif why is not None:
                got = why
            elif engine in eng.SERVERS:
                got = self._server_option(gpu, count, usable_mib, quant, engine)
            elif engine == "transformers":  # hf's memory and skips; its own times (one request at a time)
                hf = self.option(gpu, count, usable_mib, quant)
                got = hf if isinstance(hf, str) else Option(
                    gpu, count, usable_mib, quant, hf.parts, hf.weights_total, hf.skipped, list(hf.notes),
                    engine="transformers")
            else:
                got = self._hf_option(gpu, count, usable_mib, quant)
            self.options[key] = got
        return got

    def _server_option(self, gpu: Gpu, count: int, usable_mib: int, quant: str, engine: str) -> Option | str:
        skipped = {t.name: why for t in self.loads if (why := eng.skips(engine, t, quant))}
        if quant not in self.server_weights:
            self.server_weights[quant] = eng.server_weights(self.inv, quant)
        total = self.server_weights[quant]
        usable = usable_mib * 1024**2
        mem = eng.server_memory(self.spec, total, self.loads, skipped, gpu, count, usable, self.a)
        if isinstance(mem, str):
            return mem
        return Option(gpu, count, usable_mib, quant, (mem.card(self.spec.text.num_hidden_layers),) * count, total,
                      skipped, eng.server_notes(engine, mem, gpu, count, quant), engine=engine, server=mem)

    def _hf_option(self, gpu: Gpu, count: int, usable_mib: int, quant: str) -> Option | str:
        if quant == "bf16" and not gpu.bf16:
            return f"no bf16 on {gpu.name} (compute capability {gpu.compute_capability}); allow fp16"
        if quant == "int8" and gpu.compute_capability < 7.5:
            return f"LLM.int8 needs compute capability >= 7.5; {gpu.name} has {gpu.compute_capability}"
        usable = usable_mib * 1024**2
        peak = self.peak or self.verify_peak or peak_of([(p, 1) for _, p in self.sweep])
        if not self.fits(quant, peak, count, usable):
            return f"{self.memory(quant, peak, count, usable).reason}; {gpu.name} has {usable_mib / 1024:.1f} GiB"
        skipped: dict[str, str] = {}
        sixteen = _sixteen(gpu, ["bf16", "fp16"])
        for t in self.loads:
            if not t.sixteen_bit:
                continue
            if quant in ("fp16", "bf16"):
                skipped[t.name] = "the plan already runs in 16-bit"
                continue
            assert self.verify_peak is not None and sixteen is not None
            if not self.fits(sixteen, self.verify_peak, count, usable):
                m16 = self.memory(sixteen, self.verify_peak, count, usable)
                skipped[t.name] = f"16-bit model {m16.reason}; {gpu.name} has {usable_mib / 1024:.1f} GiB"
        notes = []
        oom = [f"{p.visual} visual tokens ({name})" for (name, p), pk in zip(self.sweep, self.sweep_peaks)
               if not self.fits(quant, pk, count, usable)]
        if oom:
            notes.append("memory sweep predicted to run out of memory at " + ", ".join(oom) +
                         " (recorded as a result, the run goes on)")
        return Option(gpu, count, usable_mib, quant, self._parts(quant, peak, count), self.layout(quant).total,
                      skipped, notes)

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
            # options of one rig that differ only in card memory (and not in what they skip, nor in the requests a
            # server holds in flight) run their tasks equally long; the provider and market add fixed costs
            memo = (opt.gpu.name, id(opt.gpu), opt.gpu_count, opt.quant, id(a), tuple(opt.skipped.items()),
                    opt.engine, opt.concurrency, opt.replicated)
            if memo not in self.times:  # replicas: each card a 1-card rig running its shard, the slowest one's
                self.times[memo] = (a, lay.slowest([eng.plan_tasks(
                    self.mc, loads, opt.quant, sixteen, opt.engine, opt.gpu, opt.gpu_count // opt.replicas, a,
                    opt.concurrency, opt.skipped, not self.plan.keep_vision_16bit, self.task_times)
                    for loads in lay.shard_loads(self.plan, self.loads, opt.replicas)]))
            tasks = self.times[memo][1]
            opt.times[key] = with_fixed(self.mc, tasks, opt.quant, provider, a, opt.skipped, spot,
                                        verifies(self.loads, opt.quant, opt.skipped),
                                        eng.start_seconds(opt.engine, provider, a))
        return opt.times[key]


class _Bucket:
    """Offers of one group that share billing rule, market and boot time (so an option's billed seconds):
    their table rows in catalog order, and the same rows ordered by their price in CNY per hour (equal prices
    in catalog order), each list less `base`. Exact prices (price x rate) are computed for the few rows a
    search looks at."""

    __slots__ = ("rows", "order", "base", "_price", "_known")

    def __init__(self, pieces: list[tuple[list[int], list[int], int, list, Decimal]]) -> None:
        """`pieces`: (rows in catalog order, the same by price, base, price column, rate) of each shape in it."""
        self._known: dict[int, Decimal] = {}
        if len(pieces) == 1:
            self.rows, self.order, self.base, col, rate = pieces[0]
            self._price = lambda row: col[row] * rate
        else:  # shapes in several currencies (or providers) share it: price every row, then order them
            self.base = 0
            self._known = {row + base: col[row + base] * rate for rows, _, base, col, rate in pieces for row in rows}
            self.rows = sorted(self._known)
            self.order = sorted(self.rows, key=self._known.__getitem__)
            self._price = self._known.__getitem__

    def at(self, k: int) -> int:
        """The table row of the k-th cheapest offer."""
        return self.order[k] + self.base

    def price(self, row: int) -> Decimal:
        p = self._known.get(row)
        if p is None:
            p = self._known[row] = self._price(row)
        return p

    def position(self, row: int) -> int:
        """Where table row `row` is among the bucket's rows in catalog order (its place in the enumeration)."""
        return bisect_left(self.rows, row - self.base)

    def row(self, position: int) -> int:
        return self.rows[position] + self.base

    def rank(self, billed: int, budget: Decimal, want: int
             ) -> tuple[int, list[tuple[Decimal, int]], tuple[Decimal, int] | None]:
        """(how many cost at most `budget`, the best `want` of those as (cost, position), the cheapest over it)
        for `billed` seconds. A cost never falls as the price rises, and equal costs rank by position."""
        at, price, m = self.at, self.price, len(self.order)
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) // 2
            if charge(price(at(mid)), billed) <= budget:
                lo = mid + 1
            else:
                hi = mid
        within = lo
        best: list[tuple[Decimal, int]] = []
        if within:
            end = self._ties(min(want, within), within, billed)
            best = heapq.nsmallest(want, ((charge(price(at(k)), billed), self.position(at(k))) for k in range(end)))
        over = None
        if within < m:
            end = self._ties(within + 1, m, billed)
            over = min((charge(price(at(k)), billed), self.position(at(k))) for k in range(within, end))
        return within, best, over

    def _ties(self, end: int, limit: int, billed: int) -> int:
        """Past `end`, up to `limit`: every row whose cost equals that of the last one before `end` (equal
        prices, found by bisection; or prices apart that the Decimal rounding of the cost joins)."""
        at, price = self.at, self.price
        last_price = price(at(end - 1))
        last = charge(last_price, billed)
        while end < limit:
            if price(at(end)) == last_price:
                lo, hi = end, limit
                while lo < hi:
                    mid = (lo + hi) // 2
                    if price(at(mid)) == last_price:
                        lo = mid + 1
                    else:
                        hi = mid
                end = lo
            elif charge(price(at(end)), billed) == last:
                last_price = price(at(end))
                end += 1
            else:
                break
        return end


def _picked(table: OfferTable, providers: list[str] | None, spot: bool | None,
            manual: set[str] = frozenset()) -> list[tuple]:
    """The shapes to plan over (of `providers`, with a spot price where `spot` is True) as (shape key, shape,
    rows planned less its base); offers of a `manual` provider (a person runs it: catalog.ProviderTerms) only when
    `providers` names it. CatalogError when no offer is left."""
    picked, unasked = [], set()
    for key, s in table.shapes().items():
        if providers and key[3] not in providers:
            continue
        if not providers and key[3] in manual:
            unasked.add(key[3])
            continue
        rows = s.with_spot if spot is True else s.rows
        if rows:
            picked.append((key, s, rows))
    if not picked and unasked:
        names = ", ".join(sorted(unasked))
        raise CatalogError(f"the only offers left are of {names}, which a person runs: planned only when asked for",
                           f"plan it with `budget plan --provider {min(unasked)}`")
    if not picked:
        raise CatalogError("no offers to plan over" + (f" for provider(s) {', '.join(providers)}" if providers else "")
                           + (" with a spot price" if spot else ""),
                           "check `budget prices list`; add offers with `budget prices import FILE`")
    return picked


def _first(items: list[tuple]) -> int:
    """The first table row of picked shapes."""
    return min(rows[0] + s.base for _, s, rows in items)


def _groups(table: OfferTable, picked: list[tuple], spot: bool | None, catalog: Catalog,
            fx: dict[str, Decimal]) -> list[tuple[Gpu, int, int, int, int, list]]:
    """(gpu, count, usable MiB, offers, first row, buckets) per group of the picked offers, in the order the
    groups first appear; buckets: ((aws, spot, increment, minimum), _Bucket) in the order an offer-by-offer pass
    meets them. Raises CatalogError for an offer whose GPU the catalog lacks, or (group by group) whose currency
    has no rate."""
    c = table.cols
    resolved: dict[str, Gpu | None] = {}
    for (g, *_), _, _ in picked:
        if g not in resolved:
            resolved[g] = catalog.gpu(g)
    unknown = [item for item in picked if resolved[item[0][0]] is None]
    if unknown:
        i = _first(unknown)
        raise CatalogError(f"offer {table.offer_id(i)} names unknown GPU {c['gpu'][i]!r}",
                           "add it to $BUDGET_HOME/catalog/gpus.csv")
    groups: dict[tuple[str, int, int], list] = {}
    for item in picked:
        g, n, m = item[0][:3]
        spec = resolved[g]
        usable = min(spec.memory_mib, m or spec.memory_mib)
        groups.setdefault((spec.name, n, usable), []).append(item)
    out = []
    for (gname, n, usable), items in sorted(groups.items(), key=lambda kv: _first(kv[1])):
        missing = [item for item in items if item[0][6] not in fx]
        if missing:
            i = _first(missing)
            cur = c["currency"][i]
            raise CatalogError(f"no exchange rate for {cur} (offer {table.offer_id(i)})", f"pass --fx {cur}=RATE")
        buckets: dict[tuple, list] = {}  # (aws, spot, inc, min) -> [first event, pieces]
        for (_, _, _, provider, inc, minimum, cur), s, rows in items:
            for is_spot in (False, True):
                if spot is not None and spot != is_spot:
                    continue
                piece = (s.with_spot, s.by_spot, s.base, c["spot_price"], fx[cur]) if is_spot else \
                    (rows, s.by_price, s.base, c["price"], fx[cur])
                if not piece[0]:
                    continue
                first = 2 * (piece[0][0] + s.base) + is_spot  # an offer's on-demand price is met before its spot price
                b = buckets.setdefault((provider == "aws", is_spot, inc, minimum), [first, []])
                b[0] = min(b[0], first)
                b[1].append(piece)
        ordered = [(key, _Bucket(pieces)) for key, (_, pieces) in sorted(buckets.items(), key=lambda kv: kv[1][0])]
        out.append((catalog.gpus[gname], n, usable, sum(len(rows) for _, _, rows in items), _first(items), ordered))
    return out


def optimize(plan: EvalPlan, spec: ModelSpec, catalog: Catalog, budget_cny: Decimal, *,
             assumptions: Assumptions | None = None, providers: list[str] | None = None,
             spot: bool | None = None, objective: str = "cost", top: int = 5,
             quantizations: list[str] | None = None, calibration: Calibration | None = None,
             engines: list[str] | None = None, layouts: tuple[str, ...] | None = None,
             deadline: dl.Deadline | None = None) -> Optimization:
    """Rank every candidate for `plan` on `spec` within `budget_cny`.

    `spot`: None considers both, True only spot prices, False only on-demand. `providers`: only these (default:
    every provider but those a person runs - declared `manual` in the catalog's terms - planned only when named).
    `quantizations` and `engines`: only these (default: the plan's `quantizations` and `engines`). `calibration`: fitted
    factors per GPU x quantization and per provider (`budget calibrate`), used where they exist. `layouts`: how a
    multi-GPU offer is costed - `split` and/or `replicas` (planner/layouts.py; default: both).
    `deadline`: only candidates whose time band's upper end is within it are ranked (planner/deadline.py; the
    report's `deadline` says what it costs). Raises InputError
    for a non-positive budget or an empty (filtered) catalog; a budget too small for anything is
    not an error here: the report has no recommendation and the CLI says so."""
    if budget_cny <= 0:
        raise InputError(f"budget must be positive, got {budget_cny} CNY", "pass --yuan with an amount above 0")
    if objective not in ("cost", "time"):
        raise InputError(f"unknown objective {objective!r}", "use --objective cost or --objective time")
    a = assumptions or Assumptions()
    layouts = lay.checked(layouts)
    watch = None if deadline is None else dl.Watch(deadline, budget_cny)
    table = OfferTable.of(catalog.offers)
    picked = _picked(table, providers, spot, catalog.manual())
    pl = _Planner(plan, spec, a, calibration)
    allowed = list(quantizations or plan.quantizations)
    unknown = [q for q in allowed if q not in QUALITY_RANK]
    if unknown:
        raise InputError(f"unknown quantization {unknown[0]!r}", "use fp16, bf16, fp8, int8 or nf4")
    engines = list(dict.fromkeys(engines or plan.engines))
    if bad := [e for e in engines if e not in ENGINE_NAMES]:
        raise InputError(f"unknown engine {bad[0]!r}", "use " + ", ".join(ENGINE_NAMES))
    floor = QUALITY_RANK[plan.quality_floor]
    # (gpu, count, quant, reason, engine) -> [offers, first row]
    rejected: dict[tuple[str, int, str | None, str, str | None], list[int]] = {}
    for q in allowed:
        if QUALITY_RANK[q] < floor:
            rejected[("*", 0, q, f"below the plan's quality floor ({plan.quality_floor})", None)] = [
                sum(len(rows) for _, _, rows in picked), _first(picked)]
    quants = [q for q in allowed if QUALITY_RANK[q] >= floor]
    # (quant, engine) pairs no card runs, with the reason; counted once per offer like the quality floor
    never = {(q, e): why for q in quants for e in engines if (why := eng.policy_refusal(e, q, spec))}
    for (q, e), why in never.items():
        rejected[("*", 0, q, why, e)] = [sum(len(rows) for _, _, rows in picked), _first(picked)]
    # fp16 and bf16 cost the same: a card runs the one it supports (bf16 preferred)
    groups = _groups(table, picked, spot, catalog, {c: r.cny_per_unit for c, r in catalog.fx.items()})

    # Rows are plain tuples that sort by the objective, then their index in the enumeration (offer by offer,
    # as the buckets hold them), so payloads are never compared:
    # (key1, key2, key3, index, offer, option, spot, price CNY/h, time, billed s, cost CNY)
    want = max(top, 1)
    best: dict[tuple[str, int, str, str, str], list[tuple]] = {}  # (gpu, count, quant, engine, layout) -> its best
    by_bucket: list[tuple[int, list[tuple]]] = []  # each bucket's best rows within budget, with its billed seconds
    # at the upper end of the time band (ranked by that only when the cheapest estimate could overrun the budget)
    over: dict[tuple[str, int, str, str, str], list] = {}  # (gpu, count, quant, engine, layout) -> [cheapest, count]
    by_time = objective == "time"
    n = within = 0

    def row(bucket: _Bucket, base: int, opt: Option, is_spot: bool, t: TimeEstimate, billed: int, quality: int,
            cost: Decimal, j: int) -> tuple:
        key = (t.total_s, cost, quality) if by_time else (cost, quality, t.total_s)
        row_ = bucket.row(j)
        return key + (base + j, table.offer(row_), opt, is_spot, bucket.price(row_), t, billed, cost)


    for gpu, count, usable, offers, first, buckets in groups:
        gname = gpu.name
        sixteen = _sixteen(gpu, quants)
        for q in quants:
            if q in ("fp16", "bf16") and q != sixteen:
                if sixteen is None:
                    why = f"no bf16 on {gname} (compute capability {gpu.compute_capability}); allow fp16"
                    _reject(rejected, (gname, count, q, why, None), offers, first)
                continue
            quality = -QUALITY_RANK[q]
            for e in engines:
                if (q, e) in never:
                    continue
                runnable, refused = lay.options(pl.option, gpu, count, usable, q, e, layouts)
                for why in refused:
                    _reject(rejected, (gname, count, q, why, e), offers, first)
                for opt in runnable:
                    group = (gname, count, q, e, opt.layout)
                    for (aws, is_spot, inc, minimum), bucket in buckets:
                        t = pl.time(opt, aws, is_spot)
                        billed = billed_seconds(t.total_s, inc, minimum)
                        if watch is not None and watch.is_late(group, t, bucket, billed, partial(
                                row, bucket, n, opt, is_spot, t, billed, quality)):
                            n += len(bucket.rows)
                            continue
                        fit, cheapest, past = bucket.rank(billed, budget_cny, want)
                        within += fit
                        kept = best.setdefault(group, [])
                        rows = [row(bucket, n, opt, is_spot, t, billed, quality, cost, j) for cost, j in cheapest]
                        kept += rows
                        if len(kept) > want:
                            kept[:] = heapq.nsmallest(want, kept)
                        if rows and not by_time:  # a bucket's cheapest are its cheapest at the band's upper end too
                            by_bucket.append((billed_seconds(t.total_s * (1 + t.band), inc, minimum), rows))
                        if watch is not None and rows:
                            watch.seen(min(rows, key=lambda r: r[-1]))
                        if past is not None:
                            r = row(bucket, n, opt, is_spot, t, billed, quality, *past)
                            g = over.setdefault(group, [r, 0])
                            g[0] = min(g[0], r)
                            g[1] += len(bucket.rows) - fit
                        n += len(bucket.rows)
    kept_within = sorted((r for rs in best.values() for r in rs), key=lambda r: r[3])
    shown = heapq.nsmallest(want, kept_within)
    ranked_by = "time" if by_time else "cost"
    if shown and not by_time and cost_band(shown[0])[1] > budget_cny:
        # the cheapest estimate could cost more than the budget: rank by what each could cost at most
        ranked_by = "cost_high"
        shown = heapq.nsmallest(want, ((charge(r[7], high), r[1], r[2]) + r[3:] for high, rs in by_bucket for r in rs))
    if len(shown) < top:
        shown += sorted(g[0] for g in over.values())[: top - len(shown)]
    rej = [Rejection(gpu=g, gpu_count=c, quantization=q, reason=r, offers=k, example=table.offer_id(first), engine=e)
           for (g, c, q, r, e), (k, first) in rejected.items()]
    rej += lay.over_budget(over, best, budget_cny, len(layouts) > 1)
    rej += watch.rejections(len(layouts) > 1) if watch is not None else []
    pb = param_breakdown(spec)

    def out(r: tuple, how: str = "cost") -> Recommendation:
        return _out(r, budget_cny, a.memory_band, how, _others(pl, r, engines, quants, by_time),
                    lay.versus(pl.option, pl.time, r) if len(layouts) > 1 else None)

    report = PlanReport(
        budget_cny=budget_cny, objective=objective, plan=plan.name,
        recommendation=out(shown[0], ranked_by) if within else None,
        alternatives=[out(c) for c in (shown[1:] if within else shown)], ranked_by=ranked_by,
        rejected=rej,
        model=ModelSummary(name=spec.name, hf_id=spec.hf_id, model_type=spec.model_type, params=pb,
                           weights_gib={q: _gib(pl.layout(q).total) for q in ("bf16", "int8", "nf4")}),
        assumptions=a.describe(), catalog=catalog.files, candidates=n + sum(k for k, _ in rejected.values()),
        feasible=n, within_budget=within)
    if watch is not None:
        report.deadline = watch.report(report.recommendation, out, min(
            (g[0] for g in over.values()), key=lambda r: (r[-1], r[3]), default=None))
    return Optimization(report, kept_within + [g[0] for g in over.values()], deadline)


def _reject(rejected: dict, key: tuple, offers: int, first: int) -> None:
    """Count a group's offers under a reason (groups of one GPU and count that differ in card memory add up)."""
    got = rejected.setdefault(key, [0, first])
    got[0] += offers


def cost_band(row: tuple) -> tuple[Decimal, Decimal]:
    """What a row's offer bills at the lower and upper ends of its time band (the offer's billing rule applied:
    an hourly offer's upper end can be a whole hour more)."""
    o, price, t = row[4], row[7], row[8]
    return tuple(charge(price, billed_seconds(t.total_s * (1 + k * t.band), o.billing_increment_s,
                                              o.billing_minimum_s)) for k in (-1, 1))  # type: ignore[return-value]


def _others(pl: _Planner, row: tuple, engines: list[str], quants: list[str], by_time: bool) -> list[EngineComparison]:
    """The other allowed engines on `row`'s offer and market (planner/engines.py `compare`)."""
    o, opt, is_spot, price = row[4], row[5], row[6], row[7]
    sixteen = _sixteen(opt.gpu, quants)

    def priced(e: str, q: str) -> tuple[float, Decimal] | str | None:
        if q in ("fp16", "bf16") and q != sixteen:
            return None
        other = pl.option(opt.gpu, opt.gpu_count, opt.usable_mib, q, e, opt.replicated)
        if isinstance(other, str):
            return other
        te = pl.time(other, o.provider == "aws", is_spot)
        return te.total_s, charge(price, billed_seconds(te.total_s, o.billing_increment_s, o.billing_minimum_s))

    return eng.compare(opt.engine, opt.quant, row[8].total_s, row[-1], engines, quants, priced, by_time)


def _out(row: tuple, budget: Decimal, memory_band: float, ranked_by: str = "cost",
         others: list[EngineComparison] | None = None, layout: str | None = None) -> Recommendation:
    c = Candidate.of(row, budget)
    o, opt = c.offer, c.option
    cost = unrounded(c.cost_cny)  # exact (planner/money.py's billing rule): rounded only where it is shown
    low, high = cost_band(row)
    notes = list(opt.notes)
    if ranked_by == "cost_high":
        plus = band_text(c.time.band).replace("±", "+")
        notes.insert(0, f"ranked by the upper end of each cost band: the cheapest estimate could cost more than "
                        f"the {display(budget)} CNY budget at {plus} time; this one costs at most {display(high)} CNY")
    inc = o.billing_increment_s
    billing = ("per started hour" if inc == 3600 else f"per {inc} s") + (
        f", minimum {o.billing_minimum_s} s" if o.billing_minimum_s > inc else "")
    return Recommendation(
        provider=o.provider, instance_type=o.instance_type, region=o.region, gpu=opt.gpu.name,
        gpu_count=opt.gpu_count, layout=opt.layout, replicas=opt.replicas, quantization=opt.quant, engine=opt.engine,
        engine_memory_fraction=opt.server.fraction if opt.server else None,
        max_model_len=opt.server.max_model_len if opt.server else None, concurrency=opt.concurrency,
        other_engines=others or [], spot=c.spot, price_cny_per_hour=unrounded(c.price_cny_h),
        price_original_per_hour=(o.spot_price if c.spot else o.price) or Decimal(0), currency=o.currency,
        billing=billing, gpu_memory_gib=round(opt.usable_mib / 1024, 2),
        memory_per_gpu_gib=_gib(max(g.total for g in opt.memory.per_gpu)), memory=opt.memory.per_gpu,
        hours=round(c.hours, 3), hours_high=round(dl.upper_s(c.time) / 3600, 3), time=c.time,
        billed_hours=round(c.billed_s / 3600, 4), cost_cny=cost,
        cost_low_cny=unrounded(low), cost_high_cny=unrounded(high), memory_band=memory_band,
        fits_budget=c.fits_budget, budget_left_cny=unrounded(budget - cost),  # adds up with the cost (to 28 digits)
        plan_fits_times=int(budget // c.cost_cny) if c.cost_cny > 0 else 0,
        notes=notes + ([layout] if layout else []) + [f"{k} skipped: {v}" for k, v in opt.skipped.items()],
        offer_source=o.source, offer_date=o.date)

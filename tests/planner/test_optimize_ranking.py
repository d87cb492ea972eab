"""The optimizer's ranking at scale: it keeps only the best rows per rig, yet every figure the report prints
is the one a full enumeration of every candidate gives (checked against such an enumeration, the way the
optimizer ranked before, on random catalogs with ties, currencies, providers and billing rules); and groups of
one GPU and count that differ in card memory add their offers up under a shared reason."""

import datetime
import heapq
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.deadline import Deadline, span
from planner.engines import policy_refusal
from planner.models import ENGINE_NAMES, QUALITY_RANK, Offer
from planner.money import billed_seconds, charge, display
from planner.optimize import _Planner, _sixteen, optimize

from .test_optimize import BASE, PLAN, SMALL, catalog


def options(pl, gpu, count, usable, q, e, layouts):
    """(layout, Option or reason) per layout a rig is costed in (planner/layouts.py's rule, spelled again)."""
    if count == 1:
        return [("single", pl.option(gpu, 1, usable, q, e))]
    return [(lay, pl.option(gpu, count, usable, q, e, lay == "replicas")) for lay in layouts]


def reasons(tried, layouts):
    """The rejection reasons of the layouts that cannot run: one, as it is, when every layout tried gives it."""
    refused = [(lay, o) for lay, o in tried if isinstance(o, str)]
    if len(refused) == 2 and refused[0][1] == refused[1][1]:
        return [refused[0][1]]
    return [why if lay in ("single", "split") and len(layouts) == 1 or lay == "single" else f"{lay}: {why}"
            for lay, why in refused]


def reference(plan, spec, cat, budget, spot=None, objective="cost", top=5, providers=None, layouts=("split",),
              deadline_s=None):
    """Every candidate as a row, ranked as the optimizer ranked them before it kept only the best (the rows,
    the counts and the rejections; rejections of one GPU, count and reason add up). With `deadline_s`, a candidate
    whose time band's upper end is past it is late: grouped, counted, never ranked."""
    offers = [o for o in cat.offers if (not providers or o.provider in providers)
              and (spot is not True or o.spot_price is not None)]
    pl = _Planner(plan, spec, __import__("planner.assumptions").assumptions.Assumptions())
    quants = [q for q in plan.quantizations if QUALITY_RANK[q] >= QUALITY_RANK[plan.quality_floor]]
    rejected = {}
    for q in plan.quantizations:
        if QUALITY_RANK[q] < QUALITY_RANK[plan.quality_floor]:
            rejected[("*", 0, q, f"below the plan's quality floor ({plan.quality_floor})", None)] = list(offers)
    for q in quants:
        for e in plan.engines:
            if why := policy_refusal(e, q, spec):
                rejected[("*", 0, q, why, e)] = list(offers)
    groups = {}
    for o in offers:
        gpu = cat.gpu(o.gpu)
        usable = min(gpu.memory_mib, o.gpu_memory_mib or gpu.memory_mib)
        groups.setdefault((gpu.name, o.gpu_count, usable), []).append(o)
    fx = {c: r.cny_per_unit for c, r in cat.fx.items()}
    within, over, n, late, ontime_groups = [], {}, 0, {}, set()

    def cheapest_key(r):
        return r[-1], -QUALITY_RANK[r[5].quant], r[8].total_s, r[3]
    ignoring, fastest, missed = None, None, 0
    for (gname, count, usable), gofs in groups.items():
        gpu = cat.gpus[gname]
        sixteen = _sixteen(gpu, quants)
        priced = {}
        for o in gofs:
            for is_spot, price in ((False, o.price), (True, o.spot_price)):
                if price is not None and (spot is None or spot == is_spot):
                    priced.setdefault((o.provider == "aws", is_spot, o.billing_increment_s, o.billing_minimum_s),
                                      []).append((o, price * fx[o.currency]))
        for q in quants:
            if q in ("fp16", "bf16") and q != sixteen:
                if sixteen is None:
                    rejected.setdefault((gname, count, q, f"no bf16 on {gname} (compute capability "
                                         f"{gpu.compute_capability}); allow fp16", None), []).extend(gofs)
                continue
            for e in plan.engines:
                if policy_refusal(e, q, spec):
                    continue
                tried = options(pl, gpu, count, usable, q, e, layouts)
                for why in reasons(tried, layouts):
                    rejected.setdefault((gname, count, q, why, e), []).extend(gofs)
                for lay, opt in tried:
                    if isinstance(opt, str):
                        continue
                    group = (gname, count, q, e, lay)
                    for (aws, is_spot, inc, minimum), items in priced.items():
                        t = pl.time(opt, aws, is_spot)
                        billed = billed_seconds(t.total_s, inc, minimum)
                        upper = t.total_s * (1 + t.band)
                        rows = []
                        for o, p in items:
                            cost = charge(p, billed)
                            quality = -QUALITY_RANK[q]
                            key = (t.total_s, cost, quality) if objective == "time" else (cost, quality, t.total_s)
                            rows.append(key + (n, o, opt, is_spot, p, t, billed, cost))
                            n += 1
                        cheap = [r for r in rows if r[-1] <= budget]
                        if cheap:
                            best_row = min(cheap, key=cheapest_key)
                            if ignoring is None or cheapest_key(best_row) < cheapest_key(ignoring):
                                ignoring = best_row
                        if deadline_s is not None and upper > deadline_s:
                            first = min(rows, key=cheapest_key)
                            if fastest is None or (upper, cheapest_key(first)) < (fastest[0], cheapest_key(fastest[1])):
                                fastest = (upper, first)
                            got = late.setdefault(group, [upper, 0, first])
                            if upper < got[0]:
                                got[0], got[2] = upper, first
                            got[1] += len(rows)
                            missed += len(rows)
                            continue
                        for row in rows:
                            if row[-1] <= budget:
                                within.append(row)
                                ontime_groups.add(group)
                            else:
                                g = over.setdefault(group, [row, 0])
                                g[0] = min(g[0], row)
                                g[1] += 1
    shown = heapq.nsmallest(max(top, 1), within)
    if len(shown) < top:
        shown += sorted(g[0] for g in over.values())[: top - len(shown)]
    rej = [(g, c, q, r, len(os_), os_[0].id, e) for (g, c, q, r, e), os_ in rejected.items()]
    named = len(layouts) > 1
    for (g, c, q, e, lay), (row, k) in over.items():
        why = f"over budget{f' as {lay}' if named and c > 1 else ''}: from {display(row[-1])} CNY > "
        why += f"{display(budget)} CNY"
        if named and lay == "split" and (g, c, q, e, "replicas") in ontime_groups:
            why += "; replicas on the same rig fit it"
        rej.append((g, c, q, why, k, row[4].id, e))
    for (g, c, q, e, lay), (up, k, row) in late.items():
        why = f"misses the deadline{f' as {lay}' if named and c > 1 else ''}: up to {span(up)} > "
        rej.append((g, c, q, why + f"{span(deadline_s, up=False)} left", k, row[4].id, e))
    got = {"shown": [(r[4].id, r[5].gpu_count, r[5].layout, r[5].quant, r[5].engine, r[6], r[-1]) for r in shown],
           "rejected": rej, "candidates": n + sum(len(v) for v in rejected.values()), "feasible": n,
           "within": len(within)}
    if deadline_s is not None:
        nearest = None if within else (min(over.values(), key=lambda g: (g[0][-1], g[0][3]))[0] if over else
                                       fastest[1] if fastest else None)
        got["deadline"] = (None if ignoring is None else (ignoring[4].id, ignoring[5].layout, ignoring[-1]),
                           None if nearest is None else (nearest[4].id, nearest[5].layout, nearest[-1]), missed)
    return got


def summary(res) -> dict:
    r = res.report
    shown = ([r.recommendation] if r.recommendation else []) + r.alternatives
    got = {"shown": [(_id(a), a.gpu_count, a.layout, a.quantization, a.engine, a.spot, a.cost_cny) for a in shown],
           "rejected": [(x.gpu, x.gpu_count, x.quantization, x.reason, x.offers, x.example, x.engine)
                        for x in r.rejected],
           "candidates": r.candidates, "feasible": r.feasible, "within": r.within_budget}
    if (d := r.deadline) is not None:
        got["deadline"] = tuple(None if a is None else (_id(a), a.layout, a.cost_cny) for a in (d.cheapest, d.nearest)
                                ) + (d.late,)
    return got


def _id(a) -> str:
    return f"{a.provider}:{a.instance_type}" + (f"@{a.region}" if a.region else "")


def offer(i, gpu, count, price, spot=None, provider="p", inc=3600, minimum=3600, currency="CNY", mem=None):
    return Offer(provider=provider, instance_type=f"{gpu}x{count}-{i}", gpu=gpu, gpu_count=count,
                 price=Decimal(price), spot_price=None if spot is None else Decimal(spot), currency=currency,
                 region=f"r{i % 3}", billing_increment_s=inc, billing_minimum_s=minimum, gpu_memory_mib=mem)


NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
GPUS = ["T4", "A10G", "L4", "RTX4090", "V100-16GB", "A100-40GB", "A100-80GB", "H100"]
prices = st.sampled_from(["0.5", "1.0", "1.00", "1.5", "2.2", "3.5", "7.16", "12", "40.966"])  # ties on purpose
offers_st = st.lists(st.tuples(st.sampled_from(GPUS), st.sampled_from([1, 2, 4, 8]), prices,
                               st.one_of(st.none(), prices), st.sampled_from(["aws", "x", "y"]),
                               st.sampled_from([(1, 60), (60, 60), (3600, 3600), (1, 0)]),
                               st.sampled_from(["CNY", "USD"]), st.sampled_from([None, None, 15000, 40000])),
                     min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=offers_st, budget=st.sampled_from([Decimal("0.3"), Decimal("2"), Decimal("20"), Decimal(2000)]),
       spot=st.sampled_from([None, True, False]), objective=st.sampled_from(["cost", "time"]),
       top=st.sampled_from([1, 3, 5]), small=st.booleans(),
       engines=st.sampled_from([["hf"], ["vllm", "hf"], ["sglang", "transformers", "vllm"], list(ENGINE_NAMES)]),
       layouts=st.sampled_from([("split",), ("split", "replicas"), ("replicas",)]),
       deadline_h=st.sampled_from([None, None, 0.05, 0.4, 0.6, 1.5]))
def test_every_printed_figure_is_the_full_enumerations(rows, budget, spot, objective, top, small, engines, layouts,
                                                       deadline_h):
    offers = [offer(i, g, c, p, s, pr, inc, mn, cur, mem)
              for i, (g, c, p, s, pr, (inc, mn), cur, mem) in enumerate(rows)]
    plan = (SMALL if small else PLAN).model_copy(update={"engines": engines})
    spec = BASE.model(plan.model)
    if spot is True and not any(o.spot_price is not None for o in offers):
        return
    due = None if deadline_h is None else Deadline(f"{deadline_h}h", NOW, deadline_h * 3600)
    res = optimize(plan, spec, catalog(offers), budget, spot=spot, objective=objective, top=top, layouts=layouts,
                   deadline=due)
    assert summary(res) == reference(plan, spec, catalog(offers), budget, spot, objective, top, layouts=layouts,
                                     deadline_s=None if due is None else due.seconds)
    # the rows kept: the best `top` within budget and the cheapest over it, per GPU x count x quantization x engine
    # x layout
    rigs = {(r[5].gpu.name, r[5].gpu_count, r[5].quant, r[5].engine, r[5].layout) for r in res.rows}
    assert len(res.rows) <= len(rigs) * (max(top, 1) + 1)


def test_a_big_catalog_keeps_few_rows_and_counts_them_all():
    offers = [offer(i, "RTX4090", 1, f"{1 + i % 50 / 10:.1f}", inc=60, minimum=60) for i in range(3000)]
    plan = PLAN.model_copy(update={"engines": ["hf"]})
    res = optimize(plan, BASE.model("8b"), catalog(offers), Decimal(2000), top=5)
    assert summary(res) == reference(plan, BASE.model("8b"), catalog(offers), Decimal(2000), top=5)
    assert res.report.within_budget == res.report.feasible == 3 * 3000  # bf16, int8 and nf4 on every offer
    assert len(res.rows) <= 3 * 5  # per quantization: the five cheapest (no offer is over budget)
    # equal prices rank in catalog order: the cheapest price (1.0) first appears at offer 0, then 50, 100, ...
    assert [a.instance_type for a in [res.report.recommendation, *res.report.alternatives]] == [
        "RTX4090x1-0", "RTX4090x1-50", "RTX4090x1-100", "RTX4090x1-150", "RTX4090x1-200"]


def test_groups_differing_in_card_memory_add_up_under_one_reason():
    """Two V100-16GB offers, one whose cards report less memory: two groups, one reason (no LLM.int8 on
    compute capability 7.0). The rejection counts both offers, and so does the candidate count."""
    offers = [offer(0, "V100-16GB", 1, "1.0"), offer(1, "V100-16GB", 1, "1.2", mem=16000)]
    plan = PLAN.model_copy(update={"quantizations": ["int8"], "quality_floor": "int8", "engines": ["hf"]})
    rep = optimize(plan, BASE.model("2b"), catalog(offers), Decimal(2000)).report
    (int8,) = [r for r in rep.rejected if r.quantization == "int8"]
    assert int8.reason.startswith("LLM.int8 needs compute capability >= 7.5")
    assert int8.offers == 2 and int8.example == "p:V100-16GBx1-0@r0"
    assert rep.candidates == 2 and rep.feasible == 0

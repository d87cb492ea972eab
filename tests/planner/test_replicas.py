"""Layouts (planner/layouts.py) and the deadline (planner/deadline.py): a multi-GPU offer costed as one model over its
cards (split) and as a model per card (replicas); `--deadline` judged on the upper end of each time band."""

import datetime as dt
from decimal import Decimal

import pytest

from planner import deadline as dl
from planner.assumptions import parse_overrides
from planner.errors import InputError
from planner.layouts import shard_loads
from planner.money import display
from planner.optimize import _Planner, optimize
from planner.plans import parse_plan
from planner.workload import task_loads

from .test_optimize import BASE, PLAN, catalog, offer

NOW = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
# 400 captions and 80 document pages, batches of 4: every replica of 4 gets exactly a quarter of each task
SHARDABLE = parse_plan("""
name: shardable
model: Qwen3-VL-8B-Instruct
quantizations: [nf4]
engines: [hf]
batch_size: 4
tasks:
  - {name: cap, kind: caption, samples: 400, image_size: [640, 480], prompt_tokens: 12}
  - {name: docs, kind: document, samples: 80, image_size: [1240, 1754], prompt_tokens: 48, max_new_tokens: 256}
""", "shardable.yaml")
T4_PRICE = Decimal("1.50")  # CNY per card-hour; the 4xT4 box costs four times it
PER_SECOND = {"inc": 1, "minimum": 0}  # billed per second, no minimum
T4_OFFERS = [offer("T4", 1, str(T4_PRICE), **PER_SECOND), offer("T4", 4, str(4 * T4_PRICE), **PER_SECOND)]
# the fixed phases (boot, install, download, load) made negligible: what is left is the evaluation's own time
NO_FIXED = ["boot_s=0", "install_s=0", "download_mb_s=1e12", "load_gb_s=1e12", "quantize_gb_s=1e12"]


def rows(res, gpu: str, count: int, layout: str, quant: str | None = None, engine: str | None = None):
    return [c for c in res.candidates
            if (c.option.gpu.name, c.option.gpu_count, c.option.layout) == (gpu, count, layout)
            and quant in (None, c.option.quant) and engine in (None, c.option.engine)]


def fixed_s(t) -> float:
    """The seconds of a plan's time that are not its tasks (paid once, whatever the layout)."""
    return t.total_s - sum(t.tasks.values())


@pytest.mark.parametrize("fixed", ["negligible", "default"])
def test_4xt4_replicas_beat_split_and_one_t4_in_time_at_one_t4s_cost(fixed):
    """A 4xT4 box billed per second (4 x the 1xT4 price) running 4 replicas does the evaluation in a quarter of the
    time for the same money - exactly, but for the billing rule's rounding. The rule bills ceil(seconds): for time
    F + W on one card and F + W/4 on four (F: the fixed phases, paid once in wall time), at p CNY per card-second,
        cost(4xT4) - cost(1xT4) = p (4 ceil(F + W/4) - ceil(F + W)),
    and since ceil(x) - x is in [0, 1), that is 3 p F plus a rounding in (-p, 4p): with negligible fixed phases the
    two cost the same within 4 card-seconds (0.0017 CNY at 1.50 CNY/h). The fixed phases are billed at four cards'
    price: with the default ones (about 7 minutes for 8B nf4) the box costs 3 p F more, the only difference."""
    a = parse_overrides(NO_FIXED if fixed == "negligible" else [])
    res = optimize(SHARDABLE, BASE.model("8b"), catalog(T4_OFFERS), Decimal(2000), assumptions=a, top=10)
    (one,) = rows(res, "T4", 1, "single")
    (rep,) = rows(res, "T4", 4, "replicas")
    (split,) = rows(res, "T4", 4, "split")
    assert rep.time.total_s < one.time.total_s and rep.time.total_s < split.time.total_s
    f = fixed_s(one.time)
    assert fixed_s(rep.time) == pytest.approx(f, rel=1e-12)  # boot, install, download and load paid once
    assert sum(rep.time.tasks.values()) == pytest.approx(sum(one.time.tasks.values()) / 4, rel=1e-9)
    p = T4_PRICE / 3600  # CNY per card-second
    rounding = rep.cost_cny - one.cost_cny - 3 * p * Decimal(f)
    assert -p < rounding < 4 * p
    if fixed == "negligible":
        assert f < 1e-3 and abs(rep.cost_cny - one.cost_cny) < 4 * p < Decimal("0.0017")
    else:
        assert f > 300 and rep.cost_cny - one.cost_cny > Decimal("0.5")  # 3 p F: about 0.9 CNY
    # what each row says of the other layout on its offer
    rec = next(r for r in [res.report.recommendation, *res.report.alternatives] if r.layout == "split")
    assert any(n.startswith("replicas on this offer: 0.") and n.endswith("CNY less") for n in rec.notes), rec.notes


def pairs():
    """(model, GPU, quantization) pairs with hf: every catalog card a 8B/2B/32B plan runs on, 16-bit, int8, nf4."""
    return [(m, g, q) for m in ("2b", "8b", "32b") for g in ("T4", "L4", "RTX4090", "A100-40GB", "A100-80GB")
            for q in ("fp16", "int8", "nf4")]


def test_the_seeds_1_2x_rule_is_a_test_of_the_memory_model():
    """The seed's rule of thumb - consider several cards only when one card holds >= 1.2x what the model needs - is
    about replicas. On 2- and 4-card offers of each card, for each model and quantization: where one card holds at
    least 1.2x the plan's 1-card peak (the model's need), replicas are feasible and beat the split on time; where a
    card holds less than the need, replicas are refused with the memory fit's reason and only the split remains."""
    offers = [offer(g, n, "1.0") for g in ("T4", "L4", "RTX4090", "A100-40GB", "A100-80GB") for n in (2, 4)]
    plan = PLAN.model_copy(update={"engines": ["hf"], "quantizations": ["fp16", "bf16", "int8", "nf4"]})
    seen = {"room": 0, "short": 0}
    for model in ("2b", "8b", "32b"):
        spec = BASE.model(model)
        res = optimize(plan.model_copy(update={"model": spec.name}), spec, catalog(offers), Decimal(10**6), top=100)
        pl = _Planner(plan, spec, parse_overrides([]))
        peak = pl.peak or pl.verify_peak
        for _, g, q in [p for p in pairs() if p[0] == model]:
            gpu = BASE.gpus[g]
            quant = ("bf16" if gpu.bf16 else "fp16") if q == "fp16" else q
            if quant == "int8" and gpu.compute_capability < 7.5:
                continue
            usable = gpu.memory_mib * 2**20
            need = max(c.total for c in pl.memory(quant, peak, 1, usable).per_gpu)
            for n in (2, 4):
                rep, split = rows(res, g, n, "replicas", quant), rows(res, g, n, "split", quant)
                why = [x.reason for x in res.report.rejected if (x.gpu, x.gpu_count, x.quantization) == (g, n, quant)]
                if usable >= 1.2 * need:
                    seen["room"] += 1
                    assert rep, (model, g, n, quant)
                    assert all(r.time.total_s < s.time.total_s for r in rep for s in split), (model, g, n, quant)
                elif usable < need:
                    seen["short"] += 1
                    assert not rep and any(w.startswith(f"replicas: needs {need / 2**30:.1f} GiB per GPU; {g} has")
                                           for w in why), (model, g, n, quant, why)
                    assert split or any(w.startswith("split: needs") for w in why)
    assert seen["room"] >= 20 and seen["short"] >= 10, seen
    # the seed's own pair: 8B on T4 - fp16 needs more than a T4 holds (the split over 2xT4 is the seed's choice),
    # nf4 needs 9.4 GiB: a T4's 15 GiB is 1.6x that
    res = optimize(plan, BASE.model("8b"), catalog([offer("T4", 2, "3.0")]), Decimal(2000), top=20)
    assert not rows(res, "T4", 2, "replicas", "fp16") and rows(res, "T4", 2, "split", "fp16")
    assert rows(res, "T4", 2, "replicas", "nf4")[0].time.total_s < rows(res, "T4", 2, "split", "nf4")[0].time.total_s


def test_replicas_shard_the_samples_as_the_worker_does():
    """The planner cannot import the runner: it spells runner/worker/shards.py's rule again (position i to replica
    i % N; the memory sweep, the fp16 check and the samples it re-runs on replica 0). The counts must agree."""
    shards = pytest.importorskip("runner.worker.shards")
    plan = PLAN
    loads = task_loads(plan, BASE.model("8b"), parse_overrides([]))
    once = shards.once_counts(plan.tasks, None)
    for count in (2, 3, 4, 7, 8):
        got = shard_loads(plan, loads, count)
        want = []
        for k in range(count):
            per = {t.name: len(shards.keep(list(range(t.samples)), t.kind, k, count, once.get(t.name, 0)))
                   for t in loads}
            want.append({name: n for name, n in per.items() if n})
        distinct = list({tuple(sorted(w.items())): w for w in want}.values())
        assert [{t.name: t.samples for t in shard} for shard in got] == distinct


def test_a_server_runs_replicas_as_one_server_per_gpu():
    """vllm on 4 cards: tensor parallelism (split) or a server per GPU (replicas), each row saying which."""
    plan = PLAN.model_copy(update={"engines": ["vllm"], "quantizations": ["bf16"]})
    res = optimize(plan, BASE.model("8b"), catalog([offer("A100-80GB", 4, "40", **PER_SECOND)]), Decimal(2000), top=5)
    (rep,) = rows(res, "A100-80GB", 4, "replicas")
    (split,) = rows(res, "A100-80GB", 4, "split")
    assert rep.option.server.concurrency >= 1 and split.option.server is not None  # both are servers
    shown = {r.layout: r for r in [res.report.recommendation, *res.report.alternatives]}
    assert shown["replicas"].replicas == 4 and shown["split"].replicas == 1
    assert shown["replicas"].notes[0].startswith("4 replicas: one vllm server per GPU (data parallelism")
    assert "tensor-parallel over 4 cards" in " ".join(shown["split"].notes)
    assert len(shown["replicas"].memory) == 4 and shown["replicas"].memory[0].layers == 36  # a whole model per card


def test_a_split_over_budget_says_replicas_on_its_rig_fit():
    plan = SHARDABLE
    res = optimize(plan, BASE.model("8b"), catalog(T4_OFFERS), Decimal(2000), top=10)
    (rep,) = rows(res, "T4", 4, "replicas")
    (split,) = rows(res, "T4", 4, "split")
    budget = (rep.cost_cny + split.cost_cny) / 2
    res = optimize(plan, BASE.model("8b"), catalog(T4_OFFERS), budget, top=10)
    (why,) = [x.reason for x in res.report.rejected if x.gpu_count == 4]
    assert why.startswith("over budget as split: from ") and why.endswith("; replicas on the same rig fit it")


# --------------------------------------------------------------------------- --deadline

BIG = SHARDABLE.model_copy(update={"tasks": [SHARDABLE.tasks[0].model_copy(update={"samples": 4000})]})


def test_a_deadline_picks_a_faster_dearer_option_when_the_cheapest_misses_it():
    spec = BASE.model("8b")
    free = optimize(BIG, spec, catalog(T4_OFFERS), Decimal(2000), top=10).report
    cheapest = free.recommendation
    (rep,) = [r for r in [cheapest, *free.alternatives] if r.layout == "replicas"]
    assert cheapest.gpu_count == 1 and rep.cost_cny > cheapest.cost_cny and rep.hours_high < cheapest.hours_high
    seconds = (rep.hours_high + cheapest.hours_high) / 2 * 3600  # between the two upper ends
    due = dl.Deadline(f"{seconds}s", NOW + dt.timedelta(seconds=seconds), seconds)
    res = optimize(BIG, spec, catalog(T4_OFFERS), Decimal(2000), top=10, deadline=due)
    r, d = res.report.recommendation, res.report.deadline
    assert (r.gpu_count, r.layout) == (4, "replicas") and r.hours_high * 3600 <= seconds
    assert dl.upper_s(r.time) == pytest.approx(r.time.total_s * (1 + r.time.band))  # the printed band's upper end
    assert d.met and d.cheapest.instance_type == cheapest.instance_type and d.cheapest.hours_high * 3600 > seconds
    assert d.extra_cny == r.cost_cny - cheapest.cost_cny > 0 and d.late >= 1
    late = [x for x in res.report.rejected if x.reason.startswith("misses the deadline")]
    assert [(x.gpu, x.gpu_count, x.reason.split(":")[0]) for x in late] == [
        ("T4", 1, "misses the deadline"), ("T4", 4, "misses the deadline as split")]
    assert all(x.reason.endswith(f" > {dl.span(seconds, up=False)} left") for x in late)
    assert res.shortfall(BIG.name, spec.name) is None
    # a deadline nothing misses changes nothing, and costs nothing
    roomy = optimize(BIG, spec, catalog(T4_OFFERS), Decimal(2000), top=10,
                     deadline=dl.Deadline("2d", NOW + dt.timedelta(days=2), 2 * 86400.0)).report
    assert roomy.recommendation == cheapest and roomy.deadline.extra_cny == 0 and roomy.deadline.late == 0


def test_a_deadline_the_budget_cannot_meet_is_refused_naming_the_nearest_feasible_cost():
    spec = BASE.model("8b")
    free = optimize(BIG, spec, catalog(T4_OFFERS), Decimal(2000), top=10).report
    (rep,) = [r for r in [free.recommendation, *free.alternatives] if r.layout == "replicas"]
    seconds = (rep.hours_high + free.recommendation.hours_high) / 2 * 3600
    due = dl.Deadline("4h", NOW + dt.timedelta(seconds=seconds), seconds)
    budget = (free.recommendation.cost_cny + rep.cost_cny) / 2  # pays the 1xT4, not the 4xT4 that meets it
    res = optimize(BIG, spec, catalog(T4_OFFERS), budget, top=10, deadline=due)
    assert res.report.recommendation is None and not res.report.deadline.met
    assert res.report.deadline.nearest.instance_type == rep.instance_type
    err = res.shortfall(BIG.name, spec.name)
    assert isinstance(err, InputError) and err.exit_code == 2
    assert f"the cheapest that does is p:{rep.instance_type} (T4 x4 replicas, nf4, hf)" in err.message
    assert err.message.endswith(f"it needs {display(rep.cost_cny)} CNY, over the {display(budget)} CNY budget")
    assert err.hint == f"raise --yuan to {dl.enough(rep.cost_cny)} or more, or allow a later --deadline"
    assert Decimal(dl.enough(rep.cost_cny)) - Decimal("0.01") < rep.cost_cny <= Decimal(dl.enough(rep.cost_cny))
    # nothing meets it at all: the fastest option, and how long it could take
    soon = dl.Deadline("10m", NOW + dt.timedelta(minutes=10), 600.0)
    res = optimize(BIG, spec, catalog(T4_OFFERS), Decimal(2000), top=10, deadline=soon)
    err = res.shortfall(BIG.name, spec.name)
    assert res.report.deadline.nearest.layout == "replicas" and err.exit_code == 2
    assert f"the fastest option, p:{rep.instance_type} (T4 x4 replicas, nf4, hf), takes up to " \
           f"{dl.span(dl.upper_s(res.report.deadline.nearest.time))}" in err.message
    assert err.hint.startswith("allow a later --deadline (at least ")


@pytest.mark.parametrize("text,seconds", [
    ("6h", 6 * 3600), ("90m", 5400), ("2d", 2 * 86400), ("1h30m", 5400), ("45min", 2700), ("1.5h", 5400),
    ("2026-12-01", 14.5 * 3600),  # the end of that day, UTC
    ("2026-12-01T18:00", 8.5 * 3600), ("2026-12-01T18:00Z", 8.5 * 3600), ("2026-12-01T18:00+08:00", 0.5 * 3600),
    ("2026-12-02 09:30:00", 86400),
])
def test_deadline_syntax(text, seconds):
    d = dl.parse(text, NOW)
    assert d.seconds == pytest.approx(seconds) and d.at == NOW + dt.timedelta(seconds=seconds)
    assert d.iso.endswith("Z") and d.text == text


@pytest.mark.parametrize("text,needle", [
    ("2026-11-30", "is not in the future"), ("2026-12-01T09:00", "is not in the future"), ("0h", "not in the future"),
    ("soon", "neither a duration nor"), ("6", "neither a duration nor"), ("", "neither a duration nor"),
    ("2026-02-30", "not a valid date"), ("６h", "neither a duration nor"), ("400d", "more than 366 days"),
    ("2028-01-01", "more than 366 days"),
])
def test_bad_deadlines_are_bad_input(text, needle):
    with pytest.raises(InputError, match=needle) as e:
        dl.parse(text, NOW)
    assert e.value.exit_code == 2 and "--deadline" in e.value.hint

"""Layer splitting: the fast search (bisection per card, remembered cap ranges) gives exactly what the plain
layer-by-layer greedy under a bisection on the cap gave - on every real rig the planner splits and on random
monotone card totals - and `_Rig.total` is the last of `_Rig.parts`, integer for integer."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.architecture import inventory
from planner.assumptions import Assumptions, parse_overrides
from planner.catalog import load_catalog
from planner.memory import MIB, Peak, _Rig, dynamic, split_layers, weight_layout
from planner.plans import load_plan
from planner.workload import task_loads

CAT = load_catalog()


def reference_split(n_layers, n_cards, total, precision=MIB):
    """The split as planner/memory.py computed it before the fast search (kept here as the oracle)."""
    if n_cards == 1:
        return [(0, n_layers)]

    def fill(cap):
        out, start = [], 0
        for c in range(n_cards - 1):
            end = start
            while end < n_layers and total(c, start, end + 1) <= cap:
                end += 1
            out.append((start, end))
            start = end
        out.append((start, n_layers))
        return out if all(total(c, s, e) <= cap for c, (s, e) in enumerate(out)) else None

    hi = max(total(c, 0, n_layers) for c in range(n_cards))
    lo = max(max(total(c, 0, 0) for c in range(n_cards)), hi // n_cards) - 1
    best = fill(hi)
    while hi - lo > precision:
        mid = (lo + hi) // 2
        got = fill(mid)
        if got is None:
            lo = mid
        else:
            hi, best = mid, got
    return best


def rigs():
    """(label, rig, layers, precision) for every model x quantization x card count x peak the default plan's
    sweep and tasks produce, with the default and with heavier assumptions."""
    from planner.memory import peak_of, plan_peak

    out = []
    for a in (Assumptions(), parse_overrides(["allocator_slack=0.4", "headroom=1.5", "memory_extra_mib=300",
                                              "attn_implementation=eager"])):
        for model in ("2b", "8b", "32b", "30b-a3b", "235b-a22b"):
            spec = CAT.model(model)
            plan = load_plan(None).model_copy(update={"model": spec.name})
            loads = task_loads(plan, spec, a)
            peaks = [p for p in (plan_peak(loads), plan_peak(loads, sixteen_bit=True)) if p]
            peaks += [peak_of([(p, 1)]) for t in loads if t.kind == "memory_sweep" for p in t.passes]
            inv = inventory(spec)
            for quant in ("bf16", "int8", "nf4"):
                w = weight_layout(spec, inv, quant)
                for cards in (2, 3, 5, 8):
                    for peak in peaks[::2]:
                        rig = _Rig(w, dynamic(spec, peak, a), cards, a, quant != "bf16")
                        precision = max(MIB, max(w.layers) // 16)
                        out.append((f"{model}-{quant}-{cards}", rig, spec.text.num_hidden_layers, precision))
    return out


RIGS = rigs()


def test_total_is_the_last_part():
    rng = random.Random(3)
    for _, rig, n, _ in RIGS[::7]:
        for _ in range(200):
            c = rng.randrange(rig.n)
            s = rng.randrange(n + 1)
            e = rng.randrange(s, n + 1)
            assert rig.total(c, s, e) == rig.parts(c, s, e)[-1]
        for c in range(rig.n):
            assert rig.total(c, 0, 0) == rig.parts(c, 0, 0)[-1] and rig.total(c, 0, n) == rig.parts(c, 0, n)[-1]


@pytest.mark.parametrize("i", range(0, len(RIGS), max(1, len(RIGS) // 60)))
def test_real_rigs_split_as_before(i):
    _, rig, n, precision = RIGS[i]
    calls = [0, 0]

    def counted(k):
        def total(*a):
            calls[k] += 1
            return rig.total(*a)
        return total
    assert split_layers(n, rig.n, counted(0), precision) == reference_split(n, rig.n, counted(1), precision)
    assert calls[0] < calls[1]  # the point of it: fewer card totals for the same answer


@settings(max_examples=300, deadline=None)
@given(layers=st.lists(st.integers(0, 5_000), min_size=1, max_size=60), cards=st.integers(2, 9),
       extras=st.lists(st.integers(0, 20_000), min_size=3, max_size=3), act=st.integers(0, 30_000),
       headroom=st.sampled_from([1.0, 1.2, 1.7]), precision=st.sampled_from([1, 7, 64, 1000]))
def test_random_monotone_totals_split_as_before(layers, cards, extras, act, headroom, precision):
    prefix = [0]
    for b in layers:
        prefix.append(prefix[-1] + b)
    first, last, vision = extras
    n = len(layers)

    def total(c, s, e):  # non-decreasing in e, non-increasing in s, a floor like the memory model's
        w = prefix[e] - prefix[s] + (first if c == 0 else 0) + (last if c == cards - 1 else 0)
        dyn = (act if e > s else 0) + (vision if c == 0 else 0) + 3 * (e - s)
        return max(w + dyn + 11, int(headroom * w))
    assert split_layers(n, cards, total, precision) == reference_split(n, cards, total, precision)


def test_card_parts_follow_the_split():
    """card_parts: each card's layers and total as the reference split places them."""
    from planner.memory import card_parts

    spec = CAT.model("32b")
    a = Assumptions()
    w = weight_layout(spec, inventory(spec), "nf4")
    peak = Peak(4000, 3000, 3000, 1, 4096, 4096, 1024)
    for cards in (2, 4, 7):
        parts = card_parts(spec, w, "nf4", peak, cards, a)
        rig = _Rig(w, dynamic(spec, peak, a), cards, a, True)
        splits = reference_split(n := spec.text.num_hidden_layers, cards, rig.total, max(MIB, max(w.layers) // 16))
        assert [p[0] for p in parts] == [e - s for s, e in splits] and sum(p[0] for p in parts) == n
        assert [p[-1] for p in parts] == [rig.parts(c, s, e)[-1] for c, (s, e) in enumerate(splits)]

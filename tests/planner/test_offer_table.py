"""Offers as columns: the Offer objects a table gives are the validated ones (fields, field order, fields
set); slicing, taking, joining keep order and what each row set; shapes - found once, merged from parts,
renamed with the catalog's GPU names - are the ones found afresh. And the catalog's GPU look-up, now one
dictionary access, answers every name as the scan over all GPUs did."""

import random
from decimal import Decimal

import pytest

from planner.catalog import Catalog, _norm, load_catalog
from planner.models import Offer
from planner.offers import OfferTable, make_offer

BASE = load_catalog()


def offers(n=40, seed=1):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kw = dict(provider=rng.choice(["aws", "x", "y"]), instance_type=f"t{i}", gpu=rng.choice(["T4", "A10G", "L4"]),
                  gpu_count=rng.choice([1, 2]), price=Decimal(rng.choice(["1.0", "1.00", "2", "0.5", "3.25"])),
                  spot_price=rng.choice([None, Decimal("0.4"), Decimal("0.40"), Decimal("1")]),
                  currency=rng.choice(["CNY", "USD"]), region=rng.choice(["", "r1"]),
                  billing_increment_s=rng.choice([1, 3600]), billing_minimum_s=rng.choice([0, 60]))
        if rng.random() < 0.5:
            kw.update(zones=["a", "b"], gpu_memory_mib=rng.choice([None, 15000]), vcpus=4.0, memory_gib=16.0)
        out.append(Offer(**kw))
    return out


def same(a: Offer, b: Offer) -> bool:
    return (a == b and list(a.model_dump()) == list(b.model_dump()) and a.model_fields_set == b.model_fields_set
            and repr(a) == repr(b))


def test_offers_from_a_table_are_the_validated_ones():
    xs = offers()
    t = OfferTable.of(xs)
    assert len(t) == len(xs) and all(same(a, b) for a, b in zip(t, xs))
    assert same(t[-1], xs[-1]) and all(same(a, b) for a, b in zip(t[3:9], xs[3:9]))
    assert [t.offer_id(i) for i in range(len(t))] == [o.id for o in xs]
    o = t[0]
    o.zones.append("z")  # each Offer owns its lists
    assert t[0].zones == xs[0].zones
    assert t[1].model_copy(update={"price": Decimal(9)}).price == Decimal(9)
    with pytest.raises(IndexError):
        t[len(t)]


def test_make_offer_is_model_construct():
    kw = dict(provider="p", instance_type="i", gpu="T4", gpu_count=1, price=Decimal("1.5"))
    full = {**Offer(**kw).model_dump(), **kw}
    a = make_offer(dict(full), frozenset(kw))
    b = Offer.model_construct(_fields_set=set(kw), **full)
    assert same(a, b) and a.id == b.id and a.model_dump_json() == b.model_dump_json()


def test_joined_taken_and_renamed_tables_keep_rows_and_shapes():
    xs, ys = offers(30, 1), offers(25, 2)
    a, b = OfferTable.of(xs), OfferTable.of(ys)
    a.shapes(), b.shapes()  # found before the join: the join merges them
    joined = OfferTable.concat([a, b])
    assert all(same(p, q) for p, q in zip(joined, xs + ys))
    fresh = OfferTable.of(xs + ys).shapes()
    assert {k: (s.actual().rows, s.actual().by_price, s.actual().with_spot, s.actual().by_spot)
            for k, s in joined.shapes().items()} == \
        {k: (s.rows, s.by_price, s.with_spot, s.by_spot) for k, s in fresh.items()}
    for s in fresh.values():  # by price, equal prices in catalog order
        prices = [(xs + ys)[i].price for i in s.by_price]
        assert prices == sorted(prices) and sorted(s.by_price) == s.rows
    taken = joined.take([5, 2, 40])
    assert [o.instance_type for o in taken] == ["t5", "t2", "t10"]
    names = {k: {"T4": "Tesla", "A10G": "A", "L4": "A"}[k[0]] for k in joined.gpu_keys()}
    renamed = joined.with_gpus(names)
    assert [o.gpu for o in renamed] == [names[(o.gpu, o.gpu_memory_mib)] for o in xs + ys]
    again = OfferTable.of(list(renamed)).shapes()
    assert {k: (s.actual().rows, s.actual().by_price, s.actual().by_spot) for k, s in renamed.shapes().items()} == \
        {k: (s.rows, s.by_price, s.by_spot) for k, s in again.items()}


def old_gpu(cat: Catalog, name, memory_mib=None):
    """The scan over every GPU the look-up was (the oracle)."""
    q = _norm(name)
    exact = [g for g in cat.gpus.values() if q == _norm(g.name) or q in map(_norm, g.aliases)]
    family = [g for g in cat.gpus.values() if _norm(g.name).startswith(q)]
    pool = family if memory_mib and len(family) > 1 else (exact or family)
    if not pool:
        return None
    return min(pool, key=lambda g: abs(g.memory_mib - memory_mib)) if memory_mib else pool[0]


def test_gpu_look_up_answers_as_the_scan_did():
    names = {n for g in BASE.gpus.values() for n in (g.name, *g.aliases)}
    queries = set(names) | {n.lower() for n in names} | {n[:k] for n in names for k in range(len(n) + 1)}
    queries |= {"A100", "a-100", "rtx 4090", "Tesla T4", "K80", "", " ", "H100-80GB", "v100", "nvidia h200", "A1"}
    for q in sorted(queries):
        for mem in (None, 0, 16384, 22888, 40960, 81920, 143771):
            assert BASE.gpu(q, mem) is old_gpu(BASE, q, mem), (q, mem)


def test_gpu_look_up_sees_a_replaced_gpu():
    cat = Catalog(gpus=dict(BASE.gpus), models={}, offers=[], fx={})
    assert cat.gpu("t4").memory_mib == BASE.gpus["T4"].memory_mib
    cat.gpus["T4"] = BASE.gpus["T4"].model_copy(update={"memory_mib": 16000, "aliases": ["Tesla T4", "turing"]})
    assert cat.gpu("t4").memory_mib == 16000 and cat.gpu("turing").name == "T4"
    cat.gpus = {}
    assert cat.gpu("t4") is None

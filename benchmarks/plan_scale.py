"""Planner speed: optimise the seed's plan over a synthetic catalog of >=100,000 offers (target
<= 2 s on a 2-core machine), and the cold-process wall time of `budget plan --yuan 2000` (target
<= 0.5 s). Prints its figures; the README quotes them.

    python benchmarks/plan_scale.py [--offers 100000] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from planner.catalog import SKYPILOT_COLUMNS, Catalog, load_catalog, parse_skypilot, skypilot_offers
from planner.models import Offer
from planner.optimize import optimize
from planner.plans import load_plan


def synthetic_catalog(n: int, seed: int = 7) -> Catalog:
    base = load_catalog()
    rng = random.Random(seed)
    gpus = list(base.gpus)
    billing = [(1, 60), (60, 60), (3600, 3600)]
    offers = []
    for i in range(n):
        gpu = rng.choice(gpus)
        count = rng.choice([1, 1, 1, 2, 4, 8])
        price = Decimal(rng.randint(50, 5000)) / 100 * count
        inc, minimum = rng.choice(billing)
        offers.append(Offer.model_construct(
            provider=f"p{i % 50}", instance_type=f"{gpu}-{count}-{i}", gpu=gpu, gpu_count=count, price=price,
            spot_price=(price * Decimal("0.4")).quantize(Decimal("0.0001")) if rng.random() < 0.5 else None,
            currency=rng.choice(["CNY", "USD"]), region=f"r{i % 7}", zones=[], billing_increment_s=inc,
            billing_minimum_s=minimum, gpu_memory_mib=None, vcpus=None, memory_gib=None, source="synthetic",
            date="2026-01-01"))
    return Catalog(gpus=base.gpus, models=base.models, offers=offers, fx=base.fx)


def skypilot_text(n: int) -> str:
    """A SkyPilot vms.csv of n rows (4 zones per instance type), for the catalog-load figure."""
    gpus = [("T4", 16384), ("A10G", 22888), ("L4", 22888), ("L40S", 45776), ("A100", 40960), ("H100", 81920)]
    rows = [",".join(SKYPILOT_COLUMNS)]
    for i in range(n):
        g, mib = gpus[i // 4 % len(gpus)]
        info = "{'Gpus': [{'Name': '%s', 'Manufacturer': 'NVIDIA', 'Count': 1, 'MemoryInfo': {'SizeInMiB': %d}}]}" % (g, mib)
        rows.append(f'x{i // 4}.xlarge,{g},1.0,4.0,16.0,"{info}",1.0,{"0.4" if i % 3 else ""},r{i // 4 % 9},z{i % 4}')
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--offers", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    plan = load_plan(None)
    cat = synthetic_catalog(args.offers)
    spec = cat.model(plan.model)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = optimize(plan, spec, cat, Decimal(2000))
        times.append(time.perf_counter() - t0)
    r = res.report
    print(f"optimize over {args.offers:,} offers: best {min(times):.3f} s, median {statistics.median(times):.3f} s "
          f"(target <= 2 s); {r.candidates:,} candidates, {r.feasible:,} runnable, {r.within_budget:,} within budget")
    print(f"  recommendation: {r.recommendation.provider}:{r.recommendation.instance_type} "
          f"{r.recommendation.quantization} {r.recommendation.cost_cny} CNY")

    text = skypilot_text(args.offers)
    t0 = time.perf_counter()
    rows, problems, meta = parse_skypilot(text, "synthetic.vms.csv")
    offers, more = skypilot_offers(rows, "aws", meta, load_catalog(), "synthetic.vms.csv")
    t1 = time.perf_counter()
    assert not problems and not more
    print(f"load a {args.offers:,}-row SkyPilot vms.csv ({len(offers):,} offers after collapsing zones): "
          f"{t1 - t0:.2f} s (no target; `prices import` and every plan over that catalog pay it)")

    exe = Path(sys.executable).parent / "budget"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "runner.cli"]
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "BUDGET_HOME": home}
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(cmd + ["plan", "--yuan", "2000"], env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    print(f"cold `budget plan --yuan 2000`: median {statistics.median(walls):.3f} s, best {min(walls):.3f} s over "
          f"{args.runs} runs (target <= 0.5 s)")


if __name__ == "__main__":
    main()

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

from planner.catalog import Catalog, load_catalog
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

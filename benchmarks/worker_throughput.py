"""Worker throughput: samples/s of the caption task on the tiny random Qwen3-VL on this machine, batch 1
against the plan's batch size (smoke plan: 2; the seed's 8B plan: 4), in fp32 and nf4. Runs the real
worker in-process on a job built from plans/smoke.yaml; the tiny model is built offline once.
Prints its figures; the README quotes them.

    python benchmarks/worker_throughput.py [--samples 64] [--runs 3] [--batch 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.disable(logging.WARNING)

from planner.catalog import load_catalog  # noqa: E402
from planner.plans import load_plan, plan_file  # noqa: E402
from runner import jobs  # noqa: E402
from runner.worker import tiny  # noqa: E402
from runner.worker.run import Worker  # noqa: E402


def one(model: Path, work: Path, quant: str, batch: int, samples: int) -> tuple[float, float]:
    plan = load_plan("plans/smoke.yaml")
    plan = plan.model_copy(update={"tasks": [t for t in plan.tasks if t.name == "captions"]})
    plan.tasks[0] = plan.tasks[0].model_copy(update={"samples": samples})
    plan.generation.max_new_tokens = 16
    doc = jobs.build(plan, plan_file("plans/smoke.yaml"), load_catalog(), work, quantization=quant,
                     model_path=model, batch_size=batch, device="cpu")
    out = work / f"{quant}-b{batch}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    (out / "job.json").write_text(json.dumps(doc))
    started = time.perf_counter()
    assert Worker(out / "job.json", out).main() == 0
    wall = time.perf_counter() - started
    s = json.loads((out / "summary.json").read_text())
    cap = s["tasks"]["captions"]
    assert cap["ok"] == samples, cap
    return cap["samples_per_s"], cap["decode_tokens_per_s"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--quant", nargs="+", default=["fp32", "nf4"])
    a = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{a.samples} caption samples (64x64 px, 16 new tokens, greedy), best of {a.runs} runs")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny.build(work / "model")
        for quant in a.quant:
            rates = {}
            for batch in [1, *a.batch]:
                runs = [one(model, work, quant, batch, a.samples) for _ in range(a.runs)]
                best = max(runs, key=lambda r: r[0])
                rates[batch] = best[0]
                print(f"  {quant:5s} batch {batch:2d}: {best[0]:7.1f} samples/s ({best[1]:7.1f} decode tokens/s; "
                      f"median {statistics.median(r[0] for r in runs):7.1f} samples/s; worker wall incl. load "
                      f"{min(r[2] for r in runs):.2f} s)")
            for batch in a.batch:
                print(f"  {quant:5s} batch {batch} / batch 1 = {rates[batch] / rates[1]:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The speed-up of `budget eval --replicas N` on this machine (issue 26): the same plan - the tiny model, one
synthetic caption task of --samples images at batch 1 - run by one worker process and by N replicas, alternating
(one, N, one, N, ...) so both see the same machine; prints each run's wall time, the medians and their ratio.
Each run is a fresh `budget eval --fresh` (model load and process start-up included: what a user waits for).

    python benchmarks/replicas.py                       # 2 replicas, 48 samples, 3 pairs
    python benchmarks/replicas.py --replicas 4 --samples 96 --pairs 2

On a GPU machine each replica is pinned to its own card; on a CPU machine the replicas share the cores (torch's
threads in each), so the ratio says how much one process leaves idle, not what N cards give."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "infra" / "localcloud"))


def main() -> None:
    import localcloud

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--quant", default="fp16")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = localcloud.caption_plan(ROOT / "plans" / "smoke.yaml", tmp, "bench", args.samples)
        env = dict(os.environ, BUDGET_HOME=str(tmp / "home"), HF_HUB_OFFLINE="1")

        def once(n: int) -> float:
            cmd = [sys.executable, "-m", "runner.cli", "eval", str(plan), "--quant", args.quant, "--fresh",
                   "--out", str(tmp / f"out{n}"), "--replicas", str(n)]
            t = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t

        once(1)  # builds the tiny model once, outside the timings
        times: dict[int, list[float]] = {1: [], args.replicas: []}
        for _ in range(args.pairs):
            for n in (1, args.replicas):
                times[n].append(once(n))
                print(f"replicas={n}: {times[n][-1]:.2f} s", flush=True)
        one, many = statistics.median(times[1]), statistics.median(times[args.replicas])
        print(f"{args.samples} captions, {args.quant}, cpu cores {os.cpu_count()}: 1 process {one:.2f} s (min "
              f"{min(times[1]):.2f}, max {max(times[1]):.2f}); {args.replicas} replicas {many:.2f} s (min "
              f"{min(times[args.replicas]):.2f}, max {max(times[args.replicas]):.2f}); speed-up x{one / many:.2f}")


if __name__ == "__main__":
    main()

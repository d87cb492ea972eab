"""Planner speed, measured on the real CLI: cold `budget plan --yuan 2000` processes over the bundled catalog
and over SkyPilot catalogs of 100,000 and 1,000,000 rows brought in with `budget prices import`, against the
import floor (a bare `python -c "import pydantic, typer, rich, yaml"`: what any CLI on this stack pays).

    python benchmarks/plan_scale.py [--offers 100000 1000000] [--runs 5] [--keep DIR]

The catalogs are SkyPilot's `vms.csv` layout as SkyPilot writes it (one row per availability zone, GpuInfo a
quoted Python-dict literal, AcceleratorCount a float, SpotPrice empty where a zone lists none): AWS's GPU
families and sizes with their GPU, count, vCPUs, memory and us-east-1 on-demand price, in AWS's regions with
their zones (2-5 each) at a regional price factor, numbered generations of each type (g5k3.xlarge: a price
step each) until the catalog has the rows asked for, spot prices per zone at 30-45% of on-demand, and a few
CPU and Inferentia rows that the import skips and lists, as it does with SkyPilot's real files.

Every command runs in a small wrapper process that times it (wall: perf_counter; CPU: getrusage of its
children, user + system; peak memory: the children's ru_maxrss), so each figure is that command's alone. The
commands run alternately (floor, bundled, 100k, 1M, floor, ...), each once first to warm the bytecode and
file caches; medians are printed with the ratios the README quotes: bundled / floor (target <= 2x), the
largest catalog minus bundled (target <= 2 s) and its peak memory (target <= 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = ("InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,"
           "AvailabilityZone")
# family: (accelerator, GPU MiB as SkyPilot's GpuInfo says, [(size, GPUs, vCPUs, memory GiB, USD/h us-east-1)])
FAMILIES = {
    "g4dn": ("T4", 16384, [("xlarge", 1, 4, 16, 0.526), ("2xlarge", 1, 8, 32, 0.752), ("4xlarge", 1, 16, 64, 1.204),
                           ("8xlarge", 1, 32, 128, 2.176), ("16xlarge", 1, 64, 256, 4.352),
                           ("12xlarge", 4, 48, 192, 3.912), ("metal", 8, 96, 384, 7.824)]),
    "g5": ("A10G", 22888, [("xlarge", 1, 4, 16, 1.006), ("2xlarge", 1, 8, 32, 1.212), ("4xlarge", 1, 16, 64, 1.624),
                           ("8xlarge", 1, 32, 128, 2.448), ("16xlarge", 1, 64, 256, 4.096),
                           ("12xlarge", 4, 48, 192, 5.672), ("24xlarge", 4, 96, 384, 8.144),
                           ("48xlarge", 8, 192, 768, 16.288)]),
    "g6": ("L4", 22888, [("xlarge", 1, 4, 16, 0.8048), ("2xlarge", 1, 8, 32, 0.9776), ("4xlarge", 1, 16, 64, 1.3232),
                         ("12xlarge", 4, 48, 192, 4.6016), ("48xlarge", 8, 192, 768, 13.3504)]),
    "g6e": ("L40S", 45776, [("xlarge", 1, 4, 32, 1.861), ("2xlarge", 1, 8, 64, 2.24208),
                            ("12xlarge", 4, 48, 384, 10.49264), ("48xlarge", 8, 192, 1536, 30.13118)]),
    "p3": ("V100", 16384, [("2xlarge", 1, 8, 61, 3.06), ("8xlarge", 4, 32, 244, 12.24),
                           ("16xlarge", 8, 64, 488, 24.48)]),
    "p3dn": ("V100", 32768, [("24xlarge", 8, 96, 768, 31.212)]),
    "p4d": ("A100", 40960, [("24xlarge", 8, 96, 1152, 32.7726)]),
    "p4de": ("A100", 81920, [("24xlarge", 8, 96, 1152, 40.9657)]),
    "p5": ("H100", 81920, [("48xlarge", 8, 192, 2048, 98.32)]),
}
CPU = [("m5.large", 2, 8, 0.096), ("c5.xlarge", 4, 8, 0.17), ("r5.2xlarge", 8, 64, 0.504)]
INF = ("inf2.xlarge", "Inferentia2", 32768, 4, 16, 0.7582)
REGIONS = {"us-east-1": ("abcdf", 1.0), "us-east-2": ("abc", 1.0), "us-west-1": ("ac", 1.17),
           "us-west-2": ("abcd", 1.0), "ca-central-1": ("abd", 1.1), "eu-west-1": ("abc", 1.12),
           "eu-west-2": ("abc", 1.17), "eu-central-1": ("abc", 1.2), "eu-north-1": ("abc", 1.06),
           "ap-northeast-1": ("acd", 1.3), "ap-northeast-2": ("abcd", 1.25), "ap-southeast-1": ("abc", 1.28),
           "ap-southeast-2": ("abc", 1.32), "ap-south-1": ("abc", 1.15), "sa-east-1": ("abc", 1.6)}
FLOOR = "import pydantic, typer, rich, yaml"
# runs `argv` as its only child and prints its wall seconds, CPU seconds and peak RSS (KiB)
WRAPPER = ("import json,resource,subprocess,sys,time\n"
           "t=time.perf_counter()\n"
           "p=subprocess.run(sys.argv[1:],capture_output=True)\n"
           "w=time.perf_counter()-t\n"
           "u=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
           "print(json.dumps({'rc':p.returncode,'wall':w,'cpu':u.ru_utime+u.ru_stime,'rss_kib':u.ru_maxrss,"
           "'out':p.stdout.decode(errors='replace'),'err':p.stderr.decode(errors='replace')[-2000:]}))\n")


def gpu_info(name: str, mib: int, count: int) -> str:
    return ('"' + "{'Gpus': [{'Name': '%s', 'Manufacturer': 'NVIDIA', 'Count': %d, 'MemoryInfo': {'SizeInMiB': %d}}], "
            "'TotalGpuMemoryInMiB': %d}" % (name, count, mib, mib * count) + '"')


def write_vms_csv(path: Path, rows: int, seed: int = 7) -> None:
    """A SkyPilot vms.csv of exactly `rows` rows at `path` (see the module docstring)."""
    rng = random.Random(seed)
    regions = list(REGIONS.items())
    types = [(fam, size, accel, mib, n, cpus, mem, usd) for fam, (accel, mib, sizes) in FAMILIES.items()
             for size, n, cpus, mem, usd in sizes]
    out: list[str] = []
    generation = 0
    while len(out) < rows:
        for fam, size, accel, mib, n, cpus, mem, usd in types:
            name = f"{fam}.{size}" if generation == 0 else f"{fam}k{generation}.{size}"
            step = 1 + 0.01 * (generation % 17)
            info = gpu_info(accel, mib, n)
            for region, (zones, factor) in rng.sample(regions, rng.randint(6, len(regions))):
                price = round(usd * factor * step, 4)
                for z in zones:
                    spot = "" if rng.random() < 0.15 else f"{price * rng.uniform(0.30, 0.45):.4f}"
                    out.append(f"{name},{accel},{n}.0,{cpus}.0,{mem}.0,{info},{price},{spot},{region},{region}{z}")
                if rng.random() < 0.02:  # a CPU instance in the same region: skipped (no accelerator)
                    cname, ccpus, cmem, cusd = rng.choice(CPU)
                    out.append(f"{cname},,,{ccpus}.0,{cmem}.0,,{cusd},,{region},{region}{zones[0]}")
                if rng.random() < 0.005:  # a GPU the catalog does not know: skipped (unknown GPU)
                    iname, iacc, imib, icpus, imem, iusd = INF
                    out.append(f"{iname},{iacc},1.0,{icpus}.0,{imem}.0,{gpu_info(iacc, imib, 1)},{iusd},,"
                               f"{region},{region}{zones[0]}")
                if len(out) >= rows:
                    break
            if len(out) >= rows:
                break
        generation += 1
    del out[rows:]  # exactly `rows` rows (the last offer may lose some of its zones)
    path.write_text("\n".join([COLUMNS, *out]) + "\n", encoding="utf-8")


def budget_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "budget"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "runner.cli"]


def measured(argv: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *argv], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    if got["rc"] != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({got['rc']}): {got['err']}")
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offers", type=int, nargs="+", default=[100_000, 1_000_000],
                    help="rows of each SkyPilot catalog to import (default: 100000 1000000)")
    ap.add_argument("--runs", type=int, default=5, help="measured runs of each command (after one warm-up)")
    ap.add_argument("--yuan", default="2000")
    ap.add_argument("--keep", type=Path, help="keep the catalogs and homes here (default: a temporary folder)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="plan-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    # bytecode written by the warm-up round and read after (a PYTHONDONTWRITEBYTECODE in the environment would
    # make every process compile the project again)
    base_env = {k: v for k, v in os.environ.items() if k not in ("BUDGET_HOME", "PYTHONDONTWRITEBYTECODE")}
    budget = budget_cmd()
    try:
        commands = {"floor": ([sys.executable, "-c", FLOOR], base_env)}
        bundled = work / "home-bundled"
        bundled.mkdir(exist_ok=True)
        commands["bundled"] = (budget + ["plan", "--yuan", args.yuan], {**base_env, "BUDGET_HOME": str(bundled)})
        for rows in args.offers:
            label = f"{rows:,} rows"
            src = work / f"vms-{rows}.csv"
            write_vms_csv(src, rows)
            home = work / f"home-{rows}"
            shutil.rmtree(home, ignore_errors=True)
            env = {**base_env, "BUDGET_HOME": str(home)}
            imp = measured(budget + ["prices", "import", str(src), "--format", "skypilot"], env)
            said = next((line for line in imp["out"].splitlines() if line.startswith("imported")), "?")
            print(f"prices import of {label} ({src.stat().st_size / 2**20:.0f} MiB): {imp['wall']:.2f} s wall, "
                  f"{imp['cpu']:.2f} s CPU, peak {imp['rss_kib'] / 1024:.0f} MiB; {said.split(' into ')[0]}")
            commands[label] = (budget + ["plan", "--yuan", args.yuan], env)
        got: dict[str, list[dict]] = {name: [] for name in commands}
        for i in range(args.runs + 1):  # alternately; the first round warms the caches and is not counted
            for name, (argv, env) in commands.items():
                r = measured(argv, env)
                if i:
                    got[name].append(r)
        med = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "rss_kib")}
               for name, rs in got.items()}
        print(f"\ncold processes, median of {args.runs} alternating runs (python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs):")
        print(f"  {'command':60s} {'wall s':>7s} {'CPU s':>7s} {'peak MiB':>9s}")
        for name, m in med.items():
            what = f'python -c "{FLOOR}"' if name == "floor" else f"budget plan --yuan {args.yuan} ({name})"
            print(f"  {what[:60]:60s} {m['wall']:7.3f} {m['cpu']:7.3f} {m['rss_kib'] / 1024:9.0f}")
        for name, rs in got.items():  # what each plan said (its last run), to see it planned over the catalog
            lines = rs[-1]["out"].splitlines()
            said = [line.strip() for line in lines if line.startswith("Recommended") or " candidates, " in line]
            if name != "floor":
                print(f"  {name}: {' / '.join(s.split('. Estimates')[0] for s in said)}")
        floor, base = med["floor"], med["bundled"]
        print(f"\nbundled / floor: {base['cpu'] / floor['cpu']:.2f}x CPU, {base['wall'] / floor['wall']:.2f}x wall "
              "(target <= 2x)")
        for rows in args.offers:
            m = med[f"{rows:,} rows"]
            print(f"{rows:,} rows minus bundled: {m['wall'] - base['wall']:+.2f} s wall, "
                  f"{m['cpu'] - base['cpu']:+.2f} s CPU (target <= 2 s); peak memory {m['rss_kib'] / 1024:.0f} MiB "
                  "(target <= 1024 MiB)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

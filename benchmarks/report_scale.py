"""Report speed: a ledger with 1,000,000 spend intervals over 10,000 runs (one instance each, 100 ticks of
about 5 minutes, 60 days, three pools, per-second and hourly billing, FX-priced USD offers) and 100,000 metered
calls of 1,000 `budget compare` runs (the second kind of spend: tokens x price) ->
`budget report --by day --format json`, timed as the user runs it (a fresh process, cold start included;
target <= 2 s on a 2-core machine). Also times the per-instance statement and --by run in-process.
Prints its figures; the README quotes them.

    python benchmarks/report_scale.py [--runs 10000] [--ticks 100] [--calls 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from planner.money import billed_seconds, charge, display, metered  # noqa: E402
from runner.money import report  # noqa: E402
from runner.money.ledger import Ledger  # noqa: E402


def build(path: Path, runs: int, ticks: int, n_calls: int = 0, seed: int = 7) -> int:
    """Rows written as the ledger writes them (amount = price x billed seconds / 3600; a call's tokens x its prices
    x the rate), in bulk."""
    rng = random.Random(seed)
    led = Ledger(path)
    db = led.db
    t0 = 1_790_000_000.0
    db.execute("BEGIN")
    for p in ("team", "research", "adhoc"):
        db.execute("INSERT INTO pools VALUES (?,?,?)", (p, "100000000", t0))
        db.execute("INSERT INTO pool_events (pool, at, kind, new_cap_cny) VALUES (?,?,?,?)", (p, t0, "created", "100000000"))
    spend = []
    n = 0
    for r in range(runs):
        rid = f"plan{r % 7}-{r:05d}"
        pool = ("team", "research", "adhoc")[r % 3]
        start = t0 + rng.uniform(0, 60 * 86400)
        inc, minimum = (1, 60) if r % 4 else (3600, 3600)
        usd = Decimal(rng.choice(["0.526", "1.006", "3.06", "0.7125"]))
        price = usd * Decimal("7.12")
        db.execute("INSERT INTO runs (id, pool, plan, plan_path, provider, offer, quantization, spot, cap_cny, "
                   "estimate_cny, state, dir, created_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (rid, pool, f"plan{r % 7}", "x.yaml", "aws", "aws:g4dn.xlarge", ("nf4", "int8", "bf16")[r % 3],
                    0, "1000", "10", "done", "", start, start + ticks * 300))
        cur = db.execute("INSERT INTO instances (run_id, pool, provider, instance_type, region, spot, price_cny_h, "
                         "price_original_h, currency, increment_s, minimum_s, state, started_at, launched_at, "
                         "lease_until, ended_at, gpu, gpu_count) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (rid, pool, "aws", "g4dn.xlarge", "us-east-1", 0, str(price), str(usd), "USD", inc, minimum,
                          "terminated", start, start, start + ticks * 300, start + ticks * 300, "T4", 1))
        iid = cur.lastrowid
        last, billed_before = start, 0
        for k in range(1, ticks + 1):
            t = start + k * 300 + rng.uniform(-20, 20)
            b = billed_seconds(t - start, inc, minimum)
            spend.append((iid, last, t, str(charge(price, b - billed_before)), b - billed_before))
            last, billed_before = t, b
            n += 1
        if len(spend) >= 200_000:
            db.executemany("INSERT INTO spend (instance_id, start_at, end_at, amount_cny, billed_s) VALUES (?,?,?,?,?)",
                           spend)
            spend.clear()
    db.executemany("INSERT INTO spend (instance_id, start_at, end_at, amount_cny, billed_s) VALUES (?,?,?,?,?)", spend)
    per_run = 100
    rows = []
    for r in range(n_calls // per_run):
        rid, pool = f"compare{r % 7}-{r:05d}", ("team", "research", "adhoc")[r % 3]
        start = t0 + rng.uniform(0, 60 * 86400)
        db.execute("INSERT INTO runs (id, pool, plan, plan_path, provider, offer, quantization, spot, cap_cny, "
                   "state, dir, created_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (rid, pool, f"plan{r % 7}", "x.yaml", "api", "gpt-4o", "api", 0, "1000", "done", "", start,
                    start + per_run * 4))
        for k in range(per_run):
            p, c = rng.randint(300, 3000), rng.randint(5, 300)
            rows.append((rid, pool, "gpt-4o", "billed", start + 4 * k, start + 4 * k + 3, "1",
                         str(metered(p, c, Decimal("2.50"), Decimal("10.00"), Decimal("7.12"))), p, c, "2.50", "10.00",
                         "USD", "7.12"))
    db.executemany("INSERT INTO calls (run_id, pool, model, state, reserved_at, at, bound_cny, amount_cny, "
                   "prompt_tokens, completion_tokens, input_per_1m, output_per_1m, currency, cny_per_unit) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    led.close()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        (home / "runs").mkdir()
        t = time.perf_counter()
        rows = build(home / "ledger.db", a.runs, a.ticks, a.calls)
        print(f"ledger: {rows:,} spend intervals, {a.runs:,} runs, {a.calls:,} metered calls, "
              f"{(home / 'ledger.db').stat().st_size / 2**20:.0f} MiB "
              f"(built in {time.perf_counter() - t:.1f} s)")
        env = {**os.environ, "BUDGET_HOME": str(home)}
        walls = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "runner.cli", "report", "--by", "day", "--format", "json"],
                               cwd=REPO, env=env, capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - t)
        doc = json.loads(p.stdout)
        led = Ledger(home / "ledger.db")
        total = sum((Decimal(r[0]) for r in led.db.execute("SELECT amount_cny FROM spend UNION ALL SELECT amount_cny "
                                                             "FROM calls WHERE state='billed'")), Decimal(0))
        assert doc["spent_cny"] == display(total, 2), (doc["spent_cny"], total)
        assert sum(Decimal(g["amount_cny"]) for g in doc["groups"]) == Decimal(doc["spent_cny"])
        print(f"`budget report --by day --format json`: median {statistics.median(walls):.2f} s wall "
              f"(min {min(walls):.2f} s, {len(walls)} runs; a fresh process each; target <= 2 s); {len(doc['groups'])} "
              f"days, total {doc['spent_cny']} CNY = the ledger's own sum to the cent")
        for by in ("run", None):
            t = time.perf_counter()
            doc = report.statement(led, by=by, now=time.time())
            n = len(doc.get("groups") or doc.get("charges"))
            print(f"statement {'--by ' + by if by else 'per instance'} in-process: {time.perf_counter() - t:.2f} s "
                  f"({n:,} lines)")
        led.close()


if __name__ == "__main__":
    main()

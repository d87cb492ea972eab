"""Record the local runs the calibration hold-out test judges estimates against
(tests/runner/test_calibrate_local.py): three real `budget run --provider local` runs of the tiny model with
different image sizes, token counts, batches and sample counts, on this machine, kept as a fixture - each
run's ledger rows (its start and end: the wall time), request.json, summary.json and result lines, and this
machine's CPU profile. Run it on a quiet machine; commit what it writes. The test then never measures the
machine it runs on (a busy CI machine made an estimate-vs-wall-clock test fail 3 runs in 3).

    python3 benchmarks/record_calibration_runs.py [--out tests/runner/fixtures/calibration.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra" / "localcloud"))

# name, samples, image side, new tokens, batch: two to fit on, one held out with none of their settings
PLANS = [("cal-a", 24, 64, 8, 1), ("cal-b", 8, 128, 24, 2), ("held-out", 16, 96, 16, 4)]


def plan_text(name: str, samples: int, size: int, new: int, batch: int) -> str:
    import localcloud

    with tempfile.TemporaryDirectory() as d:
        text = localcloud.caption_plan(REPO / "plans" / "smoke.yaml", Path(d), name, samples).read_text()
    return (text.replace("image_size: [64, 64]", f"image_size: [{size}, {size}]")
            .replace("max_new_tokens: 8", f"max_new_tokens: {new}").replace("batch_size: 1", f"batch_size: {batch}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "runner" / "fixtures" / "calibration.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        (home / "config.yaml").write_text("run: {tick_s: 1}\n")
        env = dict(os.environ, BUDGET_HOME=str(home), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        runs = []
        for name, *shape in PLANS:
            plan = Path(tmp) / f"{name}.yaml"
            plan.write_text(plan_text(name, *shape))
            subprocess.run([sys.executable, "-m", "runner.cli", "run", str(plan), "--provider", "local", "--yes"],
                           env=env, cwd=REPO, check=True)
            con = sqlite3.connect(home / "ledger.db")
            con.row_factory = sqlite3.Row
            run = dict(con.execute("SELECT * FROM runs ORDER BY created_at DESC LIMIT 1").fetchone())
            [inst] = [dict(r) for r in con.execute("SELECT * FROM instances WHERE run_id=?", (run["id"],))]
            out = Path(run["dir"]) / "out"
            runs.append({"plan": plan.read_text(), "run": run, "instance": inst,
                         "request": json.loads((Path(run["dir"]) / "request.json").read_text()),
                         "summary": json.loads((out / "summary.json").read_text()),
                         "results": {p.name: p.read_text() for p in sorted((out / "results").glob("*.jsonl"))}})
        profile = json.loads((home / "devices" / "cpu.json").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": profile, "runs": runs}, indent=1) + "\n")
    for r in runs:
        wall = r["instance"]["ended_at"] - r["instance"]["started_at"]
        print(f"{r['run']['id']}: wall {wall:.1f} s, estimated at launch {r['run']['estimate_s']:.1f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

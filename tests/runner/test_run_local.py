"""`budget run --provider local` (a directory and a subprocess, billed at a simulated rate) and
`--provider ssh` (sshd on loopback as a rented host), for real: the whole loop with the tiny model, Ctrl-C,
`--detach` then `budget stop`; bad input launching nothing. Every fault of a run's life is tested in-process
on the scripted cloud (test_lifecycle.py, test_lifecycle_property.py); these check the real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from runner.procs import pid_alive as alive
from runner.worker.tiny import NAME as TINY
from tests.runner.conftest import (
    caption_plan,
    db,
    instance_pids,
    result_lines,
    spent,
    the_run,
    wait_until,
)

slow = pytest.mark.slow  # whole runs: real processes, sshd, signals (the rest run in-process: test_lifecycle.py)

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "plans" / "smoke.yaml"
@slow
def test_local_happy_path(cli, local_home):
    """On a 2-GPU offer (simulated here): the planner's layout is replicas, so the instance runs a worker per GPU
    on its shard, merged into the one results folder the controller fetches."""
    code, out, err = cli("run", SMOKE, "--provider", "local", "--offer", "autodl:RTX4090x2@cn", "--yes")
    assert code == 0, err
    run = the_run(local_home)
    assert run["state"] == "done" and run["phase"] == "done"
    request = json.loads((Path(run["dir"]) / "request.json").read_text())
    assert request["job"]["replicas"] == 2 and "Replicas" in out  # budget status: each GPU's shard and phase
    summary = json.loads((Path(run["dir"]) / "out" / "summary.json").read_text())
    assert summary["complete"] and summary["replica_count"] == 2 and result_lines(run) == run["samples_done"] > 0
    status = json.loads((Path(run["dir"]) / "out" / "status.json").read_text())
    assert [(r["gpu"], r["runs"], r["phase"]) for r in status["replicas"]] == [("0", 1, "done"), ("1", 1, "done")]
    inst = dict(db(local_home).execute("SELECT * FROM instances").fetchone())
    assert inst["state"] == "terminated" and inst["provider"] == "local"
    assert Decimal(0) < spent(local_home) <= Decimal(run["cap_cny"])
    assert not [p for p in instance_pids(run, local_home) if alive(p)]
    assert f"run {run['id']}" in out and "done" in out
    code, out, _ = cli("logs", run["id"])  # times as ISO dates, money rounded for people, never epochs or floats
    controller = [ln for ln in out.splitlines() if ln.startswith("[controller] ")]
    assert code == 0 and controller and all(re.match(r"\[controller\] \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", ln)
                                            for ln in controller)
    assert "terminated" in out and not re.search(r"\b1[6-9]\d{8}\b", out) and not re.search(r"\d\.\d{5,} CNY", out)
    # the cost of quality of this real run: every task with its samples, its share of the spend summing to it
    code, out, err = cli("report", "--run", run["id"], "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    tasks = {r["task"]: r for r in doc["rows"]}
    assert set(tasks) == set(summary["tasks"]) and all(r["quant"] == run["quantization"] for r in doc["rows"])
    assert Decimal(doc["spent_cny"]) == spent(local_home).quantize(Decimal("0.01")) == \
        sum(Decimal(r["cost_cny"]) for r in doc["rows"])
    assert tasks["captions"]["metric"] == "CIDEr-D" and tasks["captions"]["value"] is not None
    assert tasks["captions"]["samples"] == summary["tasks"]["captions"]["ok"] > 0 and tasks["captions"]["cny_per_sample"]
    # this run is 16-bit already: its fp16 check had nothing to verify, so no agreement and no verdict
    assert tasks["fp16_check"]["agreement_16bit"] is None and tasks["fp16_check"]["samples"] == 0 and not doc["verdicts"]


def _spawn(args: list[str], home: Path) -> subprocess.Popen:
    """`budget ARGS` in its own process, with Ctrl-C's default disposition: a test run from a shell that ignores
    SIGINT (a background job, nohup, some CI runners) would pass that on to the child otherwise."""
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=dict(os.environ, BUDGET_HOME=str(home)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@slow
def test_ctrl_c_tears_down(local_home, long_plan):
    p = _spawn(["run", str(long_plan), "--provider", "local", "--yuan", "5", "--yes"], local_home)
    wait_until(lambda: (local_home / "ledger.db").exists() and the_run(local_home)["phase"] == "running"
               and result_lines(the_run(local_home)) > 0, 90, "results")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "stopped (interrupted)" in err and "Traceback" not in err
    run = the_run(local_home)
    assert (run["state"], run["reason"]) == ("stopped", "interrupted")
    assert db(local_home).execute("SELECT state FROM instances").fetchone()[0] == "terminated"
    assert not [p for p in instance_pids(run, local_home) if alive(p)]
    assert 0 < result_lines(run) < 5000


@slow
def test_ssh_host_happy_path(cli, ssh_host, budget_home, tmp_path):
    # one caption task (every task kind runs end to end on the local provider: test_local_happy_path)
    code, _, err = cli("run", caption_plan(tmp_path, "happy", 2), "--provider", "ssh", "--yuan", "5", "--yes",
                       "--quant", "nf4")
    assert code == 0, err
    run = the_run(budget_home)
    assert run["state"] == "done" and run["offer"] == "csdn:T4x1"
    remote = ssh_host.remote_dir / "runs" / run["id"]
    assert (remote / "python.path").read_text().strip() == sys.executable  # bootstrap checked the given Python
    assert (remote / "models" / TINY / "config.json").exists()  # built on the host from the recipe
    assert json.loads((Path(run["dir"]) / "out" / "summary.json").read_text())["complete"]
    assert ssh_host.poweroff_marker.exists()  # the host's stop command ran
    assert (remote / "TERMINATED").exists()
    assert spent(budget_home) == Decimal("1.5")  # csdn bills the started hour: 1.5 CNY


@pytest.mark.parametrize("args,config,code,message", [
    (["--provider", "ssh"], None, 2, "no SSH host configured"),
    (["--provider", "gcp"], None, 2, "unknown provider 'gcp'"),
    (["--provider", "local"], "run: {tik_s: 1}\n", 2, "config.yaml: run.tik_s: Extra inputs are not permitted"),
    (["--provider", "local"], "run: [\n", 2, "config.yaml:2: not valid YAML"),
    (["--provider", "local", "--offer", "nope:x"], None, 2, "no offer 'nope:x' in the catalog"),
    (["--provider", "local", "--yuan", "-3"], None, 2, "--yuan must be a positive amount"),
    (["--provider", "local", "--price-yuan-hour", "x"], None, 2, "--price-yuan-hour 'x' is not a number"),
    (["--provider", "local", "--unattended"], None, 2, "--unattended works with --provider aws only (not local)"),
    (["--provider", "aws", "--unattended"], "aws: {region: us-east-1}\n", 2,
     "--unattended needs --provider aws and aws.results_bucket"),
])
def test_bad_input_is_one_line_and_launches_nothing(cli, budget_home, args, config, code, message):
    if config:
        budget_home.mkdir(parents=True, exist_ok=True)
        (budget_home / "config.yaml").write_text(config)
    got, _, err = cli("run", SMOKE, *args, "--yes")
    assert got == code and message in err and "hint:" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 2
    assert not (budget_home / "runs").exists()


def test_status_of_an_unknown_run(cli, budget_home):
    code, _, err = cli("status", "nope")
    assert code == 2 and "no run 'nope'" in err and "budget status" in err




@slow
def test_detach_then_budget_stop_of_a_run_whose_worker_serves_the_model(cli, local_home, long_plan):
    """--detach, then `budget stop`, of a run with --engine transformers: the instance's worker starts
    `transformers serve` on loopback and drives it through the one client; the run is metered and stopped like
    any other, the instance torn down, and the server goes with it."""
    code, out, err = cli("run", long_plan, "--provider", "local", "--engine", "transformers", "--yuan", "5", "--yes",
                         "--detach")
    assert code == 0, err
    run_id = out.strip()
    wait_until(lambda: result_lines(the_run(local_home)) > 0, 180, "results")
    [log] = (local_home / "instances" / run_id).rglob("worker.log")
    [engine] = [int(m) for m in re.findall(r"engine started \(pid (\d+)\)", log.read_text())]
    assert alive(engine)
    code, out, _ = cli("stop", run_id)
    assert code == 0 and "stopped (user)" in out
    run = the_run(local_home)
    assert (run["state"], run["reason"]) == ("stopped", "user") and Decimal(0) < spent(local_home)
    assert db(local_home).execute("SELECT state FROM instances").fetchone()[0] == "terminated"
    wait_until(lambda: not alive(engine), 60, "the engine to end")
    assert not [p for p in instance_pids(run, local_home) if alive(p)]
    job = json.loads(next((local_home / "instances" / run_id).rglob("job.json")).read_text())
    assert job["engine"]["kind"] == "transformers"
    code, out, _ = cli("logs", run_id)
    assert code == 0 and "[controller] " in out and "[worker] " in out and "engine transformers ready" in out
    line = json.loads(next((local_home / "runs").rglob("captions.jsonl")).read_text().splitlines()[0])
    assert line["status"] == "ok" and line["peak_memory"][0]["source"] == "server-rss"

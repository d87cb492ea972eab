"""`budget run --provider local` (a directory and a subprocess, billed at a simulated rate) and
`--provider ssh` (sshd on loopback as a rented host): the whole loop, the budget stop, Ctrl-C,
`budget stop`, and a controller that dies (the instance's watchdog ends it at its lease)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from runner.cloud.local import pid_alive as alive
from runner.worker.tiny import NAME as TINY
from tests.runner.conftest import (
    caption_plan,
    db,
    instance_pids,
    result_lines,
    spent,
    the_run,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow  # whole runs: real processes, sshd, kills

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "plans" / "smoke.yaml"
SIM_OFFER = ("provider,instance_type,gpu,gpu_count,price_per,price,spot_price,currency,region,billing_increment_s,"
             "billing_minimum_s,source,date\n"
             'sim,cpu,T4,1,gpu,3600,,CNY,local,1,0,"test: 1 CNY a second, per-second billing, no minimum",2026-11-25\n')


def sim_offer(cli, tmp_path) -> None:
    f = tmp_path / "sim.csv"
    f.write_text(SIM_OFFER)
    code, _, err = cli("prices", "import", f, "--format", "csv")
    assert code == 0, err


def test_local_happy_path(cli, local_home):
    code, out, err = cli("run", SMOKE, "--provider", "local", "--yes")
    assert code == 0, err
    run = the_run(local_home)
    assert run["state"] == "done" and run["phase"] == "done"
    summary = json.loads((Path(run["dir"]) / "out" / "summary.json").read_text())
    assert summary["complete"] and result_lines(run) == run["samples_done"] > 0
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


def test_budget_stop_keeps_results_and_stays_under_the_cap(cli, local_home, long_plan, tmp_path):
    """The guard stops a run when its pool's money ends; what it finished is kept. No race with the model
    load: the run starts with room, and once results exist the pool's cap is lowered - under the ledger's
    write lock - to what is committed now plus 3 CNY (3 s at 1 CNY/s), so the guard must stop it within
    a few ticks and the final spend must stay within that cap."""
    from runner.money.guard import Policy, committed
    from runner.money.ledger import Ledger

    sim_offer(cli, tmp_path)
    write_config(local_home, run={"tick_s": 1, "teardown_s": 5, "lease_s": 10})
    code, out, err = cli("run", long_plan, "--provider", "local", "--offer", "sim:cpu", "--yuan", "5000", "--yes",
                         "--detach")
    assert code == 0, err
    run_id = out.strip()
    wait_until(lambda: result_lines(the_run(local_home)) > 0, 120, "results")
    led = Ledger(local_home / "ledger.db")
    try:
        with led.transaction():  # the controller's next tick waits for this: nothing moves meanwhile
            meters = [i.meter for i in led.instances(pool="default")]
            cap = committed(meters, time.time(), Policy(tick_s=1, teardown_s=5)) + 3
            led.db.execute("UPDATE pools SET cap_cny=? WHERE name='default'", (str(cap),))
    finally:
        led.close()
    wait_until(lambda: the_run(local_home)["state"] in ("done", "stopped", "failed"), 120, "the guard's stop")
    run = the_run(local_home)
    assert (run["id"], run["state"], run["reason"]) == (run_id, "stopped", "budget")
    money = spent(local_home)
    assert Decimal(0) < money <= cap
    done = result_lines(run)
    assert 0 < done < 5000  # what it finished before the money ran out is kept
    wait_until(lambda: not [p for p in instance_pids(run, local_home) if alive(p)], 30, "the processes to end")
    events = [r["kind"] for r in db(local_home).execute("SELECT kind FROM events ORDER BY id")]
    assert events.index("guard") < events.index("terminating")
    code, out, _ = cli("status")
    assert code == 0 and "stopped: budget" in out


def _spawn(args: list[str], home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=dict(os.environ, BUDGET_HOME=str(home)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


def test_detach_then_budget_stop(cli, local_home, long_plan):
    code, out, err = cli("run", long_plan, "--provider", "local", "--yuan", "5", "--yes", "--detach")
    assert code == 0, err
    run_id = out.strip()
    wait_until(lambda: result_lines(the_run(local_home)) > 0, 90, "results")
    code, out, _ = cli("stop", run_id)
    assert code == 0 and "stopped (user)" in out
    run = the_run(local_home)
    assert (run["state"], run["reason"]) == ("stopped", "user")
    assert db(local_home).execute("SELECT state FROM instances").fetchone()[0] == "terminated"
    assert not [p for p in instance_pids(run, local_home) if alive(p)]
    code, out, _ = cli("logs", run_id)
    assert code == 0 and "[controller] " in out and "[worker] " in out


def test_ssh_host_happy_path(cli, ssh_host, budget_home):
    code, _, err = cli("run", SMOKE, "--provider", "ssh", "--yuan", "5", "--yes", "--quant", "nf4", "--limit", "1")
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


def test_runs_sharing_a_pool_cannot_both_commit_the_last_yuan(cli, local_home, long_plan, tmp_path):
    """Run A's admission commits (most of) the pool; run B on the same pool is refused before launching.
    (At 1 CNY/s and the local provider's 30 s teardown, 60 CNY pays A's first stretch - 20 s - and little more.)"""
    sim_offer(cli, tmp_path)
    code, out, err = cli("run", long_plan, "--provider", "local", "--offer", "sim:cpu", "--yuan", "60", "--pool",
                         "team", "--yes", "--detach")
    assert code == 0, err
    first = out.strip()
    wait_until(lambda: (local_home / "ledger.db").exists() and db(local_home).execute(
               "SELECT count(*) FROM instances WHERE run_id=?", (first,)).fetchone()[0] == 1, 60, "run A's intent row")
    code, _, err = cli("run", long_plan, "--provider", "local", "--offer", "sim:cpu", "--yuan", "60", "--pool", "team",
                       "--yes")
    assert code == 1 and "not launching" in err and "pool team" in err
    second = [r["id"] for r in db(local_home).execute("SELECT id FROM runs WHERE id != ?", (first,))]
    assert [dict(r)["state"] for r in db(local_home).execute("SELECT state FROM runs WHERE id=?", second)] == ["failed"]
    assert db(local_home).execute("SELECT count(*) FROM instances WHERE run_id=?", second).fetchone()[0] == 0
    cli("stop", first)
    pool = sum((Decimal(r[0]) for r in db(local_home).execute("SELECT amount_cny FROM spend")), Decimal(0))
    assert pool <= Decimal(60)


def test_resume_takes_over_a_run_whose_controller_died(cli, local_home, tmp_path):
    plan = caption_plan(tmp_path, "medium", 80)
    code, out, err = cli("run", plan, "--provider", "local", "--yuan", "5", "--yes", "--detach", "--batch-size", "1")
    assert code == 0, err
    run_id = out.strip()
    wait_until(lambda: result_lines(the_run(local_home)) > 0, 90, "results")
    os.kill(the_run(local_home)["controller_pid"], signal.SIGKILL)
    code, out, err = cli("resume", run_id)
    assert code == 0, err
    run = the_run(local_home)
    assert run["state"] == "done" and run["samples_done"] == run["samples_total"] == 80
    lines = (Path(run["dir"]) / "out" / "results" / "captions.jsonl").read_text().splitlines()
    assert len({json.loads(x)["id"] for x in lines}) == len(lines) == 80  # nothing lost, nothing twice
    kinds = [r["kind"] for r in db(local_home).execute("SELECT kind FROM events ORDER BY id")]
    assert "reattached" in kinds and kinds[-1] == "done"
    assert db(local_home).execute("SELECT state FROM instances").fetchone()[0] == "terminated"
    code, _, err = cli("resume", run_id)
    assert code == 1 and "already done" in err


def test_a_dead_host_is_one_error_and_budget_stop_retries(cli, ssh_host, budget_home, tmp_path):
    """The rented host goes dark mid-run: the controller cannot reconnect nor run the stop command, says
    so in one line, keeps the instance live in the ledger; once the host answers again, `budget stop`
    terminates and settles it."""
    write_config(budget_home, run={"ssh_wait_s": 3})
    plan = caption_plan(tmp_path, "medium", 400)  # the worker on the dark host runs on: not for 5000 samples
    p = _spawn(["run", str(plan), "--provider", "ssh", "--yuan", "5", "--yes", "--quant", "fp16"], budget_home)
    wait_until(lambda: (budget_home / "ledger.db").exists() and result_lines(the_run(budget_home)) > 0, 120, "results")
    ssh_host.crash()
    _, err = p.communicate(timeout=400)  # reconnect attempts, then a terminate that cannot reach the host
    assert p.returncode == 1 and "could not terminate" in err and "budget stop" in err and "Traceback" not in err
    run = the_run(budget_home)
    assert run["state"] == "failed"
    assert db(budget_home).execute("SELECT state FROM instances").fetchone()[0] == "stopping"
    ssh_host.revive()
    code, out, err = cli("stop", run["id"])
    assert code == 0, err
    assert db(budget_home).execute("SELECT state FROM instances").fetchone()[0] == "terminated"
    assert ssh_host.poweroff_marker.exists()
    assert Decimal(0) < spent(budget_home) <= Decimal(5)


def test_an_unreachable_ssh_host_fails_fast_and_charges_nothing(cli, budget_home, tmp_path, monkeypatch):
    """A rented host whose port refuses: the run fails within ssh_wait_s (seconds by default for an ssh host,
    not a cloud boot's 10 minutes), nothing of ours ran there so nothing is charged, and it ends `failed` -
    not 'may still be billing'."""
    import socket

    from runner.config import load
    from runner.orchestrate import make_provider, ssh_wait_for

    monkeypatch.delenv("BUDGET_SSH_ADDRESS", raising=False)
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("not used: the connection is refused first\n")
    known.write_text("")
    write_config(budget_home, ssh={"host": "127.0.0.1", "port": port, "user": "nobody", "key": str(key),
                                   "known_hosts": str(known), "offer": "csdn:T4x1"})
    cfg = load(budget_home)
    assert ssh_wait_for(cfg, make_provider("ssh", cfg, budget_home)) == 30.0  # the default for a rented host
    write_config(budget_home, run={"ssh_wait_s": 3, "tick_s": 1})
    code, _, err = cli("run", SMOKE, "--provider", "ssh", "--yuan", "5", "--yes", "--limit", "1")
    assert code == 1 and "cannot reach nobody@127.0.0.1" in err and "Traceback" not in err, err
    assert "may still be billing" not in err
    run = the_run(budget_home)
    assert run["state"] == "failed"
    inst = dict(db(budget_home).execute("SELECT * FROM instances").fetchone())
    assert inst["state"] == "failed" and spent(budget_home) == Decimal(0)
    kinds = [r[0] for r in db(budget_home).execute("SELECT kind FROM events ORDER BY id")]
    assert "terminating" not in kinds and kinds[-1] == "failed"

"""`budget run --provider aws` against the local test cloud: moto's EC2 and sshd as the instance - the happy
path, a real spot reclaim, a real unattended hand-over and upload, and an AMI that is not there. Each test
checks the services' state afterwards: moto's instances, security groups and tags, the instance's
filesystem, the SQLite ledger. Every other fault of a run's life is tested in-process (test_lifecycle.py)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from planner.catalog import load_catalog
from tests.runner.conftest import caption_plan, db, spent, the_run, wait_until, write_config

slow = pytest.mark.slow  # whole runs on the moto + sshd test cloud (every fault of a run: test_lifecycle.py)

SMOKE = Path(__file__).resolve().parents[2] / "plans" / "smoke.yaml"


def instances(ec2) -> list[dict]:
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]


def spot_run_at_work(aws_cloud, budget_home, tiny_model, plan: Path, lines: int = 10):
    """`budget run PLAN --spot` in a subprocess, returned once `lines` results are fetched, with the instance
    doing that work (the one running)."""
    import os
    import time

    p = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(plan), "--provider", "aws", "--spot",
                          "--yuan", "20", "--yes", "--model-path", str(tiny_model), "--quant", "fp16",
                          "--batch-size", "1", "--remote-python", sys.executable], env=dict(os.environ),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 180
    while time.monotonic() < end and p.poll() is None:
        res = list((budget_home / "runs").glob("*/out/results/captions.jsonl"))
        if res and len(res[0].read_text().splitlines()) >= lines:
            break
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()[1]
    [first] = [i["InstanceId"] for i in instances(aws_cloud.ec2) if i["State"]["Name"] == "running"]
    return p, first


@slow
def test_happy_path(aws_cloud, cli, budget_home, tiny_model, tmp_path):
    # one caption task (every task kind runs end to end on the local provider: test_local_happy_path)
    code, out, err = cli("run", caption_plan(tmp_path, "happy", 2), "--provider", "aws", "--yuan", "20", "--yes",
                         "--model-path", tiny_model, "--quant", "nf4")
    assert code == 0, err
    run = the_run(budget_home)
    assert run["state"] == "done" and run["provider"] == "aws" and run["quantization"] == "nf4"

    [inst] = instances(aws_cloud.ec2)
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags == {"gpubudget:run": run["id"], "gpubudget:managed": "true"}
    assert inst["State"]["Name"] == "terminated"
    assert inst["InstanceType"] == run["offer"].split(":")[1]
    assert inst["ImageId"] == aws_cloud.image_id
    # the host key was the instance's own, read from its console - no private key ever in user-data
    assert (Path(run["dir"]) / f"host_key-{inst['InstanceId']}.pub").read_text().strip() == \
        aws_cloud.agent.host_keys[inst["InstanceId"]]
    raw = aws_cloud.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
    assert "PRIVATE KEY" not in base64.b64decode(raw["UserData"]["Value"]).decode()
    behaviour = aws_cloud.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"],
                                                          Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    # its root volume was tagged too (seen while it ran: EC2 deletes it with the instance)
    assert aws_cloud.agent.volume_tags[inst["InstanceId"]] == [tags]
    # the security group allowed SSH from the caller's /32 only, and was deleted after the instance
    [rule] = aws_cloud.agent.ingress[inst["InstanceId"]]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == ["127.0.0.1/32"] and not rule.get("Ipv6Ranges")
    assert not [g for g in aws_cloud.ec2.describe_security_groups()["SecurityGroups"]
                if g["GroupName"] == f"gpubudget-{run['id']}"]
    [pair] = aws_cloud.ec2.describe_key_pairs()["KeyPairs"]
    assert pair["KeyName"].startswith("gpubudget-")

    # the worker ran on the "instance" (sshd's filesystem) and its results came back
    remote = aws_cloud.remote_dir / "runs" / run["id"]
    assert (remote / "python.path").read_text().strip()  # bootstrap ran and found a ready Python
    assert json.loads((remote / "job.json").read_text())["model"]["source"] == f"{remote}/model"
    out_dir = Path(run["dir"]) / "out"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["complete"] and summary["quantization"] == "nf4"
    for name, task in summary["tasks"].items():
        if "skipped" not in task:
            lines = (out_dir / "results" / f"{name}.jsonl").read_text().splitlines()
            assert len(lines) == task["done"] == task["total"]
            assert (remote / "out" / "results" / f"{name}.jsonl").read_bytes() == \
                (out_dir / "results" / f"{name}.jsonl").read_bytes()

    money = spent(budget_home)
    assert Decimal(0) < money <= Decimal(20)
    inst_row = dict(db(budget_home).execute("SELECT * FROM instances").fetchone())
    assert inst_row["state"] == "terminated" and inst_row["provider_id"] == inst["InstanceId"]
    assert Decimal(inst_row["price_original_h"]) > 0 and inst_row["currency"] == "USD"
    kinds = [r[0] for r in db(budget_home).execute("SELECT kind FROM events ORDER BY id")]
    assert kinds.index("intent") < kinds.index("launched") < kinds.index("watchdog") < kinds.index("terminated")

    code, out, _ = cli("status", run["id"][:20], "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["state"] == "done" and Decimal(doc["spent_cny"]) == money and doc["samples_done"] > 0

    # the statement: its charge line is what was recorded at launch, and a later catalog or FX change
    # (USD at 9.99 CNY, the offer at 100 USD/h) changes nothing in it
    code, out, err = cli("report", "--format", "json")
    assert code == 0, err
    before = json.loads(out)
    [charge] = before["charges"]
    assert Decimal(before["spent_cny"]) == money.quantize(Decimal("0.01")) == Decimal(charge["amount_cny"])
    assert (charge["currency"], charge["instance_type"], charge["status"]) == ("USD", inst["InstanceType"], "terminated")
    assert Decimal(charge["rate_cny_h"]) == Decimal(inst_row["price_cny_h"]) and charge["gpu"]
    catalog = budget_home / "catalog"
    (catalog / "offers").mkdir(parents=True, exist_ok=True)
    (catalog / "fx.yaml").write_text('- {currency: USD, cny_per_unit: "9.99", date: "2026-11-28", source: test}\n')
    (catalog / "offers" / "aws.csv").write_text(
        "provider,instance_type,gpu,gpu_count,price_per,price,spot_price,currency,region,billing_increment_s,"
        f"billing_minimum_s,source,date\naws,{inst['InstanceType']},T4,1,instance,100,,USD,us-east-1,1,60,test,2026-11-28\n")
    changed = load_catalog(catalog)  # the change took: today's catalog prices this instance type 10x higher
    assert changed.fx["USD"].cny_per_unit == Decimal("9.99")
    assert [o.price for o in changed.offers if o.instance_type == inst["InstanceType"]] == [Decimal(100)]
    code, out, err = cli("report", "--format", "json")
    after = json.loads(out)
    timeless = lambda d: {k: v for k, v in d.items() if k not in ("generated_at", "burn", "runway_h")}  # noqa: E731
    assert code == 0 and timeless(after) == timeless(before), err  # (the average burn runs to now)


def test_ami_missing_launches_nothing(aws_cloud, cli, budget_home, tiny_model):
    write_config(budget_home, aws={"ami_name": "no such image *"})
    code, _, err = cli("run", SMOKE, "--provider", "aws", "--yuan", "20", "--yes", "--model-path", tiny_model)
    assert code == 1
    assert "no AMI named 'no such image *'" in err and "hint:" in err and "Traceback" not in err
    assert instances(aws_cloud.ec2) == []
    run = the_run(budget_home)
    assert run["state"] == "failed" and spent(budget_home) == 0
    assert db(budget_home).execute("SELECT state FROM instances").fetchone()[0] == "failed"


@slow
def test_a_spot_reclaim_relaunches_and_no_sample_is_lost_or_repeated(aws_cloud, budget_home, tiny_model, tmp_path):
    """The cloud takes a spot instance mid-run (terminated in moto: its processes die, its disk is gone). The
    controller settles it, launches a new one within the budget, pushes the lines it had fetched and the
    worker goes on after them: the run completes with every sample exactly once, spend <= cap including
    the reclaimed instance's billed time."""

    aws_cloud.agent.disks_die = True
    p, first = spot_run_at_work(aws_cloud, budget_home, tiny_model, caption_plan(tmp_path, "reclaimed", 20), lines=6)
    aws_cloud.ec2.terminate_instances(InstanceIds=[first])  # the reclaim
    _, err = p.communicate(timeout=400)
    assert p.returncode == 0, err
    run = the_run(budget_home)
    assert run["state"] == "done" and run["samples_done"] == 20 and run["spot"] == 1
    lines = (Path(run["dir"]) / "out" / "results" / "captions.jsonl").read_text().splitlines()
    assert len({json.loads(x)["id"] for x in lines}) == len(lines) == 20
    gone = aws_cloud.remote_dir / ".gone" / first / "out" / "results" / "captions.jsonl"
    assert len(gone.read_text().splitlines()) >= 6  # work really happened on the instance that was taken
    rows = [dict(r) for r in db(budget_home).execute("SELECT * FROM instances ORDER BY id")]
    assert [r["state"] for r in rows] == ["reclaimed", "terminated"] and rows[0]["provider_id"] == first
    assert all(i["State"]["Name"] == "terminated" for i in instances(aws_cloud.ec2)) and len(instances(aws_cloud.ec2)) == 2
    first_cost = sum(Decimal(r[0]) for r in db(budget_home).execute(
        "SELECT amount_cny FROM spend WHERE instance_id=?", (rows[0]["id"],)))
    assert Decimal(0) < first_cost < spent(budget_home) <= Decimal(20)
    kinds = [r[0] for r in db(budget_home).execute("SELECT kind FROM events ORDER BY id")]
    assert "interrupted" in kinds and kinds.count("launched") == 2
    # the market price EC2 reports (moto's: 0.00001 USD/h) is recorded; the ledger bills MaxPrice, the most it may be
    assert [r["market_price_h"] for r in rows] == ["0.00001", "0.00001"]
    launched = [r[0] for r in db(budget_home).execute("SELECT detail FROM events WHERE kind='launched'")]
    assert all(f"MaxPrice {Decimal(rows[0]['price_original_h'])} USD/h" in d for d in launched), launched


@slow
def test_unattended_run_finishes_alone_and_status_collects_it(aws_cloud, cli, budget_home, tiny_model, tmp_path,
                                                              monkeypatch):
    """`--unattended`: once the worker runs, the controller leaves (nothing of ours runs here any more). The
    instance holds the deadline its budget pays, uploads its output through presigned URLs (no credential on
    it) and powers itself off when done; a later `budget status RUN` finds it terminated, takes every line from
    (moto's) S3 and settles the ledger: spend <= cap."""
    import boto3

    secret = "SECRETnotOnTheInstance0123456789abcdefXYZ"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTUNATTENDED01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="results")
    write_config(budget_home, aws={"results_bucket": "results", "upload_every_s": 2})
    plan = caption_plan(tmp_path, "alone", 40)
    code, out, err = cli("run", plan, "--provider", "aws", "--unattended", "--yuan", "20", "--yes", "--model-path",
                         tiny_model, "--quant", "fp16", "--batch-size", "1", "--remote-python", sys.executable)
    assert code == 0, err
    assert "runs unattended" in out
    run = the_run(budget_home)
    assert run["state"] == "running" and run["phase"] == "handed-over" and run["controller_pid"] is None
    [inst] = [dict(r) for r in db(budget_home).execute("SELECT * FROM instances")]
    deadline = inst["lease_until"]
    assert deadline > inst["started_at"] + 600  # the budget's deadline, not a 60 s lease a controller renews
    # nothing here drives it: wait (bounded) for the instance to end itself
    wait_until(lambda: instances(aws_cloud.ec2)[0]["State"]["Name"] == "terminated", 300, "the instance powers off")
    s3 = boto3.client("s3", region_name="us-east-1")
    body = s3.get_object(Bucket="results", Key=f"gpubudget/{run['id']}/out/results/captions.jsonl")["Body"].read()
    assert len(body.splitlines()) == 40
    code, out, err = cli("status", run["id"], "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["state"] == "done" and doc["samples_done"] == 40
    lines = (Path(run["dir"]) / "out" / "results" / "captions.jsonl").read_text().splitlines()
    assert len({json.loads(x)["id"] for x in lines}) == len(lines) == 40
    [inst] = [dict(r) for r in db(budget_home).execute("SELECT * FROM instances")]
    assert inst["state"] == "terminated" and inst["ended_at"] <= deadline + 90
    assert Decimal(0) < spent(budget_home) <= Decimal(20)
    kinds = [r[0] for r in db(budget_home).execute("SELECT kind FROM events ORDER BY id")]
    assert "handed-over" in kinds and "reconciled" in kinds
    # no credential ever reached the instance: not in its user-data, the files pushed there, or any log
    raw = aws_cloud.ec2.describe_instance_attribute(InstanceId=inst["provider_id"], Attribute="userData")
    assert secret not in base64.b64decode(raw["UserData"]["Value"]).decode()
    remote = aws_cloud.remote_dir / "runs" / run["id"]
    seen = [p for p in remote.rglob("*") if p.is_file()] + [p for p in Path(run["dir"]).rglob("*") if p.is_file()]
    assert seen and not [p for p in seen if secret.encode() in p.read_bytes()]
    assert (remote / "upload_urls").read_text().count("X-Amz-Signature=") == 5  # signed URLs, one per output file



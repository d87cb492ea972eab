"""`budget sweep` on the test cloud (moto's EC2 and S3): what a run left behind - made by the provider's own
launch code - is found, priced and deleted; nothing a live run owns is touched."""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import pytest

from planner.catalog import load_catalog
from runner.cloud.aws import AwsProvider
from runner.cloud.base import LaunchSpec
from runner.money.ledger import Ledger
from tests.runner.conftest import localcloud, write_config


@pytest.fixture
def cloud(moto_server, monkeypatch, budget_home):
    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    for k, v in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    ec2, s3 = boto3.client("ec2", region_name="us-east-1"), boto3.client("s3", region_name="us-east-1")
    localcloud.register_dlami(ec2)
    s3.create_bucket(Bucket="results")
    write_config(budget_home, aws={"ami_owners": ["self"], "client_cidr": "127.0.0.1/32", "results_bucket": "results",
                                   "terminate_timeout_s": 30})
    return ec2, s3


def launch_as_a_run(budget_home, run_id: str) -> str:
    """What `budget run --provider aws` creates: key pair, security group, tagged instance and root volume."""
    from runner import config

    offer = next(o for o in load_catalog().offers if o.provider == "aws" and o.instance_type == "g4dn.xlarge")
    aws = AwsProvider(config.load(budget_home).aws, budget_home)
    info = aws.launch(LaunchSpec(run_id, offer, spot=False))
    return info.provider_id


def test_sweep_finds_prices_and_deletes_what_no_live_run_owns(cli, budget_home, cloud):
    ec2, s3 = cloud
    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("p", Decimal(100), 0)
    (budget_home / "runs" / "live-run").mkdir(parents=True)
    led.create_run(id="live-run", pool="p", plan="smoke", plan_path="x", provider="aws", offer="aws:g4dn.xlarge",
                   quantization="nf4", spot=0, cap_cny=Decimal(100), dir=str(budget_home / "runs" / "live-run"),
                   created_at=0, state="running")
    led.create_run(id="gone-run", pool="p", plan="smoke", plan_path="x", provider="aws", offer="aws:g4dn.xlarge",
                   quantization="nf4", spot=0, cap_cny=Decimal(100), dir="", created_at=0, state="running")
    led.close()
    gone = launch_as_a_run(budget_home, "gone-run")
    led = Ledger(budget_home / "ledger.db")  # then its ledger rows are removed: nothing owns what it left
    led.db.execute("DELETE FROM events WHERE run_id='gone-run'")
    led.db.execute("DELETE FROM runs WHERE id='gone-run'")
    led.close()
    live = launch_as_a_run(budget_home, "live-run")
    tags = lambda run: [{"ResourceType": "volume", "Tags": [{"Key": "gpubudget:run", "Value": run},  # noqa: E731
                                                             {"Key": "gpubudget:managed", "Value": "true"}]}]
    loose = ec2.create_volume(Size=50, AvailabilityZone="us-east-1a", TagSpecifications=tags("gone-run"))["VolumeId"]
    for run in ("gone-run", "live-run", "done-run"):  # done-run: finished, in the ledger - its results stay
        s3.put_object(Bucket="results", Key=f"gpubudget/{run}/out/results/captions.jsonl", Body=b'{"id": "1"}\n' * 100)
    led = Ledger(budget_home / "ledger.db")
    led.create_run(id="done-run", pool="p", plan="smoke", plan_path="x", provider="aws", offer="aws:g4dn.xlarge",
                   quantization="nf4", spot=0, cap_cny=Decimal(100), dir="", created_at=0, state="done")
    led.close()
    s3.put_object(Bucket="results", Key="someone-else/data.csv", Body=b"x")  # not ours: never listed

    code, out, err = cli("sweep", "--json")
    assert code == 0, err
    doc = json.loads(out)
    leaks = {(r["kind"], r["id"]) for r in doc["resources"] if r["leak"]}
    kept = {(r["kind"], r["id"]) for r in doc["resources"] if not r["leak"]}
    gone_group = "gpubudget-gone-run"
    groups = {g["GroupName"]: g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert {("instance", gone), ("volume", loose), ("security-group", groups[gone_group]),
            ("s3-prefix", "s3://results/gpubudget/gone-run/")} <= leaks
    assert any(k == "key-pair" for k, _ in kept)  # one login key for both runs: the live instance still uses it
    assert {("instance", live), ("security-group", groups["gpubudget-live-run"]),
            ("s3-prefix", "s3://results/gpubudget/live-run/"), ("s3-prefix", "s3://results/gpubudget/done-run/")} <= kept
    assert not leaks & kept and all(r["run"] == "gone-run" for r in doc["resources"] if r["leak"])
    priced = {r["kind"]: Decimal(r["cny_per_h"]) for r in doc["resources"] if r["leak"] and r["cny_per_h"]}
    assert priced["instance"] > 0 and priced["volume"] > 0 and Decimal(doc["leak_cny_per_h"]) >= priced["instance"]
    assert not any(r["deleted"] for r in doc["resources"])  # listing deletes nothing
    code, out, _ = cli("sweep")
    assert code == 0 and "budget sweep --yes" in out and "leak" in out

    code, out, err = cli("sweep", "--yes", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert all(r["deleted"] for r in doc["resources"] if r["leak"]) and not any(r["error"] for r in doc["resources"])
    state = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert state[gone] == "terminated" and state[live] in ("pending", "running")
    assert set(groups) - {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]} == {gone_group}
    assert loose not in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
    assert len(keys) == 1 and [i["KeyName"] for r in ec2.describe_instances(InstanceIds=[live])["Reservations"]
                               for i in r["Instances"]] == keys
    objects = {o["Key"] for o in s3.list_objects_v2(Bucket="results").get("Contents", [])}
    assert objects == {"gpubudget/live-run/out/results/captions.jsonl", "gpubudget/done-run/out/results/captions.jsonl",
                       "someone-else/data.csv"}
    code, out, _ = cli("sweep", "--json")
    assert json.loads(out)["leaks"] == 0


def test_a_local_worker_left_running_is_a_leak_and_aws_is_not_asked(cli, budget_home, monkeypatch):
    """A local "instance" whose run the ledger does not hold (its worker still burning this machine) is swept;
    one of a live run is kept. With no aws run, region or config, AWS is never called."""
    import subprocess
    import sys

    from runner.procs import pid_alive

    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("p", Decimal(100), 0)
    led.create_run(id="live-run", pool="p", plan="smoke", plan_path="x", provider="local", offer="local:cpu",
                   quantization="nf4", spot=0, cap_cny=Decimal(100), dir=str(budget_home / "runs" / "live-run"),
                   created_at=0, state="running")
    # a run that failed with its instance still live in the ledger (its teardown could not terminate it)
    led.create_run(id="failed-run", pool="p", plan="smoke", plan_path="x", provider="local", offer="local:cpu",
                   quantization="nf4", spot=0, cap_cny=Decimal(100), dir="", created_at=0, state="failed")
    led.db.execute("INSERT INTO instances (run_id, pool, provider, provider_id, instance_type, region, spot, "
                   "price_cny_h, price_original_h, currency, increment_s, minimum_s, state, started_at, lease_until) "
                   "VALUES ('failed-run', 'p', 'local', 'local-failed-run', 'cpu', 'local', 0, '3.6', '3.6', 'CNY', "
                   "1, 0, 'running', ?, ?)", (time.time() - 100, time.time() + 3600))
    led.close()
    procs = {}
    for run in ("orphan-run", "live-run", "failed-run"):
        d = budget_home / "instances" / run
        d.mkdir(parents=True)
        procs[run] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], cwd=d,
                                      start_new_session=True)
        (d / "worker.pid").write_text(f"{procs[run].pid}\n")
    try:
        code, out, err = cli("sweep", "--json")
        doc = json.loads(out)
        assert code == 0 and not doc["unchecked"], err
        assert [(r["id"], r["leak"]) for r in doc["resources"]] == [
            ("local-failed-run", True), ("local-live-run", False), ("local-orphan-run", True)]
        code, out, err = cli("sweep", "--yes", "--json")
        assert code == 0, err
        assert procs["orphan-run"].wait(timeout=60) is not None and pid_alive(procs["live-run"].pid)
        assert (budget_home / "instances" / "orphan-run" / "TERMINATED").exists()
        led = Ledger(budget_home / "ledger.db")  # the ledger stops counting it as live: settled at the sweep
        [inst] = led.instances(run_id="failed-run")
        assert inst.state == "terminated" and inst.ended_at is not None and led.spent_instance(inst.id) > 0
        led.close()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_an_aws_region_that_cannot_be_checked_is_said_and_fails(cli, budget_home, monkeypatch):
    """The ledger ran aws instances in a region, but no credentials work: sweep says it could not look there
    (a warning and exit 1), never "no leaks"."""
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata credentials either
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(budget_home / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(budget_home / "no-config"))
    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("p", Decimal(100), 0)
    led.create_run(id="old", pool="p", plan="smoke", plan_path="x", provider="aws", offer="aws:g4dn.xlarge",
                   quantization="nf4", spot=0, cap_cny=Decimal(100), dir="", created_at=0, state="done")
    led.db.execute("INSERT INTO instances (run_id, pool, provider, instance_type, region, spot, price_cny_h, "
                   "price_original_h, currency, increment_s, minimum_s, state, started_at, lease_until, ended_at) "
                   "VALUES ('old', 'p', 'aws', 'g4dn.xlarge', 'eu-west-1', 0, '3.7', '0.52', 'USD', 1, 60, "
                   "'terminated', 0, 10, 10)")
    led.close()
    code, out, err = cli("sweep")
    assert code == 1 and "warning: aws eu-west-1: not checked:" in err, (out, err)
    assert "where it could look" in out

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
    tags = lambda run: [{"ResourceType": "volume", "Tags": [{"Key": "gpubudget:run", "Value": run},
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


def _run_row(led: Ledger, budget_home, run_id: str, state: str, created_at: float) -> None:
    (budget_home / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    led.create_run(id=run_id, pool="p", plan="smoke", plan_path="x", provider="aws", offer="aws:g4dn.xlarge",
                   quantization="nf4", spot=0, cap_cny=Decimal(100), dir=str(budget_home / "runs" / run_id),
                   created_at=created_at, state=state)


def _aws_state(ec2) -> dict[str, str]:
    return {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


@pytest.mark.parametrize("when", ["before-listing", "before-deleting"])
def test_sweep_never_deletes_a_run_that_started_while_it_ran(cli, budget_home, cloud, monkeypatch, when):
    """`budget sweep --yes` while `budget run` starts: the new run's ledger row and tagged instance, volume and
    security group appear after the sweep began - before its (slow, per-region) listing, or between the listing
    and the deletions. Each resource is decided against the ledger when it is deleted: the new run is live (and
    younger than the sweep), so nothing of it is touched; the old run's leak still goes."""
    from runner import sweep as sweepmod
    from runner.cloud.aws import AwsProvider

    ec2, _ = cloud
    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("p", Decimal(100), 0)
    _run_row(led, budget_home, "old-run", "failed", 0)
    led.close()
    old = launch_as_a_run(budget_home, "old-run")
    new: dict[str, str] = {}

    def start_a_run(row: bool = True, instance: bool = True) -> None:
        if instance and "id" not in new:
            new["id"] = launch_as_a_run(budget_home, "new-run")
        if row:
            led = Ledger(budget_home / "ledger.db")
            _run_row(led, budget_home, "new-run", "running", time.time())
            led.close()

    if when == "before-listing":  # the run starts after the sweep read the ledger, before it lists the region
        listing = AwsProvider.leftovers
        monkeypatch.setattr(AwsProvider, "leftovers", lambda self: (start_a_run(), listing(self))[1])
    else:  # listed while the run's row is not written yet; the row lands before the deletions
        find = sweepmod.find
        start_a_run(row=False)
        monkeypatch.setattr(sweepmod, "find", lambda *a, **k: (find(*a, **k), start_a_run())[0])
    code, out, err = cli("sweep", "--yes", "--json")
    assert code == 0, err
    doc = json.loads(out)
    state = _aws_state(ec2)
    assert state[new["id"]] in ("pending", "running") and state[old] == "terminated"
    assert "gpubudget-new-run" in {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert not [r for r in doc["resources"] if r["run"] == "new-run" and (r["deleted"] or r["leak"])]
    assert any(r["run"] == "old-run" and r["kind"] == "instance" and r["deleted"] for r in doc["resources"])


def test_a_swept_instance_ends_final_in_the_ledger(cli, budget_home, cloud):
    """A failed run whose teardown could not finish: one instance row left `stopping` (its terminate failed),
    one left an intent with no id (the launch's answer lost). Sweep deletes the run's instance and settles both
    rows in a final state: `budget ledger check` reports nothing live afterwards."""
    ec2, _ = cloud
    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("p", Decimal(100), 0)
    _run_row(led, budget_home, "stuck-run", "failed", 0)
    _run_row(led, budget_home, "lost-run", "failed", 0)
    led.close()
    stuck, lost = launch_as_a_run(budget_home, "stuck-run"), launch_as_a_run(budget_home, "lost-run")
    led = Ledger(budget_home / "ledger.db")
    now = time.time()
    for run_id, pid, state in (("stuck-run", stuck, "stopping"), ("lost-run", None, "intent")):
        led.db.execute("INSERT INTO instances (run_id, pool, provider, provider_id, instance_type, region, spot, "
                       "price_cny_h, price_original_h, currency, increment_s, minimum_s, state, started_at, "
                       "lease_until) VALUES (?, 'p', 'aws', ?, 'g4dn.xlarge', 'us-east-1', 0, '3.7', '0.52', 'USD', "
                       "1, 60, ?, ?, ?)", (run_id, pid, state, now - 100, now + 600))
    led.close()
    code, out, err = cli("sweep", "--yes", "--json")
    assert code == 0, err
    assert _aws_state(ec2)[stuck] == "terminated" and _aws_state(ec2)[lost] == "terminated"
    led = Ledger(budget_home / "ledger.db")
    rows = {i.run_id: i for i in led.instances()}
    assert {r: (i.state, i.provider_id) for r, i in rows.items()} == {"stuck-run": ("terminated", stuck),
                                                                     "lost-run": ("terminated", lost)}
    assert all(led.spent_instance(i.id) > 0 for i in rows.values())
    led.close()
    code, out, err = cli("ledger", "check", "--json")
    assert json.loads(out)["live_instances"] == 0, out


def test_an_unattended_run_collected_leaves_nothing_for_sweep(cli, budget_home, cloud):
    """An unattended instance powers itself off (EC2 terminates it: InstanceInitiatedShutdownBehavior); `budget
    status RUN` settles it - and its security group goes with it, as after any terminate: `budget sweep` finds
    nothing of the run."""
    from runner import config
    from runner.money.guard import Policy
    from runner.run.request import Request, policy_doc

    ec2, _ = cloud
    offer = next(o for o in load_catalog().offers if o.provider == "aws" and o.instance_type == "g4dn.xlarge")
    led = Ledger(budget_home / "ledger.db")
    led.ensure_pool("p", Decimal(100), 0)
    _run_row(led, budget_home, "away-run", "running", time.time() - 100)
    led.close()
    run_dir = budget_home / "runs" / "away-run"
    (run_dir / "out").mkdir()
    Request(run_id="away-run", plan_path="x", provider="aws", offer=offer.model_dump(mode="json"), quantization="nf4",
            spot=False, price_cny_h="3.7", price_original_h=str(offer.price), job={"tasks": []},
            policy=policy_doc(Policy()), unattended=True).save(run_dir / "request.json")
    pid = AwsProvider(config.load(budget_home).aws, budget_home).launch(
        LaunchSpec("away-run", offer, spot=False)).provider_id
    led = Ledger(budget_home / "ledger.db")
    now = time.time()
    led.db.execute("INSERT INTO instances (run_id, pool, provider, provider_id, instance_type, region, spot, "
                   "price_cny_h, price_original_h, currency, increment_s, minimum_s, state, started_at, "
                   "lease_until) VALUES ('away-run', 'p', 'aws', ?, 'g4dn.xlarge', 'us-east-1', 0, '3.7', '0.52', "
                   "'USD', 1, 60, 'running', ?, ?)", (pid, now - 100, now + 3600))
    led.update_run("away-run", phase="handed-over")
    led.close()
    ec2.terminate_instances(InstanceIds=[pid])  # its watchdog's power-off, after the last upload
    code, out, err = cli("status", "away-run", "--json")
    assert code == 0, err
    assert json.loads(out)["state"] in ("done", "stopped", "failed")
    assert "gpubudget-away-run" not in {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    code, out, err = cli("sweep", "--json")
    assert code == 0, err
    assert not [r for r in json.loads(out)["resources"] if r["run"] == "away-run" and r["kind"] != "key-pair"]

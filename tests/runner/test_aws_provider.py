"""The AWS provider against moto (idempotency, spot, the user-data), and its error mapping: botocore
errors become our error tree where they enter, and only transient ones are retried. Errors moto cannot
produce (capacity, quota, throttling) are injected with botocore's Stubber on the provider's client."""

from __future__ import annotations

import base64
import getpass
from decimal import Decimal

import pytest
import yaml
from botocore.stub import Stubber

from planner.catalog import load_catalog
from runner.clock import FakeClock
from runner.cloud.aws import AwsProvider
from runner.cloud.base import LaunchSpec
from runner.config import AwsConfig
from runner.errors import AuthError, CapacityError, QuotaError, RemoteError, TransientError


@pytest.fixture
def provider(aws_cloud, budget_home):
    cfg = AwsConfig(ami_owners=["self"], client_cidr="127.0.0.1/32", user=getpass.getuser())
    return AwsProvider(cfg, budget_home, clock=FakeClock())  # backoff and terminate's polling wait for nothing


def offer(name="g4dn.xlarge"):
    return next(o for o in load_catalog(None).offers if o.provider == "aws" and o.instance_type == name)


def test_launch_is_idempotent_per_run_and_tags_spot(provider, aws_cloud):
    aws_cloud.agent.start_sshd = False
    sent = []
    provider.ec2.meta.events.register("provide-client-params.ec2.RunInstances", lambda params, **_: sent.append(params))
    spec = LaunchSpec("run-1", offer(), spot=True, boot_minutes=15, max_spot_price=Decimal("0.2104"))
    a = provider.launch(spec)
    b = provider.launch(spec)
    # never above the price the ledger bills it at (moto does not keep MaxPrice: the request shows it)
    assert [p["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] for p in sent] == ["0.2104"]
    assert a.provider_id == b.provider_id
    [inst] = [i for r in aws_cloud.ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert inst["InstanceLifecycle"] == "spot"
    raw = aws_cloud.ec2.describe_instance_attribute(InstanceId=a.provider_id, Attribute="userData")["UserData"]["Value"]
    text = base64.b64decode(raw).decode()
    doc = yaml.safe_load(text)
    # no secret in user-data: the instance makes its own host key and prints it to its console
    assert "PRIVATE KEY" not in text and "ssh_keys" not in doc
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == ["ed25519"]
    assert doc["runcmd"] == [["shutdown", "-h", "+15"]]  # the instance's guard until the watchdog runs
    assert [i.provider_id for i in provider.list_managed()] == [a.provider_id]
    provider.terminate(a.provider_id)
    provider.terminate(a.provider_id)  # already gone: still success
    assert provider.status(a.provider_id).state == "terminated"
    assert provider.list_managed() == []
    with pytest.raises(RemoteError):  # the contract's session, not boto3's
        provider.session(a.provider_id, "run-1")


def _stubbed(provider, op: str, codes: list[str], status: int = 400):
    stub = Stubber(provider.ec2)
    for code in codes:
        stub.add_client_error(op, service_error_code=code, service_message=f"{code} (injected)",
                              http_status_code=status)
    return stub


@pytest.mark.parametrize("code,err", [("InsufficientInstanceCapacity", CapacityError),
                                      ("VcpuLimitExceeded", QuotaError),
                                      ("UnauthorizedOperation", AuthError)])
def test_errors_are_mapped_and_not_retried(provider, code, err):
    with _stubbed(provider, "describe_images", [code]) as stub:
        with pytest.raises(err) as e:
            provider.resolve_ami()
        stub.assert_no_pending_responses()  # exactly one call: no retry
    assert code in e.value.message and e.value.hint


def test_transient_errors_are_retried(provider):
    stub = _stubbed(provider, "describe_images", ["RequestLimitExceeded", "RequestLimitExceeded"])
    stub.add_response("describe_images", {"Images": [{"ImageId": "ami-12345678", "Name": "x",
                                                      "CreationDate": "2026-11-01T00:00:00.000Z"}]})
    with stub:
        assert provider.resolve_ami()["ImageId"] == "ami-12345678"
        stub.assert_no_pending_responses()
    assert provider.clock.slept == 0.5 + 1  # exponential backoff, on the provider's clock
    with _stubbed(provider, "describe_images", ["ServiceUnavailable"] * 5, 503), pytest.raises(TransientError):
        provider.resolve_ami()


def test_the_moved_helpers_are_still_importable_from_the_provider_module():
    from runner.cloud import aws

    assert {"make_key", "user_data", "host_keys_from_console", "client_token", "_mapped", "CAPACITY", "QUOTA", "AUTH",
            "TRANSIENT", "NOT_FOUND_SUFFIX"} <= set(vars(aws))


def test_missing_credentials_are_one_line(aws_cloud, cli, budget_home, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = cli("run", "plans/smoke.yaml", "--provider", "aws", "--yuan", "20", "--yes")
    assert code == 1 and err.count("\n") == 2 and "no AWS credentials found" in err and "hint:" in err
    assert [r for r in aws_cloud.ec2.describe_instances()["Reservations"]] == []
    assert not (budget_home / "ledger.db").exists()  # checked before asking: no run was made

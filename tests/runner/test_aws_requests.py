"""What the aws provider sends and how it reads the answers, without AWS or moto: the pure request builders
and parsers of runner/cloud/aws_requests.py (a dict in, a dict out), the error mapping of aws_errors.py, and
the host key pinning of aws_access.py."""

from __future__ import annotations

import base64
import datetime
from decimal import Decimal

import pytest

from planner.models import Offer
from runner.cloud import aws_access, aws_errors
from runner.cloud import aws_requests as req
from runner.cloud.base import MANAGED_TAG, RUN_TAG, LaunchSpec, Leftover
from runner.errors import AuthError, CapacityError, NotFoundError, ProviderError, QuotaError, TransientError

OFFER = Offer(provider="aws", instance_type="g4dn.xlarge", gpu="T4", gpu_count=1, price=Decimal("0.526"),
              currency="USD")
OURS = [{"Key": RUN_TAG, "Value": "run-1"}, {"Key": MANAGED_TAG, "Value": "true"}]


def launch(spec: LaunchSpec, image: dict | None = None, subnet_id: str | None = None) -> dict:
    return req.run_instances(spec, image or {"ImageId": "ami-1", "RootDeviceName": "/dev/sda1"}, key_name="kp",
                             group_id="sg-1", user_data="#cloud-config\n", subnet_id=subnet_id, volume_gib=200)


def test_an_on_demand_launch_is_idempotent_self_terminating_and_tagged():
    kw = launch(LaunchSpec("run-1", OFFER, spot=False))
    assert kw == {
        "ImageId": "ami-1", "InstanceType": "g4dn.xlarge", "MinCount": 1, "MaxCount": 1, "KeyName": "kp",
        "SecurityGroupIds": ["sg-1"], "UserData": "#cloud-config\n", "ClientToken": "run-1",
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [{"ResourceType": "instance", "Tags": OURS}, {"ResourceType": "volume", "Tags": OURS}],
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 200, "VolumeType": "gp3",
                                                                    "DeleteOnTermination": True}}]}


def test_a_spot_launch_is_one_time_and_capped_at_the_ledgers_price():
    kw = launch(LaunchSpec("run-1", OFFER, spot=True, max_spot_price=Decimal("0.2104"), attempt=2),
                image={"ImageId": "ami-1"}, subnet_id="subnet-9")
    assert kw["InstanceMarketOptions"] == {"MarketType": "spot", "SpotOptions": {
        "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate", "MaxPrice": "0.2104"}}
    assert kw["ClientToken"] == "run-1.2.0"  # a relaunch is a new request, not the first one again
    fallback = launch(LaunchSpec("run-1", OFFER, spot=True, attempt=2, offer_index=1), image={"ImageId": "ami-1"})
    assert fallback["ClientToken"] == "run-1.2.1"  # nor is the next offer after the cloud refused one
    assert kw["SubnetId"] == "subnet-9"
    assert "BlockDeviceMappings" not in kw  # no root device named: the AMI's own
    no_cap = launch(LaunchSpec("run-1", OFFER, spot=True))["InstanceMarketOptions"]["SpotOptions"]
    assert "MaxPrice" not in no_cap


def test_client_tokens_fit_ec2s_limit():
    assert req.client_token("run-1") == "run-1"
    for long in ("r" * 65, "läuft"):
        token = req.client_token(long)
        assert len(token) <= 64 and token.isascii() and token == req.client_token(long)


def test_cloud_config_carries_no_secret_and_a_boot_guard():
    doc = req.cloud_config(LaunchSpec("run-1", OFFER, spot=False, boot_minutes=15), "ssh-ed25519 AAAA me")
    assert doc == {"ssh_deletekeys": True, "ssh_genkeytypes": ["ed25519"],
                   "ssh_authorized_keys": ["ssh-ed25519 AAAA me"], "runcmd": [["shutdown", "-h", "+15"]]}
    assert "runcmd" not in req.cloud_config(LaunchSpec("run-1", OFFER, spot=False), "ssh-ed25519 AAAA me")


def test_filters_find_only_our_resources():
    live = {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}
    managed = {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}
    assert req.managed() == {"Filters": [managed]}
    assert req.live_managed() == {"Filters": [managed, live]}
    assert req.live_of_run("run-1") == {"Filters": [{"Name": f"tag:{RUN_TAG}", "Values": ["run-1"]}, live]}
    assert req.group_lookup("run-1") == {"Filters": [{"Name": "group-name", "Values": ["gpubudget-run-1"]}]}
    assert req.image_search(["amazon"], "Deep Learning *") == {"Owners": ["amazon"], "Filters": [
        {"Name": "name", "Values": ["Deep Learning *"]}, {"Name": "state", "Values": ["available"]}]}
    assert req.default_vpc() == {"Filters": [{"Name": "isDefault", "Values": ["true"]}]}
    req.managed()["Filters"].append("changed")
    assert len(req.managed()["Filters"]) == 1  # a fresh request each time: boto3's handlers may keep a reference


def test_the_key_pair_is_named_by_its_key():
    name = req.key_pair_name("ssh-ed25519 AAAAkey me@host")
    assert name.startswith("gpubudget-") and name == req.key_pair_name("ssh-ed25519 AAAAkey other-comment")
    assert req.key_pair_lookup(name) == {"Filters": [{"Name": "key-name", "Values": [name]}]}
    assert req.key_pair_import(name, "ssh-ed25519 AAAAkey me", "run-1") == {
        "KeyName": name, "PublicKeyMaterial": b"ssh-ed25519 AAAAkey me",
        "TagSpecifications": [{"ResourceType": "key-pair", "Tags": OURS}]}


def test_the_security_group_admits_ssh_from_one_address():
    assert req.security_group("run-1", "vpc-1", "203.0.113.7/32") == {
        "GroupName": "gpubudget-run-1", "Description": "gpubudget run run-1: SSH from 203.0.113.7/32 only",
        "VpcId": "vpc-1", "TagSpecifications": [{"ResourceType": "security-group", "Tags": OURS}]}
    assert req.ssh_ingress("sg-1", "203.0.113.7/32") == {"GroupId": "sg-1", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "203.0.113.7/32", "Description": "gpubudget controller"}]}]}


INSTANCE = {"InstanceId": "i-1", "InstanceType": "g4dn.xlarge", "State": {"Name": "running"},
            "PrivateIpAddress": "10.0.0.5", "InstanceLifecycle": "spot", "KeyName": "kp",
            "LaunchTime": datetime.datetime(2026, 11, 28, 15, 0, tzinfo=datetime.UTC),
            "Placement": {"AvailabilityZone": "us-east-1a"}, "SecurityGroups": [{"GroupId": "sg-1"}], "Tags": OURS}


def test_describe_instances_answers_become_instance_infos():
    assert req.instances({"Reservations": [{"Instances": [INSTANCE]}, {"Instances": []}]}) == [INSTANCE]
    info = req.instance_info(INSTANCE)
    assert (info.provider_id, info.state, info.address, info.spot) == ("i-1", "running", "10.0.0.5", True)
    assert info.launched_at == datetime.datetime(2026, 11, 28, 15, 0, tzinfo=datetime.UTC).timestamp()
    assert info.tags == {RUN_TAG: "run-1", MANAGED_TAG: "true"}
    booting = req.instance_info({"InstanceId": "i-2", "State": {"Name": "pending"}, "PublicIpAddress": "198.51.100.1",
                                 "PrivateIpAddress": "10.0.0.6"})
    assert (booting.address, booting.launched_at, booting.spot, booting.tags) == ("198.51.100.1", None, False, {})


def test_the_end_of_billing_is_read_from_the_state_transition_reason():
    assert req.ended_at("User initiated (2026-11-28 15:30:02 GMT)") == datetime.datetime(
        2026, 11, 28, 15, 30, 2, tzinfo=datetime.UTC).timestamp()
    assert req.ended_at("") is None
    assert req.ended_at("Server.SpotInstanceTermination: Spot instance termination") is None


def test_the_spot_price_is_the_newest_for_the_instances_type_and_zone():
    now = datetime.datetime(2026, 11, 28, 15, 0, tzinfo=datetime.UTC)
    assert req.spot_price_query(INSTANCE, now.timestamp()) == {
        "InstanceTypes": ["g4dn.xlarge"], "AvailabilityZone": "us-east-1a", "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": now}
    rows = [{"AvailabilityZone": "us-east-1a", "InstanceType": "g4dn.xlarge", "SpotPrice": "0.2000", "Timestamp": now},
            {"AvailabilityZone": "us-east-1a", "InstanceType": "g4dn.xlarge", "SpotPrice": "0.2100",
             "Timestamp": now + datetime.timedelta(minutes=5)},
            {"AvailabilityZone": "us-east-1b", "InstanceType": "g4dn.xlarge", "SpotPrice": "0.9000",
             "Timestamp": now + datetime.timedelta(hours=1)}]
    assert req.spot_price(rows, INSTANCE) == Decimal("0.2100")
    assert req.spot_price(rows[2:], INSTANCE) is None


def test_leftovers_say_which_live_instance_uses_them():
    volumes = [{"VolumeId": "vol-1", "Size": 200, "VolumeType": "gp3", "Attachments": [{"InstanceId": "i-1"}],
                "Tags": OURS},
               {"VolumeId": "vol-2", "Size": 8, "Tags": []}]
    groups = [{"GroupId": "sg-1", "GroupName": "gpubudget-run-1", "Tags": OURS}, {"GroupId": "sg-2", "Tags": OURS}]
    pairs = [{"KeyName": "kp", "Tags": OURS}, {"KeyName": "other"}]
    found = req.leftovers("us-east-1", [INSTANCE], volumes, groups, pairs)
    assert found == [
        Leftover("instance", "i-1", "run-1", "us-east-1", "g4dn.xlarge running", instance_type="g4dn.xlarge"),
        Leftover("volume", "vol-1", "run-1", "us-east-1", "200 GiB gp3", size_gib=200.0, used_by=("i-1",)),
        Leftover("volume", "vol-2", None, "us-east-1", "8 GiB ", size_gib=8.0),
        Leftover("security-group", "sg-1", "run-1", "us-east-1", "gpubudget-run-1", used_by=("i-1",)),
        Leftover("security-group", "sg-2", "run-1", "us-east-1", ""),
        Leftover("key-pair", "kp", "run-1", "us-east-1", "kp", used_by=("i-1",)),
        Leftover("key-pair", "other", None, "us-east-1", "other")]


def test_the_results_bucket_is_summed_per_run_prefix():
    assert req.out_prefix("run-1") == "gpubudget/run-1/out/" and req.run_prefix("run-1") == "gpubudget/run-1/"
    objects = [{"Key": "gpubudget/run-1/out/a.jsonl", "Size": 1000}, {"Key": "gpubudget/run-1/out/b", "Size": 24},
               {"Key": "gpubudget/run-0/out/c", "Size": 2**30}, {"Key": "gpubudget/stray", "Size": 5}]
    assert req.prefix_leftovers("results", "us-east-1", objects) == [
        Leftover("s3-prefix", "s3://results/gpubudget/run-0/", "run-0", "us-east-1", "1,073,741,824 bytes",
                 size_gib=1.0),
        Leftover("s3-prefix", "s3://results/gpubudget/run-1/", "run-1", "us-east-1", "1,024 bytes",
                 size_gib=1024 / 2**30)]


def test_objects_are_deleted_a_thousand_at_a_time():
    objects = [{"Key": f"gpubudget/run-1/out/{i}", "Size": 1} for i in range(2500)]
    batches = req.delete_batches(objects)
    assert [len(b["Objects"]) for b in batches] == [1000, 1000, 500] and all(b["Quiet"] for b in batches)
    assert batches[2]["Objects"][-1] == {"Key": "gpubudget/run-1/out/2499"}
    assert req.delete_batches([]) == []


def test_downloaded_keys_stay_inside_out():
    from runner import inbound

    assert inbound.name_taken("results/a.jsonl") and inbound.name_taken("summary.json")
    assert not any(inbound.name_taken(rel) for rel in ("../../escape", "", "results/../x.jsonl", "results/a/b.jsonl",
                                                       "job.json", "results/.a.jsonl"))


def test_host_keys_are_read_from_cloud_inits_console_block():
    console = ("noise\n[  9.1] ci-info: -----BEGIN SSH HOST KEY KEYS-----\n"
               "[  9.1] ci-info: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK root@ip-10-0-0-1\n"
               "ssh-ed25519 AAAAsecond\n-----END SSH HOST KEY KEYS-----\nssh-ed25519 AAAAoutside\n")
    plain = "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3Nza root@x\n-----END SSH HOST KEY KEYS-----\n"
    assert req.host_keys_from_console(plain) == ["ssh-ed25519 AAAAC3Nza"]
    assert req.host_keys_from_console(base64.b64encode(plain.encode()).decode()) == ["ssh-ed25519 AAAAC3Nza"]
    assert req.host_keys_from_console("booting...\n") == []
    # inside the block only, console prefixes allowed
    assert req.host_keys_from_console(console) == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK", "ssh-ed25519 AAAAsecond"]


def test_the_first_host_key_seen_is_pinned_per_instance(tmp_path):
    block = "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAfirst root@x\n-----END SSH HOST KEY KEYS-----\n"
    assert aws_access.pin_host_key(tmp_path, "i-1", "booting...\n") is None
    assert aws_access.pinned_host_key(tmp_path, "i-1") is None
    assert aws_access.pin_host_key(tmp_path, "i-1", block) == "ssh-ed25519 AAAAfirst"
    assert aws_access.pinned_host_key(tmp_path, "i-1") == "ssh-ed25519 AAAAfirst"
    assert aws_access.pinned_host_key(tmp_path, "i-2") is None  # a relaunch has its own
    known = aws_access.known_hosts(tmp_path, "127.0.0.1", 2222, "ssh-ed25519 AAAAfirst")
    assert known.read_text() == "[127.0.0.1]:2222 ssh-ed25519 AAAAfirst\n"
    assert aws_access.known_hosts(tmp_path, "h", 22, "k").read_text() == "h k\n"


@pytest.mark.parametrize("code,status,err", [
    ("InsufficientInstanceCapacity", 400, CapacityError), ("VcpuLimitExceeded", 400, QuotaError),
    ("UnauthorizedOperation", 403, AuthError), ("RequestLimitExceeded", 503, TransientError),
    ("SomethingNew", 500, TransientError), ("InvalidInstanceID.NotFound", 400, NotFoundError),
    ("ParameterNotFound", 400, NotFoundError), ("SomethingNew", 400, ProviderError)])
def test_error_answers_map_to_our_errors(code, status, err):
    e = aws_errors.from_response({"Error": {"Code": code, "Message": "why"},
                                  "ResponseMetadata": {"HTTPStatusCode": status}}, "launching g4dn.xlarge")
    assert type(e) is err and e.message == f"launching g4dn.xlarge: {code}: why" and e.hint

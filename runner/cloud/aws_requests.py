"""The aws provider's requests and answers as plain data: the keyword arguments of every EC2 and S3 call
that carries more than an id (run_instances, the describe_* filters, the SSH ingress rule, cloud-init's
config, the spot price query) and the parsing of what comes back (instances, console output,
StateTransitionReason, spot price rows, leftovers, the results bucket's keys).

Pure functions - a dict in, a dict out: no client, clock or credential, so every request the provider
sends is tested without AWS or moto. aws.py makes the calls and owns the control flow (retries, waits,
idempotency); nothing here imports boto3 or botocore."""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
from decimal import Decimal

from .base import MANAGED_TAG, RUN_TAG, InstanceInfo, LaunchSpec, Leftover

LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]  # not terminated: may still bill
ROOT = "gpubudget/"  # the results bucket's part that is ours: ROOT<run id>/out/<file>


# ------------------------------------------------------------------ tags and filters

def tag_spec(run_id: str, resource: str) -> dict:
    """The TagSpecification every resource is created with (what sweep, and the IAM policy, key on)."""
    return {"ResourceType": resource,
            "Tags": [{"Key": RUN_TAG, "Value": run_id}, {"Key": MANAGED_TAG, "Value": "true"}]}


def run_tag(resource: dict) -> str | None:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}.get(RUN_TAG)


def managed() -> dict:
    """describe_volumes / _security_groups / _key_pairs: everything tagged as ours."""
    return {"Filters": [{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}]}


def live_managed() -> dict:
    """describe_instances: our instances that are not terminated."""
    return {"Filters": [*managed()["Filters"], {"Name": "instance-state-name", "Values": LIVE_STATES}]}


def live_of_run(run_id: str) -> dict:
    """describe_instances: the run's instances that are not terminated (one, or none)."""
    return {"Filters": [{"Name": f"tag:{RUN_TAG}", "Values": [run_id]},
                        {"Name": "instance-state-name", "Values": LIVE_STATES}]}


def of_run(run_id: str) -> dict:
    """describe_instances: the run's instances in any state - terminated ones too, while EC2 still lists them
    (a launch whose answer was lost is found after it ended; moto has no ClientToken)."""
    return {"Filters": [{"Name": f"tag:{RUN_TAG}", "Values": [run_id]}]}


def image_search(owners: list[str], name: str) -> dict:
    """describe_images: available AMIs of these owners whose name matches (a glob)."""
    return {"Owners": owners,
            "Filters": [{"Name": "name", "Values": [name]}, {"Name": "state", "Values": ["available"]}]}


def key_pair_name(public_line: str) -> str:
    """The key pair's name, from the key itself: the same key is imported once, whichever run needs it."""
    return "gpubudget-" + hashlib.sha256(public_line.split()[1].encode()).hexdigest()[:16]


def key_pair_lookup(name: str) -> dict:
    return {"Filters": [{"Name": "key-name", "Values": [name]}]}


def key_pair_import(name: str, public_line: str, run_id: str) -> dict:
    return {"KeyName": name, "PublicKeyMaterial": public_line.encode(),
            "TagSpecifications": [tag_spec(run_id, "key-pair")]}


def group_lookup(run_id: str) -> dict:
    """describe_security_groups: the run's own group (one per run, found again by its name)."""
    return {"Filters": [{"Name": "group-name", "Values": [f"gpubudget-{run_id}"]}]}


def default_vpc() -> dict:
    return {"Filters": [{"Name": "isDefault", "Values": ["true"]}]}


def security_group(run_id: str, vpc: str, cidr: str) -> dict:
    return {"GroupName": f"gpubudget-{run_id}", "Description": f"gpubudget run {run_id}: SSH from {cidr} only",
            "VpcId": vpc, "TagSpecifications": [tag_spec(run_id, "security-group")]}


def ssh_ingress(group_id: str, cidr: str) -> dict:
    """The group's only rule: SSH from the controller's address."""
    return {"GroupId": group_id, "IpPermissions": [{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": cidr, "Description": "gpubudget controller"}]}]}


# ------------------------------------------------------------------ launching

def cloud_config(spec: LaunchSpec, login_public: str) -> dict:
    """cloud-init: fresh host keys made on the instance (ed25519 only), printed to its console - no
    secret in user-data, which anyone allowed DescribeInstanceAttribute can read; the login key is
    authorized; until the watchdog runs, a boot-time power-off is the instance's guard."""
    doc: dict = {"ssh_deletekeys": True, "ssh_genkeytypes": ["ed25519"], "ssh_authorized_keys": [login_public]}
    if spec.boot_minutes:
        doc["runcmd"] = [["shutdown", "-h", f"+{spec.boot_minutes}"]]
    return doc


def client_token(run_id: str) -> str:
    """The run id as EC2's idempotency token (at most 64 ASCII characters: long ids are hashed)."""
    return run_id if len(run_id) <= 64 and run_id.isascii() else hashlib.sha256(run_id.encode()).hexdigest()[:64]


def run_instances(spec: LaunchSpec, image: dict, *, key_name: str, group_id: str, user_data: str,
                  subnet_id: str | None, volume_gib: int) -> dict:
    """The launch request: one instance, idempotent per run and attempt, terminated (not stopped) when it
    powers itself off, tagged with its volume; spot is one-time and never above spec.max_spot_price."""
    kw: dict = {
        "ImageId": image["ImageId"], "InstanceType": spec.offer.instance_type, "MinCount": 1, "MaxCount": 1,
        "KeyName": key_name, "SecurityGroupIds": [group_id], "UserData": user_data,
        # one token per attempt and offer: a relaunch, or a fallback offer after a refusal, is a new request
        "ClientToken": client_token(spec.run_id if not (spec.attempt or spec.offer_index)
                                    else f"{spec.run_id}.{spec.attempt}.{spec.offer_index}"),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [tag_spec(spec.run_id, "instance"), tag_spec(spec.run_id, "volume")]}
    if subnet_id:
        kw["SubnetId"] = subnet_id
    if image.get("RootDeviceName"):
        kw["BlockDeviceMappings"] = [{"DeviceName": image["RootDeviceName"], "Ebs": {
            "VolumeSize": volume_gib, "VolumeType": "gp3", "DeleteOnTermination": True}}]
    if spec.spot:
        opts = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
        if spec.max_spot_price is not None:
            opts["MaxPrice"] = str(spec.max_spot_price)
        kw["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": opts}
    return kw


# ------------------------------------------------------------------ answers

def instances(res: dict) -> list[dict]:
    """A describe_instances answer's instances (its reservations flattened)."""
    return [i for r in res["Reservations"] for i in r["Instances"]]


def instance_info(i: dict) -> InstanceInfo:
    return InstanceInfo(i["InstanceId"], i["State"]["Name"], i.get("PublicIpAddress") or i.get("PrivateIpAddress"),
                        i["LaunchTime"].timestamp() if i.get("LaunchTime") else None,
                        i.get("InstanceLifecycle") == "spot", {t["Key"]: t["Value"] for t in i.get("Tags", [])})


def host_keys_from_console(text: str) -> list[str]:
    """The ed25519 host keys (`type base64`) in cloud-init's `-----BEGIN SSH HOST KEY KEYS-----` block of a
    console output (GetConsoleOutput returns it base64-encoded; plain text is accepted too)."""
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        decoded = text
    if "BEGIN SSH HOST KEY KEYS" not in decoded and "BEGIN SSH HOST KEY KEYS" in text:
        decoded = text
    keys, inside = [], False
    for line in decoded.splitlines():
        line = line.strip()
        if line.endswith("-----BEGIN SSH HOST KEY KEYS-----"):
            inside = True
        elif line.endswith("-----END SSH HOST KEY KEYS-----"):
            inside = False
        elif inside and "ssh-ed25519 " in line:  # some consoles prefix each line (timestamps, ci-info:)
            keys.append(" ".join(line[line.index("ssh-ed25519 "):].split()[:2]))
    return keys


def ended_at(state_transition_reason: str) -> float | None:
    """The epoch time in a StateTransitionReason such as 'User initiated (2026-11-28 15:30:02 GMT)'."""
    m = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) GMT\)", state_transition_reason)
    if not m:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()


def spot_price_query(instance: dict, now: float) -> dict:
    """describe_spot_price_history: the price now of the instance's type in its zone."""
    return {"InstanceTypes": [instance["InstanceType"]], "AvailabilityZone": instance["Placement"]["AvailabilityZone"],
            "ProductDescriptions": ["Linux/UNIX"], "StartTime": datetime.datetime.fromtimestamp(now, datetime.UTC)}


def spot_price(rows: list[dict], instance: dict) -> Decimal | None:
    """The newest price among the rows for the instance's type and zone (the API may answer with others)."""
    zone, kind = instance["Placement"]["AvailabilityZone"], instance["InstanceType"]
    rows = [r for r in rows if r.get("AvailabilityZone") == zone and r.get("InstanceType") == kind]
    return Decimal(max(rows, key=lambda r: r["Timestamp"])["SpotPrice"]) if rows else None


def leftovers(region: str, live: list[dict], volumes: list[dict], groups: list[dict],
              key_pairs: list[dict]) -> list[Leftover]:
    """Describe answers (each filtered by `managed`) as leftovers, each with the live instances that use it."""
    found = [Leftover("instance", i["InstanceId"], run_tag(i), region, f"{i['InstanceType']} {i['State']['Name']}",
                      instance_type=i["InstanceType"]) for i in live]
    found += [Leftover("volume", v["VolumeId"], run_tag(v), region, f"{v['Size']} GiB {v.get('VolumeType', '')}",
                       size_gib=float(v["Size"]), used_by=tuple(a["InstanceId"] for a in v.get("Attachments", [])))
              for v in volumes]
    found += [Leftover("security-group", g["GroupId"], run_tag(g), region, g.get("GroupName", ""),
                       used_by=tuple(i["InstanceId"] for i in live
                                     if any(s["GroupId"] == g["GroupId"] for s in i.get("SecurityGroups", []))))
              for g in groups]
    found += [Leftover("key-pair", k["KeyName"], run_tag(k), region, k["KeyName"],
                       used_by=tuple(i["InstanceId"] for i in live if i.get("KeyName") == k["KeyName"]))
              for k in key_pairs]
    return found


# ------------------------------------------------------------------ the results bucket

def run_prefix(run_id: str) -> str:
    return f"{ROOT}{run_id}/"


def out_prefix(run_id: str) -> str:
    """Where an unattended instance uploads its out/ directory."""
    return f"{run_prefix(run_id)}out/"


def prefix_leftovers(bucket: str, region: str, objects: list[dict]) -> list[Leftover]:
    """list_objects_v2 rows under ROOT, summed per run prefix (sweep lists and bills each as one)."""
    sizes: dict[str, int] = {}
    for o in objects:
        run_id = o["Key"].split("/")[1] if o["Key"].count("/") >= 2 else ""
        if run_id:
            sizes[run_id] = sizes.get(run_id, 0) + o["Size"]
    return [Leftover("s3-prefix", f"s3://{bucket}/{run_prefix(r)}", r, region, f"{n:,} bytes", size_gib=n / 2**30)
            for r, n in sorted(sizes.items())]


def delete_batches(objects: list[dict]) -> list[dict]:
    """delete_objects' Delete arguments for these list_objects_v2 rows (it takes 1000 keys at most)."""
    return [{"Objects": [{"Key": o["Key"]} for o in objects[i:i + 1000]], "Quiet": True}
            for i in range(0, len(objects), 1000)]

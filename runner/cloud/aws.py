"""The `aws` provider: EC2 through boto3 (the standard credential chain, profiles, AWS_ENDPOINT_URL).

Every resource carries the tags gpubudget:run=<run id> and gpubudget:managed=true. Instances launch
with ClientToken=<run id> and InstanceInitiatedShutdownBehavior=terminate (so the instance's own
watchdog ends billing with `shutdown -h now`), into a security group whose only ingress is SSH from
the caller's /32. The instance makes its own SSH host key at first boot; the controller reads it from the
instance's console through the EC2 API and pins it in the run's known_hosts (see cloud/base.py) -
no secret travels in user-data.

botocore errors are mapped where they enter (`_mapped`): capacity, quota, auth, not found, transient;
only transient ones are retried (tenacity)."""

from __future__ import annotations

import datetime
import functools
import hashlib
import re
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import boto3
import yaml
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..config import AwsConfig
from ..errors import (
    AuthError,
    CapacityError,
    ConfigError,
    NotFoundError,
    ProviderError,
    QuotaError,
    TransientError,
)
from .base import MANAGED_TAG, RUN_TAG, Endpoint, HostKey, InstanceInfo, LaunchSpec, Leftover, address_override

CAPACITY = {"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
            "SpotMaxPriceTooLow", "InsufficientFreeAddressesInSubnet", "Unsupported"}
QUOTA = {"VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded", "ResourceLimitExceeded",
         "SecurityGroupLimitExceeded", "RulesPerSecurityGroupLimitExceeded"}
AUTH = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "ExpiredToken", "SignatureDoesNotMatch",
        "AccessDenied", "AccessDeniedException", "OptInRequired", "Blocked"}
TRANSIENT = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError", "InternalFailure",
             "ServiceUnavailable", "Unavailable", "RequestTimeout"}
NOT_FOUND_SUFFIX = (".NotFound", "NotFound", "ParameterNotFound")
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


def _mapped(e: Exception, what: str) -> Exception:
    """One of our errors for a boto3/botocore exception raised while doing `what`."""
    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return AuthError(f"{what}: no AWS credentials found",
                         "configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    if isinstance(e, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return TransientError(f"{what}: cannot reach the AWS endpoint ({e})", "check the network; retry later")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        msg = e.response.get("Error", {}).get("Message", "")
        text = f"{what}: {code}: {msg}"
        if code in CAPACITY:
            return CapacityError(text, "try another region/zone or instance type, or on-demand instead of spot")
        if code in QUOTA:
            return QuotaError(text, "request a quota increase (Service Quotas: EC2 'Running On-Demand G and VT "
                              "instances' / spot vCPUs) or pick a smaller instance")
        if code in AUTH:
            return AuthError(text, "check the credentials and that infra/iam-policy.json is attached")
        if code in TRANSIENT or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            return TransientError(text, "AWS is throttling or failing; retry later")
        if code.endswith(NOT_FOUND_SUFFIX):
            return NotFoundError(text, "check the id or name")
        return ProviderError(text, "see the AWS error code above")
    return ProviderError(f"{what}: {e.__class__.__name__}: {e}", "see the AWS documentation for this error")


_retry = retry(retry=retry_if_exception_type(TransientError), stop=stop_after_attempt(5),
               wait=wait_exponential(multiplier=0.5, max=8), reraise=True)


def make_key() -> HostKey:
    """A fresh ed25519 key pair in OpenSSH formats."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    private = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                              serialization.NoEncryption()).decode()
    public = k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return HostKey(private, public)


def user_data(spec: LaunchSpec) -> str:
    """cloud-init: fresh host keys made on the instance (ed25519 only), printed to its console - no
    secret in user-data, which anyone allowed DescribeInstanceAttribute can read; the login key is
    authorized; until the watchdog runs, a boot-time power-off is the instance's guard."""
    doc: dict = {"ssh_deletekeys": True, "ssh_genkeytypes": ["ed25519"]}
    if spec.ssh_public_key:
        doc["ssh_authorized_keys"] = [spec.ssh_public_key]
    if spec.boot_minutes:
        # until the controller has the watchdog running, this is the instance's only guard
        doc["runcmd"] = [["shutdown", "-h", f"+{spec.boot_minutes}"]]
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)


def host_keys_from_console(text: str) -> list[str]:
    """The ed25519 host keys (`type base64`) in cloud-init's `-----BEGIN SSH HOST KEY KEYS-----` block of a
    console output (GetConsoleOutput returns it base64-encoded; plain text is accepted too)."""
    import base64
    import binascii

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


def client_token(run_id: str) -> str:
    """The run id as EC2's idempotency token (at most 64 ASCII characters: long ids are hashed)."""
    return run_id if len(run_id) <= 64 and run_id.isascii() else hashlib.sha256(run_id.encode()).hexdigest()[:64]


def _tags(run_id: str, resource: str) -> dict:
    return {"ResourceType": resource, "Tags": [{"Key": RUN_TAG, "Value": run_id}, {"Key": MANAGED_TAG, "Value": "true"}]}


class AwsProvider:
    name = "aws"
    ssh_wait_s = 600.0  # an instance boots for minutes before sshd answers
    teardown_s = 90.0  # terminate -> shutting-down (billing ends) is seconds; allow for a slow API

    def __init__(self, cfg: AwsConfig, home: Path, region: str | None = None):
        self.cfg = cfg
        self.home = Path(home)
        self.poweroff = cfg.poweroff
        self.after_watchdog = cfg.cancel_boot_poweroff
        self.remote_dir = cfg.remote_dir
        self.notice_url = cfg.metadata_url  # spot instances: where their watchdog hears of a reclaim
        self.upload_every_s = cfg.upload_every_s
        try:
            session = boto3.Session(profile_name=cfg.profile, region_name=region or cfg.region)
            # the region configured (config, AWS_DEFAULT_REGION, profile): the planner prices offers there
            self.region = session.region_name
            if session.region_name is None:  # none configured: the offer's region decides (STS is global)
                session = boto3.Session(profile_name=cfg.profile, region_name="us-east-1")
            self.session = session
            _ = self.ec2  # the one client every use needs: a bad region fails here, not mid-run
        except ProfileNotFound as e:
            name = (getattr(e, "kwargs", None) or {}).get("profile") or cfg.profile
            where = "aws.profile in $BUDGET_HOME/config.yaml" if cfg.profile else "the AWS_PROFILE variable"
            raise AuthError(f"AWS profile {name!r} not found (set by {where})",
                            "list the profiles with `aws configure list-profiles`, or fix ~/.aws/config") from None
        except NoRegionError:
            raise ConfigError("no AWS region configured", "set aws.region in $BUDGET_HOME/config.yaml or "
                              "AWS_DEFAULT_REGION") from None

    # clients are made when first used (a third of a second each): sweep and launch need different ones
    @functools.cached_property
    def ec2(self):
        return self.session.client("ec2")

    @functools.cached_property
    def ssm(self):
        return self.session.client("ssm")

    @functools.cached_property
    def sts(self):
        return self.session.client("sts")

    @functools.cached_property
    def s3(self):  # SigV4: presigned URLs for every region (SigV2 is refused by the newer ones)
        return self.session.client("s3", config=BotoConfig(signature_version="s3v4"))

    @_retry
    def _call(self, client, op: str, what: str, **kw):
        try:
            return getattr(client, op)(**kw)
        except (ClientError, BotoCoreError) as e:
            raise _mapped(e, what) from None

    def preflight(self) -> str:
        """Fail before anything is asked or spent when the credentials do not work; the account id."""
        return self._call(self.sts, "get_caller_identity", "checking the AWS credentials")["Account"]

    # ------------------------------------------------------------------ resources

    def resolve_ami(self) -> dict:
        ami = self.cfg.ami
        if ami and ami.startswith("ssm:"):
            name = ami[4:]
            try:
                ami = self._call(self.ssm, "get_parameter", f"reading SSM parameter {name}", Name=name)["Parameter"]["Value"]
            except NotFoundError:
                raise NotFoundError(f"SSM parameter {name} not found in {self.region}",
                                    "check the parameter name (aws ssm get-parameters-by-path --path "
                                    "/aws/service/deeplearning/ami) or set aws.ami to an AMI id") from None
        if ami:
            try:
                images = self._call(self.ec2, "describe_images", f"looking up {ami}", ImageIds=[ami])["Images"]
            except NotFoundError:
                images = []
            if not images:
                raise NotFoundError(f"AMI {ami} not found in {self.region}", "set aws.ami to an AMI of this region")
            return images[0]
        images = self._call(self.ec2, "describe_images", "searching for the Deep Learning AMI",
                            Owners=self.cfg.ami_owners,
                            Filters=[{"Name": "name", "Values": [self.cfg.ami_name]},
                                     {"Name": "state", "Values": ["available"]}])["Images"]
        if not images:
            raise NotFoundError(f"no AMI named {self.cfg.ami_name!r} owned by {', '.join(self.cfg.ami_owners)} in "
                                f"{self.region}", "set aws.ami (an id, or ssm:/aws/service/deeplearning/...) or "
                                "aws.ami_name / aws.ami_owners in $BUDGET_HOME/config.yaml")
        return max(images, key=lambda i: i.get("CreationDate", ""))

    def login_key(self) -> tuple[Path, str]:
        """The private key file and public line used to log in (the user's, or one made for gpubudget)."""
        if self.cfg.ssh_key:
            key = Path(self.cfg.ssh_key).expanduser()
            pub = key.with_name(key.name + ".pub")
            if not key.is_file() or not pub.is_file():
                raise ConfigError(f"aws.ssh_key {key}: the key and {pub.name} must both exist",
                                  "point aws.ssh_key at a private key with its .pub beside it, or drop it to let "
                                  "gpubudget make one")
            return key, pub.read_text().strip()
        key = self.home / "keys" / "gpubudget_ed25519"
        pub = key.with_name(key.name + ".pub")
        if not key.exists():
            k = make_key()
            key.parent.mkdir(parents=True, exist_ok=True)
            key.touch(mode=0o600)
            key.write_text(k.private_openssh)
            pub.write_text(k.public_line + "\n")
        return key, pub.read_text().strip()

    def _key_pair(self, public_line: str, run_id: str) -> str:
        name = "gpubudget-" + hashlib.sha256(public_line.split()[1].encode()).hexdigest()[:16]
        have = self._call(self.ec2, "describe_key_pairs", "looking up the key pair",
                          Filters=[{"Name": "key-name", "Values": [name]}])["KeyPairs"]
        if not have:
            self._call(self.ec2, "import_key_pair", "importing the SSH key", KeyName=name,
                       PublicKeyMaterial=public_line.encode(), TagSpecifications=[_tags(run_id, "key-pair")])
        return name

    def client_cidr(self) -> str:
        if self.cfg.client_cidr:
            return self.cfg.client_cidr
        try:
            with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as r:
                ip = r.read().decode().strip()
        except OSError as e:
            raise ConfigError(f"cannot find this machine's public IP ({e})",
                              "set aws.client_cidr (e.g. 203.0.113.7/32) in $BUDGET_HOME/config.yaml") from None
        return f"{ip}/32"

    def _security_group(self, run_id: str) -> str:
        name = f"gpubudget-{run_id}"
        have = self._call(self.ec2, "describe_security_groups", "looking up the security group",
                          Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        if have:
            return have[0]["GroupId"]
        if self.cfg.subnet_id:
            vpc = self._call(self.ec2, "describe_subnets", "looking up the subnet",
                             SubnetIds=[self.cfg.subnet_id])["Subnets"][0]["VpcId"]
        else:
            vpcs = self._call(self.ec2, "describe_vpcs", "looking up the default VPC",
                              Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise NotFoundError(f"no default VPC in {self.region}", "set aws.subnet_id in $BUDGET_HOME/config.yaml")
            vpc = vpcs[0]["VpcId"]
        cidr = self.client_cidr()
        gid = self._call(self.ec2, "create_security_group", "creating the security group", GroupName=name,
                         Description=f"gpubudget run {run_id}: SSH from {cidr} only", VpcId=vpc,
                         TagSpecifications=[_tags(run_id, "security-group")])["GroupId"]
        self._call(self.ec2, "authorize_security_group_ingress", "opening SSH to this machine", GroupId=gid,
                   IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                                   "IpRanges": [{"CidrIp": cidr, "Description": "gpubudget controller"}]}])
        return gid

    # ------------------------------------------------------------------ the contract

    def _by_run(self, run_id: str) -> list[dict]:
        res = self._call(self.ec2, "describe_instances", "looking up the run's instance",
                         Filters=[{"Name": f"tag:{RUN_TAG}", "Values": [run_id]},
                                  {"Name": "instance-state-name", "Values": LIVE_STATES}])
        return [i for r in res["Reservations"] for i in r["Instances"]]

    def _info(self, i: dict) -> InstanceInfo:
        return InstanceInfo(i["InstanceId"], i["State"]["Name"], i.get("PublicIpAddress") or i.get("PrivateIpAddress"),
                            i["LaunchTime"].timestamp() if i.get("LaunchTime") else None,
                            i.get("InstanceLifecycle") == "spot", {t["Key"]: t["Value"] for t in i.get("Tags", [])})

    def launch(self, spec: LaunchSpec) -> InstanceInfo:
        existing = self._by_run(spec.run_id)
        if existing:  # ClientToken makes AWS idempotent too; this also covers endpoints that ignore it
            return self._info(existing[0])
        ami = self.resolve_ami()
        _, public = self.login_key()
        kw: dict = {
            "ImageId": ami["ImageId"], "InstanceType": spec.offer.instance_type, "MinCount": 1, "MaxCount": 1,
            "KeyName": self._key_pair(spec.ssh_public_key or public, spec.run_id),
            "SecurityGroupIds": [self._security_group(spec.run_id)], "UserData": user_data(spec),
            "ClientToken": client_token(spec.run_id if not spec.attempt else f"{spec.run_id}.{spec.attempt}"),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [_tags(spec.run_id, "instance"), _tags(spec.run_id, "volume")]}
        if self.cfg.subnet_id:
            kw["SubnetId"] = self.cfg.subnet_id
        if ami.get("RootDeviceName"):
            kw["BlockDeviceMappings"] = [{"DeviceName": ami["RootDeviceName"], "Ebs": {
                "VolumeSize": self.cfg.volume_gib, "VolumeType": "gp3", "DeleteOnTermination": True}}]
        if spec.spot:
            opts = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if spec.max_spot_price is not None:
                opts["MaxPrice"] = str(spec.max_spot_price)
            kw["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": opts}
        try:
            res = self._call(self.ec2, "run_instances", f"launching {spec.offer.instance_type}", **kw)
        except TransientError:
            # the call may have created the instance before failing: never leave one behind
            for i in self._by_run(spec.run_id):
                self.terminate(i["InstanceId"])
            raise
        return self._info(res["Instances"][0])

    def status(self, provider_id: str) -> InstanceInfo:
        try:
            res = self._call(self.ec2, "describe_instances", f"describing {provider_id}", InstanceIds=[provider_id])
        except NotFoundError:
            return InstanceInfo(provider_id, "terminated")
        found = [i for r in res["Reservations"] for i in r["Instances"]]
        return self._info(found[0]) if found else InstanceInfo(provider_id, "terminated")

    def terminate(self, provider_id: str) -> float:
        try:
            self._call(self.ec2, "terminate_instances", f"terminating {provider_id}", InstanceIds=[provider_id])
        except NotFoundError:
            return time.time()
        ended = time.time()  # billing stops when the instance leaves `running` (shutting-down)
        deadline = time.monotonic() + self.cfg.terminate_timeout_s
        info = self.status(provider_id)
        while info.state != "terminated":
            if time.monotonic() > deadline:
                raise ProviderError(f"{provider_id} is still {info.state} {self.cfg.terminate_timeout_s:.0f} s after "
                                    "terminate", "check the EC2 console; `budget stop RUN` retries")
            time.sleep(2)
            info = self.status(provider_id)
        run_id = info.tags.get(RUN_TAG)
        if run_id:
            self._delete_group(run_id)
        return ended

    def _delete_group(self, run_id: str) -> None:
        try:
            groups = self._call(self.ec2, "describe_security_groups", "looking up the security group",
                                Filters=[{"Name": "group-name", "Values": [f"gpubudget-{run_id}"]}])["SecurityGroups"]
            for g in groups:
                self._call(self.ec2, "delete_security_group", "deleting the security group", GroupId=g["GroupId"])
        except ProviderError:
            pass  # a leftover empty group costs nothing; `budget status` still lists the run as done

    def host_key(self, provider_id: str, run_dir: Path) -> str | None:
        """The instance's host key, pinned in the run directory the first time it is read from the
        instance's console (cloud-init prints it there at first boot; the console comes through the EC2
        API, authenticated, so no key is taken on trust from the network). None while not printed yet."""
        pinned = run_dir / f"host_key-{provider_id}.pub"  # each instance its own (a relaunch has a new one)
        if pinned.exists():
            return pinned.read_text().strip()
        out = self._call(self.ec2, "get_console_output", f"reading {provider_id}'s console", InstanceId=provider_id,
                         Latest=True).get("Output") or ""
        keys = host_keys_from_console(out)
        if not keys:
            return None
        pinned.write_text(keys[0] + "\n")
        return keys[0]

    def endpoint(self, provider_id: str) -> Endpoint | None:
        info = self.status(provider_id)
        if info.state != "running":
            return None
        override = address_override()
        if override is None and not info.address:
            return None
        host, port = override or (info.address, 22)
        run_dir = self.home / "runs" / info.tags.get(RUN_TAG, "")
        pinned = self.host_key(provider_id, run_dir)
        if pinned is None:
            return None  # booting: its console has no host key yet
        known = run_dir / "known_hosts"
        known.write_text(f"{host if port == 22 else f'[{host}]:{port}'} {pinned}\n")
        key, _ = self.login_key()
        return Endpoint(host, port, self.cfg.user, str(key), str(known))

    def list_managed(self) -> list[InstanceInfo]:
        res = self._call(self.ec2, "describe_instances", "listing gpubudget instances",
                         Filters=[{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
                                  {"Name": "instance-state-name", "Values": LIVE_STATES}])
        return [self._info(i) for r in res["Reservations"] for i in r["Instances"]]

    # ------------------------------------------------------------------ leftovers (`budget sweep`)

    def leftovers(self) -> list[Leftover]:
        """Every resource in this region tagged gpubudget:managed - instances not terminated, volumes, security
        groups, key pairs - and the run prefixes under aws.results_bucket, each with what uses it."""
        managed = [{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}]
        region = self.region or ""
        found: list[Leftover] = []
        res = self._call(self.ec2, "describe_instances", "listing gpubudget instances", Filters=[
            *managed, {"Name": "instance-state-name", "Values": LIVE_STATES}])
        live = [i for r in res["Reservations"] for i in r["Instances"]]
        for i in live:
            found.append(Leftover("instance", i["InstanceId"], _tag(i), region, f"{i['InstanceType']} {i['State']['Name']}",
                                  instance_type=i["InstanceType"]))
        for v in self._call(self.ec2, "describe_volumes", "listing gpubudget volumes", Filters=managed)["Volumes"]:
            users = tuple(a["InstanceId"] for a in v.get("Attachments", []))
            found.append(Leftover("volume", v["VolumeId"], _tag(v), region, f"{v['Size']} GiB {v.get('VolumeType', '')}",
                                  size_gib=float(v["Size"]), used_by=users))
        for g in self._call(self.ec2, "describe_security_groups", "listing gpubudget security groups",
                            Filters=managed)["SecurityGroups"]:
            users = tuple(i["InstanceId"] for i in live if any(s["GroupId"] == g["GroupId"] for s in i.get("SecurityGroups", [])))
            found.append(Leftover("security-group", g["GroupId"], _tag(g), region, g.get("GroupName", ""), used_by=users))
        for k in self._call(self.ec2, "describe_key_pairs", "listing gpubudget key pairs", Filters=managed)["KeyPairs"]:
            users = tuple(i["InstanceId"] for i in live if i.get("KeyName") == k["KeyName"])
            found.append(Leftover("key-pair", k["KeyName"], _tag(k), region, k["KeyName"], used_by=users))
        if self.cfg.results_bucket:
            found += self._prefixes(region)
        return found

    def _prefixes(self, region: str) -> list[Leftover]:
        bucket, sizes = self.cfg.results_bucket, {}
        token: dict = {}
        while True:  # every object under gpubudget/, summed per run prefix
            page = self._call(self.s3, "list_objects_v2", f"listing s3://{bucket}/gpubudget/", Bucket=bucket,
                              Prefix="gpubudget/", **token)
            for o in page.get("Contents", []):
                run_id = o["Key"].split("/")[1] if o["Key"].count("/") >= 2 else ""
                if run_id:
                    sizes[run_id] = sizes.get(run_id, 0) + o["Size"]
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        return [Leftover("s3-prefix", f"s3://{bucket}/gpubudget/{r}/", r, region, f"{n:,} bytes", size_gib=n / 2**30)
                for r, n in sorted(sizes.items())]

    def remove(self, item: Leftover) -> None:
        """Delete one leftover (an instance: terminate and wait until it is gone)."""
        try:
            self._remove(item)
        except NotFoundError:  # gone already (a volume deleted with its instance, a second sweep)
            pass

    def _remove(self, item: Leftover) -> None:
        if item.kind == "instance":
            self.terminate(item.id)
        elif item.kind == "volume":
            self._call(self.ec2, "delete_volume", f"deleting {item.id}", VolumeId=item.id)
        elif item.kind == "security-group":
            self._call(self.ec2, "delete_security_group", f"deleting {item.id}", GroupId=item.id)
        elif item.kind == "key-pair":
            self._call(self.ec2, "delete_key_pair", f"deleting key pair {item.id}", KeyName=item.id)
        elif item.kind == "s3-prefix":
            bucket, prefix = self.cfg.results_bucket, f"gpubudget/{item.run_id}/"
            while True:
                page = self._call(self.s3, "list_objects_v2", f"listing {item.id}", Bucket=bucket, Prefix=prefix)
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if not keys:
                    break
                self._call(self.s3, "delete_objects", f"deleting {item.id}", Bucket=bucket,
                           Delete={"Objects": keys[:1000], "Quiet": True})


    def market_price(self, provider_id: str) -> Decimal | None:
        """The spot market price (USD/h) of the instance's type in its zone now, as EC2 reports it; None when
        it does not say (the figure is for the record: it never stops a run)."""
        try:
            res = self._call(self.ec2, "describe_instances", f"describing {provider_id}", InstanceIds=[provider_id])
            [inst] = [i for r in res["Reservations"] for i in r["Instances"]]
            zone, kind = inst["Placement"]["AvailabilityZone"], inst["InstanceType"]
            rows = self._call(self.ec2, "describe_spot_price_history", f"reading {kind}'s spot price",
                              InstanceTypes=[kind], AvailabilityZone=zone, ProductDescriptions=["Linux/UNIX"],
                              StartTime=datetime.datetime.now(datetime.UTC))["SpotPriceHistory"]
        except (ProviderError, KeyError, ValueError):
            return None
        rows = [r for r in rows if r.get("AvailabilityZone") == zone and r.get("InstanceType") == kind]
        return Decimal(max(rows, key=lambda r: r["Timestamp"])["SpotPrice"]) if rows else None

    # ------------------------------------------------------------------ the unattended mode's S3 side

    def results_prefix(self, run_id: str) -> str:
        return f"s3://{self._bucket()}/gpubudget/{run_id}/out/"

    def _bucket(self) -> str:
        if not self.cfg.results_bucket:
            raise ConfigError("the unattended mode uploads results to S3, and aws.results_bucket is not set",
                              "set aws.results_bucket in $BUDGET_HOME/config.yaml (a bucket you own)")
        return self.cfg.results_bucket

    def upload_urls(self, run_id: str, rels: list[str], expires_s: int) -> list[tuple[str, str]]:
        """One presigned PUT URL per output file, valid for `expires_s`: the instance uploads with these and
        holds no credential (signing is local; S3 checks this identity's s3:PutObject when the PUT comes)."""
        bucket = self._bucket()
        try:
            return [(rel, self.s3.generate_presigned_url(
                "put_object", Params={"Bucket": bucket, "Key": f"gpubudget/{run_id}/out/{rel}"},
                ExpiresIn=expires_s)) for rel in rels]
        except (ClientError, BotoCoreError) as e:
            raise _mapped(e, "signing the upload URLs") from None

    def download_results(self, run_id: str, out_dir: Path) -> int:
        """The run's files from S3 into out_dir (each replaced whole, atomically); returns how many."""
        bucket, prefix, got = self._bucket(), f"gpubudget/{run_id}/out/", 0
        page = self._call(self.s3, "list_objects_v2", f"listing s3://{bucket}/{prefix}", Bucket=bucket,
                          Prefix=prefix)
        for o in page.get("Contents", []):
            rel = o["Key"][len(prefix):]
            dest = (out_dir / rel).resolve()
            if not rel or out_dir.resolve() not in dest.parents:  # a key is input too: it stays inside out/
                continue
            body = self._call(self.s3, "get_object", f"reading s3://{bucket}/{o['Key']}", Bucket=bucket,
                              Key=o["Key"])["Body"].read()
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(body)
            tmp.replace(dest)
            got += 1
        return got

    def ended_at(self, provider_id: str) -> float | None:
        """When EC2 says the instance stopped running: its StateTransitionReason, e.g. 'User initiated
        (2026-11-28 15:30:02 GMT)' (None when it does not say)."""
        res = self._call(self.ec2, "describe_instances", f"describing {provider_id}", InstanceIds=[provider_id])
        found = [i for r in res["Reservations"] for i in r["Instances"]]
        m = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) GMT\)", found[0].get("StateTransitionReason") or "") \
            if found else None
        if not m:
            return None
        return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()


def _tag(resource: dict) -> str | None:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}.get(RUN_TAG)


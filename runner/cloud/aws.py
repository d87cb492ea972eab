"""The `aws` provider: EC2 through boto3 (the standard credential chain, profiles, AWS_ENDPOINT_URL).

Every resource carries the tags gpubudget:run=<run id> and gpubudget:managed=true. Instances launch
with ClientToken=<run id> and InstanceInitiatedShutdownBehavior=terminate (so the instance's own
watchdog ends billing with `shutdown -h now`), into a security group whose only ingress is SSH from
the caller's /32. The instance makes its own SSH host key at first boot; the controller reads it from the
instance's console through the EC2 API and pins it in the run's known_hosts (see cloud/base.py) -
no secret travels in user-data.

botocore errors are mapped where they enter (`_mapped`): capacity, quota, auth, not found, transient;
only transient ones are retried (tenacity, on the provider's clock). This module owns the boto3 session, its
clients and the one way every call goes (`_call`), and makes the calls of launching, watching and ending an
instance, in their order. Its collaborators make theirs through that `_call`, handed to them with the clients
and the config (infra/iam-policy.json is checked against the calls written in all the aws*.py modules): the
results bucket of the unattended mode in aws_results.py; what is tagged as ours (the live instances, the
leftovers `budget sweep` finds and deletes, a terminated run's security group) in aws_leftovers.py. What each
call sends and how its answer reads are pure functions in aws_requests.py, which of our errors an AWS error
code is in aws_errors.py, and the SSH side (login key, client address, pinned host key) in aws_access.py.
Only this module imports boto3 and botocore."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace
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
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..clock import SYSTEM, Clock
from ..config import AwsConfig
from ..errors import AuthError, NotFoundError, NotReadyError, ProviderError, RemoteError, TransientError
from ..units import duration
from . import aws_access as access
from . import aws_requests as req

# what moved to the aws_* modules is still imported from here (tests, fixtures, callers)
from .aws_access import make_key  # noqa: F401
from .aws_errors import AUTH, CAPACITY, NOT_FOUND_SUFFIX, QUOTA, TRANSIENT, from_response  # noqa: F401
from .aws_leftovers import Leftovers
from .aws_requests import client_token, host_keys_from_console  # noqa: F401
from .aws_results import ResultsBucket
from .base import RUN_TAG, Capabilities, Endpoint, InstanceInfo, LaunchSpec, Leftover, ProviderBase, address_override
from .remote import SshSession


def _mapped(e: Exception, what: str) -> Exception:
    """One of our errors for a boto3/botocore exception raised while doing `what`."""
    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return AuthError(f"{what}: no AWS credentials found",
                         "configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    if isinstance(e, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return TransientError(f"{what}: cannot reach the AWS endpoint ({e})", "check the network; retry later")
    if isinstance(e, ClientError):
        return from_response(e.response, what)
    return ProviderError(f"{what}: {e.__class__.__name__}: {e}", "see the AWS documentation for this error")


@contextlib.contextmanager
def _mapping(what: str):
    """botocore's exceptions raised inside, as ours (`_mapped`)."""
    try:
        yield
    except (ClientError, BotoCoreError) as e:
        raise _mapped(e, what) from None


def _session(profile: str | None, region: str | None) -> tuple[boto3.Session, str | None]:
    """The boto3 session, and the region configured (argument, config, AWS_DEFAULT_REGION, profile) - the
    planner prices offers there; with none, the session still works (STS is global) and the offer decides."""
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        configured = session.region_name
        return (session if configured else boto3.Session(profile_name=profile, region_name="us-east-1")), configured
    except ProfileNotFound as e:
        name = (getattr(e, "kwargs", None) or {}).get("profile") or profile
        where = "aws.profile in $BUDGET_HOME/config.yaml" if profile else "the AWS_PROFILE variable"
        raise AuthError(f"AWS profile {name!r} not found (set by {where})",
                        "list the profiles with `aws configure list-profiles`, or fix ~/.aws/config") from None


def user_data(spec: LaunchSpec, login_public: str) -> str:
    """cloud-init's config (aws_requests.cloud_config) as the document EC2 hands the instance."""
    return "#cloud-config\n" + yaml.safe_dump(req.cloud_config(spec, login_public), sort_keys=False, width=1000)


class AwsProvider(ProviderBase):
    name = "aws"
    # an instance boots for minutes before sshd answers; terminate -> shutting-down (billing ends) is seconds,
    # with room for a slow API
    # EC2 lists a terminated instance for about an hour: `find` is trusted for half of that
    caps = Capabilities(ssh_wait_s=600.0, teardown_s=90.0, poweroff="sudo shutdown -h now", spot_market=True,
                        own_prices=True, offers_from="aws", regional=True, finds_ended_s=1800.0,
                        lists_after_s=60.0)

    def __init__(self, cfg: AwsConfig, home: Path, region: str | None = None, clock: Clock = SYSTEM):
        self.cfg = cfg
        self.home = Path(home)
        self.clock = clock
        self.remote_dir = cfg.remote_dir
        self.upload_every_s = cfg.upload_every_s
        # spot instances hear of a reclaim at the metadata service; the results bucket makes hand-overs possible
        self._boto, self.region = _session(cfg.profile, region or cfg.region)  # `session` is the contract's
        self.caps = replace(self.caps, poweroff=cfg.poweroff, after_watchdog=cfg.cancel_boot_poweroff,
                            notice_url=cfg.metadata_url, uploads=bool(cfg.results_bucket), python=cfg.python or "",
                            region=self.region)
        _ = self.ec2  # the one client every use needs: a bad region fails here, not mid-run
        self._results = ResultsBucket(self._call, lambda: self.s3, cfg.results_bucket, _mapping)
        self._leftovers = Leftovers(self._call, lambda: self.ec2, lambda: self.s3, self.region, self._results,
                                    self.terminate)

    # clients are made when first used (a third of a second each): sweep and launch need different ones
    @functools.cached_property
    def ec2(self):
        return self._boto.client("ec2")

    @functools.cached_property
    def ssm(self):
        return self._boto.client("ssm")

    @functools.cached_property
    def sts(self):
        return self._boto.client("sts")

    @functools.cached_property
    def s3(self):  # SigV4: presigned URLs for every region (SigV2 is refused by the newer ones)
        return self._boto.client("s3", config=BotoConfig(signature_version="s3v4"))

    def _call(self, client, op: str, what: str, **kw):
        """One API call; transient errors (throttling, 5xx, dropped connections) retried with backoff on the
        provider's clock."""
        def attempt():
            with _mapping(what):
                return getattr(client, op)(**kw)
        return Retrying(retry=retry_if_exception_type(TransientError), stop=stop_after_attempt(5),
                        wait=wait_exponential(multiplier=0.5, max=8), reraise=True, sleep=self.clock.sleep)(attempt)

    def preflight(self) -> None:
        """Fail before anything is asked or spent when the credentials do not work."""
        self._call(self.sts, "get_caller_identity", "checking the AWS credentials")

    # ------------------------------------------------------------------ resources

    def resolve_ami(self) -> dict:
        ami = self.cfg.ami
        if ami and ami.startswith("ssm:"):
            name = ami[4:]
            try:
                ami = self._call(self.ssm, "get_parameter", f"reading SSM parameter {name}",
                                 Name=name)["Parameter"]["Value"]
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
                            **req.image_search(self.cfg.ami_owners, self.cfg.ami_name))["Images"]
        if not images:
            raise NotFoundError(f"no AMI named {self.cfg.ami_name!r} owned by {', '.join(self.cfg.ami_owners)} in "
                                f"{self.region}", "set aws.ami (an id, or ssm:/aws/service/deeplearning/...) or "
                                "aws.ami_name / aws.ami_owners in $BUDGET_HOME/config.yaml")
        return max(images, key=lambda i: i.get("CreationDate", ""))

    def login_key(self) -> tuple[Path, str]:
        return access.login_key(self.cfg.ssh_key, self.home)

    def _key_pair(self, public_line: str, run_id: str) -> str:
        name = req.key_pair_name(public_line)
        if not self._call(self.ec2, "describe_key_pairs", "looking up the key pair",
                          **req.key_pair_lookup(name))["KeyPairs"]:
            self._call(self.ec2, "import_key_pair", "importing the SSH key",
                       **req.key_pair_import(name, public_line, run_id))
        return name

    def client_cidr(self) -> str:
        return access.client_cidr(self.cfg.client_cidr)

    def _security_group(self, run_id: str) -> str:
        have = self._call(self.ec2, "describe_security_groups", "looking up the security group",
                          **req.group_lookup(run_id))["SecurityGroups"]
        if have:
            return have[0]["GroupId"]
        if self.cfg.subnet_id:
            vpc = self._call(self.ec2, "describe_subnets", "looking up the subnet",
                             SubnetIds=[self.cfg.subnet_id])["Subnets"][0]["VpcId"]
        else:
            vpcs = self._call(self.ec2, "describe_vpcs", "looking up the default VPC", **req.default_vpc())["Vpcs"]
            if not vpcs:
                raise NotFoundError(f"no default VPC in {self.region}", "set aws.subnet_id in $BUDGET_HOME/config.yaml")
            vpc = vpcs[0]["VpcId"]
        cidr = self.client_cidr()
        gid = self._call(self.ec2, "create_security_group", "creating the security group",
                         **req.security_group(run_id, vpc, cidr))["GroupId"]
        self._call(self.ec2, "authorize_security_group_ingress", "opening SSH to this machine",
                   **req.ssh_ingress(gid, cidr))
        return gid

    # ------------------------------------------------------------------ the contract

    def _by_run(self, run_id: str) -> list[dict]:
        return req.instances(self._call(self.ec2, "describe_instances", "looking up the run's instance",
                                        **req.live_of_run(run_id)))

    def find(self, run_id: str) -> list[InstanceInfo]:
        return [req.instance_info(i) for i in req.instances(self._call(
            self.ec2, "describe_instances", "looking up the run's instances", **req.of_run(run_id)))]

    def _described(self, provider_id: str) -> list[dict]:
        return req.instances(self._call(self.ec2, "describe_instances", f"describing {provider_id}",
                                        InstanceIds=[provider_id]))

    def launch(self, spec: LaunchSpec) -> InstanceInfo:
        existing = self._by_run(spec.run_id)
        if existing:  # ClientToken makes AWS idempotent too; this also covers endpoints that ignore it
            return req.instance_info(existing[0])
        ami = self.resolve_ami()
        _, public = self.login_key()
        kw = req.run_instances(spec, ami, key_name=self._key_pair(public, spec.run_id),
                               group_id=self._security_group(spec.run_id), user_data=user_data(spec, public),
                               subnet_id=self.cfg.subnet_id, volume_gib=self.cfg.volume_gib)
        try:
            res = self._call(self.ec2, "run_instances", f"launching {spec.offer.instance_type}", **kw)
        except TransientError:
            # the call may have created the instance before failing: never leave one behind
            for i in self._by_run(spec.run_id):
                self.terminate(i["InstanceId"])
            raise
        return req.instance_info(res["Instances"][0])

    def status(self, provider_id: str) -> InstanceInfo:
        try:
            found = self._described(provider_id)
        except NotFoundError:
            found = []
        return req.instance_info(found[0]) if found else InstanceInfo(provider_id, "terminated")

    def terminate(self, provider_id: str) -> float:
        try:
            self._call(self.ec2, "terminate_instances", f"terminating {provider_id}", InstanceIds=[provider_id])
        except NotFoundError:
            return self.clock.now()
        ended = self.clock.now()  # billing stops when the instance leaves `running` (shutting-down)
        deadline = self.clock.monotonic() + self.cfg.terminate_timeout_s
        info = self.status(provider_id)
        while info.state != "terminated":
            if self.clock.monotonic() > deadline:
                raise ProviderError(f"{provider_id} is still {info.state} {duration(self.cfg.terminate_timeout_s)} after "
                                    "terminate", "check the EC2 console; `budget stop RUN` retries")
            self.clock.sleep(2)
            info = self.status(provider_id)
        run_id = info.tags.get(RUN_TAG)
        if run_id:
            self._leftovers.delete_group(run_id)
        return ended

    def host_key(self, provider_id: str, run_dir: Path) -> str | None:
        """The instance's host key, pinned in the run directory the first time it is read from the
        instance's console (cloud-init prints it there at first boot; the console comes through the EC2
        API, authenticated, so no key is taken on trust from the network). None while not printed yet."""
        return access.pinned_host_key(run_dir, provider_id) or access.pin_host_key(run_dir, provider_id, self._call(
            self.ec2, "get_console_output", f"reading {provider_id}'s console", InstanceId=provider_id,
            Latest=True).get("Output") or "")

    def session(self, provider_id: str, run_id: str, timeout_s: float = 10.0) -> SshSession:
        info = self.status(provider_id)
        if info.state not in ("pending", "running"):
            raise RemoteError(f"{provider_id} is {info.state}", "a spot instance may have been reclaimed, or the "
                              "instance's watchdog ended it at its lease; fetched samples are kept")
        ep = self.endpoint(provider_id, info)
        if ep is None:
            raise NotReadyError(f"{provider_id} has no address, or its console shows no host key yet (still "
                                "booting?)", "check the instance in the provider's console; raise run.ssh_wait_s "
                                "for slow boots")
        return SshSession.connect(ep, f"{self.remote_dir.rstrip('/')}/runs/{run_id}", timeout_s)

    def endpoint(self, provider_id: str, info: InstanceInfo | None = None) -> Endpoint | None:
        info = info or self.status(provider_id)
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
        key, _ = self.login_key()
        return Endpoint(host, port, self.cfg.user, str(key), str(access.known_hosts(run_dir, host, port, pinned)))

    def market_price(self, provider_id: str) -> Decimal | None:
        """The spot market price (USD/h) of the instance's type in its zone now, as EC2 reports it; None when
        it does not say (the figure is for the record: it never stops a run)."""
        try:
            [inst] = self._described(provider_id)
            rows = self._call(self.ec2, "describe_spot_price_history", f"reading {inst['InstanceType']}'s spot price",
                              **req.spot_price_query(inst, self.clock.now()))["SpotPriceHistory"]
            return req.spot_price(rows, inst)
        except (ProviderError, KeyError, ValueError):
            return None

    def ended_at(self, provider_id: str) -> float | None:
        """When EC2 says the instance stopped running: its StateTransitionReason, e.g. 'User initiated
        (2026-11-28 15:30:02 GMT)' (None when it does not say)."""
        found = self._described(provider_id)
        return req.ended_at(found[0].get("StateTransitionReason") or "") if found else None

    # ------------------------------------------ what is tagged as ours, and `budget sweep`'s side: aws_leftovers.py

    def list_managed(self) -> list[InstanceInfo]:
        return [req.instance_info(i) for i in self._leftovers.live_instances()]

    def leftovers(self) -> list[Leftover]:
        return self._leftovers.leftovers()

    def remove(self, item: Leftover) -> None:
        self._leftovers.remove(item)

    # ------------------------------------------------------------------ the unattended mode's S3 side: aws_results.py

    def results_prefix(self, run_id: str) -> str:
        return self._results.results_prefix(run_id)

    def upload_urls(self, run_id: str, rels: list[str], expires_s: int) -> list[tuple[str, str]]:
        return self._results.upload_urls(run_id, rels, expires_s)

    def download_results(self, run_id: str, out_dir: Path) -> int:
        return self._results.download_results(run_id, out_dir)

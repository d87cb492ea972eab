"""What the aws provider has tagged as ours (gpubudget:managed) in one region - `budget sweep`'s side of it:
finding every such resource - instances not terminated (also the provider's `list_managed`), volumes, security
groups, key pairs - and the run prefixes under the results bucket, each with what uses it; and deleting one of
them (an instance through the provider's terminate, which waits until it is gone). Also what the provider's
terminate tidies once an instance is gone: its run's security group.

aws.py hands it what it needs: its `call` (retries on the provider's clock, botocore's errors mapped to ours),
the EC2 and S3 clients (made when first used), the region, the results bucket (aws_results.py, which lists
the prefixes) and the provider's `terminate`. Nothing here imports boto3 or botocore, and nothing here waits;
which resources count as leftovers, and what uses them, is read by aws_requests.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import NotFoundError, ProviderError
from . import aws_requests as req
from .aws_results import ResultsBucket
from .base import Leftover


class Leftovers:
    def __init__(self, call: Callable[..., Any], ec2: Callable[[], Any], s3: Callable[[], Any], region: str | None,
                 results: ResultsBucket, terminate: Callable[[str], Any]):
        self._call, self._ec2, self._s3, self.region = call, ec2, s3, region
        self._results, self._terminate = results, terminate

    @property
    def ec2(self):
        return self._ec2()

    @property
    def s3(self):
        return self._s3()

    def live_instances(self) -> list[dict]:
        """Our instances that are not terminated (they may still bill)."""
        return req.instances(self._call(self.ec2, "describe_instances", "listing gpubudget instances",
                                        **req.live_managed()))

    def leftovers(self) -> list[Leftover]:
        """Every resource in this region tagged gpubudget:managed - instances not terminated, volumes, security
        groups, key pairs - and the run prefixes under aws.results_bucket, each with what uses it."""
        found = req.leftovers(
            self.region or "", self.live_instances(),
            self._call(self.ec2, "describe_volumes", "listing gpubudget volumes", **req.managed())["Volumes"],
            self._call(self.ec2, "describe_security_groups", "listing gpubudget security groups",
                       **req.managed())["SecurityGroups"],
            self._call(self.ec2, "describe_key_pairs", "listing gpubudget key pairs", **req.managed())["KeyPairs"])
        return found + self._prefixes()

    def _prefixes(self) -> list[Leftover]:
        """The run prefixes under the results bucket (none without one)."""
        bucket = self._results.name
        return req.prefix_leftovers(bucket, self.region or "", self._results.objects(bucket, req.ROOT)) if bucket else []

    def remove(self, item: Leftover) -> None:
        """Delete one leftover (an instance: terminate and wait until it is gone)."""
        try:
            self._remove(item)
        except NotFoundError:  # gone already (a volume deleted with its instance, a second sweep)
            pass

    def _remove(self, item: Leftover) -> None:
        if item.kind == "instance":
            self._terminate(item.id)
        elif item.kind == "volume":
            self._call(self.ec2, "delete_volume", f"deleting {item.id}", VolumeId=item.id)
        elif item.kind == "security-group":
            self._call(self.ec2, "delete_security_group", f"deleting {item.id}", GroupId=item.id)
        elif item.kind == "key-pair":
            self._call(self.ec2, "delete_key_pair", f"deleting key pair {item.id}", KeyName=item.id)
        elif item.kind == "s3-prefix":
            bucket = self._results.name
            for batch in req.delete_batches(self._results.objects(bucket, req.run_prefix(item.run_id))):
                self._call(self.s3, "delete_objects", f"deleting {item.id}", Bucket=bucket, Delete=batch)

    def delete_group(self, run_id: str) -> None:
        """The run's security group, once its instance is gone (left alone when that fails)."""
        try:
            groups = self._call(self.ec2, "describe_security_groups", "looking up the security group",
                                **req.group_lookup(run_id))["SecurityGroups"]
            for g in groups:
                self._call(self.ec2, "delete_security_group", "deleting the security group", GroupId=g["GroupId"])
        except ProviderError:
            pass  # a leftover empty group costs nothing; `budget status` still lists the run as done

"""The results bucket (aws.results_bucket): the S3 side of the unattended mode. It owns where a run's files
go (s3://<bucket>/gpubudget/<run id>/out/<file>), the presigned PUT URLs an instance uploads them with (it
holds no credential), bringing them back into the run directory, and listing a prefix of the bucket (which
`budget sweep` also uses, see aws_leftovers.py).

aws.py hands it what it needs: its `call` (retries on the provider's clock, botocore's errors mapped to
ours), the S3 client (made when first used), the bucket's name, and `mapped`, which maps the errors of the
one thing done without `call` (signing, local: no request is sent). Nothing here imports boto3 or botocore;
what each request and answer holds is in aws_requests.py."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .. import inbound
from . import aws_requests as req


class ResultsBucket:
    def __init__(self, call: Callable[..., Any], s3: Callable[[], Any], name: str | None,
                 mapped: Callable[[str], AbstractContextManager]):
        self._call, self._s3, self.name, self._mapped = call, s3, name, mapped

    @property
    def s3(self):
        return self._s3()

    def _bucket(self) -> str:
        if not self.name:
            raise ConfigError("the unattended mode uploads results to S3, and aws.results_bucket is not set",
                              "set aws.results_bucket in $BUDGET_HOME/config.yaml (a bucket you own)")
        return self.name

    def results_prefix(self, run_id: str) -> str:
        return f"s3://{self._bucket()}/{req.out_prefix(run_id)}"

    def upload_urls(self, run_id: str, rels: list[str], expires_s: int) -> list[tuple[str, str]]:
        """One presigned PUT URL per output file, valid for `expires_s`: the instance uploads with these and
        holds no credential (signing is local; S3 checks this identity's s3:PutObject when the PUT comes)."""
        bucket = self._bucket()
        with self._mapped("signing the upload URLs"):
            return [(rel, self.s3.generate_presigned_url(
                "put_object", Params={"Bucket": bucket, "Key": req.out_prefix(run_id) + rel},
                ExpiresIn=expires_s)) for rel in rels]

    def download_results(self, run_id: str, out_dir: Path) -> int:
        """The run's files from S3 into out_dir, each through the boundary (runner/inbound.py: its name, its
        size, its shape; its body streamed, never read whole); returns how many were taken. What was not taken
        is said in out_dir/untrusted.log."""
        bucket, prefix, got, refused = self._bucket(), req.out_prefix(run_id), 0, []
        for o in self.objects(bucket, prefix):
            rel = o["Key"][len(prefix):]
            if not inbound.name_taken(rel):
                refused.append(f"s3://{bucket}/{o['Key'][:200]}: a name that is not taken")
                continue
            body = self._call(self.s3, "get_object", f"reading s3://{bucket}/{o['Key']}", Bucket=bucket,
                              Key=o["Key"])["Body"]
            try:
                why = inbound.take_object(rel, body.read, out_dir)
            finally:
                body.close()
            got += not why or rel not in inbound.DOCS
            if why:
                refused.append(why)
        if refused:
            with open(out_dir / "untrusted.log", "a", encoding="utf-8") as f:
                f.writelines(f"{line}\n" for line in refused)
        return got

    def objects(self, bucket: str, prefix: str) -> list[dict]:
        """Every object under the prefix (list_objects_v2 answers 1000 at a time)."""
        objects, token = [], {}
        while True:
            page = self._call(self.s3, "list_objects_v2", f"listing s3://{bucket}/{prefix}", Bucket=bucket,
                              Prefix=prefix, **token)
            objects += page.get("Contents", [])
            if not page.get("IsTruncated"):
                return objects
            token = {"ContinuationToken": page["NextContinuationToken"]}

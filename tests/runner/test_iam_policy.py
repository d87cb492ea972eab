"""infra/iam-policy.json grants exactly the API calls our code makes (each boto3 call in the aws provider's
modules, runner/cloud/aws*.py, found by parsing them) - no more, no fewer - and the least of each: tags only
while creating, launches only of the catalog's GPU families from Amazon's or the account's own images,
destructive calls only on resources tagged as ours, and no DescribeInstanceAttribute (which would
expose user-data)."""

from __future__ import annotations

import ast
import fnmatch
import json
from pathlib import Path

from planner.catalog import load_catalog

REPO = Path(__file__).resolve().parents[2]
POLICY = json.loads((REPO / "infra" / "iam-policy.json").read_text())
SERVICE = {"ec2": "ec2", "ssm": "ssm", "sts": "sts", "s3": "s3"}
# S3's IAM actions are not its API names: ListObjectsV2 is allowed by s3:ListBucket, DeleteObjects by s3:DeleteObject
IAM_NAME = {"s3:ListObjectsV2": "s3:ListBucket", "s3:DeleteObjects": "s3:DeleteObject"}


def _modules() -> list[Path]:
    """The aws provider and its collaborators (aws_results.py, aws_leftovers.py, ...): every AWS call is in one."""
    found = sorted((REPO / "runner" / "cloud").glob("aws*.py"))
    assert REPO / "runner" / "cloud" / "aws.py" in found, found
    return found


def _calls() -> set[str]:
    """Every `self._call(self.<client>, "<operation>", ...)` in the aws provider's modules, as IAM actions."""
    found = set()
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_call":
                # each call names its client and operation plainly, or it would escape this check
                assert (len(node.args) >= 2 and isinstance(node.args[0], ast.Attribute)
                        and node.args[0].attr in SERVICE and isinstance(node.args[1], ast.Constant)
                        and isinstance(node.args[1].value, str)), f"{path.name}:{node.lineno}: {ast.unparse(node)}"
                client, op = node.args[0].attr, node.args[1].value
                action = f"{SERVICE[client]}:{''.join(w.capitalize() for w in op.split('_'))}"
                found.add(IAM_NAME.get(action, action))
    return found


def _presigned() -> set[str]:
    """Every `<x>.s3.generate_presigned_url("<operation>", ...)` in the aws provider's modules, as IAM actions
    (the URL is signed here; S3 checks this identity's permission when it is used)."""
    found = set()
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "generate_presigned_url"):
                assert (isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "s3" and node.args
                        and isinstance(node.args[0], ast.Constant)), f"{path.name}:{node.lineno}: {ast.unparse(node)}"
                found.add(f"s3:{''.join(w.capitalize() for w in node.args[0].value.split('_'))}")
    return found


def _actions() -> set[str]:
    out = set()
    for st in POLICY["Statement"]:
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        out.update(acts)
    return out


def test_the_policy_covers_exactly_the_calls_we_make():
    calls = _calls()
    assert "ec2:RunInstances" in calls and "ec2:TerminateInstances" in calls  # the parser finds them
    # implied by spot / tag-on-create / the presigned PUT URLs an unattended instance uploads with (signed here,
    # checked by S3 against this identity when the PUT comes)
    granted = _actions() - {"iam:CreateServiceLinkedRole", "ec2:CreateTags", "s3:PutObject"}
    assert _presigned() == {"s3:PutObject"} <= _actions()
    assert granted == calls, (granted - calls, calls - granted)
    assert "ec2:DescribeInstanceAttribute" not in _actions()


def test_each_grant_is_the_least_it_can_be():
    by_sid = {st["Sid"]: st for st in POLICY["Statement"]}
    tags = by_sid["TagOnlyWhileCreating"]
    assert tags["Condition"]["StringEquals"]["ec2:CreateAction"]  # never on existing resources
    for st in POLICY["Statement"]:
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if {"ec2:TerminateInstances", "ec2:DeleteSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
                "ec2:DeleteVolume", "ec2:DeleteKeyPair"} & set(acts):
            assert st["Condition"]["StringEquals"]["aws:ResourceTag/gpubudget:managed"] == "true"
    launch = by_sid["LaunchOnlyCatalogGpuTypesTaggedAsOurs"]["Condition"]["StringLike"]["ec2:InstanceType"]
    types = {o.instance_type for o in load_catalog().offers if o.provider == "aws"}
    assert types and all(any(fnmatch.fnmatch(t, p) for p in launch) for t in types)  # every catalog type launches
    assert not any(fnmatch.fnmatch("t3.micro", p) or fnmatch.fnmatch("x2iedn.32xlarge", p) for p in launch)
    assert by_sid["LaunchFromAmazonOrOwnImagesOnly"]["Condition"]["StringEquals"]["ec2:Owner"] == ["amazon", "self"]

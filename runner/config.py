"""$BUDGET_HOME/config.yaml: how to reach each provider and how cautious the guard is. Every field has
a default except what only the user can know (an SSH host). Unknown keys are errors (a typo must not
silently become a default).

    aws:   {region: us-east-1, profile: NAME, ami: ami-... | ssm:/PARAM, ami_name: "...", ami_owners: [amazon],
            user: ubuntu, ssh_key: ~/.ssh/id_ed25519, client_cidr: 203.0.113.7/32, subnet_id: subnet-...,
            volume_gib: 200, poweroff: sudo shutdown -h now, remote_dir: ~/gpubudget, python: PATH}
    ssh:   {host: HOST, port: 22, user: NAME, key: ~/.ssh/id_ed25519, known_hosts: ~/.ssh/known_hosts,
            offer: csdn:RTX3090, price_yuan_per_hour: 3.5, stop_command: shutdown -h now,
            remote_dir: ~/gpubudget, python: /usr/bin/python3}
    local: {price_yuan_per_hour: 2.2}
    run:   {tick_s: 5, teardown_s: 60, lease_s: 300, reserve_yuan: 0, ssh_wait_s: 600 (aws) | 30 (ssh),
            bootstrap_timeout_s: 3600}
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AwsConfig(_Model):
    region: str | None = None
    profile: str | None = None
    ami: str | None = None  # an AMI id, or ssm:/parameter/name
    ami_name: str = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Ubuntu 22.04) *"
    ami_owners: list[str] = ["amazon"]
    user: str = "ubuntu"
    ssh_key: Path | None = None  # private key with KEY.pub beside it; default: one made for gpubudget
    client_cidr: str | None = None  # default: this machine's public IP /32 (checkip.amazonaws.com)
    subnet_id: str | None = None
    volume_gib: int = Field(default=200, ge=8)
    poweroff: str = "sudo shutdown -h now"
    remote_dir: str = "~/gpubudget"
    python: str | None = None  # a ready Python on the instance for bootstrap.sh (default: search the AMI's)
    cancel_boot_poweroff: str = "sudo -n shutdown -c"  # once the watchdog runs, the boot-time fallback goes
    terminate_timeout_s: float = Field(default=600, gt=0)
    # the instance-metadata service a spot instance's watchdog polls for the interruption notice
    metadata_url: str = Field(default="http://169.254.169.254", pattern=r"^https?://[^\s'\"]+$")
    results_bucket: str | None = None
    upload_every_s: float = Field(default=60, gt=0)  # an unattended instance uploads its output this often  # S3 bucket whose gpubudget/RUN/ prefixes hold uploaded results (sweep lists them)


class SshConfig(_Model):
    host: str | None = None
    port: int = Field(default=22, gt=0, lt=65536)
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    offer: str | None = None
    price_yuan_per_hour: Decimal | None = Field(default=None, ge=0)
    stop_command: str | None = None
    remote_dir: str = "~/gpubudget"
    python: str | None = None


class LocalConfig(_Model):
    price_yuan_per_hour: Decimal | None = Field(default=None, ge=0)


class RunConfig(_Model):
    tick_s: float = Field(default=5.0, gt=0)
    teardown_s: float | None = Field(default=None, ge=0)  # default: the provider's own
    lease_s: float = Field(default=300.0, gt=0)
    reserve_yuan: Decimal = Field(default=Decimal(0), ge=0)
    ssh_wait_s: float | None = Field(default=None, gt=0)  # default: the provider's own (aws 600 s, ssh host 30 s)
    bootstrap_timeout_s: float = Field(default=3600.0, gt=0)


class Config(_Model):
    aws: AwsConfig = AwsConfig()
    ssh: SshConfig = SshConfig()
    local: LocalConfig = LocalConfig()
    run: RunConfig = RunConfig()


def load(home: Path) -> Config:
    path = Path(home) / "config.yaml"
    if not path.exists():
        return Config()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})", "check the file's permissions") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e.__class__.__name__})",
                          "fix the YAML syntax") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where}: {err['msg']}", "see `budget run --help` and README's configuration "
                          "section for the keys") from None

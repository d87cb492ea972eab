"""The provider contract. A provider turns a launch spec into an instance the orchestrator can reach
(over SSH, or directly for `local`) and makes it go away again. Three implement it: local.py,
aws.py, ssh_host.py.

How each establishes the instance's SSH host key (we never trust a key on first use):
- aws: the instance generates its ed25519 host key at first boot (cloud-init) and prints the public half
  to its console; the controller reads the console through the EC2 API (authenticated, like every call)
  and pins that key in the run's known_hosts. Nothing secret is in user-data, which anyone allowed
  ec2:DescribeInstanceAttribute could read (why not the controller-made key shipped in user-data, as
  before: its private half was readable there for the instance's life, so anyone with that permission
  could impersonate the instance; the console holds only the public half).
- ssh_host: the user's known_hosts file (config `known_hosts`, default ~/.ssh/known_hosts) must
  already hold the host's key, exactly as `ssh -o StrictHostKeyChecking=yes` would require.
- local: no SSH at all."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from planner.models import Offer

from ..errors import ConfigError

INSTANCE_FILES = Path(__file__).resolve().parent.parent / "instance"  # what runs on every instance
# `ours FILE`: the pid in FILE is alive *and still ours* - it works in this run directory (after a power-off
# the pid may belong to any other process; /proc tells, where there is one). Sets $p. Every command below
# that signals or trusts a pid file goes through it (watchdog.sh and start.sh, standalone scripts, restate it).
OURS = ('ours() { p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && '
        '{ [ ! -d /proc/self ] || [ "$(readlink /proc/$p/cwd 2>/dev/null)" = "$(pwd -P)" ]; }; }; ')
# start the instance's watchdog unless its own is running
START_WATCHDOG = OURS + ("mkdir -p out; if ! ours watchdog.pid; then "
                         "nohup setsid sh ./watchdog.sh >> watchdog.log 2>&1 < /dev/null & echo $! > watchdog.pid; fi")
GONE_STATES = ("shutting-down", "terminated", "stopping", "stopped")  # no longer running (EC2's names)
MANAGED_TAG = "gpubudget:managed"
RUN_TAG = "gpubudget:run"


@dataclass(frozen=True)
class HostKey:
    """An SSH key pair made by the controller (OpenSSH private key text, public key line): the login key."""

    private_openssh: str
    public_line: str


@dataclass(frozen=True)
class LaunchSpec:
    run_id: str
    offer: Offer
    spot: bool
    ssh_public_key: str = ""          # the login key's public line (authorized_keys)
    max_spot_price: Decimal | None = None
    boot_minutes: int = 0              # power off after this long unless the watchdog took over (0: none)
    lease_until: float = 0.0           # the boot lease (epoch seconds) the ledger admitted
    grace_s: int = 20                  # the worker's flush time when a lease runs out
    attempt: int = 0                   # relaunches of this run before this launch (a spot reclaim, ...)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to SSH into an instance. `known_hosts` holds the pinned host key."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str


@dataclass(frozen=True)
class InstanceInfo:
    provider_id: str
    state: str                  # pending | running | stopping | terminated
    address: str | None = None  # public IP / host name, once known
    launched_at: float | None = None
    spot: bool = False
    tags: dict[str, str] = field(default_factory=dict)


class Provider(Protocol):
    name: str
    teardown_s: float   # the longest a terminate takes to stop billing (the guard plans with it)
    poweroff: str       # the shell command the instance's watchdog runs when its lease runs out
    remote_dir: str     # the base directory for run directories on the instance

    def launch(self, spec: LaunchSpec) -> InstanceInfo:
        """Start an instance for `spec.run_id` and return without waiting for it to boot.
        Idempotent per run id: a second call returns the instance the first one made. Raises
        AuthError, CapacityError, QuotaError, NotFoundError or ProviderError; transient API errors
        are retried inside the provider, and an instance is never left running by a failed call."""

    def status(self, provider_id: str) -> InstanceInfo:
        """Current state; an instance the provider no longer knows is `terminated`. Does not block."""

    def terminate(self, provider_id: str) -> float:
        """Stop billing for the instance and block until the provider confirms (or the provider's
        timeout). Safe to repeat: an instance already gone is success. Returns the epoch time billing
        ended (as near as the provider tells)."""

    def endpoint(self, provider_id: str) -> Endpoint | None:
        """Where to SSH, or None while the instance has no address yet (or for `local`)."""

    def list_managed(self) -> list[InstanceInfo]:
        """Every live instance this tool launched (tags / run directories), for `budget status`."""


@dataclass(frozen=True)
class Leftover:
    """A cloud resource tagged as ours (gpubudget:managed) that `budget sweep` may list and delete."""

    kind: str  # instance | volume | security-group | key-pair | s3-prefix
    id: str
    run_id: str | None  # its gpubudget:run tag
    region: str = ""
    detail: str = ""  # instance type, size, name
    instance_type: str = ""
    size_gib: float = 0.0  # what a volume or an S3 prefix is billed by
    used_by: tuple[str, ...] = ()  # instances (not terminated) that use it: attached, member, key


def address_override() -> tuple[str, int] | None:
    """BUDGET_SSH_ADDRESS=host:port: reach instances through this address instead of their own
    (a bastion's forwarded port, a tunnel, the local test cloud)."""
    raw = os.environ.get("BUDGET_SSH_ADDRESS", "").strip()
    if not raw:
        return None
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"BUDGET_SSH_ADDRESS={raw!r} is not host:port", "e.g. BUDGET_SSH_ADDRESS=127.0.0.1:2222")
    return host.strip("[]"), int(port)

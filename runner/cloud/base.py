"""The provider contract. A provider turns a launch spec into an instance a run can reach through a
`Session` (over SSH, or directly for this machine) and makes it go away again. It declares what it can
do in one `Capabilities` record; callers branch on those, never on its name. Three implement it:
local.py, aws.py, ssh_host.py (registry.py maps names to them); tests add a scripted one.

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
from collections.abc import Callable
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
    max_spot_price: Decimal | None = None
    boot_minutes: int = 0              # power off after this long unless the watchdog took over (0: none)
    lease_until: float = 0.0           # the boot lease (epoch seconds) the ledger admitted
    grace_s: int = 20                  # the worker's flush time when a lease runs out
    attempt: int = 0                   # relaunches of this run before this launch (a spot reclaim, ...)
    offer_index: int = 0               # which of the run's offers (0: its own; then the planner's fallbacks)


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


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do, declared by the provider itself - callers read these, never its name.

    `ssh_wait_s`: how long a new instance may take before a session opens (a cloud boots for minutes; a rented
    host that does not answer is down). `teardown_s`: the longest a terminate takes to stop billing (the guard
    plans with it). `poweroff`: the shell command the instance's watchdog runs when its lease runs out."""

    ssh_wait_s: float
    teardown_s: float
    poweroff: str
    this_machine: bool = False        # the instance is this machine: no SSH, no bootstrap, files used in place,
                                      # times estimated on this CPU, any offer's price simulated
    rented: bool = False              # the machine exists before the run (launch opens a meter): a host never
                                      # reached ran nothing of ours and bills this run nothing; nor does a launch
                                      # whose answer was lost (it made nothing)
    lists_after_s: float = 0.0        # how long after a launch `find` may not list the new instance yet (EC2)
    finds_ended_s: float = 0.0        # how long after it ended `find` still finds an instance by its run tag
                                      # (EC2 lists terminated ones about an hour; a directory stays): within it, a
                                      # launch not found made nothing; past it, one not found may have run
    spot_market: bool = False         # spot capacity: a ceiling price, the market price at launch, reclaims
    notice_url: str | None = None     # where a spot instance's watchdog hears the cloud's interruption notice
    self_shutdown: bool = True        # the watchdog's power-off ends billing (EC2: terminate on shutdown)
    uploads: bool = False             # presigned uploads: the instance can finish alone (`--unattended`)
    stop_command: bool = True         # terminate ends billing (an SSH host without ssh.stop_command keeps billing)
    own_prices: bool = False          # billed at the provider's own price (its catalog offers): no given price
    offers_from: str | None = None    # the catalog provider whose offers it launches (None: any offer, simulated)
    regional: bool = False            # instances live in regions: leftovers are looked for region by region
    region: str | None = None         # the region it launches in (None: the offer's)
    after_watchdog: str | None = None  # run once the watchdog holds the instance (cancel a boot-time power-off)
    python: str = ""                  # the Python bootstrap.sh should use ("": it looks for one)
    offer: str | None = None          # the catalog offer it is (a rented host: configured), if fixed
    price_cny_h: Decimal | None = None  # the price it bills at when none is given (configured)


class Proc:
    """A command started on the instance; poll() until it returns its exit code."""

    def __init__(self, poll: Callable[[], int | None], output: Callable[[], str]):
        self.poll, self.output = poll, output


class Session(Protocol):
    """A run directory on an instance (`root`): what the controller does there. Paths are relative to it.
    Every method raises RemoteError when the connection fails; a missing file is None / []."""

    root: str
    address: str

    def run(self, cmd: str, timeout: float = 120) -> tuple[int, str]:
        """Run a shell command there; (exit code, output). 124 when it timed out."""

    def start(self, cmd: str) -> Proc:
        """Start a command and return at once."""

    def put_file(self, local: Path, rel: str, mode: int | None = None) -> None: ...

    def put_bytes(self, data: bytes, rel: str, mode: int | None = None) -> None: ...

    def size(self, rel: str) -> int | None: ...

    def read(self, rel: str, offset: int = 0, length: int | None = None) -> bytes | None: ...

    def listdir(self, rel: str) -> list[str]: ...

    def close(self) -> None: ...


class Provider(Protocol):
    """The contract every adapter implements (runner/cloud/registry.py maps names to them). Optional powers are
    declared in `caps`; the methods behind a power a provider lacks are never called."""

    name: str
    caps: Capabilities

    def launch(self, spec: LaunchSpec) -> InstanceInfo:
        """Start an instance for `spec.run_id` and return without waiting for it to boot.
        Idempotent per run id and attempt: a second call returns the instance the first one made. Raises
        AuthError, CapacityError, QuotaError, NotFoundError or ProviderError; transient API errors
        are retried inside the provider, and an instance is never left running by a failed call."""

    def status(self, provider_id: str) -> InstanceInfo:
        """Current state; an instance the provider no longer knows is `terminated`. Does not block."""

    def session(self, provider_id: str, run_id: str, timeout_s: float = 10.0) -> Session:
        """One attempt to open a session on the run's directory there (at most `timeout_s`). Raises
        NotReadyError while the instance cannot answer yet (booting: no address, no host key, refused) -
        the caller decides whether to wait - and RemoteError when it never will (a host key that does not
        match, the instance gone)."""

    def terminate(self, provider_id: str) -> float:
        """Stop billing for the instance and block until the provider confirms (or the provider's
        timeout). Safe to repeat: an instance already gone is success. Returns the epoch time billing
        ended (as near as the provider tells)."""

    def list_managed(self) -> list[InstanceInfo]:
        """Every live instance this tool launched (tags / run directories)."""

    def find(self, run_id: str) -> list[InstanceInfo]:
        """Every instance of `run_id` the provider still knows (by tag), in any state - ended ones included, for
        `caps.finds_ended_s` after they ended: a launch whose answer was lost is found and billed even after it
        ended by itself. Does not block; raises ProviderError when the provider cannot be asked."""

    def preflight(self) -> None:
        """Fail before anything is spent when the provider cannot work (credentials, configuration)."""

    def market_price(self, provider_id: str) -> Decimal | None:
        """caps.spot_market: the spot price of the instance's type now (its offer's currency per hour)."""

    def leftovers(self) -> list[Leftover]:
        """Every resource tagged as ours, for `budget sweep` (instances at least)."""

    def remove(self, item: Leftover) -> None:
        """Delete one leftover (an instance: terminate it). Gone already is success."""

    def ended_at(self, provider_id: str) -> float | None:
        """When the provider says the instance stopped running (None: it does not say)."""

    # caps.uploads: an unattended instance uploads its output and powers itself off
    upload_every_s: float

    def upload_urls(self, run_id: str, rels: list[str], expires_s: int) -> list[tuple[str, str]]:
        """One presigned PUT URL per output file (relative to out/), valid for `expires_s`: no credential."""

    def results_prefix(self, run_id: str) -> str:
        """Where the run's uploads land, for people."""

    def download_results(self, run_id: str, out_dir: Path) -> int:
        """The run's uploaded files into `out_dir`; returns how many."""


class ProviderBase:
    """What most adapters share: no preflight, no spot market, leftovers = their live instances."""

    name: str
    caps: Capabilities

    def preflight(self) -> None:
        return None

    def market_price(self, provider_id: str) -> Decimal | None:
        return None

    def leftovers(self) -> list[Leftover]:
        return [Leftover("instance", i.provider_id, i.tags.get(RUN_TAG), self.caps.region or self.name,
                         f"{self.name} worker") for i in self.list_managed()]

    def remove(self, item: Leftover) -> None:
        if item.kind == "instance":
            self.terminate(item.id)

    def ended_at(self, provider_id: str) -> float | None:
        return None

    def find(self, run_id: str) -> list[InstanceInfo]:  # live ones only: caps.finds_ended_s stays 0
        return [i for i in self.list_managed() if i.tags.get(RUN_TAG) == run_id]


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

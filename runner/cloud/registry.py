"""Provider names to adapters: the one place a provider is known by its name. Everything else asks a
provider's `caps` (cloud/base.py). boto3 and paramiko are imported only when their provider is made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from planner.errors import GpuBudgetError, InputError

from ..clock import SYSTEM, Clock
from ..config import Config
from .base import RUN_TAG, InstanceInfo, Provider


@dataclass(frozen=True)
class Entry:
    summary: str                    # for help and errors
    needs: tuple[str, ...]          # libraries of the cloud extra it imports
    unattended: bool                # its instances can finish alone (caps.uploads, once configured)
    regional: bool                  # one adapter per region (caps.regional)
    this_machine: bool              # its instance is this machine (caps.this_machine): estimates use this CPU
    make: Callable[[Config, Path, str | None, Clock], Provider]


def _local(cfg: Config, home: Path, region: str | None, clock: Clock) -> Provider:
    from .local import LocalProvider

    return LocalProvider(home, clock, cfg.local.price_yuan_per_hour)


def _aws(cfg: Config, home: Path, region: str | None, clock: Clock) -> Provider:
    from .aws import AwsProvider

    return AwsProvider(cfg.aws, home, region, clock)


def _ssh(cfg: Config, home: Path, region: str | None, clock: Clock) -> Provider:
    from .ssh_host import SshHostProvider

    return SshHostProvider(cfg.ssh, cfg.run.ssh_wait_s, clock)


PROVIDERS: dict[str, Entry] = {
    "local": Entry("this machine, simulated price", (), False, False, True, _local),
    "aws": Entry("EC2", ("boto3", "paramiko", "tenacity"), True, True, False, _aws),
    "ssh": Entry("a host you rent, over SSH", ("paramiko",), False, False, False, _ssh),
}
UNATTENDED = tuple(n for n, e in PROVIDERS.items() if e.unattended)


@dataclass(frozen=True)
class Runner:
    """A place that runs a plan's shards as tasks on machines someone already runs - no instance to launch, reach
    or terminate, so no Provider: `budget run --provider NAME` hands the run to `module`, which imports its
    libraries (the `extra`) itself. Its ledger rows are instances all the same (one per task)."""

    summary: str
    needs: tuple[str, ...]
    extra: str
    module: str


RUNNERS: dict[str, Runner] = {
    "ray": Runner("Ray tasks on a Ray cluster (--address), or on a Ray started here for the run", ("ray",), "ray",
                  "runner.scaleout"),
}
# Providers the catalog has offers of that no adapter runs - a person runs them - with what to do instead.
RUN_ELSEWHERE: dict[str, tuple[str, str]] = {
    "colab": ("--provider colab is a notebook a person runs in a browser: budget run cannot start, watch or stop it",
              ("write the plan's notebook with `budget colab PLAN -o plan.ipynb`, run it in Colab, then record its "
               "results with `budget import RESULTS.zip --plan PLAN`")),
}


def make(name: str, cfg: Config, home: Path, region: str | None = None, clock: Clock = SYSTEM) -> Provider:
    """The provider named `name`; `region`: where a regional provider's offer is (its price is that region's)."""
    from importlib.util import find_spec

    entry = PROVIDERS.get(name)
    if name in RUN_ELSEWHERE:
        raise InputError(*RUN_ELSEWHERE[name])
    if name in RUNNERS:  # a run of tasks on a cluster: nothing to launch, resume or terminate here
        raise InputError(f"--provider {name} runs tasks on a cluster, not instances: there is no instance to launch, "
                         "reach or terminate",
                         f"start one with `budget run PLAN --provider {name}`; `budget resume RUN` takes over one whose "
                         "controller died, `budget stop RUN` settles it")
    if entry is None:
        raise InputError(f"unknown provider {name!r}", "use --provider " + ", ".join([*PROVIDERS, *RUNNERS]))
    try:
        missing = [m for m in entry.needs if find_spec(m) is None]
        if missing:
            raise ImportError(name=missing[0])
        return entry.make(cfg, Path(home), region, clock)
    except ImportError as e:  # the core install is light: boto3 / paramiko / tenacity come with the cloud extra
        lib = getattr(e, "name", None) or str(e)
        raise InputError(f"--provider {name} needs the cloud extra ({lib} is not installed)",
                         'install it with: pip install "gpubudget[cloud]"') from None


def ssh_wait(cfg: Config, provider: Provider) -> float:
    """How long to wait for a new instance's session: the configured time, else the provider's own (a cloud
    instance boots for minutes; a rented host that refuses or times out is down, and waiting on it only bills)."""
    return cfg.run.ssh_wait_s if cfg.run.ssh_wait_s is not None else provider.caps.ssh_wait_s


def configured(cfg: Config) -> list[str]:
    """Providers this configuration uses beyond this machine (a section that is not all defaults)."""
    return [n for n in PROVIDERS if n != "local" and getattr(cfg, n) != type(getattr(cfg, n))()]


def placements(cfg: Config, home: Path, used: dict[str, set[str]],
               regions: list[str] | None = None) -> Iterator[tuple[str, str, Provider | GpuBudgetError]]:
    """(label, name, provider - or the error that kept it from being made) for every place `budget sweep`
    looks in: this machine always; a provider the ledger ran instances with (`used`: name -> regions) or the
    configuration sets up; a regional one in each region given, else its configured one and each the
    ledger used. A provider nothing says is used is never asked."""
    wanted = {"local"} | {n for n in used if n in PROVIDERS} | set(configured(cfg))
    wanted |= {n for n, e in PROVIDERS.items() if e.regional} if regions else set()
    for name, entry in PROVIDERS.items():
        if name not in wanted:
            continue
        where: list[str | None] = [None]
        if entry.regional:
            mine = getattr(cfg, name).region
            where = list(regions or []) or (([mine] if mine else [])
                                            + sorted(r for r in used.get(name, set()) if r and r != mine))
            where = where or [None]  # the credential chain's region (AWS_DEFAULT_REGION, the profile)
        for region in where:
            label = f"{name} {region or ''}".strip()
            try:
                yield label, name, make(name, cfg, home, region)
            except GpuBudgetError as e:
                yield label, name, e


def lost_launch(provider: Provider, run_id: str, known: set[str]) -> InstanceInfo | None:
    """The run's instance that no ledger row holds (`known`: the provider ids it does hold) - a launch whose
    answer was lost - found by its run tag in any state, ended ones included: a live one first, else the last
    launched. None when the provider has none; a provider that cannot be asked raises (nothing is decided)."""
    found = [i for i in provider.find(run_id) if i.provider_id not in known]
    found.sort(key=lambda i: (i.state in ("pending", "running"), i.launched_at or 0.0))
    return found[-1] if found else None


def find_by_run(provider: Provider, run_id: str) -> list[str]:
    """Live instances the provider holds for `run_id` (by tag): one to resume, or to stop without a ledger (a
    teardown looks in every state: `lost_launch`)."""
    try:
        return [i.provider_id for i in provider.list_managed() if i.tags.get(RUN_TAG) == run_id]
    except GpuBudgetError:
        return []

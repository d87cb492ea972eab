"""The `ssh_host` provider: a machine the user already rents (CSDN / AutoDL-style platforms) and reaches
over SSH. Nothing is created: "launch" opens the meter on the run's directory there, "terminate" stops
the worker and runs the configured stop command (e.g. `shutdown -h now`, which ends billing on
platforms that bill while the machine is on). Without a stop command the platform keeps billing
after the run; the run's events say so.

The host key must already be in the configured known_hosts (see cloud/base.py)."""

from __future__ import annotations

import getpass
from dataclasses import replace
from pathlib import Path

from planner.names import is_safe as names_ok

from ..clock import SYSTEM, Clock
from ..config import SshConfig
from ..errors import ConfigError, RemoteError
from .base import (
    MANAGED_TAG,
    OURS,
    RUN_TAG,
    Capabilities,
    Endpoint,
    InstanceInfo,
    LaunchSpec,
    ProviderBase,
    address_override,
)
from .remote import SshSession

# stop our worker and watchdog - only if their pids are still theirs (they work in this run directory)
STOP_WORKER = OURS + ('touch TERMINATED; for f in worker.pid watchdog.pid; do '
                      'ours "$f" && kill -TERM -"$p" 2>/dev/null; done; true')


class SshHostProvider(ProviderBase):
    name = "ssh"
    # nothing is started on the host until we connect: a host never reached cost this run nothing; it is up
    # already, so one that refuses is down (30 s, not a cloud boot's minutes)
    caps = Capabilities(ssh_wait_s=30.0, teardown_s=60.0, poweroff=STOP_WORKER, rented=True)

    def __init__(self, cfg: SshConfig, ssh_wait_s: float | None = None, clock: Clock = SYSTEM):
        if not cfg.host:
            raise ConfigError("no SSH host configured", "set ssh.host (and ssh.user, ssh.key) in "
                              "$BUDGET_HOME/config.yaml")
        self.cfg = cfg
        self.clock = clock
        self.remote_dir = cfg.remote_dir
        self.caps = replace(self.caps, poweroff=(cfg.stop_command + "; " if cfg.stop_command else "") + STOP_WORKER,
                            stop_command=bool(cfg.stop_command), python=cfg.python or "", offer=cfg.offer,
                            price_cny_h=cfg.price_yuan_per_hour,
                            ssh_wait_s=self.caps.ssh_wait_s if ssh_wait_s is None else ssh_wait_s)
        key = Path(cfg.key or "~/.ssh/id_ed25519").expanduser()
        if not key.is_file():
            raise ConfigError(f"SSH key {key} not found", "set ssh.key in $BUDGET_HOME/config.yaml")
        known = Path(cfg.known_hosts or "~/.ssh/known_hosts").expanduser()
        if not known.is_file():
            raise ConfigError(f"known_hosts file {known} not found",
                              "gpubudget verifies the host key: put the host's key in known_hosts (ssh.known_hosts)")
        host, port = address_override() or (cfg.host, cfg.port)
        self.ep = Endpoint(host, port, cfg.user or getpass.getuser(), str(key), str(known))

    def _run_dir(self, provider_id: str) -> str:
        return f"{self.remote_dir.rstrip('/')}/runs/{provider_id.rpartition('/')[2]}"

    def launch(self, spec: LaunchSpec) -> InstanceInfo:
        return InstanceInfo(f"{self.ep.user}@{self.cfg.host}:{self.cfg.port}/{spec.run_id}", "running",
                            self.cfg.host, self.clock.now(), spec.spot)

    def status(self, provider_id: str) -> InstanceInfo:
        return InstanceInfo(provider_id, "running", self.cfg.host)

    def session(self, provider_id: str, run_id: str = "", timeout_s: float = 10.0) -> SshSession:
        return SshSession.connect(self.ep, self._run_dir(provider_id), timeout_s)

    def terminate(self, provider_id: str) -> float:
        """Stop the worker and run the stop command - retried for up to 30 s while the host does not answer
        (a host that never comes back raises: the run stays live in the ledger and `budget stop` retries)."""
        end = self.clock.monotonic() + min(self.caps.ssh_wait_s, 30.0)
        while True:
            try:
                s = self.session(provider_id)
                break
            except RemoteError:
                if self.clock.monotonic() >= end:
                    raise
                self.clock.sleep(2.0)
        try:
            s.run(self.caps.poweroff, timeout=60)
        except RemoteError:
            pass  # `shutdown -h now` drops the connection: that is the stop working
        finally:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - the host may be going down
                pass
        return self.clock.now()

    def list_managed(self) -> list[InstanceInfo]:
        try:
            s = SshSession.connect(self.ep, f"{self.remote_dir.rstrip('/')}/runs")
        except RemoteError:
            return []
        try:
            _, out = s.run("for d in */; do d=${d%/}; [ -f \"$d/worker.pid\" ] && [ ! -f \"$d/TERMINATED\" ] && "
                            "kill -0 \"$(cat \"$d/worker.pid\")\" 2>/dev/null && echo \"$d\"; done; true")
        finally:
            s.close()
        base = f"{self.ep.user}@{self.cfg.host}:{self.cfg.port}/"
        return [InstanceInfo(base + line.strip(), "running", self.cfg.host,
                             tags={RUN_TAG: line.strip(), MANAGED_TAG: "true"})
                for line in out.splitlines() if names_ok(line.strip())]

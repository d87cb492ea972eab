"""The `ssh_host` provider: a machine the user already rents (CSDN / AutoDL-style platforms) and reaches
over SSH. Nothing is created: "launch" opens the meter on the run's directory there, "terminate" stops
the worker and runs the configured stop command (e.g. `shutdown -h now`, which ends billing on
platforms that bill while the machine is on). Without a stop command the platform keeps billing
after the run; the run's events say so.

The host key must already be in the configured known_hosts (see cloud/base.py)."""

from __future__ import annotations

import getpass
import time
from pathlib import Path

from planner.names import is_safe as names_ok

from ..config import SshConfig
from ..errors import ConfigError, RemoteError
from .base import MANAGED_TAG, OURS, RUN_TAG, Endpoint, InstanceInfo, LaunchSpec, address_override
from .remote import SshSession

# stop our worker and watchdog - only if their pids are still theirs (they work in this run directory)
STOP_WORKER = OURS + ('touch TERMINATED; for f in worker.pid watchdog.pid; do '
                      'ours "$f" && kill -TERM -"$p" 2>/dev/null; done; true')


class SshHostProvider:
    name = "ssh"
    teardown_s = 60.0

    rented = True  # nothing is started on the host until we connect: a host never reached cost this run nothing

    def __init__(self, cfg: SshConfig, ssh_wait_s: float | None = None):
        if not cfg.host:
            raise ConfigError("no SSH host configured", "set ssh.host (and ssh.user, ssh.key) in "
                              "$BUDGET_HOME/config.yaml")
        self.cfg = cfg
        self.remote_dir = cfg.remote_dir
        self.poweroff = (cfg.stop_command + "; " if cfg.stop_command else "") + STOP_WORKER
        self.keeps_billing = not cfg.stop_command
        self.ssh_wait_s = 30.0 if ssh_wait_s is None else ssh_wait_s  # the host is up already: refused means down
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
                            self.cfg.host, time.time(), spec.spot)

    def status(self, provider_id: str) -> InstanceInfo:
        return InstanceInfo(provider_id, "running", self.cfg.host)

    def endpoint(self, provider_id: str) -> Endpoint:
        return self.ep

    def session(self, provider_id: str, wait_s: float | None = None, between=lambda _: None) -> SshSession:
        return SshSession.connect(self.ep, self._run_dir(provider_id), wait_s=self.ssh_wait_s if wait_s is None
                                  else wait_s, between=between)

    def terminate(self, provider_id: str) -> float:
        s = self.session(provider_id, wait_s=min(self.ssh_wait_s, 30.0))
        try:
            s.run(self.poweroff, timeout=60)
        except RemoteError:
            pass  # `shutdown -h now` drops the connection: that is the stop working
        finally:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - the host may be going down
                pass
        return time.time()

    def list_managed(self) -> list[InstanceInfo]:
        try:
            s = SshSession.connect(self.ep, f"{self.remote_dir.rstrip('/')}/runs", wait_s=10)
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

"""The local test cloud (infra/localcloud): moto server for EC2 and OpenSSH sshd on loopback.

A test that needs sshd skips on a laptop without it, and FAILS where GPUBUDGET_REQUIRE_SERVICES=1
(.ci/run sets it): CI must never go green by skipping the cloud tests."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import sqlite3
import sys
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from runner.worker.tiny import NAME as TINY
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "infra" / "localcloud"))
import localcloud


def need(what: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("GPUBUDGET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required here (GPUBUDGET_REQUIRE_SERVICES=1) but missing")
    pytest.skip(f"{what} not installed")


def write_config(home: Path, **sections) -> None:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    doc = yaml.safe_load(path.read_text()) if path.exists() else {}
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(doc))


def db(home: Path) -> sqlite3.Connection:
    """The run's ledger, read straight from the SQLite file."""
    c = sqlite3.connect(home / "ledger.db")
    c.row_factory = sqlite3.Row
    return c


def the_run(home: Path) -> dict:
    """The only run in the ledger."""
    [row] = db(home).execute("SELECT * FROM runs").fetchall()
    return dict(row)


def spent(home: Path) -> Decimal:
    return sum((Decimal(r[0]) for r in db(home).execute("SELECT amount_cny FROM spend")), Decimal(0))


def wait_until(cond, timeout: float, what: str) -> None:
    """Poll `cond` until it holds (a generous bound, never a race with a sleep). Reading a ledger or run
    directory the controller is still writing may fail for a moment: that is "not yet", not a failure."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except (sqlite3.OperationalError, OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def caption_plan(directory: Path, name: str, samples: int) -> Path:
    return localcloud.caption_plan(REPO / "plans" / "smoke.yaml", directory, name, samples)


def result_lines(run: dict) -> int:
    res = Path(run["dir"]) / "out" / "results"
    return sum(len(p.read_text().splitlines()) for p in res.glob("*.jsonl")) if res.exists() else 0


def instance_pids(run: dict, home: Path) -> list[int]:
    d = home / "instances" / run["id"]
    return [int((d / n).read_text()) for n in ("worker.pid", "watchdog.pid") if (d / n).exists()]


@pytest.fixture
def local_home(budget_home, tiny_model):
    (budget_home / "models").mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_model, budget_home / "models" / TINY)
    write_config(budget_home, run={"tick_s": 1})  # decisions, stops and teardowns in seconds, not 5 s ticks
    return budget_home


@pytest.fixture
def long_plan(tmp_path) -> Path:
    """Thousands of tiny captions at batch 1: a run that lasts long enough to be stopped."""
    return caption_plan(tmp_path, "long", 5000)


FAST = {"tick_s": 1, "lease_s": 60, "ssh_wait_s": 20, "bootstrap_timeout_s": 120}


@pytest.fixture(scope="session")
def moto_server():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per API call otherwise
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class AwsCloud:
    ec2: object
    agent: localcloud.CloudInitAgent
    remote_dir: Path
    ssh_port: int
    image_id: str


@pytest.fixture
def aws_cloud(moto_server, monkeypatch, tmp_path, budget_home):
    """A fresh EC2 (moto) with a Deep Learning AMI, plus the cloud-init agent that boots sshd for
    each instance; $BUDGET_HOME/config.yaml points gpubudget at it."""
    need("sshd (apt-get install -y openssh-server)", localcloud.sshd_binary() is not None)
    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    port = localcloud.free_port()
    for k, v in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "BUDGET_SSH_ADDRESS": f"127.0.0.1:{port}"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    image = localcloud.register_dlami(ec2)
    remote = tmp_path / "instance-home"
    remote.mkdir()
    agent = localcloud.CloudInitAgent(ec2, port, tmp_path / "sshd", remote)
    agent.start()
    write_config(budget_home, aws={"ami_owners": ["self"], "client_cidr": "127.0.0.1/32", "user": getpass.getuser(),
                                   "remote_dir": str(remote), "poweroff": "touch POWEROFF", "python": sys.executable,
                                   "terminate_timeout_s": 30, "cancel_boot_poweroff": "true"},
                 run=FAST)
    yield AwsCloud(ec2, agent, remote, port, image)
    agent.stop()
    assert not agent.errors, agent.errors


@dataclass
class SshHost:
    sshd: localcloud.Sshd
    remote_dir: Path
    poweroff_marker: Path
    known_hosts: Path
    host_key: str
    authorized: list[str]

    def crash(self) -> None:
        """The host goes dark: sshd and every connection it holds die."""
        import subprocess

        subprocess.run(["pkill", "-KILL", "-P", str(self.sshd.proc.pid)], check=False)
        self.sshd.stop()

    def revive(self) -> None:
        self.sshd = localcloud.Sshd(self.sshd.dir, self.sshd.port, self.host_key, self.authorized)
        self.sshd.wait_ready()


@pytest.fixture
def ssh_host(tmp_path, budget_home, monkeypatch):
    """A machine 'the user already rents': sshd on loopback, its host key in a known_hosts file."""
    need("sshd (apt-get install -y openssh-server)", localcloud.sshd_binary() is not None)
    from runner.cloud.aws import make_key

    monkeypatch.delenv("BUDGET_SSH_ADDRESS", raising=False)
    host_key, login = make_key(), make_key()
    key = tmp_path / "id_ed25519"
    key.write_text(login.private_openssh)
    key.chmod(0o600)
    port = localcloud.free_port()
    sshd = localcloud.Sshd(tmp_path / "sshd", port, host_key.private_openssh, [login.public_line])
    sshd.wait_ready()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.public_line}\n")
    remote = tmp_path / "rented-host"
    remote.mkdir()
    marker = tmp_path / "POWERED_OFF"
    write_config(budget_home, ssh={"host": "127.0.0.1", "port": port, "user": getpass.getuser(), "key": str(key),
                                   "known_hosts": str(known), "offer": "csdn:T4x1", "remote_dir": str(remote),
                                   "stop_command": f"touch {marker}", "python": sys.executable},
                 run=FAST)
    host = SshHost(sshd, remote, marker, known, host_key.private_openssh, [login.public_line])
    yield host
    host.sshd.stop()


@pytest.fixture
def fast_home(tmp_path):
    """A home for in-process runs on the scripted cloud: in memory (tmpfs) where the machine has one - the
    ledger is the same real SQLite file, its fsyncs just cost nothing there."""
    import tempfile

    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(dir=shm, prefix="gpubudget-test-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)

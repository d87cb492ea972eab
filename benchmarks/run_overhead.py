"""How long `budget run` takes to get the worker going, and how fast a stop becomes a terminate call,
on the local test cloud (moto's EC2 + sshd on loopback, infra/localcloud) and the local provider.

    python benchmarks/run_overhead.py [--repeat 3]

Prints, per provider:
- launch -> worker start: from spawning `budget run ... --yes` to the ledger's `started` event
  (process start, planning, ledger, launch, SSH, watchdog, bootstrap check, push of worker + model);
- stop -> terminate call: local: from the guard's stop decision (a cap that runs out; default tick
  5 s) to the terminate call; aws: from a `budget stop` request landing at a random moment of a tick
  (the worker busy, results flowing) to the terminate call. Target: <= one tick.
Timestamps are the ledger's own (the controller writes them as it acts).

The local round's cap is the least the pre-launch check admits plus 10 s of work (`local_cap`), so a local
round lasts about 70 s: the guard's first stretch (10 s boot + ten 5 s ticks) and its 30 s teardown must be
paid before anything starts. This machine's CPU profile (a local run's estimate needs it) is measured once
before the rounds and given to each, as a user's first local run measures it once and keeps it."""

from __future__ import annotations

import argparse
import getpass
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra" / "localcloud"))
sys.path.insert(0, str(REPO))
import localcloud  # noqa: E402

SIM_OFFER = ("provider,instance_type,gpu,gpu_count,price_per,price,spot_price,currency,region,billing_increment_s,"
             "billing_minimum_s,source,date\n"
             'sim,cpu,T4,1,gpu,3600,,CNY,local,1,0,"benchmark: 1 CNY a second",2026-11-25\n')
SIM_CNY_S = 1  # the sim offer's price per second
WORK_S = 10  # seconds of work past what the pre-launch check asks before the guard's budget stop


def local_cap() -> int:
    """The local round's cap: the least the pre-launch check admits - the money must keep the instance for its
    boot and a first stretch of work (runner/run/effects.py's first_stretch_s: the local provider's 10 s SSH
    wait + ten 5 s ticks) and still pay its 30 s teardown - plus WORK_S, so that the guard stops the run on
    its budget about WORK_S after that stretch. (60 CNY, 1 min at 1 CNY a second, was refused outright: the
    money left would have lasted 30 s.)"""
    from runner.cloud.local import LocalProvider
    from runner.config import RunConfig
    from runner.money.guard import Policy
    from runner.run.effects import first_stretch_s

    caps, run = LocalProvider.caps, RunConfig()
    policy = Policy(tick_s=run.tick_s, teardown_s=caps.teardown_s, lease_s=run.lease_s)
    return math.ceil(SIM_CNY_S * (first_stretch_s(caps.ssh_wait_s, policy) + policy.teardown_s + WORK_S))


def plan(tmp: Path, samples: int) -> Path:
    return localcloud.caption_plan(REPO / "plans" / "smoke.yaml", tmp, f"bench{samples}", samples)


def budget(home: Path, *args, env=None, wait=True):
    e = dict(os.environ, BUDGET_HOME=str(home), **(env or {}))
    cmd = [sys.executable, "-m", "runner.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    return subprocess.run(cmd, env=e, capture_output=True, text=True, cwd=REPO, check=False)


def events(home: Path) -> dict[str, float]:
    db = sqlite3.connect(home / "ledger.db")
    out: dict[str, float] = {}
    try:
        for kind, at in db.execute("SELECT kind, at FROM events ORDER BY id"):
            out.setdefault(kind, at)
    except sqlite3.OperationalError:  # the controller is still creating the tables
        pass
    finally:
        db.close()
    return out


def wait_for(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise SystemExit("timed out")


def local_round(tmp: Path, tiny: Path) -> tuple[float, float, None]:
    home = tmp / f"local-{time.monotonic_ns()}"
    (home / "models").mkdir(parents=True)
    shutil.copytree(tiny, home / "models" / tiny.name)
    # this machine's CPU profile, measured once (a user's first local run measures it once and keeps it)
    shutil.copytree(tmp / "profiled" / "devices", home / "devices")
    (tmp / "sim.csv").write_text(SIM_OFFER)
    budget(home, "prices", "import", tmp / "sim.csv", "--format", "csv")
    t0 = time.time()
    r = budget(home, "run", plan(tmp, 20000), "--provider", "local", "--offer", "sim:cpu", "--yuan", local_cap(),
               "--yes")
    ev = events(home)
    assert "guard" in ev and "started" in ev, r.stderr
    return ev["started"] - t0, ev["terminating"] - ev["guard"], None


def aws_round(tmp: Path, tiny: Path, ec2, port: int, endpoint: str) -> tuple[float, float, float]:
    home = tmp / f"aws-{time.monotonic_ns()}"
    remote = home / "instance"
    remote.mkdir(parents=True)
    (home / "config.yaml").write_text(yaml.safe_dump({"aws": {
        "ami_owners": ["self"], "client_cidr": "127.0.0.1/32", "user": getpass.getuser(), "remote_dir": str(remote),
        "poweroff": "touch POWEROFF", "python": sys.executable, "cancel_boot_poweroff": "true"}}))
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "BUDGET_SSH_ADDRESS": f"127.0.0.1:{port}"}
    agent = localcloud.CloudInitAgent(ec2, port, home / "sshd", remote)
    agent.start()
    try:
        t0 = time.time()
        p = budget(home, "run", plan(tmp, 20000), "--provider", "aws", "--yuan", "50", "--yes", "--model-path", tiny,
                   env=env, wait=False)
        wait_for(lambda: (home / "ledger.db").exists() and "started" in events(home), 120)
        started = events(home)["started"] - t0
        run_id = sqlite3.connect(home / "ledger.db").execute("SELECT id FROM runs").fetchone()[0]
        results = home / "runs" / run_id / "out" / "results" / "captions.jsonl"
        wait_for(lambda: results.exists() and results.stat().st_size > 0, 120)  # the loop in its steady state
        time.sleep(random.uniform(0, 5))  # a request lands anywhere within a tick
        asked = time.time()
        (home / "runs" / run_id / "STOP").touch()  # what `budget stop` does for a live controller
        p.communicate(timeout=300)
        ev = events(home)
        return started, ev["terminating"] - ev["stop"], ev["terminating"] - asked
    finally:
        agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    from runner import localrig
    from runner.worker import tiny as tinymod

    tmp = Path(tempfile.mkdtemp(prefix="run-overhead-"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    tiny = tinymod.build(tmp / tinymod.NAME)
    localrig.profile(tmp / "profiled")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, mport = server.get_host_and_port()
    endpoint = f"http://{host}:{mport}"
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    localcloud.register_dlami(ec2)
    port = localcloud.free_port()
    results: dict[str, list[tuple]] = {"local": [], "aws (moto + sshd)": []}
    for _ in range(a.repeat):
        results["local"].append(local_round(tmp, tiny))
        results["aws (moto + sshd)"].append(aws_round(tmp, tiny, ec2, port, endpoint))
    server.stop()
    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f} median ({min(xs):.2f}-{max(xs):.2f})"

    print(f"run overhead on the local test cloud ({a.repeat} runs each; tick 5 s)")
    for name, rows in results.items():
        print(f"{name}:")
        print(f"  launch -> worker start          {fmt([r[0] for r in rows])} s")
        print(f"  stop decision -> terminate call {fmt([r[1] for r in rows])} s  (local: the guard's; aws: `budget stop`)")
        if rows[0][2] is not None:
            print(f"  stop request -> terminate call  {fmt([r[2] for r in rows])} s  (the request lands mid-tick)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

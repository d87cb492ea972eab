"""`budget run --provider ray` on a REAL multi-node Ray cluster on loopback (ray.cluster_utils.Cluster: a head that
holds the lease actors and two nodes of one CPU each, a node added when one is removed), with the tiny model: the whole loop - admission, leases
held by the detached lease actor, shard tasks running the worker, lines through the inbound boundary, settlement -
and the faults done for real: (a) a node removed while it runs a shard, (b) the cap reached mid-run, (c) a detached
run's controller stopped (SIGSTOP: its leases lapse with its tasks still running), killed with kill -9, then taken
over by `budget resume`.

The scenarios share ONE cluster in one test ((b) and (c) side by side) (CI's xdist has no groups, and a cluster costs
seconds to start); each says which one failed. The unit-level lease, line and cap logic is in test_lease.py and
test_controller.py (milliseconds, a fake clock)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from runner.procs import pid_alive
from runner.worker.tiny import NAME as TINY
from tests.conftest import REPO
from tests.runner.conftest import caption_plan, db, need, wait_until

try:
    import ray
except ImportError:  # CI installs it (the test extra); there, a missing ray fails the test instead of skipping it
    ray = None

PRICE = "36"  # CNY per task-hour: 0.01 CNY a second, so a cap runs out within a test's seconds
DETACHED: list[int] = []  # background controllers' pids (killed however the test ends)
# a worker's first lines: seconds alone, but two workers starting at once beside the suite's heaviest tests and a
# busy loop on a 2-core machine took 105 s to load (a fresh-clone CI run): generous, as only a failure waits it out
FIRST_LINES_S = 300


class Spawned:
    """`budget ARGS` in its own process (SIGINT's default disposition: see test_run_local.py), its output in files
    (a live progress line would fill a pipe nobody reads while the test waits)."""

    started: list[Spawned] = []  # every one, ended by the test however it ends

    def __init__(self, args: list[str], home: Path, logs: Path):
        Spawned.started.append(self)
        logs.mkdir(parents=True, exist_ok=True)
        self.out, self.err = logs / f"{args[0]}-{time.monotonic_ns()}.out", logs / f"{args[0]}-{time.monotonic_ns()}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.p = subprocess.Popen([sys.executable, "-m", "runner.cli", *args], cwd=REPO, stdout=out, stderr=err,
                                      env=dict(os.environ, BUDGET_HOME=str(home)), stdin=subprocess.DEVNULL,
                                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def wait(self, timeout: float) -> tuple[int, str, str]:
        try:
            code = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"`budget` did not end in {timeout} s:\n{self.said()}") from None
        return code, self.out.read_text(errors="replace"), self.err.read_text(errors="replace")

    def said(self) -> str:
        return (self.out.read_text(errors="replace") + self.err.read_text(errors="replace"))[-3000:]


def _until(cond, timeout: float, what: str, p: Spawned, home: Path | None = None) -> None:
    """wait_until, failing at once (with its output) when the controller ended first; a timeout says what the
    controller said and logged (controller.log of every run under `home`)."""
    def check() -> bool:
        if p.p.poll() is not None:
            raise AssertionError(f"`budget` ended (exit {p.p.returncode}) before {what}:\n{p.said()}")
        return cond()
    try:
        wait_until(check, timeout, what)
    except AssertionError as e:
        logs = "".join(f"\n--- {f}\n{f.read_text(errors='replace')[-3000:]}"
                       for f in sorted((home or Path("/nonexistent")).glob("runs/*/controller.log")))
        raise AssertionError(f"{e}\n{p.said()}{logs}") from None


def _run(home: Path, plan_name: str) -> dict:
    if not (home / "ledger.db").exists():  # sqlite3.connect would make an empty one the controller then refuses
        raise KeyError("no ledger yet")
    rows = [dict(r) for r in db(home).execute("SELECT * FROM runs WHERE plan=?", (plan_name,))]
    if len(rows) != 1:
        raise KeyError(f"{len(rows)} runs of plan {plan_name}")  # not yet (wait_until waits on a KeyError)
    return rows[0]


def _instances(home: Path, run_id: str) -> list[dict]:
    return [dict(r) for r in db(home).execute("SELECT * FROM instances WHERE run_id=? ORDER BY id", (run_id,))]


def _spent(home: Path, run_id: str) -> Decimal:
    return sum((Decimal(r[0]) for r in db(home).execute(
        "SELECT s.amount_cny FROM spend s JOIN instances i ON i.id=s.instance_id WHERE i.run_id=?", (run_id,))), Decimal(0))


def _ids(run: dict) -> list[str]:
    path = Path(run["dir"]) / "out" / "results" / "captions.jsonl"
    return [json.loads(x)["id"] for x in path.read_text().splitlines()] if path.exists() else []


def _processes(run_id: str) -> list[int]:
    """Processes of the run on this machine: the shard workers (their job is in gpubudget-RUN-s*) and Ray workers
    running its tasks (named gpubudget-RUN-shard-*)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if f"gpubudget-{run_id}-" in cmd and pid_alive(int(d.name)):
                found.append(int(d.name))
    return found


def _actor_alive(run_id: str) -> bool:
    try:
        ray.get_actor(f"gpubudget-lease-{run_id}", namespace="gpubudget")
        return True
    except ValueError:
        return False


def _on_actor(run_id: str) -> dict | None:
    """What the run's lease actor holds - every line it took (a pull from 0, which acknowledges nothing) and what
    each task said of itself -, or None once it is gone."""
    try:
        actor = ray.get_actor(f"gpubudget-lease-{run_id}", namespace="gpubudget")
        return ray.get(actor.pull.remote(0), timeout=30)
    except (ValueError, ray.exceptions.RayError):
        return None


@pytest.fixture
def ray_home(budget_home, tiny_model, monkeypatch):
    """$BUDGET_HOME with the tiny model, second ticks, a 4 s lease and teardown; Ray kept on loopback in a temp dir
    of this test's own (short: its socket paths must stay under 108 bytes)."""
    need("ray (the gpubudget[ray] extra)", ray is not None)
    (budget_home / "models").mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_model, budget_home / "models" / TINY)
    (budget_home / "config.yaml").write_text(yaml.safe_dump({"run": {"tick_s": 1, "lease_s": 4, "teardown_s": 4}}))
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    (tmp / "ray").mkdir()
    for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(tmp),
                 "RAY_USAGE_STATS_ENABLED": "0"}.items():
        monkeypatch.setenv(k, v)
    # read when ray is imported, which may have been before this test: the driver here looks on loopback too
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    yield budget_home, tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.longest
@pytest.mark.timeout(900)
def test_a_real_ray_cluster_loses_a_node_reaches_its_cap_and_outlives_a_killed_controller(ray_home, tmp_path, cli):
    from ray.cluster_utils import Cluster

    home, tmp = ray_home
    t0 = time.monotonic()
    # the head holds the lease actors only (no CPU for tasks): every shard runs on a node a test may remove
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "temp_dir": str(tmp / "ray"), "include_dashboard": False})
    try:
        for _ in range(2):  # two task slots: (b) and (c) run side by side
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, namespace="gpubudget", log_to_driver=False)
        timings = {"cluster": time.monotonic() - t0}
        t = time.monotonic()
        _a_node_removed_mid_shard(cluster, home, tmp_path, cli)
        timings["a"] = time.monotonic() - t
        t = time.monotonic()
        with ThreadPoolExecutor(2) as both:  # (b) and (c) side by side, one task slot (node) each
            capped = both.submit(_the_cap_reached_mid_run, cluster, home, tmp_path)
            orphan = both.submit(_the_controller_frozen_killed_then_resumed, cluster, home, tmp_path)
            capped.result()
            orphan.result()
        timings["b+c"] = time.monotonic() - t
        print("ray scenario seconds:", {k: round(v, 1) for k, v in timings.items()})
    finally:
        for p in Spawned.started:  # a scenario that failed half way leaves none behind
            if p.p.poll() is None:
                p.p.send_signal(signal.SIGCONT)
                p.p.kill()
                p.p.wait(timeout=30)
        Spawned.started.clear()
        for pid in DETACHED:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        DETACHED.clear()
        ray.shutdown()
        cluster.shutdown()


def _a_node_removed_mid_shard(cluster, home: Path, tmp_path: Path, cli) -> None:
    """(a) One shard; the node running it is removed once it has lines: Ray runs it again on another node, the retry
    resumes after the lines the lease actor holds; every sample exactly once."""
    plan = caption_plan(tmp_path, "nodeloss", 100)  # seconds of work left when its first lines show
    p = Spawned(["run", str(plan), "--provider", "ray", "--address", cluster.address, "--price-yuan-hour", PRICE,
                 "--yuan", "5", "--shards", "1", "--replicas", "1", "--yes"], home, tmp_path / "logs")
    head = cluster.head_node.node_id
    victim: dict = {}

    def shard_on_a_worker_node_has_lines() -> bool:
        run = _run(home, "nodeloss")
        for inst in _instances(home, run["id"]):
            if not inst["provider_id"]:  # admitted, not yet submitted
                continue
            node, k = inst["address"], int(inst["provider_id"].split("-")[1])
            if node and node != head and _ids(run):
                victim.update(node=node, shard=k, inst=inst["id"])
                return True
        return False

    _until(shard_on_a_worker_node_has_lines, FIRST_LINES_S, "(a) a shard with lines on the non-head node", p, home)
    [node] = [n for n in cluster.list_all_nodes() if n.node_id == victim["node"]]
    cluster.remove_node(node)
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")  # the cluster keeps two task slots for (b) and (c)
    code, _, _ = p.wait(300)
    assert code == 0, f"(a) the run should finish after losing a node:\n{p.said()}"
    run = _run(home, "nodeloss")
    ids = _ids(run)
    assert run["state"] == "done" and len(ids) == len(set(ids)) == 100 == run["samples_done"], \
        f"(a) every sample exactly once: {len(ids)} lines, {len(set(ids))} ids, run {run['state']}"
    insts = _instances(home, run["id"])
    moved = [i for i in insts if i["provider_id"] == f"shard-{victim['shard']}" and i["address"] != victim["node"]]
    assert moved, f"(a) the shard of the removed node ran again on another node: {insts}"
    log = (Path(run["dir"]) / "controller.log").read_text()
    assert f"ended: shard {victim['shard']} (i{victim['inst']}): exit 0, resumed after the " in log, \
        f"(a) Ray's retry resumed after the lines the lease actor held:\n{log}"
    assert all(i["ended_at"] is not None for i in insts) and Decimal(0) < _spent(home, run["id"]) <= Decimal(run["cap_cny"])
    assert not _actor_alive(run["id"]) and not _processes(run["id"]), "(a) nothing of the run left on the cluster"
    code, out, _ = cli("status", run["id"])  # each task: its shard, node, state and spend
    assert code == 0 and "Tasks on the cluster" in out and moved[0]["address"][:16] in out and "100/100" in out, out
    code, out, _ = cli("logs", run["id"])
    assert code == 0 and "[controller] " in out and "[worker] == shard " in out, out[-2000:]


def _lines_of_a_live_run(home: Path, plan_name: str) -> bool:
    """A detached run has lines; failing at once (with what its controller said) when it ended first."""
    run = _run(home, plan_name)
    if run["state"] in ("done", "failed", "stopped"):
        said = "".join((Path(run["dir"]) / f).read_text(errors="replace")[-3000:] for f in ("controller.log", "controller.out")
                       if (Path(run["dir"]) / f).exists())
        raise AssertionError(f"the run ended ({run['state']}: {run['reason']}) before its first lines were seen:\n{said}")
    return bool(run["controller_pid"]) and len(_ids(run)) > 0


def _the_cap_reached_mid_run(cluster, home: Path, tmp_path: Path) -> None:
    """(b) The cap reached mid-shard: once the first lines are in, the run's pool cap is lowered to what its task
    already holds (its lease + teardown at its price) plus 5 seconds - so the cap is reached right after lines exist
    however slowly this machine starts a worker. The guard's no-go stops the task through the actor (it flushes its
    batch), nothing more is admitted, the finished samples are kept, spend <= the cap."""
    from runner.money.guard import Meter

    plan = caption_plan(tmp_path, "capped", 400)  # 2 x 200 samples: far more than the seconds the cap leaves
    p = Spawned(["run", str(plan), "--provider", "ray", "--address", cluster.address, "--price-yuan-hour", PRICE,
                 "--yuan", "5", "--pool", "capped", "--replicas", "1", "--shards", "2", "--yes"], home, tmp_path / "logs")
    _until(lambda: len(_ids(_run(home, "capped"))) > 0, FIRST_LINES_S, "(b) the first lines", p, home)
    run = _run(home, "capped")
    held = sum((Meter(Decimal(i["price_cny_h"]), i["increment_s"], i["minimum_s"], i["started_at"], i["lease_until"],
                      i["ended_at"]).cost(max(time.time() + 5, i["lease_until"]) + 4)  # teardown_s: 4 (ray_home)
                for i in _instances(home, run["id"])), Decimal(0))
    cap = (held + Decimal("0.05")).quantize(Decimal("0.01"))
    lowered = Spawned(["pool", "set-cap", "capped", str(cap)], home, tmp_path / "logs")
    assert lowered.wait(60)[0] == 0, f"(b) budget pool set-cap:\n{lowered.said()}"
    code, _, err = p.wait(300)
    run = _run(home, "capped")
    ids = _ids(run)
    assert code == 1 and "stopped (budget)" in err, f"(b) the cap stops the run (exit 1):\n{p.said()}"
    assert (run["state"], run["reason"]) == ("stopped", "budget"), f"(b) {run['state']} ({run['reason']})"
    assert 0 < len(ids) == len(set(ids)) < 400 and run["samples_done"] == len(ids), f"(b) finished samples kept: {len(ids)}"
    insts = _instances(home, run["id"])
    assert insts and all(i["ended_at"] is not None for i in insts), f"(b) every task ended and settled: {insts}"
    assert _spent(home, run["id"]) <= cap, f"(b) spend {_spent(home, run['id'])} <= cap {cap}"
    assert not _actor_alive(run["id"]) and not _processes(run["id"]), "(b) nothing of the run left on the cluster"


def _the_controller_frozen_killed_then_resumed(cluster, home: Path, tmp_path: Path) -> None:
    """(c) `budget run --detach`, its background controller frozen (SIGSTOP) mid-run: no lease is extended, so the
    task stops its worker by its lease; the lease actor keeps the lines the task pushed after the controller's last
    pull (it used to exit itself with them). Then kill -9 of that controller and `budget resume RUN`: what it left
    is settled (its task billed to lease + teardown at most), every line the actor took written, the old actor
    ended, and the rest of the shard run by a new task after the lines written - the run ends done, every sample
    once, spend <= cap, nothing left on the cluster."""
    plan = caption_plan(tmp_path, "orphan", 400)
    p = Spawned(["run", str(plan), "--provider", "ray", "--address", cluster.address, "--price-yuan-hour", PRICE,
                 "--yuan", "5", "--replicas", "1", "--shards", "1", "--yes", "--detach"], home, tmp_path / "logs")
    code, out, _ = p.wait(120)
    assert code == 0 and "controller running in the background" in p.said(), f"(c) --detach:\n{p.said()}"
    wait_until(lambda: _lines_of_a_live_run(home, "orphan"), FIRST_LINES_S, "(c) the first lines")
    run = _run(home, "orphan")
    assert run["id"] in out and _processes(run["id"]), "(c) the shard's worker runs"
    pid = run["controller_pid"]
    DETACHED.append(pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        # nothing else can stop it: the controller is frozen, so its lease lapses (bounds generous: a busy machine)
        wait_until(lambda: not _processes(run["id"]), 120, "(c) the task to stop its worker by its lease")
        wait_until(lambda: (got := _on_actor(run["id"])) is None or all(
            t.get("ended") is not None or time.time() - t["seen"] > 3 for t in got["tasks"].values()), 60,
            "(c) the lease actor to see its task end")
        kept = _on_actor(run["id"])  # the task pushed the lines of its last seconds to it, after the freeze
    finally:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 30, "(c) the controller to die")
    held = len(_ids(run))
    assert kept is not None, "(c) the actor exited itself with lines no one pulled (the worker ran on after the freeze)"
    taken = {json.loads(x)["id"] for _, x in kept["lines"]}
    assert len(taken) > held >= 1, f"(c) the actor holds lines the frozen controller never took: {len(taken)} vs {held}"
    [first] = _instances(home, run["id"])
    again = Spawned(["resume", run["id"]], home, tmp_path / "logs")
    code, _, _ = again.wait(400)
    run = _run(home, "orphan")
    ids = _ids(run)
    assert code == 0 and run["state"] == "done", f"(c) budget resume finishes the run:\n{again.said()}"
    assert len(ids) == len(set(ids)) == 400 == run["samples_done"] and taken <= set(ids), \
        f"(c) every sample once, the actor's among them: {len(ids)} lines, {len(set(ids))} ids"
    log = (Path(run["dir"]) / "controller.log").read_text()
    took = [line for line in log.splitlines() if "resume: taken over: 0 of 1 shard(s) done" in line]
    assert took, f"(c) the resume said what it took over:\n{log}"
    written = int(took[0].split("done, ")[1].split(" line")[0])
    assert written >= len(taken) and f"resumed after the {written} line(s) held for it" in log, \
        f"(c) the shard ran again after the {written} lines written before (the actor took {len(taken)}):\n{log}"
    insts = _instances(home, run["id"])
    settled = next(i for i in insts if i["id"] == first["id"])
    assert len(insts) == 2 and all(i["ended_at"] is not None for i in insts)
    assert settled["ended_at"] <= settled["lease_until"] + 4, "(c) the frozen run's task billed to lease + teardown"
    assert Decimal(0) < _spent(home, run["id"]) <= Decimal(run["cap_cny"])
    assert not _actor_alive(run["id"]) and not _processes(run["id"]), "(c) nothing of the run left on the cluster"
    print(f"(c) {held} lines pulled before the freeze, {len(taken) - held} more kept by the actor, {written} written "
          "before the resumed task")

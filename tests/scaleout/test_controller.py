"""The ray run's controller (runner/scaleout/controller.py) in-process, on a fake clock, against a fake cluster whose
shard tasks "run" on that clock - with the real SQLite ledger, guard, run directory and inbound boundary: every
sample exactly once, each task billed from its admission to its end, the cap reached (every task stopped, nothing
more admitted, spend <= cap), `budget stop` with a live controller (the stop flag) and with a dead one, a task lost
past Ray's retries resumed, a worker that fails failing the run. Hours of a run in milliseconds; the real Ray
cluster is test_ray_cluster.py's."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from planner.catalog import load_catalog
from planner.plans import load_plan
from runner import home as homes
from runner.clock import FakeClock
from runner.money import pools
from runner.money.guard import Policy
from runner.run import commands
from runner.scaleout import launch
from runner.scaleout.controller import Controller, Setup
from tests.runner.conftest import caption_plan

T0 = 1_800_000_000.0
POLICY = Policy(tick_s=1.0, teardown_s=4.0, lease_s=10.0)


class FakeCluster:
    """Shard tasks that run on the fake clock: `startup_s` to load, then one line every `per_line_s` over their
    shard's samples; a stop (for the task or the run) or a lease lapsed ends them 1 s later with exit 3. `fate`
    maps a shard to what its first run does instead: "lost" (its node gone past Ray's retries) or an exit code."""

    def __init__(self, clock: FakeClock, job: dict, startup_s=5.0, per_line_s=1.0, fate: dict | None = None):
        self.clock, self.job, self.startup_s, self.per_line_s = clock, job, startup_s, per_line_s
        self.fate = dict(fate or {})
        self.tasks: dict[str, dict] = {}
        self.leases: dict[str, float] = {}
        self.stop_all: str | None = None
        self.log: list[tuple[str, str]] = []
        self.held: dict[int, set[str]] = {}  # shard -> ids pushed (what a retry resumes after)
        self.submitted: list[tuple[str, int]] = []
        self.closed = False

    def _ids(self, shard: int, count: int) -> list[str]:
        n = min(self.job["tasks"][0]["samples"], self.job.get("limit") or 10**9)
        return [f"syn-{i}" for i in range(n) if i % count == shard]

    def submit(self, key: str, spec: dict, kind: str) -> None:
        self.submitted.append((key, spec["shard"]))
        self.tasks[key] = {"shard": spec["shard"], "count": spec["job"]["shard"]["count"], "start": self.clock.now(),
                           "stop_at": None}

    def _advance(self, key: str, t: dict) -> tuple[bool, int | None]:
        now = self.clock.now()
        k = t["shard"]
        held = self.held.setdefault(k, set())
        todo = [i for i in self._ids(k, t["count"]) if i not in held]
        fate = self.fate.get(k)
        if t["stop_at"] is None and (self.stop_all or now > self.leases.get(key, 0)):
            t["stop_at"] = now + 1.0
        if fate is not None and now >= t["start"] + self.startup_s + 2:
            del self.fate[k]
            return True, fate
        ran = max(0.0, min(now, t["stop_at"] or now) - t["start"] - self.startup_s)
        due = int(ran / self.per_line_s) - t.get("made", 0)
        for sid in todo[:max(0, due)]:
            held.add(sid)
            t["made"] = t.get("made", 0) + 1
            self.log.append(("captions", json.dumps({"id": sid, "task": "captions", "status": "ok", "prediction": "p",
                                                     "references": ["p"]})))
        if not [i for i in self._ids(k, t["count"]) if i not in held]:
            return True, 0
        if t["stop_at"] is not None and now >= t["stop_at"]:
            return True, 3
        return False, None

    def finished(self):
        out = []
        for key, t in list(self.tasks.items()):
            over, code = self._advance(key, t)
            if not over:
                continue
            del self.tasks[key]
            if code == "lost":
                out.append((key, None, "NodeDiedError: the node running the task died"))
                continue
            out.append((key, {"key": key, "shard": t["shard"], "node": f"node-{t['shard'] % 2}", "exit": code,
                              "started_at": t["start"], "ended_at": self.clock.now(), "stopped": "",
                              "log": "worker: the model did not load" if code == 1 else ""}, ""))
        return out

    def extend(self, leases):
        self.leases.update(leases)
        return True

    def stop(self, why, keys=None):
        self.stop_all = self.stop_all or why
        return True

    def pull(self, cursor):
        for key, t in list(self.tasks.items()):
            self._advance(key, t)
        return {"lines": self.log[cursor:], "cursor": len(self.log),
                "tasks": {k: {"node": f"node-{t['shard'] % 2}"} for k, t in self.tasks.items()}}

    def close(self):
        self.closed = True


def _made(tmp_path: Path, budget_home: Path, samples: int, cap: str, shards: int, slots: int, price="36",
          clock: FakeClock | None = None):
    """A ray run written by launch.create (ledger row, request.json, ray.json), and its Setup."""
    from planner.models import Offer
    from runner import jobs

    plan_path = caption_plan(tmp_path, "fake", samples)
    plan = load_plan(plan_path)
    catalog = load_catalog(budget_home / "catalog")
    run_id = f"fake-{len(list((budget_home / 'runs').glob('*'))) if (budget_home / 'runs').exists() else 0}"
    job = jobs.build(plan, plan_path, catalog, budget_home, quantization="fp16", run_id=run_id)
    offer = Offer(provider="ray", instance_type="ray-cpu", gpu="cpu", gpu_count=1, price=Decimal(price),
                  billing_increment_s=1, billing_minimum_s=0)
    setup = Setup(run_id=run_id, run_dir=homes.directory(budget_home, run_id), job=job, shards=shards, slots=slots,
                  kind="cpu", offer=offer, price_cny_h=Decimal(price), price_original_h=Decimal(price), policy=POLICY,
                  grace_s=1.0)
    homes.writable(budget_home)
    led = homes.ledger(budget_home, clock)
    try:
        cap_ = pools.run_cap(led, "default", Decimal(cap), None)
    finally:
        led.close()
    launch.create(launch.Launch(setup, plan, plan_path, cap_, "127.0.0.1:1", "fp16", slots, False),
                  budget_home, clock or FakeClock(T0))
    return setup, job


def _drive(budget_home: Path, setup: Setup, cluster: FakeCluster, clock: FakeClock, before_step=None) -> str:
    led = homes.ledger(budget_home, clock)
    try:
        c = Controller(led, cluster, setup, clock)
        if before_step is not None:
            step = c.step

            def wrapped():
                before_step(c, led)
                step()
            c.step = wrapped
        return c.run()
    finally:
        led.close()


def _killed_at(budget_home: Path, setup: Setup, cluster: FakeCluster, clock: FakeClock, seconds: float) -> None:
    """Drive the run until `seconds` on the fake clock, then "kill" its controller: it stops between two steps and
    nothing settles, nothing is let go."""
    class Died(BaseException):
        pass

    def die(c, led):
        if clock.now() >= T0 + seconds:
            c.finish = lambda: None
            raise Died
    with pytest.raises(Died):
        _drive(budget_home, setup, cluster, clock, die)


def _ledger(budget_home: Path):
    return homes.ledger(budget_home)


def _ids(setup: Setup) -> list[str]:
    path = setup.run_dir / "out" / "results" / "captions.jsonl"
    return [json.loads(x)["id"] for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def clock():
    return FakeClock(T0)


def test_every_sample_once_and_each_task_billed_from_admission_to_end(tmp_path, budget_home, clock):
    setup, job = _made(tmp_path, budget_home, samples=12, cap="5", shards=4, slots=2, clock=clock)
    cluster = FakeCluster(clock, job)
    assert _drive(budget_home, setup, cluster, clock) == "done"
    ids = _ids(setup)
    assert sorted(ids) == sorted(f"syn-{i}" for i in range(12)) and len(ids) == len(set(ids))
    led = _ledger(budget_home)
    try:
        run = led.run(setup.run_id)
        insts = led.instances(setup.run_id)
        assert (run["state"], run["samples_done"], run["samples_total"]) == ("done", 12, 12)
        assert [i.provider_id for i in insts] == ["shard-0", "shard-1", "shard-2", "shard-3"]
        assert all(i.state == "done" and i.ended_at is not None and i.address for i in insts)
        for i in insts:  # 36 CNY/h = 0.01 CNY a second held, from admission to the end seen
            assert led.spent_instance(i.id) == Decimal("0.01") * int(i.ended_at - i.started_at)
        assert max(len([i for i in insts if i.started_at <= t < i.ended_at]) for t in range(int(T0), int(clock.now())))\
            == 2, "at most `slots` tasks at once"
        assert [t["task"] for t in led.db.execute("SELECT task FROM tasks WHERE run_id=?", (setup.run_id,))] == ["captions"]
    finally:
        led.close()
    assert cluster.closed and json.loads((setup.run_dir / "out" / "status.json").read_text())["tasks"]["captions"]


def test_the_cap_stops_every_task_admits_no_more_and_keeps_what_finished(tmp_path, budget_home, clock):
    setup, job = _made(tmp_path, budget_home, samples=60, cap="0.5", shards=4, slots=2, clock=clock)
    cluster = FakeCluster(clock, job)
    assert _drive(budget_home, setup, cluster, clock) == "stopped"
    led = _ledger(budget_home)
    try:
        run = led.run(setup.run_id)
        assert (run["state"], run["reason"]) == ("stopped", "budget")
        assert Decimal(0) < led.spent_run(setup.run_id) <= Decimal("0.5")
        insts = led.instances(setup.run_id)
        assert all(i.ended_at is not None for i in insts) and len(insts) == len(cluster.submitted)
        kinds = [e["kind"] for e in led.events(setup.run_id)]
        assert "stop" in kinds and kinds.index("stop") > max(i for i, k in enumerate(kinds) if k == "submitted")
    finally:
        led.close()
    ids = _ids(setup)
    assert 0 < len(ids) == len(set(ids)) < 60 and run["samples_done"] == len(ids)
    assert cluster.stop_all == "budget"


def test_budget_stop_with_a_live_controller_stops_every_task(tmp_path, budget_home, clock):
    setup, job = _made(tmp_path, budget_home, samples=40, cap="5", shards=2, slots=2, clock=clock)
    cluster = FakeCluster(clock, job)

    def stop_at_20s(c, led):
        if clock.now() >= T0 + 20 and not led.run(setup.run_id)["stop_requested"]:
            led.update_run(setup.run_id, stop_requested=1)  # what `budget stop RUN` does first
    assert _drive(budget_home, setup, cluster, clock, stop_at_20s) == "stopped"
    led = _ledger(budget_home)
    try:
        run = led.run(setup.run_id)
        assert (run["state"], run["reason"]) == ("stopped", "user") and cluster.stop_all == "user"
        assert clock.now() < T0 + 25 and 0 < run["samples_done"] < 40
    finally:
        led.close()


def test_a_task_lost_past_rays_retries_is_submitted_again_and_resumes(tmp_path, budget_home, clock):
    setup, job = _made(tmp_path, budget_home, samples=20, cap="5", shards=2, slots=2, clock=clock)
    cluster = FakeCluster(clock, job, fate={1: "lost"})
    assert _drive(budget_home, setup, cluster, clock) == "done"
    assert [k for _, k in cluster.submitted] == [0, 1, 1]
    ids = _ids(setup)
    assert len(ids) == len(set(ids)) == 20
    led = _ledger(budget_home)
    try:
        insts = led.instances(setup.run_id)
        assert [i.provider_id for i in insts] == ["shard-0", "shard-1", "shard-1"]
        assert "lost (NodeDiedError" in " ".join(e["detail"] for e in led.events(setup.run_id))
    finally:
        led.close()


def test_a_worker_that_fails_on_its_own_fails_the_run(tmp_path, budget_home, clock):
    setup, job = _made(tmp_path, budget_home, samples=20, cap="5", shards=4, slots=2, clock=clock)
    cluster = FakeCluster(clock, job, fate={0: 1})
    assert _drive(budget_home, setup, cluster, clock) == "failed"
    led = _ledger(budget_home)
    try:
        run = led.run(setup.run_id)
        assert "shard 0 failed" in run["reason"] and "the model did not load" in run["reason"]
        assert all(i.ended_at is not None for i in led.instances(setup.run_id)) and len(cluster.submitted) == 2
    finally:
        led.close()


def test_budget_stop_of_a_run_whose_controller_died_settles_at_its_lease_at_most(tmp_path, budget_home, clock):
    """The controller dies mid-run (here: an error out of its loop before it could settle); `budget stop` finds no
    controller and, with its cluster unreachable, settles every live task from the ledger at lease + teardown."""
    setup, job = _made(tmp_path, budget_home, samples=40, cap="5", shards=2, slots=2, clock=clock)
    _killed_at(budget_home, setup, FakeCluster(clock, job), clock, 12)
    led = _ledger(budget_home)
    try:
        live = led.instances(setup.run_id, live=True)
        assert len(live) == 2
        leases = {i.id: i.lease_until for i in live}
    finally:
        led.close()
    clock.advance(3600)
    run = commands.stop(setup.run_id, budget_home, clock=clock)  # the cluster (127.0.0.1:1) cannot be reached
    assert (run["state"], run["reason"]) == ("stopped", "user")
    led = _ledger(budget_home)
    try:
        for i in led.instances(setup.run_id):
            assert i.ended_at == leases[i.id] + POLICY.teardown_s, "billed to lease + teardown, not to now"
        assert led.spent_run(setup.run_id) <= Decimal(5)
        said = " ".join(e["detail"] for e in led.events(setup.run_id))
        assert "settled from the ledger alone" in said or "could not be reached" in said
    finally:
        led.close()


def test_a_stop_whose_answer_was_lost_is_said_again_and_no_lease_is_handed_on(tmp_path, budget_home, clock):
    setup, job = _made(tmp_path, budget_home, samples=40, cap="0.5", shards=2, slots=2, clock=clock)

    class Lossy(FakeCluster):
        lost, at_stop, grown = 0, None, []

        def stop(self, why, keys=None):
            if self.at_stop is None:
                self.at_stop = dict(self.leases)
            if self.lost < 2:  # the actor did not answer twice
                self.lost += 1
                return False
            return super().stop(why, keys)

        def extend(self, leases):
            if self.at_stop is not None:
                self.grown += [k for k, t in leases.items() if t > self.at_stop.get(k, 0)]
            return super().extend(leases)
    cluster = Lossy(clock, job)
    assert _drive(budget_home, setup, cluster, clock) == "stopped"
    assert cluster.lost == 2 and not cluster.grown, "said again; and no lease handed on once stopping"
    led = _ledger(budget_home)
    try:
        assert led.spent_run(setup.run_id) <= Decimal("0.5") and led.run(setup.run_id)["reason"] == "budget"
    finally:
        led.close()


def test_a_task_stops_its_worker_by_its_own_lease_when_the_actor_cannot_be_reached():
    import time

    from runner.scaleout.task import Shard

    job = {"tasks": [{"name": "captions"}]}
    ahead = Shard({"key": "i1", "shard": 0, "run_id": "r", "job": job, "poll_s": 1, "grace_s": 1,
                   "lease_until": time.time() + 60}, actor=None)
    ahead.verdict(None)  # no answer, the lease still holds: go on
    assert not ahead.why
    ahead.verdict({"stop": False, "why": "", "lease_until": time.time() - 1})  # the lease the actor said, now past
    ahead.verdict(None)
    assert ahead.why == "its lease lapsed and the lease actor cannot be reached"
    told = Shard({"key": "i2", "shard": 1, "run_id": "r", "job": job, "poll_s": 1, "grace_s": 1,
                  "lease_until": time.time() + 60}, actor=None)
    told.verdict({"stop": True, "why": "budget", "lease_until": time.time() + 60})
    assert told.why == "budget"


def test_budget_stop_of_a_dead_controllers_run_stops_its_tasks_through_the_actor_and_takes_its_lines(
        tmp_path, budget_home, clock, monkeypatch):
    """With the cluster reachable and the lease actor still there: the stop is said to it, the lines its tasks
    pushed after the controller's last pull are taken (through the inbound boundary), each task is settled at the
    end the actor saw, and the actor is let go."""
    from runner.scaleout import cluster as clustermod

    setup, job = _made(tmp_path, budget_home, samples=40, cap="5", shards=2, slots=2, clock=clock)
    _killed_at(budget_home, setup, FakeCluster(clock, job), clock, 12)
    held = set(_ids(setup))
    led = _ledger(budget_home)
    try:
        live = {f"i{i.id}": i for i in led.instances(setup.run_id, live=True)}
    finally:
        led.close()
    late = [json.dumps({"id": f"syn-{i}", "task": "captions", "status": "ok"}) for i in range(30, 34)]
    seen = {}

    class Remote:
        def __init__(self, address):
            seen["address"] = address

        def connect(self):
            return self

        def attach(self, run_id):
            seen["actor"] = run_id
            return True

        def stop(self, why, keys=None):
            seen["stop"] = why
            return True

        def pull(self, cursor):
            lines = [("captions", raw) for raw in late][cursor:cursor + 2]  # bounded pulls: all of them come
            return {"lines": lines, "cursor": cursor + len(lines), "refused": 0,
                    "tasks": {k: {"ended": i.started_at + 13.5, "seen": 0} for k, i in live.items()}}

        def close(self):
            seen["closed"] = True
    monkeypatch.setattr(clustermod, "RayCluster", Remote)
    clock.advance(60)
    run = commands.stop(setup.run_id, budget_home, clock=clock)
    assert (run["state"], run["reason"]) == ("stopped", "user")
    assert seen == {"address": "127.0.0.1:1", "actor": setup.run_id, "stop": "user", "closed": True}
    assert set(_ids(setup)) == held | {f"syn-{i}" for i in range(30, 34)}
    led = _ledger(budget_home)
    try:
        for i in led.instances(setup.run_id):
            assert i.ended_at == live[f"i{i.id}"].started_at + 13.5 and i.state == "stopped"
        assert "stopped its tasks and was ended" in " ".join(e["detail"] for e in led.events(setup.run_id))
    finally:
        led.close()


def test_budget_resume_of_a_dead_controllers_run_runs_only_what_is_left_and_pays_no_sample_twice(
        tmp_path, budget_home, clock):
    """The controller dies with two shards done and two running: `budget resume RUN` settles the two it left live
    (its cluster unreachable: at min(now, lease + teardown)), makes a new lease actor holding every line the run
    wrote, submits only the two unfinished shards - which start after those lines - and ends the run done: every
    sample once, none generated twice, spend <= cap."""
    setup, job = _made(tmp_path, budget_home, samples=40, cap="5", shards=4, slots=2, clock=clock)
    _killed_at(budget_home, setup, FakeCluster(clock, job), clock, 24)  # shards 0, 1 done at ~15 s; 2, 3 four lines in
    before = set(_ids(setup))
    led = _ledger(budget_home)
    try:
        live = {i.id: i for i in led.instances(setup.run_id, live=True)}
        assert sorted(i.provider_id for i in live.values()) == ["shard-2", "shard-3"] and 20 < len(before) < 40
    finally:
        led.close()

    class Again(FakeCluster):
        def connect(self):
            return self

        def attach(self, run_id):  # the old actor: gone
            return False

        def start(self, run_id, tasks, lease_s, grace_s, poll_s, preload=None):
            self.preloaded = {json.loads(x)["id"] for x in (preload or {}).get("captions", [])}
            for k in range(4):  # what a retry of any shard is seeded with
                self.held[k] = set(self.preloaded)
    again = Again(clock, job)
    clock.advance(2)
    from runner.scaleout import resume

    led = _ledger(budget_home)
    try:
        assert resume.resume(led, homes.resolve(led, setup.run_id), clock=clock, cluster=again) == "done"
        run = led.run(setup.run_id)
        insts = led.instances(setup.run_id)
        for i in insts:
            if i.id in live:  # the dead controller's: settled at now (within their lease + teardown)
                assert i.state == "stopped" and i.ended_at == min(T0 + 26, live[i.id].lease_until + POLICY.teardown_s)
        assert all(i.ended_at is not None for i in insts) and led.spent_run(setup.run_id) <= Decimal(5)
        assert (run["state"], run["samples_done"]) == ("done", 40)
        said = " ".join(e["detail"] for e in led.events(setup.run_id))
        assert "taken over: 2 of 4 shard(s) done" in said and "(budget resume)" in said
    finally:
        led.close()
    assert again.preloaded == before and sorted(k for _, k in again.submitted) == [2, 3], again.submitted
    made_again = [json.loads(raw)["id"] for _, raw in again.log]
    assert not set(made_again) & before, "no sample written before the resume was generated again"
    ids = _ids(setup)
    assert sorted(ids) == sorted(f"syn-{i}" for i in range(40)) and len(ids) == len(set(ids))

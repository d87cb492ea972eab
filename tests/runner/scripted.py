"""A scripted provider: a real implementation of the provider contract (runner/cloud/base.py) whose
instances live in memory and follow a script on a fake clock - in the spirit of httpx's MockTransport. Its
instances boot, refuse sessions, run a worker that finishes one sample every `sample_s`, write the files the
real worker writes (results, status.json, summary.json, worker.exit), obey STOP and the lease like the real
watchdog (the grace, then a power-off), hear interruption notices, get reclaimed, lose their disk, and bill
from launch to end - which tests compare with the ledger. Test support only: no user ever sees it."""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from planner.models import Offer
from runner import inbound
from runner.clock import FakeClock
from runner.cloud.base import RUN_TAG, START_WATCHDOG, Capabilities, InstanceInfo, LaunchSpec, Proc, ProviderBase
from runner.errors import CapacityError, NotReadyError, ProviderError, RefusedError, RemoteError
from runner.money.guard import Policy
from runner.money.ledger import Ledger
from runner.run.driver import Driver
from runner.run.liveness import KILL, PROBE
from runner.run.request import Request, policy_doc

# what the worker's result line of an answered caption carries besides its id and task (runner/worker/tasks/base.py)
LINE = {"kind": "caption", "status": "ok", "prediction": "a cat", "references": ["a cat on a mat"],
        "prefill_tokens": 10, "visual_tokens": 4, "decode_tokens": 2, "latency_s": 0.5, "ttft_s": 0.1,
        "batch_size": 1, "peak_memory_bytes": 1000}
CAPS = Capabilities(ssh_wait_s=60.0, teardown_s=20.0, poweroff="poweroff", spot_market=True,
                    notice_url="http://metadata.test", after_watchdog="cancel-boot-poweroff",
                    finds_ended_s=float("inf"))  # it never forgets an instance (a test may delete one)


@dataclass
class Script:
    """How the cloud behaves. Counts are per instance unless said otherwise."""

    boot_s: float = 4.0                 # from launch until a session can open
    refuse: int = 0                     # session attempts refused once booted (each instance)
    load_s: float = 3.0                 # the worker's model load before its first sample
    sample_s: float = 1.0
    bootstrap_s: float = 2.0
    bootstrap_rc: int = 0
    notice_at: dict[int, int] = field(default_factory=dict)    # instance number -> samples done when noticed
    reclaim_at: dict[int, int] = field(default_factory=dict)   # instance number -> samples done when taken
    reclaim_on_push: set[int] = field(default_factory=set)      # instance numbers taken while being pushed to
    die_at: dict[int, int] = field(default_factory=dict)       # instance number -> samples when the worker dies
    hang_at: dict[int, int] = field(default_factory=dict)      # ... when it hangs (alive, no heartbeat)
    fail_at: dict[int, int] = field(default_factory=dict)      # ... when it exits 1
    no_capacity: set[str] = field(default_factory=set)         # instance types refused on a relaunch
    terminate_fails: int = 0                                    # terminates that fail (in all)
    call_s: float = 0.05                                        # what each call to the cloud or instance takes
    api_fails: int = 0                                          # the cloud API's next calls that fail (in all)


class Instance:
    def __init__(self, world: World, number: int, spec: LaunchSpec, now: float):
        self.world, self.number, self.spec = world, number, spec
        self.pid = f"i-{number:04d}"
        self.launched = now
        self.ended: float | None = None
        self.state = "running"
        self.files: dict[str, bytes] = {}
        self.armed = False
        self.worker_start: float | None = None   # when the current worker process started
        self.worker_alive = False
        self.worker_base = 0                     # samples held when it started (pushed back)
        self.hung_at: float | None = None
        self.stop_at: float | None = None        # when it was asked to stop (STOP)
        self.pushes = 0
        self.boot_deadline = now + spec.boot_minutes * 60 if spec.boot_minutes else None
        self.written: set[str] = set()           # every sample id its worker ever finished
        self.ended_by = ""                       # terminate | reclaim | power-off

    # ------------------------------------------------------------------ what happened by `now`

    def tasks(self) -> list[tuple[str, int]]:
        job = json.loads(self.files.get("job.json", b"{}") or b"{}")
        return [(t["name"], int(t.get("samples") or 0)) for t in job.get("tasks", [])]

    def lines(self, task: str) -> int:
        return self.files.get(f"out/results/{task}.jsonl", b"").count(b"\n")

    def done(self) -> int:
        return sum(self.lines(t) for t, _ in self.tasks())

    def advance(self, now: float) -> None:
        if self.state != "running":
            return
        if self.boot_deadline is not None and not self.armed and now >= self.boot_deadline:
            return self.power_off(self.boot_deadline)
        if self.armed:
            lease = int((self.files.get("lease") or b"0").strip() or 0)
            if now >= lease:  # the watchdog: stop the worker (it flushes), give it the grace, power off
                if "watchdog.fired" not in self.files:
                    self.files["watchdog.fired"] = f"lease {lease} expired at {int(now)}\n".encode()
                    self.files["out/STOP"] = b""
                    self._run_worker(lease)
                    self._stop_worker(lease, why="stop_file")
                if now >= lease + self.spec.grace_s:
                    self.power_off(lease + self.spec.grace_s)
                return
        self._run_worker(now)
        if "upload_urls" in self.files and "worker.exit" in self.files and not self.worker_alive:
            self.power_off(now)  # handed over: the last upload, then the watchdog powers it off

    def _run_worker(self, now: float) -> None:
        if not self.worker_alive or self.worker_start is None:
            return
        s = self.world.script
        if "out/STOP" in self.files and self.stop_at is None:
            self.stop_at = now
        t0 = self.worker_start + s.load_s
        limit = now if self.stop_at is None else min(now, self.stop_at)
        due = max(0, int((limit - t0) // s.sample_s) + 1) if limit >= t0 else 0
        if self.hung_at is not None:
            due = min(due, self._due_at(self.hung_at))
        target = self.worker_base + due
        for k, which in ((self.number, s.notice_at), (self.number, s.reclaim_at), (self.number, s.die_at),
                         (self.number, s.hang_at), (self.number, s.fail_at)):
            if k in which and self.done() < which[k] <= target:
                target = which[k]
        total = sum(n for _, n in self.tasks())
        self._write_until(min(target, total), now)
        done = self.done()
        if self.number in s.notice_at and done >= s.notice_at[self.number] and "interrupted" not in self.files:
            self.files["interrupted"] = b'{"action": "terminate"}\n'
            self.files["out/STOP"] = b""
            self.stop_at = now
        if self.number in s.reclaim_at and done >= s.reclaim_at[self.number]:
            return self.world.reclaim(self.pid)
        if self.number in s.die_at and done >= s.die_at[self.number]:
            s.die_at.pop(self.number)
            self.worker_alive = False  # killed: no exit code
            return
        if self.number in s.hang_at and done >= s.hang_at[self.number] and self.hung_at is None:
            s.hang_at.pop(self.number)
            self.hung_at = now
            return
        if self.number in s.fail_at and done >= s.fail_at[self.number]:
            s.fail_at.pop(self.number)
            return self._exit(1, now, error="scripted failure")
        if done >= total and total:
            return self._exit(0, now)
        if self.stop_at is not None:
            return self._stop_worker(now, why="stop_file")
        if self.hung_at is None:
            self._status(now)

    def _due_at(self, t: float) -> int:
        s = self.world.script
        t0 = (self.worker_start or 0) + s.load_s
        return max(0, int((t - t0) // s.sample_s) + 1) if t >= t0 else 0

    def _write_until(self, target: int, now: float) -> None:
        for task, total in self.tasks():
            while self.done() < target and self.lines(task) < total:
                i = self.lines(task)
                rel = f"out/results/{task}.jsonl"
                line = json.dumps({"id": f"{task}-{i}", "task": task, **LINE}).encode() + b"\n"
                self.files[rel] = self.files.get(rel, b"") + line
                self.written.add(f"{task}-{i}")

    def _status(self, now: float, **extra) -> None:
        tasks = {t: {"done": self.lines(t), "total": n} for t, n in self.tasks()}
        self.files["out/status.json"] = json.dumps({"updated_at": f"{now:.3f}", "tasks": tasks, **extra}).encode()

    def _exit(self, code: int, now: float, **extra) -> None:
        self._status(now, **extra)
        tasks = {t: {"done": self.lines(t), "total": n} for t, n in self.tasks()}
        summary = {"run_id": self.spec.run_id, "complete": code == 0, "tasks": tasks, **extra}
        self.files["out/summary.json"] = json.dumps(summary).encode()
        self.files["worker.exit"] = f"{code}\n".encode()
        self.worker_alive = False

    def _stop_worker(self, now: float, why: str) -> None:
        if self.worker_alive:
            self._exit(3, now, stopped=why)

    def power_off(self, at: float, by: str = "power-off") -> None:
        self.worker_alive = False
        self.state, self.ended, self.ended_by = "terminated", at, by

    # ------------------------------------------------------------------ commands run there

    def run(self, cmd: str) -> tuple[int, str]:
        now = self.world.clock.now()
        if cmd == START_WATCHDOG:
            self.armed = True
            return 0, ""
        if cmd == PROBE:
            if self.files.get("worker.exit"):
                return 0, f"exit {self.files['worker.exit'].decode().strip()}"
            return 0, "alive" if self.worker_alive else "gone"
        if cmd == KILL:
            self.worker_alive = False
            return 0, ""
        if cmd.startswith("sh ./start.sh"):
            if self.worker_alive:
                return 0, "start: worker already running"
            self.files.pop("out/STOP", None)
            self.files.pop("worker.exit", None)
            self.files["worker.pid"] = b"4242\n"
            self.worker_start, self.worker_alive, self.stop_at, self.hung_at = now, True, None, None
            self.worker_base = self.done()
            return 0, "start: worker pid 4242"
        if cmd == CAPS.after_watchdog:
            return 0, ""
        return 127, f"scripted instance: unknown command {cmd[:40]!r}"


class Session:
    def __init__(self, world: World, inst: Instance, root: str):
        self.world, self.inst, self.root, self.address = world, inst, root, f"scripted:{inst.pid}"
        self.broken = False

    def _check(self) -> None:
        self.world.advance()
        if self.broken or self.inst.state != "running":
            raise RemoteError(f"{self.address}: the connection dropped", "the worker keeps running")

    def run(self, cmd: str, timeout: float = 120) -> tuple[int, str]:
        self._check()
        return self.inst.run(cmd)

    def start(self, cmd: str) -> Proc:
        self._check()
        s, begun = self.world.script, self.world.clock.now()

        def poll():
            self._check()
            if self.world.clock.now() - begun < s.bootstrap_s:
                return None
            self.inst.files["python.path"] = b"/usr/bin/python3\n"
            return s.bootstrap_rc
        return Proc(poll, lambda: "bootstrap: ready" if s.bootstrap_rc == 0 else "bootstrap: no python")

    def put_file(self, local: Path, rel: str, mode: int | None = None) -> None:
        self.put_bytes(Path(local).read_bytes(), rel, mode)

    def put_bytes(self, data: bytes, rel: str, mode: int | None = None) -> None:
        self._check()
        self.inst.pushes += 1
        if self.inst.number in self.world.script.reclaim_on_push and self.inst.pushes > 5:
            self.world.reclaim(self.inst.pid)
            self._check()
        self.inst.files[rel] = bytes(data)

    def size(self, rel: str) -> int | None:
        self._check()
        data = self.inst.files.get(rel)
        return None if data is None else len(data)

    def read(self, rel: str, offset: int = 0, length: int | None = None) -> bytes | None:
        self._check()
        data = self.inst.files.get(rel)
        if data is None:
            return None
        return data[offset:] if length is None else data[offset:offset + length]

    def listdir(self, rel: str) -> list[str]:
        self._check()
        prefix = rel.rstrip("/") + "/"
        return sorted({k[len(prefix):].split("/")[0] for k in self.inst.files if k.startswith(prefix)})

    def close(self) -> None:
        self.broken = True


class World:
    """The scripted cloud: its instances, its clock and its script; tests reach in to do things to it."""

    def __init__(self, clock: FakeClock | None = None, script: Script | None = None):
        self.clock = clock or FakeClock()
        self.script = script or Script()
        self.instances: dict[str, Instance] = {}
        self.sessions: list[Session] = []
        self.counter = itertools.count()

    def advance(self) -> None:
        """Every call to the cloud or an instance takes a moment (`call_s`): the world moves on meanwhile."""
        self.clock.advance(self.script.call_s)
        now = self.clock.now()
        for inst in list(self.instances.values()):
            inst.advance(now)

    def reclaim(self, pid: str) -> None:
        """The cloud takes the instance: its processes and its disk are gone."""
        inst = self.instances[pid]
        if inst.state == "running":
            inst.power_off(self.clock.now(), by="reclaim")
            inst.files = {}

    def drop_sessions(self) -> None:
        for s in self.sessions:
            s.broken = True

    def kill_worker(self, pid: str) -> None:
        """kill -9 of the worker's process group: no exit code, no process."""
        self.instances[pid].worker_alive = False

    def running(self) -> list[Instance]:
        self.advance()
        return [i for i in self.instances.values() if i.state == "running"]

    def billed(self, pid: str, increment_s: int, minimum_s: int) -> int:
        """Seconds the provider bills for the instance so far (to its end, or to now)."""
        from planner.money import billed_seconds

        inst = self.instances[pid]
        end = inst.ended if inst.ended is not None else self.clock.now()
        return billed_seconds(end - inst.launched, increment_s, minimum_s)


class ScriptedProvider(ProviderBase):
    name = "scripted"
    upload_every_s = 2.0

    def __init__(self, world: World, caps: Capabilities = CAPS):
        self.world, self.caps = world, caps

    def _api(self) -> None:
        """A call to the cloud's API: the world moves on, and it may fail (Script.api_fails)."""
        self.world.advance()
        if self.world.script.api_fails:
            self.world.script.api_fails -= 1
            raise ProviderError("the cloud's API failed (scripted)", "retry later")

    def launch(self, spec: LaunchSpec) -> InstanceInfo:
        self._api()
        for inst in self.world.instances.values():
            if (inst.spec.run_id, inst.spec.attempt, inst.spec.offer_index) == (spec.run_id, spec.attempt,
                                                                                spec.offer_index):
                return self._info(inst)  # idempotent per run, attempt and offer
        if spec.attempt and spec.offer.instance_type in self.world.script.no_capacity:
            raise CapacityError(f"no {spec.offer.instance_type} capacity (scripted)", "try another instance type")
        inst = Instance(self.world, next(self.world.counter), spec, self.world.clock.now())
        self.world.instances[inst.pid] = inst
        return self._info(inst)

    def _info(self, inst: Instance) -> InstanceInfo:
        return InstanceInfo(inst.pid, inst.state, "scripted", inst.launched, inst.spec.spot,
                            {RUN_TAG: inst.spec.run_id})

    def status(self, provider_id: str) -> InstanceInfo:
        self._api()
        inst = self.world.instances.get(provider_id)
        return self._info(inst) if inst else InstanceInfo(provider_id, "terminated")

    def session(self, provider_id: str, run_id: str, timeout_s: float = 10.0) -> Session:
        self._api()
        inst = self.world.instances.get(provider_id)
        if inst is None or inst.state != "running":
            raise RemoteError(f"{provider_id} is {inst.state if inst else 'terminated'}", "it is gone")
        if self.world.clock.now() < inst.launched + self.world.script.boot_s:
            raise NotReadyError(f"{provider_id}: still booting", "wait")
        if self.world.script.refuse:
            self.world.script.refuse -= 1
            raise RefusedError(f"{provider_id}: connection refused", "wait")
        s = Session(self.world, inst, f"/scripted/runs/{run_id}")
        self.world.sessions.append(s)
        return s

    def terminate(self, provider_id: str) -> float:
        self._api()
        if self.world.script.terminate_fails:
            self.world.script.terminate_fails -= 1
            raise ProviderError(f"terminating {provider_id} failed (scripted)", "retry")
        inst = self.world.instances.get(provider_id)
        if inst is not None and inst.state == "running":
            inst.power_off(self.world.clock.now(), by="terminate")
        return self.world.clock.now()

    def list_managed(self) -> list[InstanceInfo]:
        self.world.advance()
        return [self._info(i) for i in self.world.instances.values() if i.state == "running"]

    def find(self, run_id: str) -> list[InstanceInfo]:
        self._api()
        return [self._info(i) for i in self.world.instances.values() if i.spec.run_id == run_id]

    def market_price(self, provider_id: str) -> Decimal | None:
        return Decimal("0.1")

    def ended_at(self, provider_id: str) -> float | None:
        inst = self.world.instances.get(provider_id)
        return inst.ended if inst else None

    # caps.uploads: what a handed-over instance uploaded is what its disk holds
    def upload_urls(self, run_id: str, rels: list[str], expires_s: int) -> list[tuple[str, str]]:
        return [(rel, f"https://uploads.test/{run_id}/{rel}") for rel in rels]

    def results_prefix(self, run_id: str) -> str:
        return f"https://uploads.test/{run_id}/"

    def download_results(self, run_id: str, out_dir: Path) -> int:
        self.world.advance()
        mine = [i for i in self.world.instances.values() if i.spec.run_id == run_id]
        files = {k[len("out/"):]: v for k, v in (mine[-1].files if mine else {}).items() if k.startswith("out/")}
        for rel, data in files.items():  # through the boundary, as aws_results.py takes S3 objects
            inbound.take_object(rel, io.BytesIO(data).read, out_dir)
        return len(files)


# ---------------------------------------------------------------------------------------------- a run on it

POLICY = Policy(tick_s=1, teardown_s=20, lease_s=60)


class Crash(BaseException):
    """The controller dies on the spot (kill -9): nothing after it runs, no teardown."""


def crash_at(point: str):
    def kill(where: str) -> None:
        if where == point:
            raise Crash(point)
    return kill


class Rig:
    """A run on the scripted cloud, driven in this process on the world's fake clock: a real SQLite ledger, a
    real run directory with its request.json, and the driver. `fallbacks`: more offers for relaunches."""

    def __init__(self, home: Path, world: World | None = None, *, samples: int = 20, spot: bool = False,
                 cap: Decimal = Decimal(50), pool_cap: Decimal | None = None, price: Decimal = Decimal(36),
                 policy: Policy = POLICY, fallbacks: int = 0, unattended: bool = False, caps: Capabilities = CAPS,
                 minimum_s: int = 60, run_id: str = "run-1", ssh_wait_s: float = 60.0):
        self.home, self.world = Path(home), world or World()
        self.clock = self.world.clock
        self.provider = ScriptedProvider(self.world, caps)
        self.samples = samples
        self.led = Ledger(self.home / "ledger.db", self.clock)
        self.led.ensure_pool("p", pool_cap if pool_cap is not None else cap, self.clock.now())
        self.dir = self.home / "runs" / run_id
        (self.dir / "out").mkdir(parents=True)
        offers = [Offer(provider="scripted", instance_type=f"g{k}.x", gpu="T4", gpu_count=1, price=price + k,
                        billing_increment_s=1, billing_minimum_s=minimum_s, currency="CNY", region="test")
                  for k in range(1 + fallbacks)]
        self.led.create_run(id=run_id, pool="p", plan="scripted", plan_path="scripted.yaml", provider="scripted",
                            offer="scripted:g0.x", quantization="fp16", spot=int(spot), cap_cny=cap, dir=str(self.dir),
                            created_at=self.clock.now())
        job = {"tasks": [{"name": "captions", "kind": "caption", "samples": samples}], "heartbeat_s": 5,
               "model": {"source": "/models/tiny", "name": "tiny"}}
        self.req = Request(run_id=run_id, plan_path="scripted.yaml", provider="scripted",
                           offer=offers[0].model_dump(mode="json"), quantization="fp16", spot=spot,
                           price_cny_h=str(offers[0].price), price_original_h=str(offers[0].price), job=job,
                           policy=policy_doc(policy), ssh_wait_s=ssh_wait_s, bootstrap_timeout_s=600,
                           unattended=unattended,
                           fallbacks=tuple({"offer": o.model_dump(mode="json"), "price_cny_h": str(o.price),
                                            "price_original_h": str(o.price)} for o in offers[1:]))
        self.req.save(self.dir / "request.json")
        self.run_id = run_id

    def driver(self, kill=lambda _: None) -> Driver:
        return Driver(self.led, self.provider, self.req, self.dir, self.clock, kill=kill)

    def held_ids(self) -> list[str]:
        path = self.dir / "out" / "results" / "captions.jsonl"
        return [json.loads(x)["id"] for x in path.read_text().splitlines()] if path.exists() else []

    def run_row(self) -> dict:
        return self.led.run(self.run_id)

    def check(self, done: bool | None = None, within_caps: bool = True) -> None:
        """What every ending must leave: nothing running, every instance settled and billed no less than the
        provider bills it, spend within the run's and the pool's cap, no sample held twice (and, for a run
        that is done, every sample held)."""
        assert not self.world.running(), [i.pid for i in self.world.running()]
        rows = self.led.instances(run_id=self.run_id)
        assert all(r.ended_at is not None for r in rows), rows
        for r in rows:
            if r.provider_id is not None and r.provider_id in self.world.instances:
                billable = r.price_cny_h * self.world.billed(r.provider_id, r.increment_s, r.minimum_s) / 3600
                assert self.led.spent_instance(r.id) >= billable, (r, billable)
        if within_caps:  # (a cap cut below what was already committed may see that money spent)
            assert self.led.spent_run(self.run_id) <= Decimal(self.run_row()["cap_cny"])
            assert self.led.spent_pool("p") <= self.led.pool_cap("p")
        ids = self.held_ids()
        assert len(ids) == len(set(ids)), "a sample held twice"
        if done:
            assert sorted(ids) == sorted(f"captions-{i}" for i in range(self.samples))

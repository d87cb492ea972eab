"""`budget run`: the run state machine.

    admit (guard + intent row) -> launch -> wait for SSH -> watchdog up -> bootstrap -> push worker, job,
    data -> start worker (detached) -> monitor: every tick fetch results, accrue spend, extend the lease
    or stop -> collect -> terminate -> settle

The instance is torn down on every way out: done, any step failing, Ctrl-C / SIGTERM, `budget stop`,
and the guard's stop. Results land in $BUDGET_HOME/runs/<run>/out/ as they arrive. A run's inputs are
saved as request.json in its directory, so a detached controller (`--detach`) runs the same code."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import secrets
import shlex
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from planner.errors import BudgetTooSmall, GpuBudgetError, InputError
from planner.models import Offer

from . import plandata
from .cloud.base import GONE_STATES, INSTANCE_FILES, START_WATCHDOG, LaunchSpec
from .cloud.local import proc_start
from .cloud.remote import FETCH_APPEND, fetch, push_tree, wait_for
from .config import Config
from .errors import BootstrapError, CapacityError, QuotaError, RemoteError, RunError, WorkerError
from .evaluate import last_line, read_json
from .liveness import KILL, PROBE, Liveness, stale_after
from .money.guard import Policy
from .money.ledger import FINAL, Ledger
from .units import iso, money
from .worker.run import EXIT_DONE, EXIT_STOPPED
from .worker.tiny import NAME as TINY

WORKER_DIR = Path(__file__).parent / "worker"
MAX_RELAUNCHES = 3  # new instances a spot run gets after reclaims before it gives up


class Stop(Exception):
    """Leave the monitor loop and tear down: `reason` is budget, user or interrupted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def new_run_id(plan: str) -> str:
    return f"{plan}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def worker_requirements() -> str:
    """requirements.txt for bootstrap.sh: the installed package's `worker` extra."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("gpubudget") or []
    except PackageNotFoundError:
        reqs = []
    lines = [r.split(";")[0].strip() for r in reqs if "extra == \"worker\"" in r.replace("'", '"')]
    return "\n".join(lines or ["torch", "torchvision", "transformers", "accelerate", "bitsandbytes", "pillow", "av"]) + "\n"


@dataclasses.dataclass
class Request:
    """Everything a controller needs to drive a run (saved as request.json)."""

    run_id: str
    plan_path: str
    provider: str
    offer: dict
    quantization: str
    spot: bool
    price_cny_h: str
    price_original_h: str
    job: dict
    policy: dict
    remote_python: str | None = None
    model_path: str | None = None
    ssh_wait_s: float = 600.0
    bootstrap_timeout_s: float = 3600.0
    unattended: bool = False  # hand the instance its deadline and upload URLs once the worker runs, then leave
    fallbacks: list = dataclasses.field(default_factory=list)  # spot: offers to relaunch on when its own has none

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Request:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            raise RunError(f"{path}: cannot read the run's request ({e})", "start a new run") from None

    @property
    def offer_obj(self) -> Offer:
        return Offer.model_validate(self.offer)

    @property
    def policy_obj(self) -> Policy:
        p = dict(self.policy)
        p["reserve_cny"] = Decimal(p["reserve_cny"])
        return Policy(**p)


def policy_for(cfg: Config, provider) -> Policy:
    return Policy(tick_s=cfg.run.tick_s, teardown_s=cfg.run.teardown_s if cfg.run.teardown_s is not None
                  else provider.teardown_s, reserve_cny=cfg.run.reserve_yuan, lease_s=cfg.run.lease_s)


def ssh_wait_for(cfg: Config, provider) -> float:
    """How long to wait for SSH: the configured time, else the provider's own (a cloud instance boots for
    minutes; a rented host that refuses or times out is down, and waiting on it only bills)."""
    return cfg.run.ssh_wait_s if cfg.run.ssh_wait_s is not None else getattr(provider, "ssh_wait_s", 600.0)


def make_provider(name: str, cfg: Config, home: Path, region: str | None = None):
    """The provider named `name` (boto3 / paramiko are imported only here, when needed); `region`:
    where an aws run's offer is (its price is that region's)."""
    if name == "local":
        from .cloud.local import LocalProvider
        return LocalProvider(home)
    if name not in ("aws", "ssh"):
        raise InputError(f"unknown provider {name!r}", "use --provider local, aws or ssh")
    from importlib.util import find_spec

    needed = ("boto3", "paramiko", "tenacity") if name == "aws" else ("paramiko", "tenacity")
    try:
        missing = [m for m in needed if find_spec(m) is None]
        if missing:
            raise ImportError(name=missing[0])
        if name == "aws":
            from .cloud.aws import AwsProvider
            return AwsProvider(cfg.aws, home, region)
        from .cloud.ssh_host import SshHostProvider
        return SshHostProvider(cfg.ssh, cfg.run.ssh_wait_s)
    except ImportError as e:  # the core install is light: boto3 / paramiko / tenacity come with the cloud extra
        missing = getattr(e, "name", None) or str(e)
        raise InputError(f"--provider {name} needs the cloud extra ({missing} is not installed)",
                         'install it with: pip install "gpubudget[cloud]"') from None


class Orchestrator:
    def __init__(self, ledger: Ledger, provider, req: Request, run_dir: Path,
                 on_progress: Callable[[dict], None] = lambda _: None, clock: Callable[[], float] = time.time):
        self.led, self.provider, self.req, self.dir = ledger, provider, req, run_dir
        self.policy = req.policy_obj
        self.on_progress, self.clock = on_progress, clock
        self.iid: int | None = None
        self.pid: str | None = None
        self.session = None
        self.started_worker = False
        self.connected = False  # a session on the instance was opened at least once
        self.lease_capped = False  # the last decision could not extend the lease by a full lease_s
        self.lease_written = 0
        self.status: dict = {}
        self.decision = None
        self.relaunches = 0  # new instances after the cloud took one away (a spot reclaim)
        self.handed_over = False  # unattended: the instance runs on alone; no teardown here
        self.log = open(run_dir / "controller.log", "a", encoding="utf-8")

    # ------------------------------------------------------------------ bookkeeping

    def event(self, kind: str, detail: str = "") -> None:
        try:
            self.log.write(f"{iso(time.time())} {kind}: {detail}\n")
            self.log.flush()
        except OSError:  # a full disk: the ledger may still take it, and nothing here may stop a teardown
            pass
        self.led.event(self.req.run_id, kind, detail, self.iid)

    def phase(self, name: str) -> None:
        self.led.update_run(self.req.run_id, phase=name, state="running" if name not in FINAL else name)
        self.event("phase", name)
        self.progress(name)

    def samples(self) -> tuple[int, int]:
        """Samples done and planned, over the tasks that run (the summary knows which were skipped)."""
        summary = read_json(self.dir / "out" / "summary.json")
        tasks = (summary.get("tasks") if summary.get("run_id") == self.req.run_id else None) \
            or self.status.get("tasks") or {}
        live = [t for t in tasks.values() if "skipped" not in t]
        return sum(t.get("done", 0) for t in live), sum(t.get("total") or 0 for t in live)

    def progress(self, phase: str | None = None) -> None:
        run = self.led.run(self.req.run_id)
        done, total = self.samples()
        if (done, total) != (run["samples_done"], run["samples_total"]):
            self.led.update_run(self.req.run_id, samples_done=done, samples_total=total)
        self.on_progress({
            "run": self.req.run_id, "phase": phase or run["phase"], "done": done, "total": total,
            "task": self.status.get("task"), "eta_s": self.status.get("eta_s"),
            "spent_cny": self.led.spent_run(self.req.run_id), "cap_cny": Decimal(run["cap_cny"]),
            "committed_cny": self.decision.committed_cny if self.decision else None,
        })

    # ------------------------------------------------------------------ the guard's tick

    def tick(self, _why: str = "") -> None:
        """Accrue, decide, extend the lease (ledger first, then the instance) - or raise Stop."""
        now = self.clock()
        d = self.led.tick(self.iid, now, self.policy)
        self.decision = d
        # the money no longer covers a full lease: if the worker stops at the lease before our next tick
        # says so, the budget stopped it (see _finished)
        self.lease_capped = not d.go or d.lease_until < now + self.policy.lease_s - self.policy.tick_s
        if not d.go:
            self.event("guard", f"stop: the next {self.policy.tick_s:.0f} s + teardown would pass the cap "
                       f"(committed {money(d.committed_cny)} of {money(d.cap_cny)} CNY)")
            raise Stop("budget")
        run = self.led.run(self.req.run_id)
        if run["stop_requested"] or (self.dir / "STOP").exists():
            self.event("stop", "requested by the user")
            raise Stop("user")
        self.write_lease(self.led.instance(self.iid).lease_until)
        self.progress()

    def write_lease(self, until: float) -> None:
        if self.session is not None and int(until) > self.lease_written:
            self.session.put_bytes(f"{int(until)}\n".encode(), "lease")
            self.lease_written = int(until)

    # ------------------------------------------------------------------ the run

    def execute(self, resume: bool = False) -> str:
        """Drive the run to its end (`resume`: take over a running one); returns the final state.
        Raises our errors after tearing down."""
        self.led.update_run(self.req.run_id, controller_pid=os.getpid(), controller_start=proc_start(os.getpid()))
        old = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
        error: GpuBudgetError | None = None
        state, reason = "failed", ""
        self.resumed = resume
        try:
            if resume:
                self._reattach()
            else:
                self._admit()
                kill_point("intent")
                self._launch()
                kill_point("launched")
                self._connect()
                self._bootstrap()
                self._push()
                kill_point("pushed")
                self._start()
            if self.req.unattended and not resume:
                from . import unattended

                unattended.hand_over(self)
                self.handed_over, state = True, "running"
            else:
                state, reason = self._monitor()
        except Stop as s:
            state, reason = "stopped", s.reason
        except KeyboardInterrupt:
            state, reason = "stopped", "interrupted"
        except GpuBudgetError as e:
            error, reason = e, e.message
        except Exception as e:  # noqa: BLE001 - anything unexpected still tears down, then shows up with --debug
            error, reason = RunError(f"run {self.req.run_id}: {e.__class__.__name__}: {e}",
                                     "rerun with --debug for the traceback; the instance was terminated"), str(e)
            error.__cause__ = e
        finally:
            # a second Ctrl-C must not leave the instance running: teardown is not interruptible
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
            if old is not None:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                if not self.handed_over:
                    self._teardown(state, reason)
                elif self.session is not None:
                    self.session.close()
            finally:
                if old is not None:
                    signal.signal(signal.SIGTERM, old)
                if old_int is not None:
                    signal.signal(signal.SIGINT, old_int)
                self.log.close()
        if error is not None:
            raise error
        return state

    def _admit(self) -> None:
        offer = self.req.offer_obj
        now = self.clock()
        boot = dataclasses.replace(self.policy, lease_s=self.policy.lease_s + self.req.ssh_wait_s)
        stretch = first_stretch_s(self.req.ssh_wait_s, self.policy)
        d, iid = self.led.admit(self.req.run_id, offer=offer, price_cny_h=Decimal(self.req.price_cny_h),
                                price_original_h=Decimal(self.req.price_original_h), spot=self.req.spot,
                                provider=self.provider.name, now=now, policy=boot, min_lease_s=stretch)
        self.decision = d
        if not d.go and d.reason == "short":
            run = self.led.run(self.req.run_id)
            raise BudgetTooSmall(
                f"not launching: the money left would keep {offer.instance_type} at {self.req.price_cny_h} CNY/h "
                f"running for less than {stretch:.0f} s (its boot and a first stretch of work); it would be stopped "
                f"at its first tick with nothing done (committed {d.committed_cny:.2f} of {d.cap_cny} CNY, pool "
                f"{run['pool']} has {self.led.spent_pool(run['pool'])} CNY spent)", "raise --yuan, or use another --pool")
        if not d.go:
            run = self.led.run(self.req.run_id)
            raise BudgetTooSmall(
                f"not launching: {offer.instance_type} at {self.req.price_cny_h} CNY/h would commit "
                f"{d.committed_cny:.2f} CNY (billing minimum + a tick + teardown) against a cap of {d.cap_cny} CNY "
                f"(pool {run['pool']} has {self.led.spent_pool(run['pool'])} CNY spent)",
                "raise --yuan, or use another --pool")
        self.iid = iid

    def _launch(self) -> None:
        self.phase("launching")
        spec = self._spec()
        info = self.provider.launch(spec)
        kill_point("launch")  # the launch's answer is lost: the instance exists, the ledger does not know it
        self.pid = info.provider_id
        self.led.set_instance(self.iid, provider_id=info.provider_id, state="launching",
                              launched_at=info.launched_at or self.clock(), address=info.address)
        market = getattr(self.provider, "market_price", None) if self.req.spot else None
        price = market(info.provider_id) if market else None
        if price is not None:
            self.led.set_instance(self.iid, market_price_h=str(price))
            self.event("spot", f"market price at launch {price} {self.req.offer.get('currency', '')}/h; the ledger "
                       f"bills {spec.max_spot_price or self.req.price_original_h} (the most it may be charged)")
        self.event("launched", f"{info.provider_id} ({self.req.offer['instance_type']}"
                   f"{f', spot, MaxPrice {spec.max_spot_price} USD/h' if spec.max_spot_price else ''}"
                   f"{', spot' if self.req.spot and not spec.max_spot_price else ''})")

    def _spec(self) -> LaunchSpec:
        public = self.provider.login_key()[1] if self.provider.name == "aws" else ""
        lease = self.led.instance(self.iid).lease_until
        offer = self.req.offer_obj
        # a spot instance may never cost more than the price the ledger bills it at: EC2 charges the market
        # price up to MaxPrice, so the guard's figures stay an upper bound of the real bill
        ceiling = Decimal(self.req.price_original_h) if self.req.spot and offer.currency == "USD" else None
        return LaunchSpec(self.req.run_id, offer, self.req.spot, public,
                          boot_minutes=lease_minutes(lease, self.clock()), lease_until=lease,
                          grace_s=max(1, int(self.policy.teardown_s / 2)), attempt=self.relaunches,
                          max_spot_price=ceiling)

    def _open_session(self, wait_s: float) -> None:
        """A session on the instance: SSH once it has an address and answers (the guard ticks meanwhile)."""
        if self.provider.name == "local":
            self.session = self.provider.session(self.pid)
            self.connected = True
            return
        from .cloud.remote import SshSession

        end = time.monotonic() + wait_s
        ep = self.provider.endpoint(self.pid)
        while ep is None:
            state = self.provider.status(self.pid).state
            if state not in ("pending", "running"):
                raise RemoteError(f"{self.pid} is {state}", "a spot instance may have been reclaimed, or the "
                                  "instance's watchdog ended it at its lease; fetched samples are kept")
            if time.monotonic() > end:
                raise RemoteError(f"cannot reach {self.pid} over SSH within {wait_s:.0f} s: it has no address, or its "
                                  "console shows no host key yet (still booting?)",
                                  "check the instance in the provider's console; raise run.ssh_wait_s for slow boots")
            self.tick()
            time.sleep(min(2.0, self.policy.tick_s))
            ep = self.provider.endpoint(self.pid)
        root = f"{self.provider.remote_dir.rstrip('/')}/runs/{self.req.run_id}"
        self.session = SshSession.connect(ep, root, wait_s=max(1.0, end - time.monotonic()), between=self.tick)
        self.connected = True

    def _connect(self) -> None:
        self.phase("booting")
        kill_point("boot")  # before the watchdog: only the boot guard holds the instance
        self._open_session(self.req.ssh_wait_s)
        self.led.set_instance(self.iid, state="running")
        self.event("connected", getattr(self.session, "address", ""))
        self._arm_watchdog()  # the instance's own guard, before anything slow happens there
        after = getattr(self.provider, "after_watchdog", None)
        if after:
            rc, out = self.session.run(after, timeout=60)
            self.event("boot-guard", f"`{after}` exit {rc}: {out.strip()[-200:]}")

    def _arm_watchdog(self) -> None:
        """Put the watchdog there and start it (a running one is left alone), holding the instance to its
        ledger lease. On a new instance and on every takeover: nothing is extended before it runs."""
        self.session.put_file(INSTANCE_FILES / "watchdog.sh", "watchdog.sh", 0o755)
        self.session.put_bytes((self.provider.poweroff + "\n").encode(), "poweroff.sh", 0o755)
        # the worker's flush time after a lease runs out; the other half of teardown_s is the power-off
        self.session.put_bytes(f"{max(1, int(self.policy.teardown_s / 2))}\n".encode(), "grace")
        notice = getattr(self.provider, "notice_url", None)
        if self.req.spot and notice:
            self.session.put_bytes(f"{notice}\n".encode(), "notice_url")
        # the boot lease covered the wait for SSH; from now on the watchdog holds the instance to the
        # normal lease (shortening is safe in this order: the instance first, then the ledger)
        lease = min(self.led.instance(self.iid).lease_until, self.clock() + self.policy.lease_s)
        self.lease_written = 0  # whatever the file says, the ledger's lease is the one that holds
        self.write_lease(lease)
        self.led.set_instance(self.iid, lease_until=float(int(lease)))
        rc, out = self.session.run(START_WATCHDOG, timeout=60)
        if rc != 0:
            raise RemoteError(f"cannot start the watchdog: {out.strip()[-200:]}", "check the instance's disk")
        self.event("watchdog", f"armed; lease until {iso(self.lease_written)}")

    def _python(self) -> str:
        """The Python that runs the worker there: given, this one (local), or what bootstrap.sh found."""
        if self.req.remote_python or self.provider.name == "local":
            return self.req.remote_python or sys.executable
        return (self.session.read("python.path") or b"").decode().strip() or "python3"

    def _bootstrap(self) -> None:
        if self.req.remote_python or self.provider.name == "local":
            self.python = self._python()
            return
        self.phase("bootstrapping")
        self.session.put_file(INSTANCE_FILES / "bootstrap.sh", "bootstrap.sh", 0o755)
        self.session.put_bytes(worker_requirements().encode(), "requirements.txt")
        py = getattr(self.provider, "cfg", None)
        py = getattr(py, "python", None) or ""
        proc = self.session.start(f"sh ./bootstrap.sh {shlex.quote(py)}".strip())
        rc = wait_for(proc, self.req.bootstrap_timeout_s, self.tick, poll_s=min(1.0, self.policy.tick_s))
        out = proc.output().strip()
        self.event("bootstrap", f"exit {rc}: {out.splitlines()[-1] if out else ''}")
        if rc is None:
            raise BootstrapError(f"bootstrap.sh did not finish within {self.req.bootstrap_timeout_s:.0f} s",
                                 "pass --remote-python PATH if the instance already has a ready Python")
        if rc != 0:
            last = out.splitlines()[-1] if out else "(no output)"
            raise BootstrapError(f"bootstrap.sh exited {rc} on the instance: {last}",
                                 "fix the instance's Python (or pass --remote-python PATH to one that can import "
                                 "torch, transformers, accelerate, bitsandbytes)")
        self.python = self._python()

    def _push(self) -> None:
        self.phase("pushing")
        job = remote_job(self.req.job, self.session.root, self.provider.name)
        sent = push_tree(self.session, WORKER_DIR, "worker")
        for task in job["tasks"]:
            sent += self._push_dataset(task)
        if self.req.model_path and self.provider.name != "local":
            sent += push_tree(self.session, Path(self.req.model_path), "model")
        self.session.put_bytes(json.dumps(job, indent=1, ensure_ascii=False).encode(), "job.json")
        self.session.put_file(INSTANCE_FILES / "start.sh", "start.sh", 0o755)
        self.event("pushed", f"{sent / 1e6:.2f} MB")
        self.tick()

    def _push_dataset(self, task: dict) -> int:
        ds = task.get("dataset") or {}
        if ds.get("kind") != "local" or self.provider.name == "local":
            return 0
        manifest = Path(ds["path"])
        rel = f"data/{task['name']}"
        sent = 0
        for _, p in plandata.media_files(manifest, task["name"]):  # checked before the launch (jobs.build)
            self.session.put_file(manifest.parent / p, f"{rel}/{p}")
            sent += (manifest.parent / p).stat().st_size
        self.session.put_file(manifest, f"{rel}/{manifest.name}")
        task["dataset"] = dict(ds, path=f"{self.session.root}/{rel}/{manifest.name}")
        return sent + manifest.stat().st_size

    def _start(self) -> None:
        self.phase("starting")
        self._start_worker()

    def _start_worker(self) -> None:
        rc, out = self.session.run(f"sh ./start.sh {shlex.quote(self.python)}", timeout=60)
        if rc != 0:
            raise WorkerError(f"cannot start the worker: {out.strip()[-300:]}", "see the run's controller.log")
        self.started_worker = True
        self.event("started", out.strip())

    def _monitor(self) -> tuple[str, str]:
        self.phase("running")
        out = self.dir / "out"
        watch = self._watch()
        while True:
            try:
                fetch(self.session, "out", out)
                self.status = read_json(out / "status.json")
                _, probe = self.session.run(PROBE, timeout=60)
                verdict = watch.verdict(probe, self.status.get("updated_at"), time.monotonic())
                if verdict.startswith("exit "):
                    fetch(self.session, "out", out)
                    self.status = read_json(out / "status.json")
                    code = verdict.removeprefix("exit ").strip()
                    notice = (self.session.read("interrupted") or b"").decode(errors="replace").strip()
                    if notice and self.req.spot and code == str(EXIT_STOPPED):
                        self._move_on(notice)  # the cloud warned: leave before it takes the instance
                        watch = self._watch()
                        continue
                    return self._finished(int(code) if code.lstrip("-").isdigit() else 1)
                if verdict != "ok":
                    self._revive(watch, verdict)
                self.tick()
                kill_point("running", lambda: self.samples()[0] > 0)  # with finished samples on both sides
            except RemoteError as e:  # the worker runs on, detached: reconnect and carry on
                gone = self._reclaimed()
                if gone:
                    self._relaunch(gone)
                    watch = self._watch()
                    continue
                self.event("ssh", f"lost ({e.message}); reconnecting")
                self._reconnect()
                continue
            time.sleep(self.policy.tick_s * 0.8)

    def _watch(self) -> Liveness:
        """A fresh watch on the worker (a new one for each instance it runs on)."""
        return Liveness(stale_after(float(self.req.job.get("heartbeat_s", 10.0)), self.policy.tick_s))

    def _reclaimed(self) -> str:
        """Why a spot run's instance is gone from under it ("" when it is not: reconnect instead)."""
        if not self.req.spot or self.pid is None:
            return ""
        try:
            info = self.provider.status(self.pid)
        except GpuBudgetError:
            return ""
        return f"{self.pid} is {info.state}" if info.state in GONE_STATES else ""

    def _move_on(self, notice: str) -> None:
        """The cloud's interruption notice reached the watchdog, the worker flushed and stopped, its lines are
        fetched: terminate the instance now (billing ends now, not at the reclaim) and go on elsewhere."""
        held, _ = held_samples(self.dir)
        self.event("interrupted", f"spot interruption notice on {self.pid} ({notice[:200]}); {held} finished "
                   "samples fetched; moving to a new instance")
        self._terminate()
        self._relaunch("", settled=True)

    def _relaunch(self, why: str, settled: bool = False) -> None:
        """The cloud took the instance (a spot reclaim): settle it, then - while the budget admits one and
        relaunches are left - a new instance of the same offer, with the result lines fetched so far pushed
        back so the worker goes on after them (no sample twice, none lost)."""
        held, _ = held_samples(self.dir)
        if not settled:
            self.event("interrupted", f"{why}; {held} finished samples were fetched before")
            self.led.settle(self.iid, self.clock(), "reclaimed")
        try:
            self.session.close()
        except Exception:  # noqa: BLE001 - its instance is gone
            pass
        self.session, self.pid, self.connected, self.started_worker, self.lease_written = None, None, False, False, 0
        self.iid = None  # settled: nothing of it is left to terminate
        self.relaunches += 1
        if self.relaunches > MAX_RELAUNCHES:
            raise RunError(f"the instance was taken away {self.relaunches} times; not launching another",
                           f"the {held} finished samples are in {self.dir}/out; run again (on-demand: without --spot)")
        while True:  # the same offer, else the planner's next cheapest the budget admits
            try:
                self._admit()
            except BudgetTooSmall as e:
                self.event("guard", f"no relaunch: {e.message}")
                raise Stop("budget") from None
            try:
                self._launch()
                break
            except (CapacityError, QuotaError) as e:
                self.led.settle(self.iid, None, "failed")
                self.iid = None
                if not self.req.fallbacks:
                    raise
                nxt, rest = self.req.fallbacks[0], self.req.fallbacks[1:]
                self.event("fallback", f"{self.req.offer['instance_type']} refused ({e.message}); relaunching on "
                           f"{nxt['offer']['instance_type']} at {nxt['price_cny_h']} CNY/h")
                self.req = dataclasses.replace(self.req, offer=nxt["offer"], price_cny_h=nxt["price_cny_h"],
                                               price_original_h=nxt["price_original_h"], fallbacks=rest)
                self.req.save(self.dir / "request.json")  # `budget stop` / `resume` see the offer it runs on
        self._connect()
        self._bootstrap()
        self._push()
        self._push_results()
        self._start()

    def _push_results(self) -> None:
        """What was fetched from the lost instance, onto the new one: its result lines (the worker resumes after
        them) and its logs (so fetching appends where it left off)."""
        out = self.dir / "out"
        names = [*FETCH_APPEND, *(f"results/{p.name}" for p in sorted((out / "results").glob("*.jsonl")))]
        for name in names:
            if (out / name).is_file():
                self.session.put_file(out / name, f"out/{name}")
        held, _ = held_samples(self.dir)
        self.event("pushed", f"{held} finished samples back onto the new instance: the worker goes on after them")

    def _revive(self, watch: Liveness, verdict: str) -> None:
        """The worker died without an exit code, or hangs: restart it (it resumes from its results) while
        restarts are left, else fail the run - never keep paying for an instance that does nothing."""
        what = ("its process is gone and it left no exit code" if verdict == "dead"
                else f"its heartbeat has not moved for {watch.stale_s:.0f} s")
        if not watch.may_restart():
            raise WorkerError(f"the worker stopped working ({what}) after {watch.restarted} restart(s)",
                              f"see {self.dir}/out/worker.log; finished samples are kept in {self.dir}/out")
        if verdict == "hung":
            self.session.run(KILL, timeout=60)
        watch.restarting(time.monotonic())
        self.event("worker", f"{what}; restarting it ({watch.restarted} of {watch.restarts})")
        self._start_worker()

    def _reconnect(self) -> None:
        try:
            self.session.close()
        except Exception:  # noqa: BLE001 - the old connection is already broken
            pass
        self.session = None
        self._open_session(min(self.req.ssh_wait_s, 300.0))
        self.event("ssh", "reconnected")

    def _reattach(self) -> None:
        """`budget resume`: take over a run whose controller died, while its instance still runs."""
        self.phase("reattaching")
        live = self.led.instances(run_id=self.req.run_id, live=True)
        if not live:
            raise RunError(f"run {self.req.run_id} has no instance left to resume",
                           "start a new run; its finished samples are in the run directory")
        self.iid, self.pid = live[0].id, live[0].provider_id
        if self.pid is None:
            found = find_by_run(self.provider, self.req.run_id)
            if not found:
                raise RunError(f"run {self.req.run_id} never got an instance", "start a new run")
            self.pid = found[0]
            self.led.set_instance(self.iid, provider_id=self.pid)
        if self.provider.status(self.pid).state not in ("pending", "running"):
            raise RunError(f"{self.pid} is gone: its watchdog ended it when the lease ran out",
                           f"the samples fetched before are in {self.dir}/out; start a new run for the rest")
        self._open_session(min(self.req.ssh_wait_s, 300.0))
        if (self.session.read("watchdog.fired") or b"").strip():
            raise RunError(f"{self.pid}: its watchdog stopped it when the lease ran out",
                           f"the samples fetched before are in {self.dir}/out; start a new run for the rest")
        if self.session.read("worker.pid") is None:
            raise RunError(f"run {self.req.run_id} died before its worker started", "start a new run")
        self._arm_watchdog()  # it may have died with the controller: the guard first, then any extension
        self.python = self._python()
        self.started_worker = True
        self.event("reattached", getattr(self.session, "address", ""))
        self.tick()

    def _finished(self, code: int) -> tuple[str, str]:
        self.event("worker", f"exit {code}")
        if code == EXIT_DONE:
            return "done", ""
        if code == EXIT_STOPPED:
            if (self.session.read("watchdog.fired") or b"").strip():
                # the instance's watchdog stopped the worker at its lease, a moment before our own tick
                if self.lease_capped:
                    self.event("guard", "stop: the lease ran out and the cap left no money to extend it")
                    return "stopped", "budget"
                return "stopped", "lease"
            return "stopped", self.status.get("stopped") or "worker"
        why = self.status.get("error") or last_line(self.dir / "out" / "worker.stderr.log", 300) or "no output"
        raise WorkerError(f"the worker failed (exit {code}): {why}",
                          f"see {self.dir}/out/worker.log; finished samples are kept in {self.dir}/out")

    def _teardown(self, state: str, reason: str) -> None:
        run_id = self.req.run_id
        try:
            if self.session is not None and self.started_worker:
                final_fetch(self.session, self.dir, self.policy, self.event, stop=state != "done")
            elif self.session is None and self.resumed and self.pid is not None:
                # a takeover that could not reattach (e.g. the watchdog powered the instance off): its worker
                # ran, so what it finished may still be there
                take_last_lines(self.provider, self.pid, self.req.run_id, self.dir, self.policy, self.event)
            kill_point("teardown")
            summary = read_json(self.dir / "out" / "summary.json")
            if summary:
                self.led.record_tasks(run_id, summary)
        finally:
            stuck: GpuBudgetError | None = None
            if self.iid is not None:
                try:
                    self._terminate()
                except GpuBudgetError as e:  # the instance may still run: say so, loudly, and keep it live
                    stuck = e                # in the ledger so `budget stop` retries
                    reason = f"could not terminate {self.pid}: {e.message}"
            final = state if state in FINAL and stuck is None else "failed"
            self.status = read_json(self.dir / "out" / "status.json") or self.status
            done, total = self.samples()
            self.led.update_run(run_id, state=final, phase=final, reason=reason, finished_at=self.clock(),
                                samples_done=done, samples_total=total)
            self.event(final, reason)
            if self.session is not None:
                try:
                    self.session.close()
                except Exception:  # noqa: BLE001 - the instance is gone
                    pass
            self.progress(final)
            if stuck is not None:
                raise RunError(f"{reason}; it may still be billing", f"retry with `budget stop {run_id}`, or "
                               f"terminate it in the provider's console") from stuck

    def _terminate(self) -> None:
        if getattr(self.provider, "rented", False) and not self.connected:
            # a rented host we never reached: nothing of ours ran there, so there is nothing to stop and
            # nothing to bill to this run (its platform bills the user whatever we do)
            self.led.settle(self.iid, None, "failed")
            self.event("settled", "the host was never reached: nothing ran there, nothing charged to this run")
            return
        self.pid = terminate_instance(self.led, self.provider, self.iid, self.req.run_id, self.policy, self.event)
        if self.pid is not None and getattr(self.provider, "keeps_billing", False):
            self.event("billing", f"{self.pid} has no stop command: the platform keeps billing it after this run "
                       "(set ssh.stop_command)")


def terminate_instance(led: Ledger, provider, iid: int, run_id: str, policy: Policy,
                       event: Callable[[str, str], None]) -> str | None:
    """Terminate one instance of the ledger and settle it; returns its provider id (None: the launch
    never made one). A launch whose answer was lost is looked up by its run tag first. A provider error
    is raised with the instance left live in the ledger, so `budget stop` can retry."""
    pid = led.instance(iid).provider_id
    if pid is None:
        found = find_by_run(provider, run_id)
        if not found:
            led.settle(iid, None, "failed")
            return None
        pid = found[0]
        _record(lambda: led.set_instance(iid, provider_id=pid))
    _record(lambda: led.set_instance(iid, state="stopping"))
    _record(lambda: event("terminating", pid))
    try:
        running = provider.status(pid).state in ("pending", "running")
        ended = provider.terminate(pid)
    except GpuBudgetError as e:
        why = e.message
        _record(lambda: event("terminate", f"failed: {why}"))
        raise
    # still running when we terminated it: it billed until now, lease or not (its watchdog may have died
    # with everything else) - the ledger never records less than the provider bills
    spent = led.settle(iid, ended if running else billing_end(led.instance(iid), ended, policy))
    event("terminated", f"{pid}; {money(spent)} CNY")
    return pid


def _record(write: Callable[[], None]) -> None:
    """A bookkeeping write on the way to a terminate: a full disk or a locked ledger must not keep the
    instance running - terminate first; the settle after it raises if the ledger still cannot take it."""
    try:
        write()
    except sqlite3.Error:
        pass


def final_fetch(session, run_dir: Path, policy: Policy, event: Callable[[str, str], None], stop: bool = True) -> None:
    """Before any terminate: ask the worker to stop (it flushes), give it a moment (bounded by the teardown
    allowance), fetch the last lines. A fetch that cannot finish says how many finished samples it left."""
    try:
        if stop:
            session.put_bytes(b"", "out/STOP")
            end = time.monotonic() + min(policy.tick_s, policy.teardown_s / 4)
            while time.monotonic() < end and not (session.read("worker.exit") or b"").strip():
                time.sleep(0.2)
        fetch(session, "out", run_dir / "out")
    except GpuBudgetError as e:
        fetch_failed(run_dir, e.message, event)


def fetch_failed(run_dir: Path, why: str, event: Callable[[str, str], None]) -> None:
    """The event for a final fetch that could not finish: how many samples are here, how many were left."""
    held, known = held_samples(run_dir)
    left = f"; {known - held} finished samples left on the instance" if known > held else ""
    event("fetch", f"final fetch failed: {why}; {held} samples fetched{left}")


def held_samples(run_dir: Path) -> tuple[int, int]:
    """(result lines held here, samples the worker's last fetched status said were done)."""
    res = run_dir / "out" / "results"
    held = sum(f.read_bytes().count(b"\n") for f in res.glob("*.jsonl")) if res.is_dir() else 0
    tasks = read_json(run_dir / "out" / "status.json").get("tasks") or {}
    return held, sum(int(t.get("done") or 0) for t in tasks.values() if isinstance(t, dict))


def take_last_lines(provider, pid: str | None, run_id: str, run_dir: Path, policy: Policy, event) -> None:
    """What the worker finished, fetched before its instance is terminated, with no controller session:
    from a running instance, or a stopped one whose disk can still be read (a local instance its watchdog
    powered off). Bounded by the teardown allowance; a failure is an event saying what was left."""
    if pid is None:
        return
    try:
        if provider.status(pid).state not in ("pending", "running", "stopped"):
            return
        session = open_session(provider, pid, run_id, wait_s=min(10.0, policy.teardown_s / 4))
    except GpuBudgetError as e:
        fetch_failed(run_dir, e.message, event)
        return
    try:
        final_fetch(session, run_dir, policy, event)
    finally:
        session.close()


def open_session(provider, pid: str, run_id: str, wait_s: float):
    """A session on a live instance without a controller (`budget stop`): local directly, else SSH."""
    if provider.name == "local":
        return provider.session(pid)
    from .cloud.remote import SshSession

    ep = provider.endpoint(pid)
    if ep is None:
        raise RemoteError(f"{pid} has no address", "it may be gone already")
    return SshSession.connect(ep, f"{provider.remote_dir.rstrip('/')}/runs/{run_id}", wait_s=wait_s)


def billing_end(inst, terminated_at: float, policy: Policy) -> float:
    """When billing ended: at the terminate, or earlier if the instance's watchdog already ended it at
    its lease (it powers off within the teardown allowance; the ledger never bills past that)."""
    return min(terminated_at, inst.lease_until + policy.teardown_s)


def find_by_run(provider, run_id: str) -> list[str]:
    """Live instances the provider holds for `run_id` (by tag), for launches whose answer was lost."""
    from .cloud.base import RUN_TAG

    try:
        return [i.provider_id for i in provider.list_managed() if i.tags.get(RUN_TAG) == run_id]
    except GpuBudgetError:
        return []


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def remote_job(job: dict, root: str, provider: str) -> dict:
    """The job as the instance sees it: the tiny model built there, the user's model pushed beside it."""
    job = json.loads(json.dumps(job))
    if provider == "local":
        return job
    model = job["model"]
    if model.get("recipe") == TINY:
        model["source"] = f"{root}/models/{TINY}"
    elif Path(model["source"]).is_absolute():
        model["source"] = f"{root}/model"
    job["cache_dir"] = f"{root}/../../cache"
    return job


def kill_point(step: str, when: Callable[[], bool] = lambda: True) -> None:
    """Fault injection for the kill -9 matrix (tests/runner/test_kill_matrix.py): with
    GPUBUDGET_KILL_AT=<step> the controller SIGKILLs itself there (once `when` holds) - a real kill -9 at
    an exact step. Without the variable it costs one environment lookup."""
    if os.environ.get("GPUBUDGET_KILL_AT") == step and when():
        os.kill(os.getpid(), signal.SIGKILL)


def first_stretch_s(ssh_wait_s: float, policy: Policy) -> float:
    """The least lease a launch must be able to pay for: its boot (the wait for SSH) and ten ticks of work
    (or a whole lease, when that is shorter)."""
    return ssh_wait_s + min(10 * policy.tick_s, policy.lease_s)


def lease_minutes(lease_until: float, now: float) -> int:
    return max(1, math.floor((lease_until - now) / 60))

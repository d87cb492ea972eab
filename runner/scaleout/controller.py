"""The controller of a ray run: one loop, a clock injected, driving a cluster port (cluster.RayCluster; a fake in
tests). Each shard task is an instance row of the ledger, admitted by the guard (led.admit: the run's and the
pool's caps, every other live task's projection) before it is submitted, billed per second from its admission to
its end. Every tick each live task's spend is accrued and its lease extended (led.tick) - the lease then handed to
the lease actor, which the task asks every second. A no-go (the money ends) stops every task through the actor -
they stop at a batch boundary and their finished lines are kept - and nothing more is admitted; so does `budget
stop RUN` (the run's stop_requested flag) and Ctrl-C. At most `slots` tasks are in flight; the next shard is
submitted when one ends. A task that ends stopped or lost while the run goes on (its lease lapsed, its node died
past Ray's retries) is queued again and resumes from the lines the actor holds; one that fails on its own (a bad
job, a model that does not load) fails the run. The lines are pulled from the actor every step and written
through the inbound boundary (lines.py). Spend = the seconds each task was held x its price; the guard's
projection (lease + teardown, the teardown covering the task's stop grace) bounds it even if this loop dies."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from planner.models import Offer

from ..clock import SYSTEM, Clock
from ..money import results
from ..money.guard import Decision, Policy
from ..procs import proc_start
from ..run import progress
from ..units import iso, money, printable
from ..worker import shards as shardmod
from . import lines

MAX_STARTS = 4  # a shard submitted this often without finishing fails the run
STEP_S = 0.5    # the loop's beat: task ends and lines are seen within it; ledger ticks every tick_s


@dataclass(frozen=True)
class Setup:
    run_id: str
    run_dir: Path
    job: dict
    shards: int
    slots: int
    kind: str               # "gpu" | "cpu": what each task holds
    offer: Offer            # the synthetic offer of one task (per-second billing)
    price_cny_h: Decimal
    price_original_h: Decimal
    policy: Policy
    grace_s: float
    poll_s: float = 1.0


@dataclass
class Live:
    inst: int
    shard: int
    lease_until: float
    node: str = ""


class Controller:
    def __init__(self, led, cluster, setup: Setup, clock: Clock = SYSTEM,
                 on_progress: Callable[[dict], None] = lambda _: None, before: list | None = None):
        """`before`: the run's ledger rows of an earlier controller (a resumed run, all settled): the shards they
        finished are done, their submissions count towards MAX_STARTS."""
        self.led, self.cluster, self.s, self.clock, self.on_progress = led, cluster, setup, clock, on_progress
        self.out = Path(setup.run_dir) / "out"
        self.jobs = shardmod.jobs(setup.job, setup.shards)
        shard_of = {i.id: int(i.provider_id.split("-")[1]) for i in before or ()
                    if (i.provider_id or "").startswith("shard-") and i.provider_id.split("-")[1].isdigit()}
        self.done: set[int] = {shard_of[i.id] for i in before or () if i.state == "done" and i.id in shard_of}
        self.queue = [k for k in range(setup.shards) if k not in self.done]
        self.starts = {k: sum(1 for v in shard_of.values() if v == k) for k in range(setup.shards)}
        self.live: dict[str, Live] = {}
        self.statuses: dict[int, str] = {}
        self.stopping: str | None = None  # budget | user | interrupted | ... (the run's reason)
        self.error: str | None = None
        self.refusal: Decision | None = None  # the last admission the guard refused
        self.attempt, self.cursor, self.last_tick = len(before or ()), 0, float("-inf")
        self.term = False  # SIGTERM arrived (the loop stops the tasks at its next step)
        self.merger = lines.Merger(self.out, setup.job)
        self.log = open(Path(setup.run_dir) / "controller.log", "a", encoding="utf-8")

    # ---------------------------------------------------------------- bookkeeping

    def event(self, kind: str, detail: str, inst: int | None = None) -> None:
        try:
            self.log.write(f"{iso(self.clock.now())} {kind}: {detail}\n")
            self.log.flush()
        except (OSError, ValueError):
            pass
        self.led.event(self.s.run_id, kind, detail, inst, at=self.clock.now())

    def stop_all(self, reason: str, why: str) -> None:
        if self.stopping is None:
            self.stopping = reason
            self.event("stop", f"{why}: every task is asked to stop (finished lines are kept)")
        self.cluster.stop(reason, None)

    # ---------------------------------------------------------------- the loop

    def run(self) -> str:
        """Drive the run to its end; returns its final state (done | stopped | failed)."""
        run_id = self.s.run_id
        self.led.update_run(run_id, state="running", phase="running", controller_pid=os.getpid(),
                            controller_start=proc_start(os.getpid()))
        previous = _on_sigterm(lambda: setattr(self, "term", True))
        try:
            while True:
                try:
                    self.step()
                    if not self.live and (not self.queue or self.stopping or self.error):
                        break
                    self.clock.sleep(STEP_S)
                except KeyboardInterrupt:
                    self.stop_all("interrupted", "Ctrl-C")
                    self.drain()
                    break
        finally:
            _restore(previous)
            self.finish()
        return self.led.run(run_id)["state"]

    def step(self) -> None:
        now = self.clock.now()
        if self.stopping is None and self.term:
            self.stop_all("interrupted", "SIGTERM")
        if self.stopping is None and self.led.run(self.s.run_id)["stop_requested"]:
            self.stop_all("user", "`budget stop` asked for it")
        for key, result, why in self.cluster.finished():
            self.ended(key, result, why)
        self.pull()
        if now - self.last_tick >= self.s.policy.tick_s:
            self.tick(now)
        self.admit(now)
        self.progress()

    def drain(self) -> None:
        """After Ctrl-C: wait for the tasks asked to stop (at most the teardown allowance); a second Ctrl-C is not
        taken here (the tasks stop by their lease whatever happens to this process)."""
        end = self.clock.monotonic() + self.s.policy.teardown_s
        while self.live and self.clock.monotonic() < end:
            try:
                for key, result, why in self.cluster.finished():
                    self.ended(key, result, why)
                self.pull()
                self.clock.sleep(STEP_S)
            except KeyboardInterrupt:
                continue

    # ---------------------------------------------------------------- money and leases

    def tick(self, now: float) -> None:
        """Accrue every live task's spend and extend its lease (the ledger's, then the actor's); a no-go stops the
        run. Once it stops, the stop is said again every tick (an answer may have been lost) and no lease is
        handed on: a task that missed the stop ends by its lease."""
        self.last_tick = now
        leases, no_go = {}, None
        for key, t in self.live.items():
            d = self.led.tick(t.inst, now, self.s.policy)
            if d.go and self.stopping is None:
                leases[key] = t.lease_until = d.lease_until
            elif not d.go:
                no_go = d
        if self.stopping is not None:
            self.cluster.stop(self.stopping, None)
        if not self.cluster.extend(leases) and self.live:
            self.event("lease", "the lease actor did not answer: the tasks stop by their leases unless it is back")
        if no_go is not None and self.stopping is None:
            self.stop_all("budget", f"the cap ends here: {money(no_go.committed_cny)} of {money(no_go.cap_cny)} CNY "
                          "spent or committed")

    def admit(self, now: float) -> None:
        p = self.s.policy
        while self.queue and len(self.live) < self.s.slots and self.stopping is None and self.error is None:
            k = self.queue[0]
            d, iid = self.led.admit(self.s.run_id, offer=self.s.offer, price_cny_h=self.s.price_cny_h,
                                    price_original_h=self.s.price_original_h, spot=False, provider="ray", now=now,
                                    policy=p, min_lease_s=min(10 * p.tick_s, p.lease_s), attempt=self.attempt)
            if iid is None:
                if self.refusal is None:
                    self.event("refused", f"shard {k} not admitted: {money(d.committed_cny)} of {money(d.cap_cny)} "
                               f"CNY spent or committed ({d.reason})")
                self.refusal = d
                if not self.live:
                    self.stop_all("budget", "the money left cannot pay for another task")
                return
            self.refusal = None
            self.attempt += 1
            self.queue.pop(0)
            self.starts[k] += 1
            key = f"i{iid}"
            self.led.set_instance(iid, state="running", provider_id=f"shard-{k}", launched_at=now)
            self.live[key] = Live(iid, k, d.lease_until)
            self.cluster.extend({key: d.lease_until})
            self.cluster.submit(key, {"run_id": self.s.run_id, "key": key, "shard": k, "job": self.jobs[k],
                                      "lease_until": d.lease_until, "poll_s": self.s.poll_s, "grace_s": self.s.grace_s},
                                self.s.kind)
            self.event("submitted", f"shard {k} of {self.s.shards} ({key}, lease to {iso(d.lease_until)})", iid)

    # ---------------------------------------------------------------- tasks ending, lines arriving

    def ended(self, key: str, raw, why: str) -> None:
        t = self.live.pop(key, None)
        if t is None:
            return
        res, bad = lines.result_of(raw) if raw is not None else (None, why)
        code = res.exit if res is not None else None
        state = "done" if code == 0 else "failed" if code in (1, 2) else "lost" if res is None else "stopped"
        self.led.settle(t.inst, self.clock.now(), state)  # held from its admission until it was seen to end
        if res is not None:
            self.merger.add((task, line) for task, ls in res.lines.items() for line in ls)
            if res.status:
                self.statuses[t.shard] = res.status
            if res.node and res.node != t.node:
                self.led.set_instance(t.inst, address=printable(res.node[:128]))
            lines.append_log(self.out, f"shard {t.shard} ({key}) on node {res.node[:16]}: exit {code}", res.worker_log)
        said = f"exit {code}" if code is not None else (res.stopped if res is not None else f"lost ({bad})")
        if res is not None and res.seeded:
            said += f", resumed after the {res.seeded} line(s) held for it"
        self.event("ended", f"shard {t.shard} ({key}): {said}", t.inst)
        if code == 0:
            self.done.add(t.shard)
        elif code in (1, 2):  # the worker failed on its own (worker/run.py): the other shards would fail alike
            last = (res.log.strip().splitlines() or [""])[-1][:200]
            self.error = f"shard {t.shard} failed on node {res.node[:12] or '?'} (worker exit {code}{': ' + last if last else ''})"
            self.stop_all("failed", self.error)
        elif self.stopping is None:  # stopped (lease), killed, or lost past Ray's retries: it resumes from its lines
            if self.starts[t.shard] >= MAX_STARTS:
                self.error = f"shard {t.shard} was submitted {self.starts[t.shard]} times and never finished ({said})"
                self.stop_all("failed", self.error)
            else:
                self.queue.insert(0, t.shard)

    def pull(self, drain: bool = False) -> None:
        """The lines the actor took since the last pull (`drain`: until it has no more), and where tasks run."""
        got = self.cluster.pull(self.cursor)
        if not isinstance(got, dict):
            return
        before = self.cursor
        batch = got.get("lines")
        if isinstance(batch, list):
            self.merger.add(x for x in batch if isinstance(x, tuple | list) and len(x) == 2)
        if isinstance(got.get("cursor"), int):
            self.cursor = got["cursor"]
        for key, info in (got.get("tasks") or {}).items() if isinstance(got.get("tasks"), dict) else ():
            t = self.live.get(key)
            node = info.get("node") if isinstance(info, dict) else None
            if t is not None and isinstance(node, str) and node and node != t.node:
                t.node = printable(node[:128])
                self.led.set_instance(t.inst, address=t.node)
                self.event("node", f"shard {t.shard} ({key}) runs on node {t.node}", t.inst)
        if drain and self.cursor > before:
            self.pull(drain=True)

    def progress(self) -> None:
        run = self.led.run(self.s.run_id)
        done, total = progress.count(self.s.run_dir, self.s.run_id)
        if (done, total) != (run["samples_done"], run["samples_total"]):
            self.led.update_run(self.s.run_id, samples_done=done, samples_total=total)
        self.on_progress({"run": self.s.run_id, "phase": "stopping" if self.stopping else "running", "done": done,
                          "total": total, "task": f"{len(self.live)} task(s), {len(self.done)}/{self.s.shards} shards",
                          "eta_s": None, "spent_cny": self.led.spent_run(self.s.run_id), "cap_cny": Decimal(run["cap_cny"])})

    # ---------------------------------------------------------------- the end

    def finish(self) -> None:
        """The last lines, every task still held settled, the actor let go, the run's verdict recorded."""
        now = self.clock.now()
        self.pull(drain=True)
        for key, t in list(self.live.items()):  # never seen to end (Ctrl-C past the drain, this loop failing):
            inst = self.led.instance(t.inst)    # it stops by its lease: billed to lease + teardown, the bound
            self.led.settle(t.inst, inst.lease_until + self.s.policy.teardown_s, "stopped")
            self.event("settled", f"shard {t.shard} ({key}) not seen to end: billed to its lease + teardown", t.inst)
            del self.live[key]
        self.cluster.close()
        complete = len(self.done) == self.s.shards
        state, reason = ("failed", self.error) if self.error else \
            ("done", "") if complete else ("stopped", self.stopping or "incomplete")  # every shard done: done
        lines.write_status(self.out, lines.status_doc(self.s.run_id, self.s.job, self.s.shards, self.statuses, state,
                                                      None if state != "stopped" else reason, self.error))
        if self.merger.refused:
            self.event("untrusted", f"{self.merger.refused} line(s) from the cluster were not result lines of the job's "
                       "tasks (malformed, over the cap, or another task's); not taken")
        results.record_tasks(self.led, self.s.run_id, self.out, self.s.job)
        done, total = progress.count(self.s.run_dir, self.s.run_id)
        self.led.update_run(self.s.run_id, state=state, phase=state, reason=reason[:300], finished_at=now,
                            samples_done=done, samples_total=total)
        self.event(state, f"{done}/{total} samples; {money(self.led.spent_run(self.s.run_id))} CNY spent")
        self.log.close()


def _on_sigterm(handler: Callable[[], None]):
    """SIGTERM asks the tasks to stop like Ctrl-C (main thread only; elsewhere nothing changes)."""
    try:
        return signal.signal(signal.SIGTERM, lambda *_: handler())
    except ValueError:
        return None


def _restore(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass

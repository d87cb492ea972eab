"""What the lease actor holds for one run, as plain classes with an injected clock (no Ray here: actor.py wraps
them, tests drive them with a fake clock).

`Leases`: per task key (one ledger instance row = one submitted shard) the lease deadline the controller set -
epoch seconds, from the ledger's guard - a stop asked for one task or for the whole run, and the tasks seen. A
task asks `poll(key)` about every second: it goes on while its lease holds and no stop was asked. When no
controller has extended any lease for `lease_s + grace_s`, the run is orphaned: every task is told to stop, and
the actor exits once no task has been heard from for a few polls, or after a further `grace_s` whatever they do
(`should_exit`) - nothing of the run runs on the cluster when its controller died. Lines its tasks pushed after the
controller's last pull are kept: the actor then waits (no task, no GPU) until they are pulled - `budget stop` -
or `keep_s` more (KEEP_S, a week) passed.

`Collector`: the result lines tasks push, per shard, per task name, by sample id - a line once. A line is taken
only if it is a JSON object of at most LINE_CAP bytes with a string `id`, its task's name and a known status, of
one of the job's tasks; what the controller writes into the run directory passes runner/inbound.py again
(lines.py). A retried shard is seeded with its shard's lines (`held`), so it resumes after them - and, in a run
taken over by `budget resume`, with every line the run wrote before (`preload`: its worker skips what is done and
counts only its own); the controller
pulls every line once, in arrival order (`since`), and a pull's cursor says what its caller has written: the lines
before it are acknowledged (`unpulled` counts the rest)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

LINE_CAP = 1 << 20          # one result line (inbound.LINE_CAP)
HELD_CAP = 512 << 20        # all lines held for one run (thousands of samples are a few MB)
PULL_CAP = 16 << 20         # what one pull returns (the rest comes at the next)
STATUSES = ("ok", "error", "oom")
KEEP_S = 7 * 86400          # how long an orphaned actor keeps lines no one pulled (`budget stop` collects them)


class Leases:
    def __init__(self, lease_s: float, grace_s: float, poll_s: float = 1.0, clock: Callable[[], float] = time.time,
                 keep_s: float = KEEP_S):
        self.lease_s, self.grace_s, self.poll_s, self.clock = float(lease_s), float(grace_s), float(poll_s), clock
        self.keep_s = float(keep_s)
        self.until: dict[str, float] = {}
        self.stopped: dict[str, str] = {}     # key -> why a stop was asked for that task
        self.stop_all: str | None = None      # why the whole run was asked to stop
        self.heard = clock()                  # when a controller last extended a lease (or made the actor)
        self.tasks: dict[str, dict] = {}      # key -> {shard, node, pid, started, seen, ended}

    # ---------------------------------------------------------------- the controller's side

    def extend(self, leases: dict[str, float]) -> None:
        """New deadlines (a lease is never shortened here: the guard handed it out); the controller is alive."""
        self.heard = self.clock()
        for key, until in leases.items():
            if until > self.until.get(key, 0.0):
                self.until[key] = float(until)

    def stop(self, why: str, keys: Iterable[str] | None = None) -> None:
        """Ask one task, some, or (keys None) the whole run to stop: at its next poll its worker is told to flush
        and exit."""
        if keys is None:
            self.stop_all = self.stop_all or why
            return
        for key in keys:
            self.stopped.setdefault(key, why)

    def info(self) -> dict[str, dict]:
        return {k: dict(v) for k, v in self.tasks.items()}

    # ---------------------------------------------------------------- the tasks' side

    def register(self, key: str, shard: int, node: str, pid: int) -> dict:
        """A task started on `node` (again, when Ray retried it on another one); returns its verdict."""
        now = self.clock()
        self.tasks[key] = {"shard": shard, "node": node, "pid": pid, "started": now, "seen": now, "ended": None,
                           "runs": self.tasks.get(key, {}).get("runs", 0) + 1}
        return self.poll(key)

    def poll(self, key: str) -> dict:
        """{"stop": bool, "why": str, "lease_until": float}: go on while the lease holds and no stop was asked."""
        now = self.clock()
        if key in self.tasks:
            self.tasks[key]["seen"] = now
        until = self.until.get(key, 0.0)
        if self.orphaned(now):
            self.stop_all = self.stop_all or (f"no controller extended a lease for {self.lease_s + self.grace_s:g} s")
        why = self.stop_all or self.stopped.get(key)
        if why is None and now > until:
            why = "its lease lapsed"
        return {"stop": why is not None, "why": why or "", "lease_until": until}

    def ended(self, key: str) -> None:
        if key in self.tasks:
            self.tasks[key]["ended"] = self.clock()

    # ---------------------------------------------------------------- the actor's own end

    def orphaned(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return now > self.heard + self.lease_s + self.grace_s

    def active(self, now: float | None = None) -> list[str]:
        """Tasks that have not ended and were heard from in the last three polls (a killed one stops polling)."""
        now = self.clock() if now is None else now
        return [k for k, t in self.tasks.items() if t["ended"] is None and now - t["seen"] <= 3 * self.poll_s]

    def should_exit(self, now: float | None = None, unpulled: int = 0) -> bool:
        """Orphaned, and its tasks gone - or a further grace passed whatever they do - and no line left that no one
        pulled (`unpulled`), or keep_s more passed."""
        now = self.clock() if now is None else now
        if not self.orphaned(now):
            return False
        gone = now > self.heard + self.lease_s + 2 * self.grace_s
        if not gone and self.active(now):
            return False
        return unpulled <= 0 or now > self.heard + self.lease_s + 2 * self.grace_s + self.keep_s


def line_id(raw: str, task: str) -> str | None:
    """The sample id of one result line of `task`, or None when it is not one (malformed, over the cap, another
    task's, a status the worker never writes)."""
    if not isinstance(raw, str) or len(raw) > LINE_CAP or len(raw.encode("utf-8", "replace")) > LINE_CAP:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("task") != task or doc.get("status") not in STATUSES:
        return None
    sid = doc.get("id")
    return sid if isinstance(sid, str) and 0 < len(sid) <= 512 else None


class Collector:
    def __init__(self, tasks: Iterable[str], held_cap: int = HELD_CAP):
        self.tasks = set(tasks)
        self.by_shard: dict[int, dict[str, dict[str, str]]] = {}  # shard -> task -> id -> line
        self.log: list[tuple[str, str]] = []                      # (task, line) in arrival order
        self.held_bytes, self.held_cap = 0, held_cap
        self.refused = 0
        self.acked = 0                                            # the lines before it were pulled and written
        self.common: dict[str, dict[str, str]] = {}               # task -> id -> line: written before this actor

    def add(self, shard: int, lines: dict[str, list[str]]) -> tuple[int, int]:
        """Take a task's new lines: (taken, refused). A sample id its shard holds already is not taken again
        (a retried shard, a push repeated after a lost answer) and is not a refusal."""
        taken = refused = 0
        if not isinstance(lines, dict) or not isinstance(shard, int) or isinstance(shard, bool):
            self.refused += 1
            return 0, 1
        for task, raws in lines.items():
            if task not in self.tasks or not isinstance(raws, list):
                refused += 1
                continue
            held = self.by_shard.setdefault(shard, {}).setdefault(task, {})
            for raw in raws:
                sid = line_id(raw, task)
                if sid is None or self.held_bytes + len(raw) > self.held_cap:
                    refused += 1
                    continue
                if sid in held:
                    continue
                held[sid] = raw
                self.log.append((task, raw))
                self.held_bytes += len(raw)
                taken += 1
        self.refused += refused
        return taken, refused

    def preload(self, lines: dict[str, list[str]]) -> int:
        """Lines the run wrote before this actor was made (`budget resume`), per task: every shard is seeded with
        them too; they are never pulled (the run has them). Returns how many were taken."""
        taken = 0
        for task, raws in lines.items() if isinstance(lines, dict) else ():
            if task not in self.tasks or not isinstance(raws, list):
                continue
            held = self.common.setdefault(task, {})
            for raw in raws:
                sid = line_id(raw, task)
                if sid is not None and sid not in held and self.held_bytes + len(raw) <= self.held_cap:
                    held[sid] = raw
                    self.held_bytes += len(raw)
                    taken += 1
        return taken

    def held(self, shard: int) -> dict[str, list[str]]:
        """The lines a shard has finished, per task (and those the run wrote before this actor): a retry of it
        starts from them."""
        out = {}
        for task in self.tasks:
            mine = self.by_shard.get(shard, {}).get(task, {})
            lines = [raw for sid, raw in self.common.get(task, {}).items() if sid not in mine] + list(mine.values())
            if lines:
                out[task] = lines
        return out

    def since(self, cursor: int, most: int = PULL_CAP) -> tuple[list[tuple[str, str]], int]:
        """The lines taken after `cursor` (at most `most` bytes, at least one line), and the cursor after them."""
        out, size, at = [], 0, max(0, min(int(cursor), len(self.log)))
        self.acked = max(self.acked, at)
        while at < len(self.log) and (not out or size + len(self.log[at][1]) <= most):
            out.append(self.log[at])
            size += len(self.log[at][1])
            at += 1
        return out, at

    def unpulled(self) -> int:
        """Lines no pull has acknowledged yet (held only here)."""
        return len(self.log) - self.acked

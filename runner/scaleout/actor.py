"""The lease actor of a ray run: a DETACHED named actor (name from the run id, namespace "gpubudget") on the head
node, holding the run's leases and the result lines its tasks pushed (lease.py - the logic - wrapped here). It
outlives its controller on purpose: a controller that dies leaves it to stop the run's tasks when their leases
lapse, and then it exits itself (`watch`, started by the controller when it makes the actor) - once the lines
its tasks pushed after the controller's last pull were collected (`budget stop`), or KEEP_S later. Its methods run
in a thread pool (max_concurrency): one lock keeps the state whole. Imports only the standard library, ray and
lease.py: the package ships to the cluster with the run's runtime_env."""

from __future__ import annotations

import threading
import time

from .lease import Collector, Leases

NAMESPACE = "gpubudget"
PREFIX = "gpubudget-lease-"
WATCH_S = 0.5


def name_of(run_id: str) -> str:
    return PREFIX + run_id


class LeaseActor:
    def __init__(self, tasks: list[str], lease_s: float, grace_s: float, poll_s: float):
        self.leases = Leases(lease_s, grace_s, poll_s)
        self.lines = Collector(tasks)
        self.lock = threading.Lock()
        self.watching = False

    # ---------------------------------------------------------------- the controller's calls

    def extend(self, leases: dict[str, float]) -> bool:
        with self.lock:
            self.leases.extend(leases)
        return True

    def stop(self, why: str, keys: list[str] | None = None) -> bool:
        with self.lock:
            self.leases.stop(why, keys)
        return True

    def preload(self, lines: dict[str, list[str]]) -> int:
        """Lines the run wrote before this actor (a run taken over by `budget resume`): each shard starts after them."""
        with self.lock:
            return self.lines.preload(lines)

    def pull(self, cursor: int) -> dict:
        """The lines taken since `cursor`, the next cursor, the lines refused so far and what each task said of
        itself (node, shard, times)."""
        with self.lock:
            lines, at = self.lines.since(cursor)
            return {"lines": lines, "cursor": at, "refused": self.lines.refused, "tasks": self.leases.info()}

    def watch(self) -> None:
        """Run until the run is orphaned and its tasks are gone (lease.Leases.should_exit), then exit the actor."""
        import ray

        with self.lock:
            if self.watching:
                return
            self.watching = True
        while True:
            time.sleep(WATCH_S)
            with self.lock:
                done = self.leases.should_exit(unpulled=self.lines.unpulled())
            if done:
                ray.actor.exit_actor()

    # ---------------------------------------------------------------- the tasks' calls

    def register(self, key: str, shard: int, node: str, pid: int) -> dict:
        with self.lock:
            return self.leases.register(key, shard, node, pid)

    def seed(self, shard: int) -> dict[str, list[str]]:
        with self.lock:
            return self.lines.held(shard)

    def report(self, key: str, shard: int, lines: dict[str, list[str]]) -> dict:
        """A task's new lines, and its verdict: go on, or stop (and why)."""
        with self.lock:
            taken, refused = self.lines.add(shard, lines) if lines else (0, 0)
            return {**self.leases.poll(key), "taken": taken, "refused": refused}

    def ended(self, key: str, shard: int, lines: dict[str, list[str]]) -> dict:
        with self.lock:
            taken, refused = self.lines.add(shard, lines) if lines else (0, 0)
            self.leases.ended(key)
            return {"taken": taken, "refused": refused}

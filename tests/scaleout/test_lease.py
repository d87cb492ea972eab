"""The lease actor's logic without Ray (runner/scaleout/lease.py), on a fake clock: leases extended and lapsing,
stops for one task or the whole run, the orphaned run and when the actor exits itself; the line collector (a
line once per shard and sample id, bad lines refused, a retried shard seeded, pulls in order and bounded); and
the controller's side of the boundary (lines.Merger: through runner/inbound.py, once per sample id)."""

from __future__ import annotations

import json

from runner.clock import FakeClock
from runner.scaleout import lines
from runner.scaleout.lease import LINE_CAP, Collector, Leases, line_id

T0 = 1_800_000_000.0


def _leases(clock: FakeClock, lease_s=10.0, grace_s=5.0) -> Leases:
    return Leases(lease_s, grace_s, poll_s=1.0, clock=clock.now)


def line(i: int, task: str = "captions", **extra) -> str:
    return json.dumps({"id": f"syn-{i}", "task": task, "status": "ok", "prediction": "x", **extra})


def test_a_task_goes_on_while_its_lease_holds_and_stops_when_it_lapses():
    clock = FakeClock(T0)
    leases = _leases(clock)
    assert leases.register("i1", 0, "node-a", 42)["stop"], "no lease handed out yet: a task does not start"
    leases.extend({"i1": T0 + 10})
    v = leases.poll("i1")
    assert not v["stop"] and v["lease_until"] == T0 + 10
    leases.extend({"i1": T0 + 5})  # a lease is never shortened: the guard handed it out
    assert leases.poll("i1")["lease_until"] == T0 + 10
    clock.advance(8)
    leases.extend({"i1": T0 + 18})  # the controller's next tick
    clock.advance(9)
    assert not leases.poll("i1")["stop"]
    clock.advance(1.5)  # T0 + 18.5: past the lease, the controller silent for 9.5 s (not yet orphaned)
    v = leases.poll("i1")
    assert v["stop"] and v["why"] == "its lease lapsed" and not leases.orphaned()


def test_a_stop_for_one_task_or_for_the_run():
    clock = FakeClock(T0)
    leases = _leases(clock)
    leases.extend({"i1": T0 + 10, "i2": T0 + 10})
    leases.stop("budget", ["i1"])
    assert leases.poll("i1") == {"stop": True, "why": "budget", "lease_until": T0 + 10}
    assert not leases.poll("i2")["stop"]
    leases.stop("user")
    leases.stop("budget")  # the first reason stays
    assert leases.poll("i2")["why"] == "user" and leases.poll("i1")["why"] == "user"


def test_an_orphaned_run_stops_every_task_and_the_actor_exits_once_they_are_gone():
    clock = FakeClock(T0)
    leases = _leases(clock, lease_s=10, grace_s=5)
    leases.extend({"i1": T0 + 10, "i2": T0 + 10})
    leases.register("i1", 0, "a", 1)
    leases.register("i2", 1, "b", 2)
    clock.advance(15)  # lease_s + grace_s since the last extension: not past it yet
    assert not leases.orphaned() and not leases.should_exit()
    clock.advance(0.5)
    assert leases.orphaned()
    assert leases.poll("i1")["stop"] and "no controller" in leases.poll("i1")["why"]
    assert not leases.should_exit(), "its tasks are still polling: they are told to stop first"
    leases.ended("i1")
    clock.advance(1)
    leases.poll("i2")  # i2 keeps polling (stopping its worker)
    assert leases.active() == ["i2"] and not leases.should_exit()
    clock.advance(3.5)  # i2 not heard from for three polls (killed, or its node gone)
    assert leases.active() == [] and leases.should_exit()


def test_the_actor_exits_after_a_further_grace_even_if_a_task_keeps_polling():
    clock = FakeClock(T0)
    leases = _leases(clock, lease_s=10, grace_s=5)
    leases.extend({"i1": T0 + 10})
    leases.register("i1", 0, "a", 1)
    for _ in range(19):  # a task that never stops (its worker hung past SIGKILL?) cannot keep the actor alive
        clock.advance(1)
        leases.poll("i1")
    assert not leases.should_exit()  # T0 + 19 <= heard + lease + 2 grace = T0 + 20
    clock.advance(1.5)
    leases.poll("i1")
    assert leases.should_exit()


def test_a_controller_that_extends_keeps_the_run_alive():
    clock = FakeClock(T0)
    leases = _leases(clock, lease_s=10, grace_s=5)
    for _ in range(100):
        clock.advance(5)
        leases.extend({})  # a tick with no task live still says the controller is there
        assert not leases.orphaned() and not leases.should_exit()


def test_the_collector_takes_a_line_once_per_shard_and_refuses_what_is_not_a_result_line():
    c = Collector(["captions", "documents"])
    assert c.add(0, {"captions": [line(0), line(2)]}) == (2, 0)
    assert c.add(0, {"captions": [line(0), line(4)]}) == (1, 0), "a line repeated (a push after a lost answer) once"
    bad = [
        "not json", json.dumps([1, 2]), json.dumps({"id": 5, "task": "captions", "status": "ok"}),
        json.dumps({"id": "syn-9", "task": "documents", "status": "ok"}),  # another task's line in this file
        json.dumps({"id": "syn-9", "task": "captions", "status": "fine"}),
        json.dumps({"id": "", "task": "captions", "status": "ok"}),
        json.dumps({"id": "x" * 600, "task": "captions", "status": "ok"}),
        line(9, pad="y" * LINE_CAP),
    ]
    assert c.add(0, {"captions": bad}) == (0, len(bad))
    assert c.add(1, {"victim": [line(1, task="victim")]}) == (0, 1), "a task the job does not have"
    assert c.add("0", {"captions": [line(6)]}) == (0, 1) and c.add(0, ["x"]) == (0, 1)
    assert c.refused == len(bad) + 3
    assert c.held(0) == {"captions": [line(0), line(2), line(4)]} and c.held(7) == {}
    assert line_id(line(3), "captions") == "syn-3" and line_id(line(3), "documents") is None


def test_the_collector_seeds_a_retried_shard_and_pulls_in_order_bounded():
    c = Collector(["captions"])
    c.add(0, {"captions": [line(0), line(2)]})
    c.add(1, {"captions": [line(1)]})
    c.add(0, {"captions": [line(4)]})
    assert c.held(0)["captions"] == [line(0), line(2), line(4)]
    got, at = c.since(0)
    assert [raw for _, raw in got] == [line(0), line(2), line(1), line(4)] and at == 4
    assert c.since(at) == ([], 4)
    got, at = c.since(1, most=len(line(2)))  # bounded, but never empty while lines wait
    assert got == [("captions", line(2))] and at == 2
    got, at = c.since(2, most=1)
    assert got == [("captions", line(1))] and at == 3


def test_the_merger_writes_through_inbound_once_per_sample_id(tmp_path):
    job = {"tasks": [{"name": "captions", "kind": "caption"}, {"name": "documents", "kind": "document"}]}
    m = lines.Merger(tmp_path / "out", job)
    assert m.add([("captions", line(0)), ("captions", line(1)), ("captions", line(0))]) == 2
    bad = [("captions", '{"id": "syn-7",\n"task": "captions", "status": "ok"}'),  # a newline would split it
           ("captions", json.dumps({"id": "syn-8", "task": "captions", "status": "ok", "n": 1e300})),  # out of range
           ("captions", json.dumps({"id": "syn-8", "task": "captions", "status": "ok", "x": float("nan")})),
           ("../victim", line(3, task="../victim")), ("documents", line(3)), ("captions", 42)]
    assert m.add(bad) == 0 and m.refused == len(bad)
    held = (tmp_path / "out" / "results" / "captions.jsonl").read_text().splitlines()
    assert held == [line(0), line(1)]
    assert not (tmp_path / "out" / "results" / "documents.jsonl").exists()
    again = lines.Merger(tmp_path / "out", job)  # a restarted controller knows what is held
    assert again.add([("captions", line(1)), ("captions", line(2))]) == 1 and again.held() == 3


def test_a_task_result_is_typed_or_refused():
    ok, why = lines.result_of({"key": "i1", "shard": 0, "node": "n", "exit": 0, "started_at": 1.0, "ended_at": 2.0,
                               "lines": {"captions": [line(0)]}, "status": "{}"})
    assert ok is not None and ok.exit == 0 and not why
    for bad in (None, [], {"key": "i1"}, {"key": "i1", "shard": -1}, {"key": "i1", "shard": "0"},
                {"key": "i1", "shard": 0, "lines": {"../x": []}}, {"key": "i1", "shard": 0, "exit": "0"}):
        got, why = lines.result_of(bad)
        assert got is None and why, bad


def test_an_orphaned_actor_keeps_the_lines_no_controller_took_until_they_are_pulled():
    """A controller killed between two pulls: the lines its tasks pushed after its last pull exist only on the
    actor. The actor stops the tasks as before, but exits itself only once every line was pulled - a pull's
    cursor says what the caller has written (the controller moves its cursor after writing) - or after keep_s
    (no one came for them: `budget stop` is how they are collected)."""
    clock = FakeClock(T0)
    leases = Leases(10, 5, poll_s=1.0, clock=clock.now, keep_s=3600)
    col = Collector(["captions"])
    leases.extend({"i1": T0 + 10})
    leases.register("i1", 0, "a", 1)
    col.add(0, {"captions": [line(0), line(1)]})
    got, cursor = col.since(0)            # the controller's last pull...
    assert len(got) == 2 and col.unpulled() == 2, "not yet acknowledged: its lines are written after the pull"
    col.add(0, {"captions": [line(2), line(3)]})  # ...then it was killed; the task pushed two more, then ended
    clock.advance(16)
    leases.ended("i1")
    assert leases.should_exit(unpulled=0), "the run is orphaned and its task is gone"
    assert not leases.should_exit(unpulled=col.unpulled()), "but it holds lines nobody took"
    got, at = col.since(0)                # `budget stop`: every line from the start (the merger skips known ids)
    assert [json.loads(x)["id"] for _, x in got] == ["syn-0", "syn-1", "syn-2", "syn-3"] and col.unpulled() == 4
    col.since(at)                         # its next pull says it has them all
    assert col.unpulled() == 0 and leases.should_exit(unpulled=col.unpulled())
    col.add(0, {"captions": [line(4)]})   # never collected: kept keep_s past the point it would have exited
    assert col.unpulled() == 1 and not leases.should_exit(unpulled=1)
    clock.advance(3600 - 16 + 10 + 2 * 5 - 1)
    assert not leases.should_exit(unpulled=1)
    clock.advance(1.5)
    assert leases.should_exit(unpulled=1)

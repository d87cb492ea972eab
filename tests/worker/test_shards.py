"""Shards (runner/worker/shards.py): every sample of a job is in exactly one shard whatever the count, what runs
once (the memory sweep, the fp16 check and the samples it re-runs) is shard 0's, and a shard's worker holds only its
own samples (the worker's Work, no model loaded). A supervisor restarted with another replica count hands the lines
merged so far to its new shards."""

from __future__ import annotations

import json
import sys
import time

import pytest

from runner.worker import files, shards
from runner.worker import job as jobmod
from runner.worker.replicas import Merged, Supervisor
from runner.worker.work import Work

from .conftest import job

TASKS = [{"name": "cap", "kind": "caption", "samples": 11, "image_size": [32, 32]},
         {"name": "doc", "kind": "document", "samples": 3, "image_size": [32, 32]},
         {"name": "sweep", "kind": "memory_sweep", "samples": 1, "resolutions": [[32, 32]]},
         {"name": "check", "kind": "fp16_verify", "of_task": "cap", "samples": 4}]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16])
def test_every_sample_is_in_exactly_one_shard(count, tmp_path):
    doc = job(tmp_path / "model", TASKS, "nf4")
    whole = Work(jobmod.parse(doc), tmp_path / "whole", tmp_path)
    held = {name: [] for name in whole.samples}
    for k, sub in enumerate(shards.jobs(doc, count)):
        assert sub["shard"] == {"index": k, "count": count} and "replicas" not in sub
        w = Work(jobmod.parse(sub), tmp_path / f"s{k}", tmp_path)
        for name, samples in w.samples.items():
            held[name] += [s.id for s in samples]
            if k:  # what runs once is shard 0's
                assert name not in ("sweep", "check") or not samples
    for name, samples in whole.samples.items():
        assert sorted(held[name]) == sorted(s.id for s in samples), name
        assert len(held[name]) == len(set(held[name]))


def test_the_fp16_check_and_the_samples_it_reruns_stay_on_shard_0(tmp_path):
    doc = job(tmp_path / "model", TASKS, "nf4")
    first = Work(jobmod.parse(shards.jobs(doc, 3)[0]), tmp_path / "s0", tmp_path)
    assert [s.id for s in first.samples["check"]] == [f"syn-{i}" for i in range(4)]
    assert {s.id for s in first.samples["check"]} <= {s.id for s in first.samples["cap"]}
    assert [shards.owner(i, 3, once=4) for i in range(8)] == [0, 0, 0, 0, 1, 2, 0, 1]


def test_a_shard_counts_only_its_own_lines(tmp_path):
    doc = shards.jobs(job(tmp_path / "model", TASKS[:1]), 2)[1]
    out = tmp_path / "s1"
    files.ResultFile(out / "results" / "cap.jsonl").append(
        [{"id": f"syn-{i}", "status": "ok"} for i in range(4)])  # lines of both shards, handed over by a supervisor
    w = Work(jobmod.parse(doc), out, tmp_path)
    assert w.progress("cap")["done"] == 2 and w.progress("cap")["total"] == 5
    assert [s.id for s in w.todo["cap"]] and not {"syn-1", "syn-3"} & {s.id for s in w.todo["cap"]}


@pytest.mark.parametrize("bad, says", [({"index": 2, "count": 2}, "job.shard"), ({"index": 0}, "job.shard.count"),
                                       ({"index": -1, "count": 2}, "job.shard"), ([], "job.shard")])
def test_a_bad_shard_is_refused(bad, says, tmp_path):
    with pytest.raises(jobmod.JobError, match=says):
        jobmod.parse(job(tmp_path, TASKS[:1], shard=bad))


def test_replicas_are_bounded_and_not_a_shards(tmp_path):
    with pytest.raises(jobmod.JobError, match="job.replicas"):
        jobmod.parse(job(tmp_path, TASKS[:1], replicas=65))
    with pytest.raises(jobmod.JobError, match="job.replicas"):
        jobmod.parse(job(tmp_path, TASKS[:1], replicas=2, shard={"index": 0, "count": 2}))
    assert jobmod.parse(job(tmp_path, TASKS[:1], replicas=4)).replicas == 4


def test_another_replica_count_hands_the_merged_lines_to_the_new_shards(tmp_path):
    """2 replicas stopped half-way, rerun with 3: what shard 1 of 2 finished (and was merged) is not run again."""
    doc = job(tmp_path / "model", TASKS[:1], replicas=2)
    out = tmp_path / "out"
    (out / "shards" / "1" / "results").mkdir(parents=True)
    (out / "shards" / "count").write_text("2")
    done = [{"id": f"syn-{i}", "status": "ok"} for i in (1, 3)]
    files.ResultFile(out / "shards" / "1" / "results" / "cap.jsonl").append(done)
    (tmp_path / "job.json").write_text(json.dumps(dict(doc, replicas=3)))
    sup = Supervisor(tmp_path / "job.json", out)
    sup.job = jobmod.parse(dict(doc, replicas=3))
    sup.merged = Merged(out, sup.job.tasks)
    dirs = sup._shards(dict(doc, replicas=3), 3)
    assert (out / "shards" / "count").read_text() == "3" and sorted(dirs) == [0, 1, 2]
    assert [x["id"] for x in sup.merged.lines("cap")] == ["syn-1", "syn-3"]  # merged before the old shards went
    for k in range(3):
        w = Work(jobmod.parse(json.loads((dirs[k] / "job.json").read_text())), dirs[k], tmp_path)
        assert not {"syn-1", "syn-3"} & {s.id for s in w.todo["cap"]}


def _hold(d, pid: int = 4242) -> int:
    """Hold shard directory `d` as a worker of an earlier run would (its flock on .worker.lock, its pid in it)."""
    import fcntl
    import os

    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / files.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"pid {pid}\n".encode())
    return fd


def _two_shards_held(tmp_path, pids=(4242, 4242)) -> tuple:
    """A 2-replica job (no model) whose shard directories 0 and 1 another worker holds: (its out, the lock fds)."""
    (tmp_path / "job.json").write_text(json.dumps(job(tmp_path / "no-model", TASKS[:1], replicas=2)))
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "count").write_text("2")
    return out, [_hold(out / "shards" / str(k), pid) for k, pid in enumerate(pids)]


def test_a_shard_still_held_by_an_earlier_worker_is_waited_for_not_burnt(tmp_path):
    """A rerun right after `budget eval --replicas` was killed: its replicas got SIGTERM and are still flushing
    their batches when the new supervisor starts. A held shard is not started (a replica started on it would exit
    busy at once, and four such starts failed the run in two seconds); once it is free its replica starts, once."""
    import os

    out, held = _two_shards_held(tmp_path)
    polls, starts_while_held = [0], []

    def sleep(s):  # the supervisor's poll: the earlier workers let go of their shards after 6 polls
        time.sleep(0.02)  # lets the replicas run between polls (no wall time is asserted)
        polls[0] += 1
        if held:
            starts_while_held.append(dict(sup.starts))
        if polls[0] == 6:
            for fd in held:
                os.close(fd)
            held.clear()

    # a replica that takes its shard's directory (as the worker does) and ends at once, its shard not done
    replica = (sys.executable, "-c", "import sys; from runner.worker import files; files.lock_out(sys.argv[2])")
    sup = Supervisor(tmp_path / "job.json", out, sleep=sleep, gpus=["0", "1"], worker=replica)
    code = sup.main()
    assert starts_while_held and all(s == {0: 0, 1: 0} for s in starts_while_held), starts_while_held
    assert code == 3 and sup.error is None and sup.starts == {0: 1, 1: 1}, (code, sup.error, sup.starts)
    held_by = [(out / "shards" / k / files.LOCK_FILE).read_text() for k in "01"]
    assert all(x.startswith("pid ") and x != "pid 4242\n" for x in held_by), f"each shard taken by its replica: {held_by}"


def test_a_shard_held_for_good_fails_the_run_naming_its_holder(tmp_path):
    """Held past the wait (the injected clock's seconds): the run fails with who holds it, having started nothing."""
    out, fds = _two_shards_held(tmp_path, (4242, 4343))
    t = [0.0]
    sup = Supervisor(tmp_path / "job.json", out, sleep=lambda s: t.__setitem__(0, t[0] + 10), clock=lambda: t[0],
                     gpus=["0", "1"])
    assert sup.main() == 1
    assert "pid 4242" in sup.error and "held" in sup.error and "rerun" in sup.error, sup.error
    assert sup.starts == {0: 0, 1: 0} and 300 <= t[0] <= 320
    status = json.loads((out / "status.json").read_text())
    assert status["phase"] == "failed" and "pid 4242" in status["error"]
    del fds


@pytest.mark.timeout(60)
def test_a_stop_while_shards_wait_ends_the_run_stopped(tmp_path):
    """The STOP file (or SIGTERM) while shards wait in the queue - held, or put back after a replica died: nothing
    more starts and the supervisor exits 3 at once (it used to poll forever for a queue it would never start)."""
    out, fds = _two_shards_held(tmp_path)
    t = [0.0]

    def sleep(s):
        t[0] += 1
        if t[0] == 5:
            (out / "STOP").touch()

    sup = Supervisor(tmp_path / "job.json", out, sleep=sleep, clock=lambda: t[0], gpus=["0", "1"])
    assert sup.main() == 3 and sup.starts == {0: 0, 1: 0} and sup.stop_reason == "stop_file" and t[0] < 10
    assert json.loads((out / "status.json").read_text())["phase"] == "stopped"
    del fds

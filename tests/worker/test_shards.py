"""Shards (runner/worker/shards.py): every sample of a job is in exactly one shard whatever the count, what runs
once (the memory sweep, the fp16 check and the samples it re-runs) is shard 0's, and a shard's worker holds only its
own samples (the worker's Work, no model loaded). A supervisor restarted with another replica count hands the lines
merged so far to its new shards."""

from __future__ import annotations

import json

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

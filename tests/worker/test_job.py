"""job.json is parsed strictly: every mistake names its field, before any model is loaded."""

from __future__ import annotations

import pytest

from runner.worker import job as jobmod

BASE = {"schema": "gpubudget.job/1", "run_id": "r", "model": {"name": "m", "source": "/m"}, "quantization": "nf4",
        "tasks": [{"name": "c", "kind": "caption"}]}


def test_minimal_job_gets_defaults():
    j = jobmod.parse(BASE)
    assert j.batch_size == 1 and j.deadline is None and j.generation["max_new_tokens"] == 128
    assert j.tasks[0].dataset.kind == "synthetic" and j.tasks[0].image_size == (640, 480)


@pytest.mark.parametrize("change, message", [
    ({"schema": "gpubudget.job/2"}, "schema: expected 'gpubudget.job/1'"),
    ({"quantization": "int4"}, "job.quantization: 'int4' is not one of"),
    ({"bogus": 1}, "job.bogus: unknown field"),
    ({"tasks": [{"name": "c", "kind": "caption", "samples": 0}]}, "job.tasks[0].samples: must be at least 1"),
    ({"tasks": [{"name": "c", "kind": "ocr"}]}, "job.tasks[0].kind: 'ocr' is not one of"),
    ({"tasks": [{"name": "c", "kind": "caption", "image_size": [64]}]}, "job.tasks[0].image_size: expected [width, height]"),
    ({"tasks": [{"name": "s", "kind": "memory_sweep"}]}, "job.tasks[0].resolutions: a memory_sweep needs"),
    ({"tasks": [{"name": "v", "kind": "fp16_verify", "of_task": "x"}]}, "of_task: 'x' is not a task"),
    ({"tasks": [{"name": "c", "kind": "caption", "dataset": {"kind": "ftp"}}]}, "job.tasks[0].dataset.kind"),
    ({"batch_size": 0}, "job.batch_size: a positive integer or \"auto\""),
    ({"batch_size": True}, "job.batch_size: expected int or str"),
    ({"deadline": "2026-11-25T20:00:00"}, "job.deadline: give a time zone"),
    ({"deadline": "tomorrow"}, "job.deadline: 'tomorrow' is not an ISO 8601 time"),
    ({"model": {"name": "m"}}, "job.model.source: missing"),
    ({"generation": {"max_tokens": 3}}, "job.generation.max_tokens: unknown field"),
])
def test_bad_jobs_name_the_field(change, message):
    with pytest.raises(jobmod.JobError) as e:
        jobmod.parse({**BASE, **change})
    assert message in str(e.value)


def test_deadline_with_zulu_time():
    j = jobmod.parse({**BASE, "deadline": "2026-11-25T20:00:00Z", "batch_size": "auto"})
    assert j.deadline.utcoffset().total_seconds() == 0 and j.batch_size == "auto"

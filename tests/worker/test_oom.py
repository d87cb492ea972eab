"""An out-of-memory in the memory sweep is a result: recorded, its memory released, the run goes on.
The OOM is real: `sweep_memory_cap_mib` caps the process (on CPU its address space) the way a smaller
card would, and the 4096x4096 image's vision attention needs far more than the cap."""

from __future__ import annotations

from .conftest import job, lines, spawn, status, summary, write_job


def test_sweep_records_oom_and_carries_on(tiny_model, tmp_path):
    tasks = [
        {"name": "sweep", "kind": "memory_sweep", "samples": 1, "resolutions": [[64, 64], [4096, 4096], [128, 128]]},
        {"name": "after", "kind": "caption", "samples": 2, "image_size": [64, 64]},
    ]
    doc = job(tiny_model, tasks, "fp32", sweep_memory_cap_mib=64,
              image_limits={"min_pixels": 4096, "max_pixels": 4096 * 4096})
    out = tmp_path / "out"
    proc = spawn(write_job(tmp_path, doc), out)  # a subprocess: the cap must not touch the test process
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    sweep = {tuple(x["resolution"]): x for x in lines(out, "sweep")}
    assert [sweep[r]["status"] for r in [(64, 64), (4096, 4096), (128, 128)]] == ["ok", "oom", "ok"]
    oom = sweep[(4096, 4096)]
    assert "allocate" in oom["error"] or "memory" in oom["error"].lower()
    assert "peak_memory_bytes" not in oom and oom["resolution"] == [4096, 4096]
    s = summary(out)
    assert s["complete"] and s["tasks"]["sweep"]["oom"] == 1 and s["tasks"]["sweep"]["ok"] == 2
    assert s["tasks"]["sweep"]["largest_ok"] == [128, 128]
    assert [r["status"] for r in s["tasks"]["sweep"]["by_resolution"]] == ["ok", "ok", "oom"]
    # the run went on after the OOM, with the memory back
    assert s["tasks"]["after"]["ok"] == 2 and status(out)["phase"] == "done"
    assert sweep[(128, 128)]["peak_memory_bytes"] < sweep[(64, 64)]["peak_memory_bytes"] + 64 * 2**20


def test_batches_split_in_halves_until_they_fit():
    from runner.worker.engine import OutOfMemory
    from runner.worker.tasks.base import split_on_oom

    tried = []

    def attempt(batch):  # fits two at a time, and "c" never fits
        tried.append("".join(batch))
        if len(batch) > 2 or batch == ["c"]:
            raise OutOfMemory("CUDA out of memory")
        return [{"id": s, "status": "ok"} for s in batch]

    got = split_on_oom(list("abcde"), attempt, lambda s, e: {"id": s, "status": "oom", "error": e})
    assert [(x["id"], x["status"]) for x in got] == [("a", "ok"), ("b", "ok"), ("c", "oom"), ("d", "ok"), ("e", "ok")]
    assert tried == ["abcde", "ab", "cde", "c", "de"]

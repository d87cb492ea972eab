"""Untrusted input on the instance: every malformed job is refused before the model loads; every
malformed row is that sample's error (the run goes on); nothing hangs; nothing reads outside the dataset;
a damaged result line does not cost the finished lines after it; one writer per output directory."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from runner.worker import datasets, files, manifests
from runner.worker import job as jobmod
from runner.worker.run import EXIT_BUSY
from tests.publicdata import Server, mp4

from .conftest import job, lines, run_inline, summary, write_job

BASE = {"schema": "gpubudget.job/1", "run_id": "r", "model": {"name": "m", "source": "/m"}, "quantization": "nf4",
        "tasks": [{"name": "c", "kind": "caption"}]}
VIDEO = {"name": "v", "kind": "video"}


@pytest.mark.parametrize("change, message", [
    ({"run_id": "../../etc"}, "job.run_id: '../../etc' is not allowed"),
    ({"tasks": [{"name": "../../victim", "kind": "caption"}]}, "job.tasks[0].name: '../../victim' is not allowed"),
    ({"tasks": [{"name": ".hidden", "kind": "caption"}]}, "is not allowed"),
    ({"heartbeat_s": -1}, "job.heartbeat_s: expected seconds"),
    ({"heartbeat_s": float("nan")}, "job.heartbeat_s: expected seconds"),
    ({"tasks": [{**VIDEO, "video": {"fps": 0}}]}, "job.tasks[0].video.fps: must be a positive number"),
    ({"tasks": [{**VIDEO, "video": {"source_fps": float("inf")}}]}, "video.source_fps: must be a positive number"),
    ({"tasks": [{**VIDEO, "video": {"max_frames": 0}}]}, "video.max_frames: must be between"),
    ({"tasks": [{"name": "c", "kind": "caption", "prompt": "x" * 10_000_000}]}, "job.tasks[0].prompt: 10000000"),
    ({"generation": {"temperature": "hot"}}, "job.generation.temperature: expected float"),
    ({"generation": {"max_new_tokens": -5}}, "job.generation.max_new_tokens: expected integer"),
    ({"generation": {"do_sample": 1}}, "job.generation.do_sample: expected true or false"),
    ({"image_limits": {"max_pixels": 10**12}}, "job.image_limits.max_pixels: expected an integer"),
    ({"image_limits": {"min_pixels": 5000, "max_pixels": 4000}}, "min_pixels is above max_pixels"),
    ({"image_limits": {"megapixels": 1}}, "job.image_limits.megapixels: unknown field"),
])
def test_malformed_jobs_are_refused_before_the_model_loads(change, message):
    with pytest.raises(jobmod.JobError) as e:
        jobmod.parse({**BASE, **change})
    assert message in str(e.value)


def _parse_task(**kw):
    return jobmod._task({"name": "t", "kind": "caption", "samples": 50, **kw}, "t")


def _job(**extra):
    return jobmod.parse({**BASE, **extra})


def test_bad_rows_are_per_sample_errors_and_nothing_leaves_the_dataset(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(data / "img" / "ok.png")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), "blue").save(secret)
    (data / "img" / "link.png").symlink_to(secret)  # a symlink pointing out of the dataset
    os.mkfifo(data / "img" / "fifo.png")
    with open(data / "img" / "huge.png", "wb") as f:  # sparse: over the image cap, taking no disk
        f.truncate(manifests.MAX_MEDIA_BYTES["image"] + 1)
    rows = [
        '{"id": "ok", "image": "img/ok.png"}',
        json.dumps({"id": "abs", "image": str(secret)}),
        '{"id": "up", "image": "../secret.png"}',
        '{"id": "link", "image": "img/link.png"}',
        '{"id": "int", "image": 7}',
        '{"id": "null", "image": null}',
        '{"id": "noframes", "frames": []}',
        '{"id": "fps0", "frames": ["img/ok.png", "img/ok.png"], "fps": 0}',
        '{"id": "fifo", "image": "img/fifo.png"}',
        '{"id": "big", "image": "img/ok.png", "prompt": "%s"}' % ("x" * 100_000),
        '{"id": "torn", "image": ',
        '{"id": "ok", "image": "img/ok.png", "prompt": "a repeat of an id"}',
        '["not", "an", "object"]',
        json.dumps({"id": "long", "image": f"img/{'a' * 5000}.png"}),  # an OSError (name too long) ended the task
        '{"id": "huge", "image": "img/huge.png"}',
    ]
    (data / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode() + b"\n")  # with a BOM
    got = {s.id: s for s in datasets.resolve(_parse_task(dataset={"kind": "local", "path": "data/m.jsonl"}), _job(),
                                             tmp_path, tmp_path / "cache")}
    assert list(got) == ["ok", "abs", "up", "link", "int", "null", "noframes", "fps0", "fifo", "big", "line-11",
                         "line-13", "long", "huge"]  # the repeated id keeps its first row
    assert got["ok"].error == "" and got["ok"].image == (data / "img" / "ok.png").resolve()
    for sid, message in [("abs", "relative to the manifest"), ("up", "relative to the manifest"),
                         ("link", "points outside the dataset"), ("int", "expected a path string"),
                         ("null", "expected a path string"), ("noframes", "non-empty list"),
                         ("fps0", "fps: expected a positive number"), ("fifo", "is not a regular file"),
                         ("big", "over the 65536 cap"), ("line-11", "not JSON"), ("line-13", "expected an object"),
                         ("long", "a media path of 5008 characters"), ("huge", "over the 64 MiB cap of an image")]:
        assert message in got[sid].error, (sid, got[sid].error)
        assert got[sid].image is None and got[sid].video is None  # nothing outside was ever opened


def test_url_manifest_allows_http_only_and_caps_sizes(tmp_path):
    root = tmp_path / "www"
    (root / "m").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(root / "m" / "ok.png")
    (root / "m" / "huge.png").write_bytes(b"\0" * (manifests.MAX_MEDIA_BYTES["image"] + 1))
    local = tmp_path / "local.png"
    Image.new("RGB", (32, 32), "blue").save(local)
    rows = [{"id": "ok", "image": "ok.png"}, {"id": "file", "image": local.as_uri()},
            {"id": "huge", "image": "huge.png"}]
    (root / "m" / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = Server(root)
    try:
        task = _parse_task(dataset={"kind": "url", "url": server.url + "m/set.jsonl"})
        got = {s.id: s for s in datasets.resolve(task, _job(allow_private_urls=True), tmp_path, tmp_path / "cache")}
        with pytest.raises(datasets.DatasetError, match="only http"):
            datasets.resolve(_parse_task(dataset={"kind": "url", "url": (root / "m" / "set.jsonl").as_uri()}),
                             _job(), tmp_path, tmp_path / "cache2")
    finally:
        server.close()
    assert got["ok"].error == "" and got["ok"].image.read_bytes() == (root / "m" / "ok.png").read_bytes()
    assert "only http(s)" in got["file"].error and got["file"].image is None  # no local file copied
    assert "MiB cap" in got["huge"].error


def test_damaged_middle_line_keeps_the_lines_after_it(tmp_path):
    path = tmp_path / "t.jsonl"
    good = [json.dumps({"id": f"s{i}", "status": "ok"}) for i in range(4)]
    path.write_text(good[0] + "\n" + good[1] + "\n" + '{"id": "s9", "sta\x00\x00' + "\n" + good[2] + "\n" + good[3]
                    + "\n" + '{"id": "torn')
    rf = files.ResultFile(path)
    assert [x["id"] for x in rf.lines] == ["s0", "s1", "s2", "s3"] and rf.damaged == 1
    assert path.read_text().endswith(good[3] + "\n")  # only the torn tail is cut; the file is otherwise kept


@pytest.mark.timeout(600)
def test_bad_rows_do_not_kill_the_run_and_nothing_hangs(tiny_model, tmp_path):
    """Through the real worker (in this process: a hang would hang the test, and its timeout fails it): a
    decompression bomb, a FIFO, an empty frames list, fps 0, a 100k-character prompt and a damaged line each
    become one error line; the good samples run; the worker exits 0."""
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    Image.new("1", (9000, 8000)).save(tmp_path / "bomb.png")  # 72 Mpx of zeros: a few KB on disk
    os.mkfifo(tmp_path / "fifo.png")
    mp4(tmp_path / "clip.mp4")
    rows = [{"id": "ok", "image": "ok.png"}, {"id": "bomb", "image": "bomb.png"}, {"id": "fifo", "image": "fifo.png"},
            {"id": "long", "image": "ok.png", "prompt": "y" * 100_000}]
    clips = [{"id": "clip", "video": "clip.mp4"}, {"id": "empty", "frames": []},
             {"id": "fps0", "frames": ["ok.png", "ok.png"], "fps": 0}, {"id": "fifo-v", "video": "fifo.png"}]
    (tmp_path / "img.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn\n")
    (tmp_path / "vid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clips))
    tasks = [{"name": "cap", "kind": "caption", "samples": 10, "dataset": {"kind": "local", "path": "img.jsonl"}},
             {"name": "vid", "kind": "video", "samples": 10, "dataset": {"kind": "local", "path": "vid.jsonl"},
              "video": {"fps": 1, "max_frames": 4, "min_frames": 2}}]
    out = tmp_path / "out"
    assert run_inline(write_job(tmp_path, job(tiny_model, tasks, batch_size=4)), out) == 0
    cap = {x["id"]: x for x in lines(out, "cap")}
    vid = {x["id"]: x for x in lines(out, "vid")}
    assert cap["ok"]["status"] == "ok" and vid["clip"]["status"] == "ok"
    assert "Mpx cap" in cap["bomb"]["error"] and "not a regular file" in cap["fifo"]["error"]
    assert "65536" in cap["long"]["error"] and "not JSON" in cap["line-5"]["error"]
    assert "non-empty" in vid["empty"]["error"] and "fps" in vid["fps0"]["error"]
    assert "not a regular file" in vid["fifo-v"]["error"]
    s = summary(out)
    assert s["tasks"]["cap"]["done"] == 5 and s["tasks"]["vid"]["done"] == 4


def test_decode_keeps_only_the_sampled_frames(tmp_path):
    from runner.worker.tasks.video import _decode

    mp4(tmp_path / "clip.mp4")  # 60 frames at 12 fps
    spec = jobmod.Video(fps=1, max_frames=4, min_frames=2)
    frames, idx, total, fps = _decode(tmp_path / "clip.mp4", spec)
    assert total == 60 and fps == 12.0 and idx == [0, 12, 24, 36] and frames.shape[0] == 4


def test_one_writer_per_output_directory(tiny_model, tmp_path):
    """While another writer holds the output directory (its flock, taken here as another worker would), a
    worker refuses to start - before loading anything - and leaves the files alone; the lock goes with its
    holder."""
    task = {"name": "cap", "kind": "caption", "samples": 2, "image_size": [64, 64]}
    job_path = write_job(tmp_path, job(tiny_model, [task], batch_size=1))
    out = tmp_path / "out"
    out.mkdir()
    held = files.lock_out(out)  # the first writer
    try:
        assert "in use by another worker (pid" in (files.locked(out) or "")
        assert run_inline(job_path, out) == EXIT_BUSY
        assert not [p for p in out.rglob("*") if p.is_file() and p.name != files.LOCK_FILE]  # it wrote nothing
    finally:
        os.close(held)
    assert files.locked(out) is None  # released with its holder
    assert run_inline(job_path, out) == 0 and len(lines(out, "cap")) == 2

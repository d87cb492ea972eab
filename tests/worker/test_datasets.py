"""Datasets: local manifests, URL manifests (retries, checksums) and the builtin COCO sampler, all
against files on disk or a loopback HTTP server — never the internet."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

from runner.worker import datasets
from runner.worker import job as jobmod
from tests.publicdata import Server, fake_coco


@pytest.fixture
def http(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    s = Server(root)
    yield s
    s.close()


def _png(path, size=(64, 48), colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _task(**kw):
    return jobmod._task({"name": "t", "kind": "caption", "samples": 5, **kw}, "t")


def _job(**kw):
    return jobmod.parse({"schema": "gpubudget.job/1", "run_id": "r", "model": {"name": "m", "source": "/m"},
                         "quantization": "fp32", "tasks": [{"name": "t", "kind": "caption"}], "seed": 3, **kw})


def test_local_manifest_relative_paths_and_limit(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "a", "image": "imgs/a.png", "question": "Q?", "answers": ["x"]}) + "\n\n"
        + json.dumps({"id": "b", "image": "imgs/b.png", "keywords": ["月"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    got = datasets.resolve(_task(dataset={"kind": "local", "path": "m.jsonl"}), _job(limit=1), tmp_path, tmp_path)
    assert [s.id for s in got] == ["a"] and got[0].prompt == "Q?" and got[0].image == tmp_path / "imgs" / "a.png"
    got = datasets.resolve(_task(dataset={"kind": "local", "path": str(tmp_path / "m.jsonl")}), _job(), tmp_path, tmp_path)
    assert got[1].keywords == ["月"]


@pytest.mark.parametrize("content, sample, message", [
    ('{"id": "a", "image": "missing.png"}\n', "a", "image file"),
    ('{"id": "a"\n', "line-1", "m.jsonl:1: not JSON"),
])
def test_local_manifest_bad_rows_are_sample_errors(tmp_path, content, sample, message):
    """On the instance a bad row is that sample's error (tests/worker/test_untrusted.py has the full set);
    before launch the controller refuses them (tests/cli/test_untrusted.py)."""
    (tmp_path / "m.jsonl").write_text(content)
    got = datasets.resolve(_task(dataset={"kind": "local", "path": "m.jsonl"}), _job(), tmp_path, tmp_path)
    assert [s.id for s in got] == [sample] and message in got[0].error


def test_url_manifest_with_retry_and_checksums(http, tmp_path):
    data = _png(http.root / "media" / "one.png")
    rows = [{"id": "one", "image": "media/one.png", "references": ["a red picture"],
             "sha256": {"image": hashlib.sha256(data).hexdigest()}}]
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (http.root / "set.jsonl").write_bytes(manifest)
    http.fail_first = {"/set.jsonl"}  # a transient 503 is retried
    task = _task(dataset={"kind": "url", "url": http.url + "set.jsonl", "sha256": hashlib.sha256(manifest).hexdigest()})
    got = datasets.resolve(task, _job(allow_private_urls=True), tmp_path, tmp_path / "cache")
    assert got[0].references == ["a red picture"] and got[0].image.read_bytes() == data
    assert http.hits["/set.jsonl"] == 2 and http.hits["/media/one.png"] == 1
    datasets.resolve(task, _job(allow_private_urls=True), tmp_path, tmp_path / "cache")  # cached: no new downloads
    assert http.hits["/set.jsonl"] == 2 and http.hits["/media/one.png"] == 1


def test_url_checksum_mismatch_and_missing_file_fail_clearly(http, tmp_path):
    (http.root / "set.jsonl").write_text('{"id": "x"}\n')
    bad = _task(dataset={"kind": "url", "url": http.url + "set.jsonl", "sha256": "0" * 64})
    with pytest.raises(datasets.DatasetError, match="sha256"):
        datasets.resolve(bad, _job(allow_private_urls=True), tmp_path, tmp_path / "cache")
    assert http.hits["/set.jsonl"] == 2  # one retry as a corrupt transfer, then give up
    gone = _task(dataset={"kind": "url", "url": http.url + "nope.jsonl"})
    with pytest.raises(datasets.DatasetError, match="HTTP 404"):
        datasets.resolve(gone, _job(allow_private_urls=True), tmp_path, tmp_path / "cache")
    assert http.hits["/nope.jsonl"] == 1  # a 404 is not retried


def test_builtin_coco_sampler_is_seeded(http, tmp_path):
    fake_coco(http.root)
    task = _task(samples=4, dataset={"kind": "builtin", "name": "coco-val2017-captions", "url": http.url})
    first = datasets.resolve(task, _job(allow_private_urls=True), tmp_path, tmp_path / "c1")
    again = datasets.resolve(task, _job(allow_private_urls=True), tmp_path, tmp_path / "c2")
    other = datasets.resolve(task, _job(allow_private_urls=True, seed=4), tmp_path, tmp_path / "c3")
    assert [s.id for s in first] == [s.id for s in again] != [s.id for s in other]
    assert len({s.id for s in first}) == 4
    s = first[0]
    i = int(s.id) - 1000
    assert s.references == [f"caption {k} of image {i}" for k in range(5)]
    assert s.image.read_bytes() == (http.root / "val2017" / f"{i:012d}.jpg").read_bytes()
    assert sum(v for k, v in http.hits.items() if k.startswith("/val2017/")) == 12  # only the sampled images
    with pytest.raises(datasets.DatasetError, match="asked for 20 COCO images"):
        datasets.resolve(_task(samples=20, dataset={"kind": "builtin", "name": "coco-val2017-captions",
                                                    "url": http.url}), _job(allow_private_urls=True), tmp_path, tmp_path / "c1")


def test_unknown_builtin(tmp_path):
    """Refused where the job is read, before any model is loaded."""
    with pytest.raises(jobmod.JobError, match="'imagenet' is not a builtin caption dataset"):
        _task(dataset={"kind": "builtin", "name": "imagenet"})
    with pytest.raises(jobmod.JobError, match="'docvqa-val' is not a builtin caption dataset"):
        _task(dataset={"kind": "builtin", "name": "docvqa-val"})


def test_the_worker_fetches_only_what_the_job_allows_and_follows_no_redirect_elsewhere(http, tmp_path):
    """On the instance each address fetched - a URL manifest's media too, known only there - and each redirect
    is checked by the job's rule: a loopback address without `allow_private_urls`, and a redirect to ftp://,
    are refused before a byte is fetched from them."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from runner.worker.sample import DatasetError

    (http.root / "set.jsonl").write_text('{"id": "x", "image": "media/one.png", "caption": "c"}\n')
    task = _task(dataset={"kind": "url", "url": http.url + "set.jsonl"})
    with pytest.raises(DatasetError, match="private or local"):
        datasets.resolve(task, _job(), tmp_path, tmp_path / "cache")
    assert not http.hits

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "ftp://example.com/set.jsonl")
            self.end_headers()

        def log_message(self, *a):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        moved = _task(dataset={"kind": "url", "url": f"http://127.0.0.1:{server.server_port}/set.jsonl"})
        with pytest.raises(DatasetError, match="only http"):
            datasets.resolve(moved, _job(allow_private_urls=True), tmp_path, tmp_path / "cache2")
    finally:
        server.shutdown()
        server.server_close()


def test_synthetic_images_are_the_same_for_the_same_seed():
    """Every synthetic kind, the memory sweep's noise included (PIL's effect_noise draws from an unseeded C rand():
    two sweeps of one plan fed different pictures, and a test of different answers per sample could collide)."""
    from runner.worker import synthetic

    for kind in ("caption", "document", "poetry", "memory_sweep"):
        a, b = synthetic.image(kind, (48, 32), 7)[0], synthetic.image(kind, (48, 32), 7)[0]
        assert a.tobytes() == b.tobytes(), kind
    assert synthetic.image("memory_sweep", (48, 32), 7)[0].tobytes() != synthetic.image("memory_sweep", (48, 32), 8)[
        0].tobytes()

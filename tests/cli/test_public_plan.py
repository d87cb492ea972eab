"""`plans/qwen3-vl-8b-public.yaml` runs with no file of the user's: every task fetches a public source on
the instance. Here the sources are a loopback mirror in their own formats (tests/publicdata.py): the
shipped plan, pointed at the mirror and shrunk to the tiny model, evaluates every task end to end;
a rerun downloads nothing again (cached); a broken source is a clear error, not a hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from runner.worker import datasets
from runner.worker import job as jobmod
from runner.worker.tiny import NAME as TINY
from tests.publicdata import Server, mirror

REPO = Path(__file__).resolve().parents[2]
PUBLIC = REPO / "plans" / "qwen3-vl-8b-public.yaml"


@pytest.fixture
def public_mirror(tmp_path):
    server = mirror(tmp_path / "www")
    yield server
    server.close()


def pointed_at(server: Server, directory: Path) -> Path:
    """The shipped public plan, its builtin datasets fetched from `server`, on the tiny model."""
    plan = yaml.safe_load(PUBLIC.read_text(encoding="utf-8"))
    plan["model"] = TINY
    plan["generation"] = {"max_new_tokens": 4, "do_sample": False}
    plan["image_limits"] = {"min_pixels": 4096, "max_pixels": 65536}
    plan["allow_private_urls"] = True  # the mirror is on loopback
    builtin = [t for t in plan["tasks"] if (t.get("dataset") or {}).get("kind") == "builtin"]
    assert {t["dataset"]["name"] for t in builtin} == {"coco-val2017-captions", "docvqa-val",
                                                       "coco-val2017-multiturn", "public-clips"}
    assert all((t.get("dataset") or {}).get("kind") in ("builtin", "synthetic", None) for t in plan["tasks"])
    for t in builtin:
        t["dataset"]["url"] = server.url + ("clips/" if t["dataset"]["name"] == "public-clips" else "")
    path = directory / "public.yaml"
    path.write_text(yaml.safe_dump(plan, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.slow
def test_the_public_plan_evaluates_every_task_from_public_sources(cli, public_mirror, tiny_model, tmp_path,
                                                                   budget_home):
    (budget_home / "models").mkdir(parents=True)
    (budget_home / "models" / TINY).symlink_to(tiny_model, target_is_directory=True)
    plan = pointed_at(public_mirror, tmp_path)
    out = tmp_path / "out"
    code, stdout, err = cli("eval", plan, "--quant", "nf4", "--limit", "2", "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["complete"], summary
    tasks = summary["tasks"]
    assert {k: v["done"] for k, v in tasks.items()} == {"coco_captions": 2, "documents": 2, "multiturn_vqa": 2,
                                                         "digits": 2, "memory_sweep": 6, "video": 2, "fp16_check": 2}
    assert all(v["ok"] == v["done"] for v in tasks.values()), tasks

    def lines(task):
        return [json.loads(x) for x in (out / "results" / f"{task}.jsonl").read_text().splitlines()]
    docs = lines("documents")
    for x in docs:  # each line carries its row's question id and accepted answers (fake_docvqa: 100 + row)
        row = int(x["id"].removeprefix("docvqa-")) - 50000
        assert x["answers"] == [str(100 + row)] and "anls" in x
    turns = [t["question"] for t in lines("multiturn_vqa")[0]["turns"]]
    assert turns == [*datasets.MULTITURN_QUESTIONS[:4], datasets.MULTITURN_QUESTIONS[0]]  # the 5th repeats the 1st
    assert [x["id"] for x in lines("video")] == [c for c, _ in datasets.PUBLIC_CLIPS[:2]]
    fetched = dict(public_mirror.hits)
    assert sum(v for k, v in fetched.items() if k.startswith("/cached-assets/")) == 2  # only the rows used
    # resolving the same tasks again on this machine (a rerun, a resumed attempt) fetches nothing: all cached
    job = jobmod.load(out / "job.json")
    for task in job.tasks:
        if task.dataset.kind == "builtin":
            assert len(datasets.resolve(task, job, out, out / "cache")) == 2
    assert public_mirror.hits == fetched


def test_the_public_plan_needs_no_data_of_the_users(cli):
    code, out, err = cli("plan", "--plan", PUBLIC, "--yuan", "2000", "--json")
    assert code == 0, err
    nxt = json.loads(out)["next"]
    assert nxt["command"].startswith(f"budget run {PUBLIC} ") and not any("data init" in s for s in nxt["setup"])


def test_a_source_that_is_not_a_rows_page_is_one_error(public_mirror, tmp_path):
    (public_mirror.root / "bad").mkdir()
    (public_mirror.root / "bad" / "rows").write_text("<html>maintenance</html>")
    task = jobmod._task({"name": "d", "kind": "document", "samples": 2,
                         "dataset": {"kind": "builtin", "name": "docvqa-val", "url": public_mirror.url + "bad/"}}, "d")
    job = jobmod.parse({"schema": "gpubudget.job/1", "run_id": "r", "model": {"name": "m", "source": "/m"},
                        "quantization": "fp32", "tasks": [{"name": "t", "kind": "caption"}], "seed": 3,
                        "allow_private_urls": True})  # the loopback mirror
    with pytest.raises(datasets.DatasetError, match="not a dataset-viewer rows page"):
        datasets.resolve(task, job, tmp_path, tmp_path / "cache")


def test_downloads_are_http_only_and_capped(public_mirror, tmp_path, monkeypatch):
    from runner.worker import downloads

    monkeypatch.setattr(downloads, "_ALLOW_PRIVATE", [True])  # a job that allows its loopback mirror
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    with pytest.raises(datasets.DatasetError, match="only http"):
        datasets.download(secret.as_uri(), tmp_path / "got")
    assert not (tmp_path / "got").exists()
    with pytest.raises(datasets.DatasetError, match="cap"):
        datasets.download(public_mirror.url + "annotations/annotations_trainval2017.zip", tmp_path / "big",
                          max_bytes=100)
    assert not (tmp_path / "big").exists() and not (tmp_path / "big.part").exists()

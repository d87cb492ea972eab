"""`budget eval`: the worker on this machine through the CLI — the smoke plan with no download,
resume by rerunning, clear errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def budget(*args: str, cwd: Path, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, BUDGET_HOME=str(home), HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("budget-home")


@pytest.mark.slow
def test_smoke_plan_builds_the_tiny_model_and_runs_every_kind(home, tmp_path):
    out = tmp_path / "smoke"
    p = budget("eval", "plans/smoke.yaml", "--quant", "nf4", "--out", str(out), cwd=tmp_path, home=home)
    assert p.returncode == 0, p.stderr
    assert (home / "models" / "tiny-random-qwen3-vl" / "config.json").is_file()  # built offline on demand
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["quantization"] == "nf4"
    kinds = {t["kind"] for t in summary["tasks"].values()}
    assert kinds == {"caption", "document", "multiturn_vqa", "poetry", "memory_sweep", "video", "fp16_verify", "digits"}
    assert all(t["done"] == t["total"] > 0 for t in summary["tasks"].values())
    for name in summary["tasks"]:
        assert name in p.stdout  # the results table
    assert "GiB" in p.stdout and "complete" in p.stdout
    assert "/" in p.stderr  # the progress bar (done/total) went to stderr

    # Rerunning the same command resumes: nothing left to do, nothing recomputed.
    before = (out / "results" / "captions.jsonl").read_bytes()
    again = budget("eval", "plans/smoke.yaml", "--quant", "nf4", "--out", str(out), "--json", cwd=tmp_path, home=home)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)  # exactly one JSON document
    assert doc["attempt"] == 2 and doc["complete"] and doc["loads"] == []
    assert (out / "results" / "captions.jsonl").read_bytes() == before

    # --replicas 2 (runner/worker/replicas.py): two worker processes on disjoint shards, merged into one results
    # folder, the sweep and the fp16 check run once - and the replica on "GPU 1" killed with kill -9 as soon as it
    # works: its shard is finished by the other. Merged: exactly this single process's sample ids, each once.
    two = tmp_path / "two"
    env = dict(os.environ, BUDGET_HOME=str(home), HF_HUB_OFFLINE="1")
    ev = subprocess.Popen([sys.executable, "-m", "runner.cli", "eval", "plans/smoke.yaml", "--quant", "nf4", "--out",
                           str(two), "--replicas", "2", "--json"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    shard0, shard1 = two / "shards" / "0", two / "shards" / "1"
    end = time.monotonic() + 300
    while (json.loads((shard1 / "status.json").read_text()) if (shard1 / "status.json").exists() else {}).get(
            "phase") not in ("loading", "running"):
        assert ev.poll() is None and time.monotonic() < end, ev.communicate()
        time.sleep(0.02)
    os.kill(int((shard1 / ".worker.lock").read_text().split()[1]), signal.SIGKILL)
    stdout, stderr = ev.communicate(timeout=300)
    assert ev.returncode == 0, stderr
    merged = json.loads(stdout)
    assert merged["complete"] and merged["replica_count"] == 2
    for task in summary["tasks"]:
        assert sorted(ids(two, task)) == sorted(ids(out, task)) and len(set(ids(two, task))) == len(ids(two, task))
        assert merged["tasks"][task]["done"] == summary["tasks"][task]["done"], task
    assert ids(shard0, "sweep") and ids(shard0, "fp16_check") and not ids(shard1, "sweep") + ids(shard1, "fp16_check")
    assert [ld["quantization"] for ld in merged["loads"]].count("bf16") == 1  # one 16-bit reference load in all
    status = json.loads((two / "status.json").read_text())
    lost, other = status["replicas"][1], status["replicas"][0]
    assert lost["lost"] and lost["runs"] == 1 and other["runs"] == 2 and other["phase"] == "done"  # it took shard 1
    assert json.loads((shard1 / "status.json").read_text())["attempt"] == 2  # resumed where the killed one left it


def ids(out: Path, task: str) -> list[str]:
    from runner.worker import files

    return [x["id"] for x in files.ResultFile(out / "results" / f"{task}.jsonl").lines]


@pytest.mark.slow
def test_max_minutes_stops_then_a_rerun_with_a_model_path_limit_and_batch_size_finishes(home, tmp_path, tiny_model):
    """--max-minutes 0: the worker stops at its deadline before loading anything; the same job without it
    resumes there and finishes - from --model-path, --limit 1 a task, --batch-size auto."""
    out = tmp_path / "o"
    base = ["eval", "plans/smoke.yaml", "--model-path", str(tiny_model), "--quant", "fp32", "--limit", "1",
            "--batch-size", "auto", "--out", str(out)]
    p = budget(*base, "--max-minutes", "0", cwd=tmp_path, home=home)
    assert p.returncode == 1 and "the evaluation stopped early (deadline)" in p.stderr, p.stderr
    assert json.loads((out / "job.json").read_text())["deadline"].endswith("+00:00")
    p = budget(*base, "--json", cwd=tmp_path, home=home)  # same job without the deadline: resumes and finishes
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    job = json.loads((out / "job.json").read_text())
    assert job["model"]["source"] == str(tiny_model.resolve()) and "recipe" not in job["model"]
    assert doc["complete"] and all(t["done"] == t.get("total") for t in doc["tasks"].values() if "skipped" not in t)
    assert doc["tasks"]["captions"]["done"] == 1 and doc["tasks"]["sweep"]["done"] == 3  # 1 per resolution
    assert doc["batch_size"]["requested"] == "auto"


@pytest.mark.parametrize("args, message", [
    (["plans/smoke.yaml", "--quant", "int4"], "unknown quantization 'int4'"),
    (["plans/smoke.yaml", "--model-path", "/nonexistent"], "--model-path /nonexistent: no config.json there"),
    (["plans/smoke.yaml", "--batch-size", "0"], "--batch-size '0' is not a positive integer or auto"),
    (["plans/qwen3-vl-8b.yaml"], "4 data files of plan qwen3-vl-8b missing: "),
    (["nope.yaml"], "nope.yaml: no such plan file"),
])
def test_bad_input_is_one_line_exit_2(home, tmp_path, args, message):
    p = budget("eval", *args, cwd=tmp_path, home=home, timeout=60)
    assert p.returncode == 2, p.stderr
    first = p.stderr.strip().splitlines()[0]
    assert first.startswith("error:") and message in first, p.stderr
    assert "hint:" in p.stderr and "Traceback" not in p.stderr


def test_other_job_in_out_dir_is_refused_then_fresh(home, tmp_path, tiny_model):
    """A directory holding another job's results is refused before any worker starts; --fresh discards them
    (evaluate.prepare: the worker itself is not needed to check either)."""
    from planner.catalog import load_catalog
    from planner.plans import load_plan
    from runner import evaluate, jobs

    plan = tmp_path / "captions.yaml"
    plan.write_text("name: captions\nmodel: tiny-random-qwen3-vl\nquantizations: [nf4]\ngeneration: {max_new_tokens: 4}\n"
                    "tasks: [{name: captions, kind: caption, samples: 1, image_size: [64, 64]}]\n")
    out = tmp_path / "o"

    def job(quant):
        return jobs.build(load_plan(plan), plan, load_catalog(), home, quantization=quant, model_path=tiny_model,
                          limit=1)
    evaluate.prepare(out, job("fp32"), fresh=False)
    (out / "results").mkdir()
    (out / "results" / "captions.jsonl").write_text('{"id": "syn-0", "quantization": "fp32"}\n')
    base = ["eval", str(plan), "--model-path", str(tiny_model), "--limit", "1", "--out", str(out)]
    p = budget(*base, "--quant", "int8", cwd=tmp_path, home=home, timeout=120)
    assert p.returncode == 2 and "holds results of a different job (differs in: quantization)" in p.stderr
    assert (out / "results" / "captions.jsonl").exists()  # refused: nothing of it touched
    evaluate.prepare(out, job("int8"), fresh=True)
    assert not (out / "results").exists() and json.loads((out / "job.json").read_text())["quantization"] == "int8"


@pytest.mark.slow
def test_worker_failure_is_one_clear_line(home, tmp_path):
    bad = tmp_path / "broken-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "qwen3_vl"}')
    p = budget("eval", "plans/smoke.yaml", "--model-path", str(bad), "--out", str(tmp_path / "o"), cwd=tmp_path,
               home=home, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-2].startswith("error: evaluation failed: cannot load"), p.stderr
    assert "hint: details in" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_worker_cleanly_and_keeps_results(home, tmp_path, tiny_model):
    import signal
    import time

    import yaml

    plan = yaml.safe_load((REPO / "plans" / "smoke.yaml").read_text())
    plan["tasks"] = [dict(plan["tasks"][0], samples=400)]
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(plan))
    out = tmp_path / "o"
    env = dict(os.environ, BUDGET_HOME=str(home), HF_HUB_OFFLINE="1")
    # Ctrl-C's default disposition in the child: a suite started with SIGINT ignored (a background job, nohup,
    # some CI runners) would pass that on otherwise
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "eval", "long.yaml", "--model-path", str(tiny_model),
                             "--batch-size", "1", "--out", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = out / "results" / "captions.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_bytes().count(b"\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the CLI; the worker runs in its own session
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "error: the evaluation stopped early (sigterm); finished samples are kept in" in err
    assert "hint: rerun the same command to finish the rest" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "sigterm" and 3 <= summary["tasks"]["captions"]["done"] < 400
    assert results.read_bytes().endswith(b"\n")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_of_budget_eval_takes_its_worker_along(home, tmp_path):
    """The audit's two writers: kill -9 `budget eval`, rerun at once - the orphaned worker ran on and both
    appended to one file (80 lines for 40 ids). Now the worker dies with its parent, a directory still
    held is refused, and the rerun finishes with every id once."""
    import signal
    import time

    sys.path.insert(0, str(REPO / "infra" / "localcloud"))
    import localcloud

    from runner.worker import files

    plan = localcloud.caption_plan(REPO / "plans" / "smoke.yaml", tmp_path, "many", 30)
    out = tmp_path / "out"
    env = dict(os.environ, BUDGET_HOME=str(home), HF_HUB_OFFLINE="1")
    first = subprocess.Popen([sys.executable, "-m", "runner.cli", "eval", str(plan), "--out", str(out), "--quant",
                              "fp16"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results" / "captions.jsonl"
    end = time.monotonic() + 600
    while not (results.exists() and results.read_bytes().count(b"\n") >= 2):
        assert first.poll() is None and time.monotonic() < end
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    while files.locked(out):  # the worker got SIGTERM from the kernel: it flushes and exits
        assert time.monotonic() < end, "the worker outlived its parent"
        time.sleep(0.1)
    kept = results.read_bytes().count(b"\n")
    again = budget("eval", str(plan), "--out", str(out), "--quant", "fp16", cwd=tmp_path, home=home, timeout=600)
    assert again.returncode == 0, again.stderr
    ids = [json.loads(x)["id"] for x in results.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 30 and kept < 30

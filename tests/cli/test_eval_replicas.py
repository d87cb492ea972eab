"""`budget eval PLAN --replicas N` (runner/worker/replicas.py): a replica killed with kill -9 mid-run has its shard
finished by the other, nothing lost, nothing run twice. (The smoke plan's replicas - the same ids as one process, the
sweep and the fp16 check once - are checked beside its single-process run: tests/cli/test_eval.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.worker import files

from .test_eval import REPO

slow = pytest.mark.slow


def ids(out: Path, task: str) -> list[str]:
    return [x["id"] for x in files.ResultFile(out / "results" / f"{task}.jsonl").lines]


@slow
@pytest.mark.timeout(600)
def test_a_replica_killed_mid_run_has_its_shard_finished_by_the_other(tmp_path):
    sys.path.insert(0, str(REPO / "infra" / "localcloud"))
    import localcloud

    plan = localcloud.caption_plan(REPO / "plans" / "smoke.yaml", tmp_path, "many", 12)
    out = tmp_path / "out"
    env = dict(os.environ, BUDGET_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    ev = subprocess.Popen([sys.executable, "-m", "runner.cli", "eval", str(plan), "--out", str(out), "--quant",
                           "fp16", "--replicas", "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    shard = out / "shards" / "1"
    end = time.monotonic() + 300
    while not (shard / "results" / "captions.jsonl").exists() or len(ids(shard, "captions")) < 2:
        assert ev.poll() is None and time.monotonic() < end, ev.communicate()
        time.sleep(0.02)
    pid = int((shard / ".worker.lock").read_text().split()[1])
    os.kill(pid, signal.SIGKILL)  # the replica on "GPU 1", mid-shard
    killed_at = len(ids(shard, "captions"))
    _, stderr = ev.communicate(timeout=300)
    assert ev.returncode == 0, stderr
    assert killed_at < 6, "the replica must be killed mid-shard"
    merged = ids(out, "captions")
    assert sorted(merged) == sorted(f"syn-{i}" for i in range(12)) and len(merged) == len(set(merged))
    status = json.loads((out / "status.json").read_text())
    lost, other = status["replicas"][1], status["replicas"][0]
    assert lost["lost"] and lost["runs"] == 1 and other["runs"] == 2  # the shard went to the replica still alive
    s1 = json.loads((shard / "status.json").read_text())
    assert s1["phase"] == "done" and s1["attempt"] == 2  # resumed where the killed one left it
    assert json.loads((out / "summary.json").read_text())["tasks"]["captions"]["done"] == 12

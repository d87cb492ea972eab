"""`budget eval --engine server`: the worker's one OpenAI client against a real OpenAI-compatible server -
`transformers serve` (transformers' own, the `serve` extra) serving the tiny Qwen3-VL on loopback, on CPU.
Every task kind the engine can run, the same result fields as hf, resume after kill -9 of the worker and
after the server itself is killed and started again, with no sample lost or written twice; and `budget compare`
asking it as a reference model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.worker.engine_commands import ServerParams, command, health_path
from runner.worker.server import Server, free_port

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra" / "localcloud"))


class Served:
    """`transformers serve MODEL` on a loopback port, started as the worker starts an engine (server.Server, with
    the worker's own command line for it: the real CLI takes it), killed as a crash would kill it."""

    def __init__(self, model: Path, log: Path):
        self.model, self.log, self.port = model, log, free_port()
        self.server: Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, bound_s: float = 300) -> Served:
        argv = command(ServerParams(engine="transformers", model=str(self.model), served_name="tiny", port=self.port,
                                    quantization="fp32", device="cpu"))
        self.server = Server(argv, self.port, health_path("transformers"), self.log)
        self.server.start()
        self.server.wait_ready(bound_s, lambda: False, poll_s=0.05)
        return self

    def kill(self) -> None:
        proc = self.server.proc if self.server else None
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def budget(*args, home: Path, cwd: Path, timeout: float = 600, **kw):
    env = dict(os.environ, BUDGET_HOME=str(home), HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False, **kw)


def hf_fields(kind: str) -> set[str]:
    """The keys an hf result line of a single-image kind carries (tasks/base.py builds both)."""
    from runner.worker.generation import Batch, Output
    from runner.worker.tasks import base

    measures = base.measures(Output("x", 1, 1, 1), Batch([], 1.0, 0.5, [{"device": "cpu", "bytes": 1}]), 1)
    extra = {"caption": {"references"}, "document": {"answers", "anls"}, "poetry": {"keywords", "keyword_recall",
                                                                                    "keywords_found"}}
    return set(measures) | {"id", "task", "kind", "quantization", "attempt", "status", "finished_at", "prompt",
                            "prediction"} | extra.get(kind, set())


def every_kind_it_can(doc: dict, out: Path) -> None:
    """The smoke plan's summary and lines after the run: what the engine can run, with hf's fields."""
    tasks = doc["tasks"]
    assert doc["complete"] and tasks["captions"]["ok"] == tasks["captions"]["total"] == 16
    for name in ("documents", "multiturn", "poetry"):
        assert tasks[name]["ok"] == tasks[name]["total"] > 0, (name, tasks[name])
    assert "preallocates" in tasks["sweep"]["skipped"] and "16-bit check needs the hf engine" in tasks["fp16_check"]["skipped"]
    # transformers serve answers a video data URI with HTTP 500: each clip is an error line, the run goes on
    assert tasks["video"]["errors"] == tasks["video"]["total"] == 2
    assert all(ld["engine"] == "server" and ld["memory_after_load"] == [] for ld in doc["loads"])
    for task, kind in (("captions", "caption"), ("documents", "document"), ("poetry", "poetry")):
        for line in (out / "results" / f"{task}.jsonl").read_text().splitlines():
            x = json.loads(line)
            assert set(x) == hf_fields(kind), task
            assert x["prefill_tokens"] > 0 and 0 < x["decode_tokens"] <= 8 and x["visual_tokens"] is None
            assert 0 < x["ttft_s"] <= x["latency_s"] and x["peak_memory_bytes"] is None
    turns = [json.loads(x)["turns"] for x in (out / "results" / "multiturn.jsonl").read_text().splitlines()]
    assert all(len(t) == 5 for t in turns)  # five questions in one growing history


def worker_pid(out: Path) -> int | None:
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"runner.worker" in cmd and str(out).encode() in cmd:
            return int(d.name)
    return None


def wait_lines(path: Path, n: int, proc: subprocess.Popen, bound_s: float = 300) -> None:
    end = time.monotonic() + bound_s
    while not (path.exists() and path.read_bytes().count(b"\n") >= n):
        assert proc.poll() is None, "the eval ended first"
        assert time.monotonic() < end
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eval_against_a_real_server_runs_what_it_can_and_resumes_after_kill_9_of_the_worker_and_of_the_server(
        tiny_model, tmp_path):
    """The smoke plan (16 captions first) against a real server: its worker killed with kill -9 mid-batch and the
    plan run again; in that run the server killed and started again. Every task kind the engine can run
    finishes with hf's result fields, every sample once."""
    smoke = (REPO / "plans" / "smoke.yaml").read_text()
    plan = tmp_path / "smoke16.yaml"
    plan.write_text(smoke.replace("kind: caption\n    samples: 4", "kind: caption\n    samples: 16"))
    served = Served(tiny_model, tmp_path / "serve.log").start()
    try:
        out = tmp_path / "out"
        results = out / "results" / "captions.jsonl"
        args = ["eval", plan, "--engine", "server", "--base-url", served.url, "--served-model", tiny_model,
                "--concurrency", "2", "--quant", "bf16", "--out", out, "--json"]
        env = dict(os.environ, BUDGET_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
        first = subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=tmp_path, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_lines(results, 4, first)
        os.kill(worker_pid(out), signal.SIGKILL)  # the worker itself, mid-batch
        assert first.wait(timeout=120) == 1
        kept = results.read_bytes().count(b"\n")

        second = subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_lines(results, kept + 4, second)
        served.kill()  # the server dies mid-run; the worker's requests meet a closed port and are retried
        served.start()  # ... and it is back on the same port (a restarted engine, model reloaded)
        doc, err = second.communicate(timeout=600)
        if second.returncode != 0:  # the retries ran out before it was back: the run stopped, a rerun resumes
            assert "does not answer" in err, err
            again = budget(*args, home=tmp_path, cwd=tmp_path)
            assert again.returncode == 0, again.stderr
            doc = again.stdout
        every_kind_it_can(json.loads(doc), out)
        ids = [json.loads(x)["id"] for x in results.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 16 and kept < 16
        # `budget compare` asks the same server as a reference model (one that charges nothing): a run in the ledger
        two = tmp_path / "compare.yaml"  # its captions and digits (and the sweep, left out with a note): 2 calls
        two.write_text(smoke.split("  - name: documents", 1)[0] + "  - name: digits" + smoke.split("  - name: digits", 1)[1]
                       .split("  - name: video", 1)[0])
        cmp = budget("compare", two, "--reference", tiny_model, "--base-url", served.url, "--free", "--cases", "1",
                     "--json", home=tmp_path, cwd=tmp_path)
        assert cmp.returncode == 0, cmp.stderr
        got = json.loads(cmp.stdout)
        assert got["state"] == "done" and got["calls"] == 2 and got["spent_cny"] == "0.00"
        assert got["tasks"]["captions"]["ok"] == got["tasks"]["digits"]["ok"] == 1 and set(got["skipped"]) == {"sweep"}
    finally:
        served.kill()


@pytest.mark.parametrize("args, message", [
    (["run", "plans/smoke.yaml", "--engine", "server", "--yes"], "--engine server is for work from this machine"),
    (["eval", "plans/smoke.yaml", "--base-url", "http://127.0.0.1:1/v1"], "--base-url is for --engine server"),
    (["eval", "plans/smoke.yaml", "--engine", "server"], "--engine server needs --base-url"),
    (["eval", "plans/smoke.yaml", "--engine", "server", "--base-url", "file:///etc/passwd"], "needs --base-url with an http"),
    (["eval", "plans/smoke.yaml", "--engine", "server", "--base-url", "http://127.0.0.1:1/v1", "--api-key-env",
      "GPUBUDGET_TEST_UNSET_KEY"], "that variable is not set here"),
    (["eval", "plans/smoke.yaml", "--engine", "server", "--base-url", "http://127.0.0.1:1/v1", "--api-key-env",
      "sk-abc123"], "is not an environment variable name"),
    (["eval", "plans/smoke.yaml", "--engine", "tgi"], "--engine 'tgi' is not one of"),
    (["eval", "plans/smoke.yaml", "--concurrency", "4"], "--concurrency is for server engines"),
])
def test_engine_flags_are_checked_before_anything_runs(cli, budget_home, args, message):
    """One error line, one hint, exit 2, nothing written: an endpoint and its key never go to an instance."""
    os.environ.pop("GPUBUDGET_TEST_UNSET_KEY", None)
    code, _, err = cli(*args)
    assert code == 2 and message in err and "hint:" in err and "Traceback" not in err, err
    assert not (budget_home / "evals").exists() and not (budget_home / "ledger.db").exists()

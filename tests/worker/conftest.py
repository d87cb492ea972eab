"""Worker tests run the real worker (in this process or as a subprocess, as on an instance) on a tiny
random Qwen3-VL that the session builds offline, on CPU, with bitsandbytes' CPU kernels for nf4/int8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runner.worker import files
from runner.worker.run import Worker

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GEN = {"max_new_tokens": 6, "do_sample": False}
LIMITS = {"min_pixels": 4096, "max_pixels": 65536}


def job(model: Path, tasks: list[dict], quantization: str = "fp32", **extra) -> dict:
    return {"schema": "gpubudget.job/1", "run_id": "test", "model": {"name": "tiny", "source": str(model)},
            "quantization": quantization, "generation": dict(GEN), "image_limits": dict(LIMITS),
            "batch_size": 2, "seed": 7, "tasks": tasks, **extra}


def write_job(path: Path, doc: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "job.json").write_text(json.dumps(doc, ensure_ascii=False))
    return path / "job.json"


def run_inline(job_path: Path, out: Path) -> int:
    return Worker(job_path, out).main()


def spawn(job_path: Path, out: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "runner.worker", str(job_path), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def lines(out: Path, task: str) -> list[dict]:
    return files.ResultFile(out / "results" / f"{task}.jsonl").lines


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def status(out: Path) -> dict:
    return json.loads((out / "status.json").read_text(encoding="utf-8"))

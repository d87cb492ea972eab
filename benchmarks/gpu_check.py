"""GPU check of the worker against the planner (issue 3): build a random-weight model with the REAL
Qwen3-VL-2B (or 4B) architecture in fp16 on the GPU, run the caption and memory-sweep tasks through
the real worker (from_pretrained, batching, measurements), and put each measured peak beside
`budget plan`'s memory estimate for the same settings. Prints a table and writes gpu_check.json.

    python benchmarks/gpu_check.py [--arch Qwen3-VL-2B-Instruct] [--quant fp16] [--out DIR]
    python benchmarks/gpu_check.py --arch tiny-random-qwen3-vl --device cpu   # plumbing check, no GPU

Budget: ~2-4 min on an H100 for 2B (model build + save ~1 min, load, 8 captions, 5 resolutions).
The measured number is torch's allocator peak (max_memory_allocated); the planner's total also counts
the CUDA context and allocator slack, so the like-for-like figure is `planner total - context - slack`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.architecture import inventory  # noqa: E402
from planner.assumptions import Assumptions  # noqa: E402
from planner.catalog import load_catalog  # noqa: E402
from planner.memory import estimate, peak_of, weight_layout  # noqa: E402
from planner.models import EvalPlan  # noqa: E402
from planner.workload import task_loads  # noqa: E402
from runner import jobs  # noqa: E402
from runner.worker import tiny  # noqa: E402
from runner.worker.run import Worker  # noqa: E402

GIB = 1024**3


def make_plan(arch: str, samples: int, batch: int, resolutions: list[list[int]], new_tokens: int) -> EvalPlan:
    return EvalPlan.model_validate({
        "name": "gpu-check", "model": arch, "batch_size": batch, "seed": 1,
        "generation": {"max_new_tokens": new_tokens, "do_sample": False},
        "image_limits": {"min_pixels": 65536, "max_pixels": 4096 * 4096},
        "tasks": [
            {"name": "captions", "kind": "caption", "samples": samples, "image_size": [640, 480], "prompt_tokens": 8,
             "dataset": {"kind": "synthetic"}},
            {"name": "sweep", "kind": "memory_sweep", "samples": 1, "resolutions": resolutions, "prompt_tokens": 5,
             "dataset": {"kind": "synthetic"}},
        ]})


def planner_estimates(plan: EvalPlan, quant: str) -> dict:
    """What `budget plan` models for each pass shape of the plan, on one card."""
    cat = load_catalog()
    spec = cat.model(plan.model)
    a = Assumptions()
    w = weight_layout(spec, inventory(spec), quant, plan.keep_vision_16bit, plan.double_quant)
    out = {}
    for load in task_loads(plan, spec, a):
        if load.kind == "caption":
            shapes = {"captions": peak_of([(p, load.batch) for p in load.passes])}
        else:
            shapes = {f"{w_}x{h_}": peak_of([(p, 1)]) for (w_, h_), p in zip(plan.tasks[1].resolutions, load.passes,
                                                                               strict=True)}
        for key, peak in shapes.items():
            g = estimate(spec, w, quant, peak, 1, 80 * GIB, a).per_gpu[0]
            out[key] = {"total": g.total, "cuda_context": g.cuda_context, "allocator_slack": g.allocator_slack,
                        "weights": g.weights, "kv_cache": g.kv_cache, "activations": g.activations,
                        "vision_activations": g.vision_activations, "floor_adjust": g.floor_adjust,
                        "allocations": g.total - g.cuda_context - g.allocator_slack - g.floor_adjust}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="Qwen3-VL-2B-Instruct")
    ap.add_argument("--quant", default="fp16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--resolutions", default="448x448,896x896,1344x1344,2048x2048,3072x3072")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or tempfile.mkdtemp()))
    a = ap.parse_args()
    import torch

    resolutions = [[int(v) for v in r.split("x")] for r in a.resolutions.split(",")]
    plan = make_plan(a.arch, a.samples, a.batch, resolutions, a.new_tokens)
    spec = load_catalog().model(a.arch)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    t0 = time.monotonic()
    raw = json.loads((Path(__file__).resolve().parents[1] / "planner" / "data" / "models" / f"{spec.name}.json").read_text())
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(a.quant, torch.float16)
    model_dir = tiny.build(work / "model", config=tiny.with_tiny_tokens(raw), dtype=dtype, device=a.device,
                           min_pixels=plan.image_limits.min_pixels, max_pixels=plan.image_limits.max_pixels)
    if a.device == "cuda":
        torch.cuda.empty_cache()
    built_s = time.monotonic() - t0
    doc = jobs.build(plan, Path("gpu-check.yaml"), load_catalog(), work, quantization=a.quant, model_path=model_dir,
                     device=a.device)
    out = a.out / "worker"
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(doc))
    code = Worker(out / "job.json", out).main()
    summary = json.loads((out / "summary.json").read_text())
    if code != 0:
        print(f"worker exit {code}: {summary.get('error')}")
    est = planner_estimates(plan, a.quant)
    rows = []
    for name in ("captions", "sweep"):
        for x in (json.loads(line) for line in (out / "results" / f"{name}.jsonl").read_text().splitlines()):
            key = "captions" if name == "captions" else "x".join(map(str, x["resolution"]))
            e = est[key]
            measured = x.get("peak_memory_bytes")
            rows.append({"what": key, "id": x["id"], "status": x["status"], "visual_tokens": x.get("visual_tokens"),
                         "batch": x.get("batch_size"), "latency_s": x.get("latency_s"), "measured_bytes": measured,
                         "planner_total_bytes": e["total"], "planner_allocations_bytes": e["allocations"],
                         "error_pct": None if not measured else round(100 * (e["allocations"] - measured) / measured, 1),
                         "planner_parts": e})
    seen = set()
    print(f"{a.arch} ({spec.text.num_hidden_layers} layers, random weights) as {a.quant} on "
          f"{torch.cuda.get_device_name(0) if a.device == 'cuda' else 'cpu'}; built in {built_s:.0f} s; "
          f"load {summary['loads'][0]['load_s'] if summary['loads'] else '-'} s; memory after load "
          f"{[round(m['bytes'] / GIB, 2) for m in (summary['loads'][0]['memory_after_load'] if summary['loads'] else [])]} GiB")
    print(f"{'shape':>12} {'batch':>5} {'vis tok':>7} {'measured':>10} {'planner alloc':>13} {'error':>7} "
          f"{'planner total':>13} {'latency':>8}")
    for r in rows:
        if (r["what"], r["batch"]) in seen:
            continue
        seen.add((r["what"], r["batch"]))
        m = "OOM" if r["status"] != "ok" else f"{r['measured_bytes'] / GIB:.2f} GiB"
        err = "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f}%"
        print(f"{r['what']:>12} {r['batch'] or '-':>5} {r['visual_tokens'] or '-':>7} {m:>10} "
              f"{r['planner_allocations_bytes'] / GIB:>9.2f} GiB {err:>7} {r['planner_total_bytes'] / GIB:>9.2f} GiB "
              f"{(r['latency_s'] or 0):>7.2f}s")
    result = {"arch": a.arch, "quant": a.quant, "device": a.device, "built_s": built_s, "rows": rows,
              "summary": summary, "environment": summary.get("environment")}
    (a.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()

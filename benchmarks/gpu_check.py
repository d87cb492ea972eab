"""GPU check of the worker against the planner (issue 3): build a random-weight model with the REAL
Qwen3-VL-2B (or 4B) architecture in fp16 on the GPU, run the caption and memory-sweep tasks through
the real worker (from_pretrained, batching, measurements), and put each measured peak beside
`budget plan`'s memory estimate for the same settings. Prints a table and writes gpu_check.json.

    python benchmarks/gpu_check.py [--arch Qwen3-VL-2B-Instruct] [--quant fp16] [--out DIR]
    python benchmarks/gpu_check.py --arch tiny-random-qwen3-vl --device cpu   # plumbing check, no GPU
    python benchmarks/gpu_check.py --grid [--archs A,B] [--quants bf16,nf4,int8] [--deadline-s 420]

--grid measures what `budget calibrate --measurements FILE` reads: the real architectures with random
weights (no download), each quantization, a grid of (batch, prompt tokens, image size, new tokens) with
generation forced to full length; per point the time to first token (a 1-token generate), the whole
generate, the vision tower alone, and torch's peak allocated/reserved bytes. One JSON line per point in
OUT/measurements.jsonl (schema gpubudget.measurement/1), written as it goes (a timeout keeps what was
measured); then the estimate-vs-measured table.

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


# (batch, text prompt tokens, image (w, h) or None, new tokens): text-only, small and large images, a batch,
# a long prompt - enough spread to separate prefill compute from per-step streaming and overhead
GRID = [(1, 128, None, 64), (1, 32, (448, 448), 64), (1, 32, (1024, 1024), 32), (4, 32, (448, 448), 64),
        (1, 4096, None, 16)]


def _inputs(cfg, batch: int, prompt: int, image, torch, device):
    """Token ids and pixels the way Qwen3-VL's processor lays them out (no tokenizer needed): the
    image's placeholder tokens, then random text tokens."""
    v = cfg.vision_config
    ids = torch.randint(10, min(cfg.text_config.vocab_size, 151000), (batch, prompt), device=device)
    out = {}
    if image is not None:
        f = v.patch_size * v.spatial_merge_size
        gh, gw = max(1, round(image[1] / f)) * v.spatial_merge_size, max(1, round(image[0] / f)) * v.spatial_merge_size
        n_tok = gh * gw // v.spatial_merge_size**2
        vis = torch.full((batch, n_tok), cfg.image_token_id, device=device)
        ids = torch.cat([torch.full((batch, 1), cfg.vision_start_token_id, device=device), vis,
                         torch.full((batch, 1), cfg.vision_end_token_id, device=device), ids], dim=1)
        patch = v.in_channels * v.temporal_patch_size * v.patch_size**2
        out["pixel_values"] = torch.randn(batch * gh * gw, patch, device=device, dtype=torch.bfloat16)
        out["image_grid_thw"] = torch.tensor([[1, gh, gw]] * batch, device=device)
    out["input_ids"] = ids
    out["attention_mask"] = torch.ones_like(ids)
    return out


def _timed(fn, torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    r = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, r


def grid(a) -> None:
    """Measure every (arch, quantization, grid point); see the module docstring."""
    import shutil

    import torch
    from transformers import AutoConfig

    started = time.monotonic()
    out_file = a.out / "measurements.jsonl"
    dev = a.device
    if dev != "cuda":  # plumbing check of the grid on CPU: no allocator statistics there
        for name in ("empty_cache", "reset_peak_memory_stats"):
            setattr(torch.cuda, name, lambda *_: None)
        for name in ("memory_allocated", "max_memory_allocated", "max_memory_reserved"):
            setattr(torch.cuda, name, lambda *_: 0)
    card = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    versions = {"torch": torch.__version__}
    for mod in ("transformers", "bitsandbytes", "accelerate"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    root = Path(__file__).resolve().parents[1] / "planner" / "data" / "models"
    scratch = Path(a.scratch)
    print(f"grid on {card}: {versions}", flush=True)
    for arch in a.archs.split(","):
        raw = json.loads((root / f"{arch}.json").read_text())
        cfg = AutoConfig.for_model(**tiny.with_tiny_tokens(raw))  # placeholder ids inside any vocabulary
        saved = scratch / arch
        for quant in a.quants.split(","):
            if time.monotonic() - started > a.deadline_s:
                print(f"deadline: {arch} {quant} not measured", flush=True)
                continue
            try:
                _measure(a, arch, quant, cfg, saved, dev, card, versions, out_file, started)
            except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
                print(f"{arch} {quant} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            torch.cuda.empty_cache()
        shutil.rmtree(saved, ignore_errors=True)
    print(f"wrote {out_file} in {time.monotonic() - started:.0f} s", flush=True)


def _measure(a, arch, quant, cfg, saved, dev, card, versions, out_file, started) -> None:
    """Load `arch` as `quant` and measure the grid on it (bf16 builds the random weights in place and
    saves them once for the quantized loads, which read them back through bitsandbytes)."""
    import torch
    from transformers import BitsAndBytesConfig, GenerationConfig, Qwen3VLForConditionalGeneration

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.monotonic()
    if quant in ("bf16", "fp16"):
        torch.manual_seed(0)
        with torch.device(dev):
            model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16).eval()
        if any(q not in ("bf16", "fp16") for q in a.quants.split(",")) and not saved.exists():
            model.save_pretrained(saved)
    else:
        if not saved.exists():
            torch.manual_seed(0)
            with torch.device(dev):
                m16 = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
            m16.save_pretrained(saved)
            del m16
            torch.cuda.empty_cache()
        q = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16) if quant == "nf4"
             else BitsAndBytesConfig(load_in_8bit=True))
        model = Qwen3VLForConditionalGeneration.from_pretrained(saved, quantization_config=q, dtype=torch.bfloat16,
                                                                device_map=dev).eval()
    load_s = time.monotonic() - t0
    weights = torch.cuda.memory_allocated() - base
    # greedy, never stopping early; the placeholder/special ids (0..15) are never generated - a random model
    # that emits a vision placeholder would send decode down paths a real answer never takes
    gen = dict(do_sample=False, eos_token_id=None, pad_token_id=0, suppress_tokens=list(range(16)))
    with torch.inference_mode():
        warm = _inputs(cfg, 1, 16, (224, 224), torch, dev)
        model.generate(**warm, generation_config=GenerationConfig(max_new_tokens=4, min_new_tokens=4, **gen))
        for batch, prompt, image, new in GRID:
            if time.monotonic() - started > a.deadline_s:
                break
            x = _inputs(cfg, batch, prompt, image, torch, dev)
            vision_s = None
            if image is not None:
                try:
                    vision_s, _ = _timed(lambda: model.model.get_image_features(
                        x["pixel_values"], x["image_grid_thw"]), torch)
                except Exception as e:  # noqa: BLE001 - the generate timings still count
                    print(f"vision timing failed: {type(e).__name__}: {e}", flush=True)
            ttft_s, _ = _timed(lambda: model.generate(**x, generation_config=GenerationConfig(
                max_new_tokens=1, min_new_tokens=1, **gen)), torch)
            torch.cuda.reset_peak_memory_stats()
            total_s, y = _timed(lambda: model.generate(**x, generation_config=GenerationConfig(
                max_new_tokens=new, min_new_tokens=new, **gen)), torch)
            generated = y.shape[1] - x["input_ids"].shape[1]
            if a.show_tokens:
                print("generated ids:", y[0, x["input_ids"].shape[1]:][:12].tolist(), flush=True)
            row = {"schema": "gpubudget.measurement/1", "device": card, "gpu_count": 1, "model": arch,
                   "quantization": quant, "double_quant": quant == "nf4", "batch": batch,
                   "prompt_tokens": prompt, "image": list(image) if image else None,
                   "prefill_tokens": x["input_ids"].shape[1],
                   "visual_tokens": int((x["input_ids"][0] == cfg.image_token_id).sum()),
                   "new_tokens": generated, "vision_s": vision_s, "ttft_s": ttft_s, "total_s": total_s,
                   "decode_s": total_s - ttft_s,
                   "decode_tokens_per_s": batch * (generated - 1) / max(total_s - ttft_s, 1e-9),
                   "peak_allocated_bytes": torch.cuda.max_memory_allocated() - base,
                   "peak_reserved_bytes": torch.cuda.max_memory_reserved(), "weights_bytes": weights,
                   "load_s": load_s, "attn_implementation": model.config._attn_implementation,
                   "versions": versions, "source": "benchmarks/gpu_check.py --grid"}
            with out_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{arch:>24} {quant:>5} b{batch} p{prompt} {image} n{generated}: ttft {ttft_s:.3f} s, "
                  f"decode {row['decode_tokens_per_s']:.1f} tok/s, peak {row['peak_allocated_bytes'] / GIB:.2f} "
                  f"GiB (weights {weights / GIB:.2f}), load {load_s:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", action="store_true", help="measure the grid for `budget calibrate` (see above)")
    ap.add_argument("--archs", default="Qwen3-VL-2B-Instruct,Qwen3-VL-8B-Instruct,Qwen3-VL-4B-Instruct")
    ap.add_argument("--quants", default="bf16,nf4,int8")
    ap.add_argument("--deadline-s", type=float, default=420, help="start no new measurement after this")
    ap.add_argument("--show-tokens", action="store_true", help="print the first generated ids of each point")
    ap.add_argument("--scratch", default="/tmp/gpubudget-grid", help="where quantized loads read the saved weights")
    ap.add_argument("--arch", default="Qwen3-VL-2B-Instruct")
    ap.add_argument("--quant", default="fp16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--resolutions", default="448x448,896x896,1344x1344,2048x2048,3072x3072")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or tempfile.mkdtemp()))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.grid:
        grid(a)
        return
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

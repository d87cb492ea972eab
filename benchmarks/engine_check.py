"""GPU check of the in-process HF engine's decode speed (issue 24 item 4): today's path (job.engine.compile
false) against the tuned one (compile true: static KV cache + torch.compile), with a profile of one decode step
that says whether the step is launch-bound or bandwidth-bound.

    python benchmarks/engine_check.py --out "$OUT"        # one H100/H200: Qwen3-VL-8B random weights, ~5-7 min
    python benchmarks/engine_check.py --dry-run           # = --tiny --device cpu: the same code on CPU, < 60 s

What it runs, all through the worker's own code: tiny.build writes random weights of the real architecture
(planner/data/models/<arch>.json, placeholder ids re-pointed by tiny.with_tiny_tokens), model.load loads them as
the worker does (device_map="auto"; bf16, then nf4 from the same files), engine.Engine.run generates. Per
quantization x compile x batch (1 and 32 requests in flight, one 448x448 image + a short prompt each): a warm-up
(compilation and CUDA-graph capture happen there), then a timed run of a fixed number of new tokens (EOS and the
special ids suppressed, so every run decodes the same count). Printed and written per row: decode tokens/s, the
step time, and the fraction of the card's bandwidth limit it reaches (bytes a step must read - the text
decoder's weights and lm_head, not the embedding table or the vision tower, plus the KV cache - over the card's
bandwidth, against the measured step). Then one decode step under torch.profiler (batch 1): kernels a step, the
GPU's busy time, the host time between kernels and the top ops by device time, with a verdict; and bf16 matmuls
of the Qwen3-VL 2B/4B/8B decoder shapes alone (is a bf16 GEMV at those shapes slow by itself?).

Rows go to OUT/engine-check-<card>.jsonl (schema gpubudget.engine-check/1), each naming the card, the versions
and the config, written as they are measured: a deadline (--deadline-s) keeps what was measured. No network is
needed. Default OUT: benchmarks/measured/ on a GPU, a temporary directory on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.worker import job as jobmod
from runner.worker import tiny
from runner.worker.engine import Engine, Memory
from runner.worker.model import load, unload
from runner.worker.synthetic import noise
from runner.worker.tasks.base import image_request

SCHEMA = "gpubudget.engine-check/1"
GBS = {  # memory bandwidth, GB/s, by a pattern of torch.cuda.get_device_name (vendor data sheets; FACTS.md)
    r"H200": 4800, r"H100.*NVL": 3900, r"H100.*PCIe": 2000, r"H100": 3350, r"H20\b": 4022,
    r"A100.*80GB.*PCIe": 1935, r"A100.*80GB": 2039, r"A100": 1555, r"L40S": 864, r"A10G?\b": 600, r"L4\b": 300,
    r"RTX 4090": 1008, r"RTX 3090": 936, r"V100": 900, r"T4\b": 320,
}
SPECIAL = list(range(len(tiny.SPECIAL_TOKENS)))  # never generated: EOS, pad and vision placeholders
PROFILE_STEP = 8  # the decode step profiled (the ones before it settle caches and clocks)
COMPILE_RESERVE_S = 150  # do not start a compiled config with less than this left before the deadline


def card_and_bandwidth(device: str, override: float | None) -> tuple[str, float | None]:
    import torch

    if device != "cuda":
        return "cpu", override
    name = torch.cuda.get_device_name(0)
    if override:
        return name, override
    return name, next((gbs for pattern, gbs in GBS.items() if re.search(pattern, name)), None)


def versions() -> dict:
    import platform

    import torch

    out = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda}
    for mod in ("transformers", "accelerate", "bitsandbytes"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    out.update(cpu=cpu, cpu_threads=torch.get_num_threads())
    return out


def read_bytes(model, batch: int, context: int) -> tuple[int, int]:
    """(weights, KV cache) bytes one decode step reads: every decoder layer's and the final norm's tensors and
    lm_head (for nf4 their packed storage); the embedding table gives only `batch` rows, the vision tower
    nothing; the KV cache `context` positions of every layer."""
    lm = model.model.language_model
    weights = sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if not n.startswith("embed_tokens"))
    weights += sum(p.numel() * p.element_size() for p in model.lm_head.parameters())
    t = model.config.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    kv = 2 * t.num_hidden_layers * t.num_key_value_heads * head_dim * 2 * context * batch  # 16-bit cache
    return int(weights), int(kv)


def hooks(model) -> int:
    """Modules carrying an accelerate hook (device_map dispatch adds one per module when the map spans devices)."""
    return sum(1 for m in model.modules() if hasattr(m, "_hf_hook"))


def graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a torch without dynamo's counters: nothing compiled to count
        return 0


def timed_run(engine: Engine, batch: int, image_size, new_tokens: int, device: str) -> dict:
    import torch

    requests = [image_request("Describe this image in one sentence.", noise(image_size, random.Random(7)))
                for _ in range(batch)]
    before = graphs()
    if device == "cuda":
        torch.cuda.synchronize()
    out = engine.run(requests, new_tokens)
    decode_s = out.latency_s - out.ttft_s
    steps = max(1, min(o.decode_tokens for o in out.outputs) - 1)
    return {"ttft_s": round(out.ttft_s, 4), "latency_s": round(out.latency_s, 4), "decode_s": round(decode_s, 4),
            "new_tokens": out.outputs[0].decode_tokens, "prompt_tokens": out.outputs[0].prefill_tokens,
            "step_ms": round(1000 * decode_s / steps, 3),
            "decode_tokens_per_s": round(batch * steps / decode_s, 2) if decode_s > 0 else None,
            "peak_memory_bytes": out.peak_bytes, "dynamo_graphs_added": graphs() - before}


def profile_step(engine_args: dict, compile: bool, image_size, new_tokens: int, device: str) -> dict:
    """One decode step (the iteration between two calls of a logits processor) under torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import LogitsProcessor, LogitsProcessorList

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    prof = profile(activities=acts, schedule=schedule(wait=PROFILE_STEP, warmup=1, active=1, repeat=1))

    class Step(LogitsProcessor):
        def __call__(self, input_ids, scores):
            prof.step()
            return scores

    gen = dict(engine_args["generation"], logits_processor=LogitsProcessorList([Step()]))
    engine = Engine(**{**engine_args, "generation": gen}, compile=compile)
    with prof:
        run = timed_run(engine, 1, image_size, new_tokens, device)
    events = prof.events()
    steps = [e for e in events if e.name.startswith("ProfilerStep")]
    if not steps:
        return {"error": "the profiler recorded no step"}
    step = max(steps, key=lambda e: e.time_range.start)
    lo, hi = step.time_range.start, step.time_range.end
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events
                     if e.device_type == DeviceType.CUDA and lo <= e.time_range.start < hi)
    busy, end = 0.0, lo
    for a, b in kernels:  # the union of kernel intervals: when the GPU had work
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    if device == "cuda" and not hasattr(prof.key_averages()[0], attr):
        attr = "self_cuda_time_total"
    top = sorted((x for x in prof.key_averages() if not x.key.startswith("ProfilerStep")),
                 key=lambda x: getattr(x, attr, 0), reverse=True)[:12]
    launches = sum(1 for e in events if lo <= e.time_range.start < hi and e.device_type == DeviceType.CPU
                   and re.match(r"cu(da)?(LaunchKernel|GraphLaunch|LaunchKernelEx)", e.name))
    step_ms = (hi - lo) / 1000
    return {"prompt_tokens": run["prompt_tokens"], "step_ms": round(step_ms, 3), "kernels": len(kernels),
            "launches": launches,
            "gpu_busy_ms": round(busy / 1000, 3),
            "host_gap_ms": round(step_ms - busy / 1000, 3), "busy_fraction": round(busy / 1000 / step_ms, 3),
            "top_ops": [{"op": a.key[:90], "ms": round(getattr(a, attr, 0) / 1000, 3), "calls": a.count} for a in top]}


def verdict(p: dict, floor_ms: float | None, device: str) -> str:
    if device != "cuda":
        return "cpu: no GPU kernels to weigh (the dry run checks the code path only)"
    if not p["kernels"]:
        return ("no kernel records (a CUDA graph's kernels can be hidden from the profiler): judge step_ms against "
                "floor_ms")
    if p["busy_fraction"] < 0.5:
        return (f"launch-bound: the GPU idles {100 * (1 - p['busy_fraction']):.0f}% of the step waiting for the "
                f"host ({p['kernels']} kernels a step)")
    if floor_ms and floor_ms / p["gpu_busy_ms"] > 0.6:
        return "bandwidth-bound: the kernels run near the card's bandwidth"
    return "GPU-bound below the bandwidth: the kernels themselves are slow (see top_ops)"


def gemv(archs: list[str], batches: list[int], device: str, reps: int) -> list[dict]:
    """bf16 matmuls of each architecture's decoder shapes alone, with a batch of `batch` token rows."""
    import torch
    import torch.nn.functional as F

    dtype = torch.bfloat16
    rows = []
    for arch in archs:
        t = json.loads((ROOT / "planner" / "data" / "models" / f"{arch}.json").read_text())["text_config"] \
            if arch != tiny.NAME else tiny.TEXT_CONFIG
        h, heads, kv, hd, inter = (t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"],
                                   t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
                                   t["intermediate_size"])
        shapes = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "o_proj": (heads * hd, h), "up_proj": (h, inter),
                  "down_proj": (inter, h)}
        for name, (k, n) in shapes.items():
            w = torch.randn(n, k, device=device, dtype=dtype) * 0.02
            for batch in batches:
                x = torch.randn(batch, k, device=device, dtype=dtype)
                for _ in range(3):
                    F.linear(x, w)
                if device == "cuda":
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    for _ in range(reps):
                        F.linear(x, w)
                    b.record()
                    b.synchronize()
                    us = 1000 * a.elapsed_time(b) / reps
                else:
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        F.linear(x, w)
                    us = 1e6 * (time.perf_counter() - t0) / reps
                rows.append({"kind": "gemv", "arch": arch, "op": name, "in": k, "out": n, "batch": batch,
                             "us": round(us, 2), "gbs": round(n * k * 2 / us / 1000, 1)})
            del w
    return rows


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="Qwen3-VL-8B-Instruct")
    ap.add_argument("--tiny", action="store_true", help="the tiny random model instead of --arch")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--dry-run", action="store_true", help="= --tiny --device cpu, fewer tokens")
    ap.add_argument("--quants", default="bf16,nf4")
    ap.add_argument("--compile", default="off,on", help="today's path (off), the tuned one (on), or both")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--image", default="448x448")
    ap.add_argument("--deadline-s", type=float, default=400, help="start nothing new after this many seconds")
    ap.add_argument("--bandwidth-gbs", type=float, help="the card's memory bandwidth, if the table does not know it")
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "engine-check")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.dry_run:
        a.tiny, a.device, a.new_tokens = True, "cpu", min(a.new_tokens, 16)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("engine_check: no CUDA device (use --dry-run to check the code path on CPU)")
    started = time.monotonic()
    card, bandwidth = card_and_bandwidth(a.device, a.bandwidth_gbs)
    env = versions()
    arch = tiny.NAME if a.tiny else a.arch
    out_dir = a.out or (ROOT / "benchmarks" / "measured" if a.device == "cuda" else Path(tempfile.mkdtemp()))
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"engine-check-{re.sub(r'[^a-z0-9]+', '-', card.lower()).strip('-')}.jsonl"
    image_size = tuple(int(v) for v in a.image.split("x"))
    limits = {"min_pixels": 4096, "max_pixels": image_size[0] * image_size[1]}
    print(f"engine check on {card} ({bandwidth or '?'} GB/s): {arch}; {env}", flush=True)

    def write(row: dict) -> None:
        row = {"schema": SCHEMA, "card": card, "bandwidth_gbs": bandwidth, "model": arch, "versions": env,
               "source": "benchmarks/engine_check.py", **row}
        with out_file.open("a") as f:
            f.write(json.dumps(row) + "\n")

    for r in gemv([arch] if a.tiny else ["Qwen3-VL-2B-Instruct", "Qwen3-VL-4B-Instruct", "Qwen3-VL-8B-Instruct"],
                  [1, 32], a.device, 3 if a.device == "cpu" else 50):
        write(r)
        frac = f"{100 * r['gbs'] / bandwidth:.0f}% of bw" if bandwidth else ""
        print(f"gemv bf16 {r['arch']:>22} {r['op']:>9} {r['in']}x{r['out']} b{r['batch']}: {r['us']:.1f} us, "
              f"{r['gbs']:.0f} GB/s {frac}", flush=True)

    shutil.rmtree(a.scratch, ignore_errors=True)
    t0 = time.monotonic()
    if a.tiny:
        src = tiny.build(a.scratch / "model")
    else:
        raw = json.loads((ROOT / "planner" / "data" / "models" / f"{arch}.json").read_text())
        src = tiny.build(a.scratch / "model", config=tiny.with_tiny_tokens(raw), dtype=torch.bfloat16, device=a.device,
                         min_pixels=limits["min_pixels"], max_pixels=limits["max_pixels"])
        torch.cuda.empty_cache()
    print(f"built {arch} random weights in {time.monotonic() - t0:.0f} s", flush=True)
    batches = [int(b) for b in a.batches.split(",")]
    modes = [m == "on" for m in a.compile.split(",")]
    try:
        for quant in a.quants.split(","):
            if time.monotonic() - started > a.deadline_s:
                print(f"deadline: {quant} not measured", flush=True)
                continue
            _quant(a, quant, src, limits, image_size, batches, modes, bandwidth, started, write)
    finally:
        shutil.rmtree(a.scratch, ignore_errors=True)
    print(f"wrote {out_file} in {time.monotonic() - started:.0f} s", flush=True)


def _quant(a, quant, src, limits, image_size, batches, modes, bandwidth, started, write) -> None:
    doc = {"schema": jobmod.SCHEMA, "run_id": "engine-check", "model": {"name": "check", "source": str(src)},
           "quantization": quant, "device": a.device, "image_limits": limits,
           "tasks": [{"name": "cap", "kind": "caption"}]}
    job = jobmod.parse(doc)
    memory = Memory(a.device)
    t0 = time.monotonic()
    loaded = load(job, quant, a.device, memory)
    model = loaded.model
    base = {"quantization": quant, "dtype": loaded.dtype, "device_map": loaded.device_map, "hooked_modules": hooks(model),
            "attn_implementation": model.config._attn_implementation, "load_s": round(time.monotonic() - t0, 1)}
    print(f"loaded {quant} in {base['load_s']} s: device_map {loaded.device_map}, {base['hooked_modules']} modules "
          f"with accelerate hooks, attention {base['attn_implementation']}", flush=True)
    generation = {"max_new_tokens": a.new_tokens, "min_new_tokens": a.new_tokens, "do_sample": False,
                  "suppress_tokens": SPECIAL}
    args = {"loaded": loaded, "memory": memory, "generation": generation, "image_limits": limits, "seed": 0,
            "should_stop": lambda: False}
    try:
        for compiled in modes:
            engine = Engine(**args, compile=compiled)
            step = {}
            for batch in batches:
                left = a.deadline_s - (time.monotonic() - started)
                if left < (COMPILE_RESERVE_S if compiled and a.device == "cuda" else 0):
                    print(f"deadline: {quant} compile={compiled} b{batch} not measured ({left:.0f} s left)", flush=True)
                    continue
                try:
                    t0 = time.monotonic()
                    warm = timed_run(engine, batch, image_size, a.new_tokens, a.device)  # compiles, captures graphs
                    r = timed_run(engine, batch, image_size, a.new_tokens, a.device)
                except Exception as e:  # noqa: BLE001 - one failing config must not lose the others
                    write({**base, "kind": "decode", "compile": compiled, "batch": batch,
                           "error": f"{type(e).__name__}: {str(e)[:400]}"})
                    print(f"{quant} compile={compiled} b{batch} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                weights, kv = read_bytes(model, batch, r["prompt_tokens"] + a.new_tokens // 2)
                floor_ms = 1000 * (weights + kv) / (bandwidth * 1e9) if bandwidth else None
                row = {**base, "kind": "decode", "compile": compiled, "batch": batch, **r,
                       "warmup_s": round(warm["latency_s"], 2), "config_s": round(time.monotonic() - t0, 1),
                       "dynamo_graphs_added_warmup": warm["dynamo_graphs_added"], "weights_read_bytes": weights,
                       "kv_read_bytes": kv, "floor_ms": round(floor_ms, 3) if floor_ms else None,
                       "bandwidth_fraction": round(floor_ms / r["step_ms"], 4) if floor_ms else None}
                write(row)
                step[batch] = r["step_ms"]
                frac = f", {100 * row['bandwidth_fraction']:.1f}% of bandwidth" if floor_ms else ""
                print(f"{quant:>5} compile={'on ' if compiled else 'off'} b{batch:<2}: {r['decode_tokens_per_s']} tok/s, "
                      f"step {r['step_ms']:.2f} ms (floor {row['floor_ms']} ms{frac}), ttft {r['ttft_s']:.3f} s, "
                      f"warm-up {row['warmup_s']} s, graphs compiled {warm['dynamo_graphs_added']}", flush=True)
            if 1 in step:
                try:
                    p = profile_step(args, compiled, image_size, a.new_tokens, a.device)
                except Exception as e:  # noqa: BLE001
                    p = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
                if "error" not in p:
                    weights, kv = read_bytes(model, 1, p["prompt_tokens"] + PROFILE_STEP)
                    floor_ms = 1000 * (weights + kv) / (bandwidth * 1e9) if bandwidth else None
                    p["verdict"] = verdict(p, floor_ms, a.device)
                write({**base, "kind": "profile", "compile": compiled, "batch": 1, "profiled_step": PROFILE_STEP, **p})
                print(f"profile {quant} compile={'on' if compiled else 'off'} b1: {p.get('verdict', p.get('error'))}; "
                      f"step {p.get('step_ms')} ms, {p.get('kernels')} kernels ({p.get('launches')} launches), GPU busy "
                      f"{p.get('gpu_busy_ms')} ms, host gaps {p.get('host_gap_ms')} ms", flush=True)
                for op in p.get("top_ops", [])[:8]:
                    print(f"    {op['ms']:>9.3f} ms {op['calls']:>5}x  {op['op']}", flush=True)
        if False in modes and 1 in batches and a.deadline_s - (time.monotonic() - started) > 0:
            # the first config again, last: does the card or host drift over the check (the H200 grid measured its
            # models in one order, 2B, 8B, 4B, and the first was the slowest)?
            r = timed_run(Engine(**args, compile=False), 1, image_size, a.new_tokens, a.device)
            write({**base, "kind": "decode", "compile": False, "batch": 1, "repeat": True, **r})
            print(f"{quant:>5} compile=off b1 again: {r['decode_tokens_per_s']} tok/s, step {r['step_ms']:.2f} ms",
                  flush=True)
    finally:
        unload(loaded)


if __name__ == "__main__":
    main()

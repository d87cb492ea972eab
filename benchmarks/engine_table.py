"""The README's engine table: engine x quantization x GPU estimates for Qwen3-VL-8B and Qwen3-VL-30B-A3B - decode
tokens/s of one sequence, and generated tokens/s with the requests a rig holds in flight for the default plan - each
with the fitted stack that prices it. The planner alone (no torch), in a second.

    python benchmarks/engine_table.py [--markdown] [--models 8b 30b-a3b] [--gpus T4 A10 L4 A100-80GB H100 H200]

Per rig: the fewest cards of 1, 2, 4, 8 the engine fits on in that quantization for the default plan
(plans/qwen3-vl-8b.yaml's tasks on the model); "in flight": a server engine's concurrency (what its KV pool holds at
the memory fraction the planner chooses, at most 64), hf's the plan's batch_size, transformers serve's 1. Both speeds
at a 512-token context. Sources: hf and transformers are priced on the worker's stack (transformers 5.x, fitted to
Qwen's transformers tables and our H200 rows: planner/timefit.py); vllm on the terms fitted to vLLM 0.6.3's A100
table, sglang on SGLang 0.4.6's H20 table (planner/engines.py STACK_TERMS; vLLM's MoE and FP8 W8A8 terms are
SGLang's), the card's efficiencies shared by every stack.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner import engines as eng
from planner.assumptions import Assumptions
from planner.catalog import load_catalog
from planner.optimize import _Planner, _sixteen
from planner.plans import load_plan

QUANTS = {"hf": ("16-bit", "int8", "nf4"), "transformers": ("16-bit",), "vllm": ("16-bit", "fp8", "nf4"),
          "sglang": ("16-bit", "fp8")}
SOURCE = {"hf": "tf5", "transformers": "tf5", "vllm": "vllm0.6", "sglang": "sglang0.4.6"}
LEGEND = [
    ("tf5", ("the worker's stack (transformers 5.x) fitted to Qwen's transformers tables (Qwen2.5 on A100, Qwen3 on "
             "H20) and our H200 rows: planner/timefit.py, the Assumptions defaults")),
    ("vllm0.6", (f"{eng.VLLM_STACK}: host terms fitted to Qwen's vLLM 0.6.3 table (Qwen2.5, A100 80GB, "
                 "QwenLM/Qwen3 docs/source/benchmark/speed_benchmark.rst @2abc0f3); MoE and FP8 W8A8 terms SGLang's")),
    ("sglang0.4.6", (f"{eng.SGLANG_STACK}: host terms fitted to Qwen's SGLang 0.4.6 table (Qwen3, H20 96GB, "
                     "docs/source/getting_started/speed_benchmark.md @7a2f61f)")),
]


def rows(models: list[str], gpus: list[str]) -> list[list[str]]:
    cat = load_catalog()
    plan = load_plan(None)
    a = Assumptions()
    out = []
    for m in models:
        spec = cat.model(m)
        pl = _Planner(plan.model_copy(update={"model": spec.name}), spec, a)
        for g in gpus:
            gpu = cat.gpu(g)
            for engine, quants in QUANTS.items():
                for q in quants:
                    quant = _sixteen(gpu, ["bf16", "fp16"]) if q == "16-bit" else q
                    opt, count = None, 0
                    for count in (1, 2, 4, 8):
                        opt = pl.option(gpu, count, gpu.memory_mib, quant, engine)
                        if not isinstance(opt, str):
                            break
                    if isinstance(opt, str):
                        if "compute capability" in opt or "no in-flight" in opt or "vllm#32012" in opt:
                            continue  # the engine never runs it here: not a row
                        out.append([spec.name.removeprefix("Qwen3-VL-").removesuffix("-Instruct"), g, engine, quant,
                                    "-", "-", "-", "-", f"does not fit 8 cards: {opt}"])
                        continue
                    flight = opt.concurrency or plan.batch_size
                    one = eng.decode_tokens_per_s(pl.mc, engine, quant, gpu, count, a, 1)
                    many = eng.decode_tokens_per_s(pl.mc, engine, quant, gpu, count, a, flight) if flight > 1 else one
                    kind = f" ({eng.fp8_kind(gpu)})" if quant == "fp8" else ""
                    out.append([spec.name.removeprefix("Qwen3-VL-").removesuffix("-Instruct"), g, engine,
                                quant + kind, f"x{count}", f"{one:.0f}", str(flight), f"{many:.0f}", SOURCE[engine]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print the README's table")
    ap.add_argument("--models", nargs="+", default=["8b", "30b-a3b"])
    ap.add_argument("--gpus", nargs="+", default=["T4", "A10", "L4", "A100-80GB", "H100", "H200"])
    args = ap.parse_args()
    head = ["model", "GPU", "engine", "quant", "cards", "decode tokens/s (1)", "in flight", "tokens/s in flight",
            "source"]
    table = rows(args.models, args.gpus)
    if args.markdown:
        for cells in [head, ["---"] * len(head)] + table:
            print("| " + " | ".join(cells) + " |")
    else:
        width = [max(len(c[k]) for c in [head] + table) for k in range(len(head))]
        for cells in [head] + table:
            print("  ".join(c.rjust(w) if 4 < k < 8 else c.ljust(w)
                            for k, (c, w) in enumerate(zip(cells, width, strict=True))).rstrip())
    print()
    for key, what in LEGEND:
        print(f"{'- ' if args.markdown else ''}{key}: {what}")
    print(f"\nbands: +-{Decimal(str(Assumptions().time_band)) * 100:.0f}% (the worker stack's residuals); the engine "
          "stacks' held-out rows: `python benchmarks/published_accuracy.py --engines`")


if __name__ == "__main__":
    main()

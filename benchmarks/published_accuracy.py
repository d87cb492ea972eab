"""The time and memory models against every published single-stream transformers row we can cite, and our own
H200 rows - a standing accuracy check that runs anywhere in seconds (the planner alone: no torch).

    python benchmarks/published_accuracy.py [--markdown] [--engines]

Rows (planner/data/published/hf_speed.csv): Qwen's speed benchmarks, batch 1, 2048 generated tokens, every size x
input length (1, 6144, 14336, 30720) x quantization they list:
- Qwen2.5 on A100 80GB, transformers 4.46 + FA2 (QwenLM/Qwen3 docs/source/benchmark/speed_benchmark.rst @2abc0f3).
  Its script (speed_benchmark_transformers.py) reports tokens/s = generated tokens / time.
- Qwen3 on H20 96GB, transformers 4.51.3 + FA2, AWQ through AutoAWQ (docs/source/getting_started/
  speed_benchmark.md): tokens/s = (prompt + generated) tokens / time.
Each row is compared in its own definition. "estimate" is the model fitted on every row; "held out" is the same
row predicted by a fit that never saw it (four folds: the rows shuffled by random.Random(23), every fourth held
out; tests/planner/test_timefit.py). Our rows (benchmarks/measured/nvidia-h200.jsonl) compare whole call time.
Memory: the 16-bit rows' torch peak allocated against the estimate's allocator peak (weights + KV cache +
activations; Qwen's "GB"/"MB" are 2^30/2^20 bytes). At long inputs the estimate's prefill activations are an
upper bound (it stays above every measured peak, up to +54% at 30720 tokens on the smallest models).
Targets: time within +-25% on >= 90% of held-out rows; memory within +-10% at input 1.
--engines: the serving engines' rows instead (planner/data/published/engine_speed.csv: vLLM 0.6.3 on A100, SGLang
0.4.6 on H20, batch 1), against the engine stacks' terms fitted with the card's efficiencies held at the fit above
(planner.timefit.fit_engines: what planner/engines.py ships); held out: four folds of those rows, each predicted by a
fit of the engine terms on the other three. Target: >= 85% of held-out rows within +-25%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.assumptions import Assumptions
from planner.catalog import load_catalog
from planner.estimate import estimate_request
from planner.timefit import (
    KERNEL,
    TimeModel,
    band,
    cross_validate,
    engine_names,
    engine_rows,
    fit,
    fit_engines,
    measured_rows,
    published_rows,
    published_specs,
    residuals,
    stack_coefficients,
)

MEASURED = Path(__file__).resolve().parents[1] / "benchmarks" / "measured" / "nvidia-h200.jsonl"
TIME_BAND, HELD_OUT_SHARE, MEMORY_BAND = 0.25, 0.90, 0.10


CATALOG = load_catalog()


def build() -> tuple[TimeModel, dict, dict[int, float], dict[int, float]]:
    cat = CATALOG
    specs = published_specs() | cat.models
    ours = measured_rows([json.loads(ln) for ln in MEASURED.read_text().splitlines() if ln.strip()], MEASURED.name)
    model = TimeModel(published_rows() + ours, specs.__getitem__, cat.gpu)
    x = fit(model, list(range(len(model.rows))))
    every = list(range(len(model.rows)))
    fitted = dict(zip(every, residuals(model, x, every), strict=True))
    held = cross_validate(model, [i for i, r in enumerate(model.rows) if r.speed])
    return model, specs, fitted, held


def memory_gib(model: TimeModel, specs: dict, i: int) -> tuple[float, float] | None:
    """(published GiB, estimate GiB) of a 16-bit published row: the estimate's allocator peak (weights + KV cache
    + activations + scratch) of the fullest card x the cards (the 72B rows span 2-3 cards)."""
    r = model.rows[i]
    if not r.speed or r.quant != "bf16":
        return None
    est = estimate_request(specs[r.model], CATALOG.gpu(r.gpu), r.gpu_count, "bf16", r.shape, 1,
                           Assumptions(template_tokens=0), prompt_tokens=r.shape.prefill)
    return r.memory_mb / 1024, est.allocated_bytes * r.gpu_count / 2**30


def engines() -> tuple[TimeModel, dict[int, float], dict[int, float], dict[str, float]]:
    """The engine rows, their residuals under fit_engines and held out, and the fitted terms."""
    model = TimeModel(engine_rows(), (published_specs() | CATALOG.models).__getitem__, CATALOG.gpu)
    base = stack_coefficients(Assumptions())
    x = fit_engines(model, base)
    every = list(range(len(model.rows)))
    held = cross_validate(model, every, start=base, free=engine_names(model))
    return model, dict(zip(every, residuals(model, x, every), strict=True)), held, x


def table_of(model: TimeModel, rows: list[int], fitted: dict[int, float], held: dict[int, float]) -> list[list[str]]:
    out = []
    for i in rows:
        r = model.rows[i]
        est = r.speed_of(r.seconds * (1 + fitted[i]))
        out.append([r.stack, r.model, r.gpu + (f" x{r.gpu_count}" if r.gpu_count > 1 else ""), r.quant,
                    str(r.shape.prefill), f"{r.speed:.2f}", f"{est:.2f}", f"{-fitted[i] / (1 + fitted[i]):+.0%}",
                    f"{-held[i] / (1 + held[i]):+.0%}", r.definition])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print the README's tables")
    ap.add_argument("--engines", action="store_true", help="the serving engines' rows (vLLM, SGLang) instead")
    args = ap.parse_args()
    head = ["stack", "model", "GPU", "quant", "input", "tokens/s published", "estimate", "error", "held out",
            "definition"]
    if args.engines:
        emodel, efit, eheld, x = engines()
        show(head, table_of(emodel, list(range(len(emodel.rows))), efit, eheld), args.markdown)
        for stack in sorted({r.stack for r in emodel.rows}):
            idx = [i for i, r in enumerate(emodel.rows) if r.stack == stack]
            ok = sum(abs(eheld[i]) <= TIME_BAND for i in idx)
            print(f"\n{stack}: {ok}/{len(idx)} ({ok / len(idx):.1%}) held-out within +-{TIME_BAND:.0%}, 90% band "
                  f"+-{band([eheld[i] for i in idx]):.0%}; fitted: 90% band +-{band([efit[i] for i in idx]):.0%}")
            print("  terms: " + ", ".join(f"{n.split('@')[0]}={v:.4g}" for n, v in sorted(x.items())
                                          if n.endswith("@" + stack) or n == f"attention@{KERNEL[stack]}"))
        ok = sum(abs(e) <= TIME_BAND for e in eheld.values())
        print(f"\nengine rows: {ok}/{len(eheld)} ({ok / len(eheld):.1%}) held-out predictions within +-{TIME_BAND:.0%} "
              f"(target >= 85%), 90% band +-{band(list(eheld.values())):.0%}")
        return
    model, specs, fitted, held = build()
    pub = [i for i, r in enumerate(model.rows) if r.speed]
    ours = [i for i, r in enumerate(model.rows) if not r.speed]
    table = table_of(model, pub, fitted, held)
    show(head, table, args.markdown)
    report(model, specs, fitted, held, pub, ours)


def show(head: list[str], table: list[list[str]], markdown: bool) -> None:
    if markdown:
        for cells in [head, ["---"] * len(head)] + table:
            print("| " + " | ".join(cells) + " |")
    else:
        width = [max(len(c[k]) for c in [head] + table) for k in range(len(head))]
        for cells in [head] + table:
            print("  ".join(c.ljust(w) if k < 4 or k == 9 else c.rjust(w)
                            for k, (c, w) in enumerate(zip(cells, width, strict=True))).rstrip())


def report(model: TimeModel, specs: dict, fitted: dict[int, float], held: dict[int, float], pub: list[int],
           ours: list[int]) -> None:
    ok = sum(abs(e) <= TIME_BAND for e in held.values())
    print(f"\ntime, published rows: {ok}/{len(held)} ({ok / len(held):.1%}) held-out predictions within "
          f"+-{TIME_BAND:.0%} of the call time (target >= {HELD_OUT_SHARE:.0%}); fitted: "
          f"{sum(abs(fitted[i]) <= TIME_BAND for i in pub)}/{len(pub)}, 90% band +-{band([fitted[i] for i in pub]):.0%}; "
          "tokens/s errors above are in each row's own definition")
    res = [fitted[i] for i in ours]
    print(f"time, our H200 rows (transformers 5.x, the worker's stack): median |error| "
          f"{statistics.median(abs(e) for e in res):.0%}, 90% band +-{band(res):.0%} (the band printed beside every "
          f"estimate); worst: " + ", ".join(
              f"{model.rows[i].model.removeprefix('Qwen3-VL-').removesuffix('-Instruct')} {model.rows[i].quant} "
              f"b{model.rows[i].batch} in={model.rows[i].shape.prefill} {fitted[i]:+.0%}"
              for i in sorted(ours, key=lambda i: -abs(fitted[i]))[:4]))
    mem = [(model.rows[i], m) for i in pub if (m := memory_gib(model, specs, i))]
    print("\nmemory, 16-bit published rows (torch peak allocated):")
    for r, (pubg, estg) in mem:
        print(f"  {r.model:<22} {r.gpu:<9} in={r.shape.prefill:<6} published {pubg:6.2f} GiB  estimate {estg:6.2f} GiB  "
              f"{estg / pubg - 1:+.1%}")
    short = [estg / pubg - 1 for r, (pubg, estg) in mem if r.shape.prefill == 1]
    print(f"  input 1: {sum(abs(e) <= MEMORY_BAND for e in short)}/{len(short)} within "
          f"+-{MEMORY_BAND:.0%}; median {statistics.median(short):+.1%}")


if __name__ == "__main__":
    main()

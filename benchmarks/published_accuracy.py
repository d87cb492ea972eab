"""`budget estimate` against published transformers measurements - a standing accuracy check that runs
anywhere in seconds (the planner alone: no torch).

    python benchmarks/published_accuracy.py [--markdown]

Rows: Qwen's own speed benchmarks, batch 1, 2048 generated tokens, BF16, transformers backend:
- Qwen2.5-7B-Instruct on A100 80GB (transformers 4.46): QwenLM/Qwen2.5 docs, benchmark/speed_benchmark.
- Qwen3-8B on H20 96GB (transformers 4.51.3): Qwen docs, getting_started/speed_benchmark.
Qwen reports tokens/s as (input + generated) / wall time, so the estimate is put in the same terms
(and its decode rate shown beside); its memory is torch's peak allocated, so the estimate's allocator
peak (weights + KV cache + activations, no CUDA context or margins) is what is compared, in GiB (Qwen's
"GB" / "MB" are 2^30 / 2^20 bytes: 14.38 "GB" is the 7.62 B params' 14.19 GiB of weights plus the cache).
Targets: memory within +-10% and never more than 5% under; decode tokens/s within +-25%.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.assumptions import Assumptions  # noqa: E402
from planner.catalog import load_catalog  # noqa: E402
from planner.estimate import estimate_request  # noqa: E402
from planner.workload import Pass  # noqa: E402

NEW = 2048
# (model, GPU, input tokens, published tokens/s, published memory GiB, source)
PUBLISHED = [
    ("Qwen2.5-7B-Instruct", "A100-80GB", 1, 40.38, 14.38, "Qwen2.5 docs, speed benchmark (transformers 4.46)"),
    ("Qwen3-8B", "H20", 1, 45.32, 15947 / 1024, "Qwen docs, speed benchmark (transformers 4.51.3)"),
    ("Qwen3-8B", "H20", 30720, 208.98, 20267 / 1024, "Qwen docs, speed benchmark (transformers 4.51.3)"),
]
MEMORY_BAND, MEMORY_UNDER, SPEED_BAND = 0.10, 0.05, 0.25


def rows() -> list[dict]:
    cat = load_catalog()
    a = Assumptions(template_tokens=0)  # the benchmark feeds raw token ids, no chat template
    out = []
    for model, gpu, n_in, tps, mem_gib, source in PUBLISHED:
        spec, card = cat.model(model), cat.gpu(gpu)
        r = estimate_request(spec, card, 1, "bf16", Pass(n_in, NEW, 0, ()), 1, a, prompt_tokens=n_in)
        qwen_tps = (n_in + NEW) / r.total_s  # Qwen's definition
        published_decode = NEW / ((n_in + NEW) / tps - r.ttft_s)  # their wall time less our prefill
        mem = r.allocated_bytes / 2**30
        out.append({"model": model, "gpu": card.name, "input": n_in, "published_tps": tps, "estimate_tps": qwen_tps,
                    "tps_error": qwen_tps / tps - 1, "published_decode": published_decode,
                    "estimate_decode": r.decode_tokens_per_s, "decode_error": r.decode_tokens_per_s / published_decode - 1,
                    "published_gib": mem_gib, "estimate_gib": mem, "memory_error": mem / mem_gib - 1,
                    "ttft_s": r.ttft_s, "source": source})
    return out


def verdicts(r: dict) -> tuple[bool, bool]:
    m = r["memory_error"]
    return (abs(m) <= MEMORY_BAND and m >= -MEMORY_UNDER), abs(r["tps_error"]) <= SPEED_BAND


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print the README's table")
    args = ap.parse_args()
    rs = rows()
    if args.markdown:
        print("| model | GPU | input | tokens/s published | estimate | error | memory published | estimate | error |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            mem_ok, tps_ok = verdicts(r)
            print(f"| {r['model']} | {r['gpu']} | {r['input']} | {r['published_tps']:.2f} | {r['estimate_tps']:.2f} | "
                  f"{r['tps_error']:+.1%}{'' if tps_ok else ' (off target)'} | {r['published_gib']:.2f} GiB | "
                  f"{r['estimate_gib']:.2f} GiB | {r['memory_error']:+.1%}{'' if mem_ok else ' (off target)'} |")
        return
    print(f"{'model':<20} {'GPU':<10} {'input':>6} {'tok/s pub':>9} {'estimate':>9} {'error':>7} {'decode pub':>10} "
          f"{'estimate':>9} {'mem pub GiB':>11} {'estimate':>9} {'error':>7}")
    for r in rs:
        mem_ok, tps_ok = verdicts(r)
        print(f"{r['model']:<20} {r['gpu']:<10} {r['input']:>6} {r['published_tps']:>9.2f} {r['estimate_tps']:>9.2f} "
              f"{r['tps_error']:>+7.1%} {r['published_decode']:>10.2f} {r['estimate_decode']:>9.2f} "
              f"{r['published_gib']:>11.2f} {r['estimate_gib']:>9.2f} {r['memory_error']:>+7.1%}"
              f"{'' if tps_ok and mem_ok else '  off target: ' + ', '.join(x for x, ok in (('speed', tps_ok), ('memory', mem_ok)) if not ok)}")
    print(f"targets: memory within +-{MEMORY_BAND:.0%} and never more than {MEMORY_UNDER:.0%} under; tokens/s within "
          f"+-{SPEED_BAND:.0%} (Qwen's tokens/s = (input + generated) / time; memory = torch's peak allocated)")


if __name__ == "__main__":
    main()

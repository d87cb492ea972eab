"""Read-only summaries the CLI prints: the price list and a model's inspection."""

from __future__ import annotations

import shlex
from decimal import Decimal

from .architecture import inventory, param_breakdown
from .catalog import Catalog
from .memory import weight_layout
from .models import GIB, InspectReport, ModelSpec, NextStep, PriceList, PriceRow, Recommendation, WeightsRow
from .money import unrounded

# The seed document's table (GB), for comparison: model name -> (fp16, int8, int4).
SEED_CLAIMS_GB = {"Qwen3-VL-4B-Instruct": (8, 4, 2), "Qwen3-VL-8B-Instruct": (16, 8, 4),
                  "Qwen3-VL-30B-A3B-Instruct": (60, 30, 15)}


def price_list(cat: Catalog, gpu: str | None = None, provider: str | None = None,
               max_yuan_hour: Decimal | None = None) -> PriceList:
    """Offers in CNY (original currency beside), cheapest first, filtered. Prices are exact (price x rate):
    filtered and sorted as they are billed, rounded only where they are shown (planner/money.py)."""
    want_gpu = cat.gpu(gpu).name if gpu and cat.gpu(gpu) else gpu
    rows = []
    for o in cat.offers:
        if (want_gpu and o.gpu != want_gpu) or (provider and o.provider != provider):
            continue
        price = unrounded(cat.cny(o.price, o.currency))
        if max_yuan_hour is not None and price > max_yuan_hour:
            continue
        spot = None if o.spot_price is None else unrounded(cat.cny(o.spot_price, o.currency))
        g = cat.gpus[o.gpu]
        mib = min(g.memory_mib, o.gpu_memory_mib or g.memory_mib)
        rows.append(PriceRow(id=o.id, provider=o.provider, instance_type=o.instance_type, region=o.region, gpu=o.gpu,
                             gpu_count=o.gpu_count, gpu_memory_gib=round(mib / 1024, 1), price_cny_per_hour=price,
                             spot_price_cny_per_hour=spot, price_original_per_hour=o.price,
                             spot_price_original_per_hour=o.spot_price, currency=o.currency,
                             billing_increment_s=o.billing_increment_s, billing_minimum_s=o.billing_minimum_s,
                             source=o.source, date=o.date))
    rows.sort(key=lambda r: (r.price_cny_per_hour, r.provider, r.instance_type, r.region))
    return PriceList(offers=rows, fx=list(cat.fx.values()))


def inspect_model(spec: ModelSpec) -> InspectReport:
    """Exact parameter breakdown and the weights' footprint per quantization."""
    inv = inventory(spec)
    seed = SEED_CLAIMS_GB.get(spec.name)
    rows = []
    for quant, vision16, dq, claim in (("bf16", False, False, seed and seed[0]), ("int8", False, False, seed and seed[1]),
                                      ("int8", True, False, None), ("nf4", False, True, seed and seed[2]),
                                      ("nf4", True, True, None), ("nf4", False, False, None)):
        w = weight_layout(spec, inv, quant, keep_vision_16bit=vision16, double_quant=dq).total
        rows.append(WeightsRow(quantization=quant, vision_16bit=vision16, double_quant=dq,
                               weights_gib=round(w / GIB, 2), seed_claim_gb=claim))
    t = spec.text
    return InspectReport(name=spec.name, source=spec.source or spec.hf_id, model_type=spec.model_type,
                         params=param_breakdown(spec), text=spec.text, vision=spec.vision, weights=rows,
                         kv_cache_kib_per_token=2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * 2 / 1024)


def next_step(rec: Recommendation, plan_arg: str, budget: Decimal, plan_model: str, model: str) -> NextStep:
    """The `budget run` command that runs `rec` (its offer, quantization, engine where not hf, spot choice and the
    budget as the run's cap), and what its provider needs first. Cloud offers (aws) are launched by the tool;
    every other offer is a machine the user rents on that platform and reaches over SSH."""
    offer = f"{rec.provider}:{rec.instance_type}" + (f"@{rec.region}" if rec.region else "")
    provider = "aws" if rec.provider == "aws" else "ssh"
    cmd = ["budget", "run", plan_arg, "--provider", provider, "--offer", offer, "--quant", rec.quantization,
           *(["--engine", rec.engine] if rec.engine != "hf" else []), "--yuan", str(budget)] + (
        ["--spot"] if rec.spot else [])
    setup = []
    if provider == "aws":
        setup.append('AWS credentials (`aws configure`, or a profile in aws.profile) and the cloud extra: '
                     'pip install "gpubudget[cloud]"')
    else:
        setup += [f"rent the {rec.gpu} x{rec.gpu_count} machine on {rec.provider}, then describe it in "
                  "$BUDGET_HOME/config.yaml:",
                  f"  ssh: {{host: HOST, port: PORT, user: root, key: ~/.ssh/id_ed25519, offer: {offer}, "
                  "stop_command: shutdown -h now}",
                  "its host key must be in ~/.ssh/known_hosts (ssh-keyscan -p PORT HOST, checked against the "
                  "platform's console); and the cloud extra: pip install \"gpubudget[cloud]\""]
    if model != plan_model:
        setup.append(f"`budget run` evaluates the plan's model ({plan_model}): copy the plan and set "
                     f"`model: {model}` to run this estimate")
    return NextStep(command=" ".join(shlex.quote(c) for c in cmd), setup=setup)

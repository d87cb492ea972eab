"""The cost of quality: what each evaluated sample and each point of quality cost, per task x quantization,
across the runs of one plan (or the runs named) - the table a tech lead takes to the person who approved
the money.

A run's cost is its ledger spend (exact); it is shared among its tasks by the worker's busy seconds per
task (model loading, boot and idle time shared alike). Per task x quantization: the task's quality metric
(sample-weighted over runs), answered samples, CNY per sample, CNY per 1,000 generated tokens, throughput,
peak memory and - from the run's fp16_verify task - agreement with the 16-bit model. One line per
quantization compares it with the plan's 16-bit reference run on the first task both measured:
"nf4: 94% of bf16's CIDEr-D at 62% of its cost" (cost per answered sample)."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from fractions import Fraction

from planner.errors import InputError
from planner.money import apportion, display, yuan

from ..units import iso
from . import reference, results
from .aggregation import task_weights
from .ledger import Ledger
from .report import SCHEMA, exact

# each kind's headline metric: (summary key, how people write it); kinds without one report none
METRIC = {"caption": ("cider_d", "CIDEr-D"), "document": ("anls", "ANLS"),
          "poetry": ("keyword_recall", "keyword recall"), "multiturn_vqa": ("consistency", "consistency"),
          "digits": ("exact_match", "exact match"), "fp16_verify": ("agreement", "agreement with 16-bit")}
SIXTEEN = ("bf16", "fp16", "fp32")


def select(led: Ledger, runs: list[str] | None, plan: str | None) -> list[dict]:
    """The runs the view covers: those named (ids or unique prefixes), else every run of `plan`."""
    if runs:
        out = []
        for r in runs:
            found = led.find_runs(r)
            if len(found) != 1:
                known = ", ".join(x["id"] for x in led.runs(5)) or "none yet"
                raise InputError(f"no run {r!r}" if not found else f"run {r!r} is ambiguous ({', '.join(found[:4])})",
                                 f"see `budget status` for run ids (latest: {known})")
            out.append(led.run(found[0]))
        return out
    rows = [dict(r) for r in led.db.execute("SELECT * FROM runs WHERE plan=? ORDER BY created_at", (plan,))]
    if not rows:
        plans = ", ".join(r[0] for r in led.db.execute("SELECT DISTINCT plan FROM runs ORDER BY plan")) or "none yet"
        raise InputError(f"no runs of plan {plan!r} (plans with runs: {plans})",
                         "see `budget status`, or pass --run RUN")
    return rows


def cost_of_quality(led: Ledger, *, runs: list[str] | None = None, plan: str | None = None, now: float) -> dict:
    chosen = select(led, runs, plan)
    acc: dict[tuple[str, str], dict] = {}
    agreement: dict[tuple[str, str], list] = defaultdict(lambda: [0, Fraction(0)])  # (of_task, quant) -> [n, sum]
    sweeps: list[dict] = []
    order: list[str] = []
    run_lines = []
    unattributed = Fraction(0)  # spend of runs without task results (failed before any answer)
    referenced = Fraction(0)  # spend of compare runs (a hosted reference model's metered calls)
    weights = task_weights(led, {r["id"] for r in chosen})  # the same shares as `budget report --by task`
    for run in chosen:
        spent = Fraction(led.spent_run(run["id"]))
        tasks = {t["task"]: json.loads(t["summary"]) for t in results.tasks(led, run["id"])}
        busy = {name: Fraction(Decimal(str(s.get("busy_s") or 0))) for name, s in tasks.items()}
        shares = weights.get(run["id"]) or {}
        q = run["quantization"]
        run_lines.append({"run": run["id"], "plan": run["plan"], "quant": q, "state": run["state"],
                          "created_at": iso(run["created_at"]), "spent_cny": display(spent, 2),
                          "tasks": len(tasks)})
        if reference.is_reference(run):  # a hosted model's answers: beside the quantizations, not among them
            referenced += spent
            continue
        if not shares:
            unattributed += spent
        for name, s in tasks.items():
            share = spent * shares.get(name, Fraction(0))
            if s.get("kind") == "fp16_verify" and s.get("agreement") is not None and s.get("of_task"):
                a = agreement[(s["of_task"], q)]
                a[0] += s.get("ok") or 0
                a[1] += Fraction(Decimal(str(s["agreement"]))) * (s.get("ok") or 0)
            if s.get("kind") == "memory_sweep":
                for x in s.get("by_resolution") or []:
                    sweeps.append({"run": run["id"], "quant": q, "task": name, **x})
            if name not in order:
                order.append(name)
            e = acc.setdefault((name, q), {"kind": s.get("kind", ""), "runs": 0, "ok": 0, "done": 0,
                                           "cost": Fraction(0), "decode_tokens": 0, "busy": Fraction(0), "metric_sum": Fraction(0),
                                           "metric_n": 0, "peak": 0})
            e["runs"] += 1
            e["ok"] += s.get("ok") or 0
            e["done"] += s.get("done") or 0
            e["cost"] += share
            e["decode_tokens"] += s.get("decode_tokens") or 0
            e["busy"] += busy[name]
            e["peak"] = max(e["peak"], s.get("peak_memory_bytes") or 0)
            key = METRIC.get(e["kind"], (None,))[0]
            if key and s.get(key) is not None and s.get("ok"):
                e["metric_sum"] += Fraction(Decimal(str(s[key]))) * s["ok"]
                e["metric_n"] += s["ok"]
    rows = []
    ordered = sorted(acc.items(), key=lambda kv: (order.index(kv[0][0]), _quant_order(kv[0][1])))
    shown = dict(zip([k for k, _ in ordered], apportion([e["cost"] for _, e in ordered])))
    for (name, q), e in ordered:
        metric = METRIC.get(e["kind"], (None, None))
        value = e["metric_sum"] / e["metric_n"] if e["metric_n"] else None
        n_agree, s_agree = agreement.get((name, q), (0, Fraction(0)))
        rows.append({
            "task": name, "kind": e["kind"], "quant": q, "runs": e["runs"], "samples": e["ok"], "done": e["done"],
            "metric": metric[1], "metric_key": metric[0], "value": None if value is None else f"{float(value):.4f}",
            "cost_cny": yuan(shown[(name, q)]), "exact_cost_cny": exact(e["cost"]),
            "cny_per_sample": _per(e["cost"], e["ok"], 1),
            "cny_per_1k_tokens": _per(e["cost"], e["decode_tokens"], 1000),
            "decode_tokens": e["decode_tokens"],
            "tokens_per_s": f"{e['decode_tokens'] / float(e['busy']):.1f}" if e["busy"] else None,
            "samples_per_s": f"{e['ok'] / float(e['busy']):.3f}" if e["busy"] else None,
            "peak_memory_gib": f"{e['peak'] / 2**30:.2f}" if e["peak"] else None,
            "agreement_16bit": f"{float(s_agree / n_agree):.3f}" if n_agree else None, "agreement_samples": n_agree,
            "_value": value, "_per_sample": e["cost"] / e["ok"] if e["ok"] else None})
    _changes(rows)
    attributed = sum((e["cost"] for e in acc.values()), Fraction(0))
    ref = reference.section(led, chosen, {(r["task"], r["quant"]): r["_per_sample"] for r in rows}, weights, METRIC)
    return {"schema": SCHEMA, "view": "quality", "generated_at": iso(now), "runs": run_lines,
            "spent_cny": display(attributed + unattributed + referenced, 2), "attributed_cny": display(attributed, 2),
            "unattributed_cny": display(unattributed, 2), "reference_cny": display(referenced, 2),
            "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
            "verdicts": verdicts(rows), "memory_sweep": sweeps,
            "allocation": "a run's spend is shared among its tasks by the worker's busy seconds per task",
            **({"reference": ref} if ref else {})}


def _changes(rows: list[dict]) -> None:
    """Each row's metric against the 16-bit run's on the same task, in percent (the seed's "-15%" for digits)."""
    for r in rows:
        base = next((b for q in SIXTEEN for b in rows if b["task"] == r["task"] and b["quant"] == q), None)
        ok = base is not None and base is not r and r["_value"] is not None and base["_value"]
        r["change_vs_16bit_pct"] = f"{float((r['_value'] - base['_value']) / base['_value'] * 100):+.1f}" if ok else None


def _quant_order(q: str) -> int:
    return ["fp32", "bf16", "fp16", "int8", "nf4"].index(q) if q in ("fp32", "bf16", "fp16", "int8", "nf4") else 9


def _per(cost: Fraction, n: int, scale: int) -> str | None:
    """CNY per unit to 4 decimals (a sample often costs less than a cent): the display rule at 4 places."""
    if not n:
        return None
    return display(cost * scale / n, 4)


def verdicts(rows: list[dict]) -> list[str]:
    """One line per quantization against the 16-bit reference, on the first task both measured; without a
    16-bit run, the quantization's own agreement with 16-bit answers (fp16_verify) where it has one."""
    quants = sorted({r["quant"] for r in rows}, key=_quant_order)
    ref = next((q for q in SIXTEEN if q in quants), None)
    out = []
    for q in quants:
        if q == ref:
            continue
        line = None
        if ref is not None:
            for r in rows:
                if r["quant"] != q or r["_value"] is None or r["_per_sample"] is None:
                    continue
                base = next((b for b in rows if b["task"] == r["task"] and b["quant"] == ref), None)
                if base and base["_value"] and base["_per_sample"]:
                    quality = float(r["_value"] / base["_value"] * 100)
                    cost = float(r["_per_sample"] / base["_per_sample"] * 100)
                    line = (f"{q}: {quality:.0f}% of {ref}'s {r['metric']} ({r['task']}) at {cost:.0f}% of its cost "
                            f"per sample")
                    break
        if line is None:
            agree = next((r for r in rows if r["quant"] == q and r["agreement_16bit"] is not None), None)
            if agree:
                line = (f"{q}: agrees with the 16-bit answers on {float(agree['agreement_16bit']) * 100:.0f}% of "
                        f"{agree['agreement_samples']} {agree['task']} samples; no 16-bit run to compare cost with")
        if line:
            out.append(line)
    return out

"""Human output (the only module that uses rich): tables to stdout, warnings and errors to stderr.
Every figure carries its unit."""

from __future__ import annotations

import io
import json
import os
import sys
from decimal import Decimal

from rich import box
from rich.console import Console
from rich.table import Table as _Table
from rich.text import Text

from planner.catalog import ImportResult
from planner.errors import GpuBudgetError
from planner.models import GIB, InspectReport, PlanReport, PriceList, Recommendation

from .units import money

# Piped output gets room for the tables; a terminal keeps its own width.
# markup off: names, paths and hints are printed as they are ('gpubudget[cloud]' stays); styles via _t()
out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140)
err = Console(stderr=True, highlight=False, markup=False)


def _t(*parts) -> Text:
    """Styled text: plain strings as they are, (text, style) pairs styled."""
    return Text.assemble(*parts)


def json_doc(model) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(model.model_dump_json(indent=2) + "\n")


def json_dict(doc: dict) -> None:
    """Exactly one JSON document on stdout, for documents the worker wrote (its summary.json)."""
    sys.stdout.write(json.dumps(doc, indent=1, ensure_ascii=False, default=str) + "\n")


def error(e: GpuBudgetError | str, hint: str = "") -> None:
    msg = e.message if isinstance(e, GpuBudgetError) else e
    hint = e.hint if isinstance(e, GpuBudgetError) else hint
    err.print(_t(("error:", "bold red"), f" {msg}"), soft_wrap=True)
    if hint:
        err.print(_t(("hint:", "yellow"), f" {hint}"), soft_wrap=True)


def Table(**kw) -> _Table:
    return _Table(box=box.SIMPLE_HEAD, pad_edge=False, **kw)


def _gib(b: int) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB / 10 or b == 0 else f"{b / 1024**2:.1f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _hm(seconds: float) -> str:
    m = seconds / 60
    return f"{m:.1f} min" if m < 90 else f"{seconds / 3600:.2f} h"


def _rig(c: Recommendation) -> str:
    return f"{c.gpu} x{c.gpu_count}"


REJECTED_SHOWN = 12  # a screenful; `budget plan --all` lists every group


def _gib_cell(b: int) -> str:
    return "-" if b == 0 else "<0.01" if b < GIB / 100 else f"{b / GIB:.2f}"


def _merge_rejections(rows) -> list[tuple[str, str, int, str]]:
    """One row per GPU and kind of reason: counts and quantizations merged, the figure that varies as a range
    ("needs 65.9-526.8 GiB per GPU; A100-40GB has 40.0 GiB")."""
    import re

    number = re.compile(r"\d+(?:\.\d+)?")
    groups: dict[tuple[str, str], list] = {}
    for x in rows:
        reason = re.sub(r"on card \d+ of \d+", "per GPU", x.reason)
        groups.setdefault((x.gpu, number.sub("#", reason)), []).append((x, reason))
    merged = []
    for (gpu, _), items in groups.items():
        counts = sorted({x.gpu_count for x, _ in items})
        quants = sorted({x.quantization or "-" for x, _ in items})
        firsts = [float(m.group()) for _, reason in items if (m := number.search(reason))]
        reason = items[0][1]
        if firsts and min(firsts) != max(firsts):
            reason = number.sub(f"{min(firsts):g}-{max(firsts):g}", reason, count=1)
        rig = "all" if gpu == "*" else f"{gpu} x{counts[0]}" + (f"-{counts[-1]}" if len(counts) > 1 else "")
        merged.append((rig, "/".join(quants), sum(x.offers for x, _ in items), reason))
    return merged


def plan(r: PlanReport, show_all: bool = False) -> None:
    m = r.model
    out.print(_t(("Plan", "bold"), f" {r.plan}: its tasks on ", (m.name, "bold"),
                 f" ({_params(m.params.total)} params) — budget {r.budget_cny} CNY, objective: {r.objective}"))
    c = r.recommendation
    if c is not None:
        out.print(_t("\n", ("Recommended:", "bold green"), f" {c.provider} {c.instance_type} ({c.region or '-'}) — "
                     f"{_rig(c)}, {c.quantization}, {'spot' if c.spot else 'on-demand'}"))
        orig = "" if c.currency == "CNY" else f" = {c.price_original_per_hour} {c.currency}/h"
        out.print(f"  cost      {c.cost_cny} CNY  ({c.price_cny_per_hour} CNY/h{orig}, billed {c.billing}: "
                  f"{c.billed_hours:g} h)")
        out.print(f"  budget    {c.budget_left_cny} CNY left of {r.budget_cny} CNY; the plan fits {c.plan_fits_times} "
                  "times in it")
        out.print(f"  time      {c.hours:.2f} h = " + " + ".join(
            f"{k} {_hm(v)}" for k, v in [("boot", c.time.boot_s), ("install", c.time.install_s),
                                         ("download", c.time.download_s), ("load", c.time.load_s),
                                         *c.time.tasks.items(), ("spot risk", c.time.spot_overhead_s)] if v))
        out.print(f"  memory    peak {c.memory_per_gpu_gib:.2f} GiB per GPU of {c.gpu_memory_gib:.1f} GiB ({c.gpu}):")
        mem = Table(title="  GiB per card", title_justify="left")
        mem.add_column("component", no_wrap=True)
        for g in c.memory:
            mem.add_column(f"card {g.gpu_index}" if len(c.memory) < 5 else f"#{g.gpu_index}", justify="right")
        for label, attr in (("decoder layers", "layers"), ("weights", "weights"), ("KV cache", "kv_cache"),
                            ("LLM activations", "activations"), ("vision encoder", "vision_activations"),
                            ("dequant scratch", "dequant_scratch"), ("CUDA context", "cuda_context"),
                            ("allocator slack", "allocator_slack"), ("up to 1.2x weights", "floor_adjust"),
                            ("peak", "total")):
            vals = [getattr(g, attr) for g in c.memory]
            if attr not in ("layers", "weights", "total") and not any(vals):
                continue
            mem.add_row(Text(label, style="bold") if attr == "total" else label,
                        *(str(v) if attr == "layers" else _gib_cell(v) for v in vals))
        out.print(mem)
        out.print("  (activations and vision encoder do not overlap: the peak counts the larger)")
        for n in c.notes:
            out.print(f"  note: {n}")
    if r.alternatives:
        t = Table(title="Alternatives" if c else "Cheapest options (none within budget)", title_justify="left")
        fits = not all(a.fits_budget for a in r.alternatives)  # the column only says something when one does not
        for col in ("offer", "rig", "quant", "GiB/GPU", "hours", "CNY") + (("fits",) if fits else ()):
            t.add_column(col, justify="right" if col in ("GiB/GPU", "hours", "CNY") else "left",
                         no_wrap=col in ("offer", "rig", "GiB/GPU"))
        for a in r.alternatives:
            t.add_row(f"{a.provider}:{a.instance_type}" + (f"@{a.region}" if a.region else ""),
                      _rig(a) + (" spot" if a.spot else ""), a.quantization, f"{a.memory_per_gpu_gib:.1f}",
                      f"{a.hours:.2f}", str(a.cost_cny), *(("yes" if a.fits_budget else "no",) if fits else ()))
        out.print(t)
    if r.rejected:
        rows = sorted(r.rejected, key=lambda x: (x.reason.startswith("over"), x.gpu, x.gpu_count))
        merged = rows if show_all else _merge_rejections(rows)
        t = Table(title=f"Rejected ({sum(x.offers for x in r.rejected)} offer x quantization pairs)",
                  title_justify="left")
        for col in ("GPU", "quant", "offers", "why"):
            t.add_column(col, no_wrap=col != "why", justify="right" if col == "offers" else "left")
        for x in merged[:None if show_all else REJECTED_SHOWN]:
            if show_all:
                x = ("all" if x.gpu == "*" else f"{x.gpu} x{x.gpu_count}", x.quantization or "-", x.offers, x.reason)
            t.add_row(x[0], x[1], str(x[2]), x[3])
        out.print(t)
        if not show_all:
            more = len(merged) - REJECTED_SHOWN
            out.print(f"  GPU counts and quantizations with the same reason are merged{f'; {more} more rows' if more > 0 else ''}"
                      " (`--all` lists every group)")
    out.print(f"{r.candidates} candidates, {r.feasible} runnable, {r.within_budget} within budget. "
              "Estimates assume the defaults listed by `budget plan --json` (assumptions); "
              "override any with --assume NAME=VALUE.")
    if r.next is not None:
        out.print(_t("\n", ("Run it:", "bold"), " ", r.next.command), soft_wrap=True)
        for line in r.next.setup:
            out.print(f"  {line}", soft_wrap=True)


def prices(p: PriceList) -> None:
    dates = sorted({o.date for o in p.offers})
    t = Table(title=f"{len(p.offers)} offers, CNY per hour (original currency beside); `budget run --offer ID` takes "
              "the id", title_justify="left")
    cols = ("offer id", "GPU", "CNY/h", "spot", "original", "billed per") + (("as of",) if len(dates) > 1 else ())
    for col in cols:
        t.add_column(col, justify="right" if col in ("CNY/h", "spot") else "left", no_wrap=col != "as of",
                     min_width=6 if col in ("CNY/h", "spot") else None)
    for o in p.offers:
        inc, low = o.billing_increment_s, o.billing_minimum_s
        bill = ("hour" if inc == 3600 else f"{inc}s") + (f" min {low}s" if low > inc else "")
        t.add_row(o.id, f"{o.gpu} x{o.gpu_count}", str(o.price_cny_per_hour),
                  "-" if o.spot_price_cny_per_hour is None else str(o.spot_price_cny_per_hour),
                  "-" if o.currency == "CNY" else f"{o.price_original_per_hour} {o.currency}", bill, *((o.date,) if len(dates) > 1 else ()))
    out.print(t)
    if len(dates) == 1:
        out.print(f"prices as of {dates[0]}")
    out.print("FX: " + "; ".join(f"1 {r.currency} = {r.cny_per_unit} CNY ({r.date})" for r in p.fx if r.currency != "CNY"))


def imported(r: ImportResult, dest: str) -> None:
    providers = sorted({o.provider for o in r.offers})
    out.print(f"imported {r.rows_used} rows -> {len(r.offers)} offers for {', '.join(providers)} into {dest}")
    if r.problems:
        err.print(f"skipped {len(r.problems)} rows:")
        for p in r.problems:
            err.print(f"  {p}", soft_wrap=True)


def inspect(r: InspectReport) -> None:
    p = r.params
    out.print(_t((r.name, "bold"), f" ({r.model_type}) from {r.source}"))
    t = Table(title="Parameters", title_justify="left")
    t.add_column("component")
    t.add_column("params", justify="right")
    t.add_column("share", justify="right")
    for k in ("vision", "embeddings", "lm_head", "attention", "mlp", "norms"):
        v = getattr(p, k)
        label = "lm_head (tied: shares embeddings)" if k == "lm_head" and p.tied else k
        t.add_row(label, f"{v:,}", f"{100 * v / p.total:.1f} %")
    t.add_row(Text("total", style="bold"), f"{p.total:,}", "100 %")
    if p.active != p.total:
        t.add_row("active per token (MoE top-k)", f"{p.active:,}", f"{100 * p.active / p.total:.1f} %")
    out.print(t)
    w = Table(title="Weights in GPU memory (bitsandbytes leaves embeddings, lm_head, norms, MoE experts 16-bit)",
              title_justify="left")
    for col in ("quantization", "vision tower", "double quant", "weights", "seed's claim"):
        w.add_column(col, justify="right" if col in ("weights", "seed's claim") else "left")
    for row in r.weights:
        w.add_row(row.quantization, "16-bit" if row.vision_16bit or row.quantization == "bf16" else "quantized",
                  "yes" if row.double_quant else "-", f"{row.weights_gib:.2f} GiB",
                  "-" if row.seed_claim_gb is None else f"{row.seed_claim_gb:g} GB")
    out.print(w)
    out.print(f"KV cache: {r.kv_cache_kib_per_token:g} KiB per token (16-bit). Add KV cache, activations and the "
              "CUDA context for a real peak: `budget plan` does.")


# --------------------------------------------------------------------------- budget eval

_METRICS = (("bleu4", "BLEU-4"), ("cider_d", "CIDEr-D"), ("anls", "ANLS"), ("keyword_recall", "keyword recall"),
            ("consistency", "consistency"), ("agreement", "agreement"), ("mean_frames", "frames/clip"))


class _Bar:
    """A progress line on stderr (a context manager)."""

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


class EvalProgress(_Bar):
    """A progress bar on stderr driven by the worker's status.json."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err,
                                 transient=False)
        self.bar = self.progress.add_task("starting", total=None)

    def update(self, status: dict) -> None:
        tasks = {k: t for k, t in (status.get("tasks") or {}).items() if "skipped" not in t}
        done = sum(t.get("done", 0) for t in tasks.values())
        total = sum(t.get("total", 0) for t in tasks.values()) or None
        mem = status.get("peak_memory_bytes") or 0
        desc = f"{status.get('phase', '?')}"
        if status.get("task"):
            desc += f" {status['task']}"
        desc += f" | {status.get('tokens', {}).get('decode', 0)} tokens out | peak {_gib(mem)}"
        self.progress.update(self.bar, description=desc, completed=done, total=total)


def eval_summary(summary: dict, out_dir: str) -> None:
    loads = summary.get("loads") or []
    for ld in loads:
        mem = ", ".join(f"{m['device']} {_gib(m['bytes'])}" for m in ld["memory_after_load"])
        out.print(f"loaded {summary.get('model')} as {ld['quantization']} ({ld['dtype']}) on {ld['device']} in "
                  f"{ld['load_s']:.1f} s; weights {_gib(ld['footprint_bytes'])}; memory after load: {mem}")
    t = Table(title=f"Results in {out_dir}", title_justify="left")
    for col in ("task", "kind", "done", "ok", "OOM", "errors", "metric", "samples/s", "decode tok/s", "peak memory"):
        t.add_column(col, justify="left" if col in ("task", "kind", "metric") else "right")
    for name, s in (summary.get("tasks") or {}).items():
        metric = ", ".join(f"{label} {s[k]:.3f}" for k, label in _METRICS if s.get(k) is not None)
        if s.get("skipped"):
            metric = f"skipped: {s['skipped']}"
        if s.get("largest_ok"):
            metric = "largest OK " + "x".join(map(str, s["largest_ok"])) + " px"
        t.add_row(name, s["kind"], f"{s['done']}/{s.get('total') or s['done']}", str(s["ok"]), str(s["oom"]),
                  str(s.get("errors", 0)), metric or "-",
                  "-" if s.get("samples_per_s") is None else f"{s['samples_per_s']:.2f}",
                  "-" if s.get("decode_tokens_per_s") is None else f"{s['decode_tokens_per_s']:.1f}",
                  "-" if s.get("peak_memory_bytes") is None else _gib(s["peak_memory_bytes"]))
    out.print(t)
    state = "complete" if summary.get("complete") else f"stopped: {summary.get('stopped')}" if summary.get("stopped") \
        else "incomplete"
    out.print(f"{state}; elapsed {summary.get('elapsed_s', 0):.1f} s (attempt {summary.get('attempt')}); "
              f"per-sample lines in {out_dir}/results/")


# --------------------------------------------------------------------------- budget run / status / stop


def _when(epoch) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if epoch else "-"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_estimate(p) -> None:
    """What `budget run` is about to do, before it asks."""
    rec, req = p.recommendation, p.request
    offer = req.offer
    err.print(f"run {req.run_id}: plan {p.plan.name} on {req.provider} "
              f"({rec.gpu} x{rec.gpu_count}, {offer['instance_type']}{', spot' if req.spot else ''}), "
              f"{req.quantization}", soft_wrap=True)
    err.print(f"  price {req.price_cny_h} CNY/h, billed every {offer['billing_increment_s']} s "
              f"(minimum {offer['billing_minimum_s']} s); estimate {_duration(rec.time.total_s)}, "
              f"{rec.cost_cny} CNY (planner's speed model: {rec.gpu} x{rec.gpu_count}; a local run uses this "
              f"machine's speed)", soft_wrap=True)
    pol = req.policy
    c = p.cap
    if c.new_pool:
        pool = f"new pool {c.pool!r}, created with the same cap"
    else:
        pool = (f"pool {c.pool!r}: cap {c.pool_cap_cny} CNY, {money(c.pool_spent_cny)} CNY spent, "
                f"{money(c.pool_left_cny)} CNY left")
    err.print(f"  cap {c.cap_cny} CNY for this run ({pool}); the guard decides every {pol['tick_s']:g} s, plans "
              f"{pol['teardown_s']:g} s to tear down and a reserve of {pol['reserve_cny']} CNY; the instance stops "
              f"itself if not heard from for {pol['lease_s']:g} s", soft_wrap=True)
    if not c.new_pool and c.pool_left_cny < c.cap_cny:
        err.print(_t("  ", ("warning:", "yellow"), f" pool {c.pool!r} has {money(c.pool_left_cny)} CNY left, less than this run's "
                  f"cap: the guard stops the run when the pool's money ends"), soft_wrap=True)
    if rec.cost_cny > p.cap_cny:
        err.print(_t("  ", ("warning:", "yellow"), f" the estimate ({rec.cost_cny} CNY) is over the cap ({p.cap_cny} CNY): the "
                  f"guard will stop the run when the money ends; finished samples are kept"), soft_wrap=True)
    err.print(f"  results: {p.run_dir}/out", soft_wrap=True)


def detached(run_id: str, pid: int) -> None:
    out.print(run_id)
    err.print(f"controller running in the background (pid {pid}); watch with `budget status {run_id}` or "
              f"`budget logs {run_id} -f`, stop with `budget stop {run_id}`", soft_wrap=True)


class RunProgress(_Bar):
    """`budget run`'s live line on stderr: phase, samples, spend vs cap, ETA."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, transient=False)
        self.bar = self.progress.add_task("starting", total=None)

    def update(self, p: dict) -> None:
        desc = f"{p['phase']}"
        if p.get("task"):
            desc += f" {p['task']}"
        desc += f" | {money(p['spent_cny'])} of {money(p['cap_cny'])} CNY"
        if p.get("eta_s") is not None:
            desc += f" | eta {_duration(p['eta_s'])}"
        self.progress.update(self.bar, description=desc, completed=p["done"], total=p["total"] or None)


def runs_table(rows: list[dict]) -> None:
    if not rows:
        err.print("no runs yet; start one with `budget run PLAN`")
        return
    t = Table(title="Runs (newest first)")
    for col in ("run", "state", "provider", "offer", "quant", "samples", "spent CNY", "cap CNY", "started"):
        t.add_column(col, justify="right" if col in ("samples", "spent CNY", "cap CNY") else "left")
    for r in rows:
        state = r["state"] + (f": {r['reason']}" if r.get("reason") and r["state"] == "stopped" else "")
        if r["state"] in ("created", "running") and not r["controller_alive"]:
            state += " (no controller: `budget stop` settles it)"
        t.add_row(r["id"], state, r["provider"], r["offer"], r["quantization"],
                  f"{r['samples_done']}/{r['samples_total']}", money(r["spent_cny"]), money(r["cap_cny"]),
                  _when(r["created_at"]))
    out.print(t)


def run_detail(d: dict) -> None:
    state = d["state"] + (f": {d['reason']}" if d.get("reason") else "")
    if d["state"] in ("created", "running") and not d["controller_alive"]:
        state += " - no controller is driving it; `budget stop` terminates and settles it"
    out.print(_t(f"run {d['id']}  ", (state, "bold"), f"  (phase {d['phase']})"), soft_wrap=True)
    out.print(f"  plan {d['plan']} ({d['plan_path']}), {d['provider']} {d['offer']}, {d['quantization']}"
              f"{', spot' if d['spot'] else ''}", soft_wrap=True)
    est = f"estimate {d['estimate_cny']} CNY / {_duration(d['estimate_s'])}" if d.get("estimate_cny") else ""
    out.print(f"  spent {money(d['spent_cny'])} CNY of a {money(d['cap_cny'])} CNY cap; pool {d['pool']}: "
              f"{money(d['pool_spent_cny'])} of {money(d['pool_cap_cny'])} CNY; {est}", soft_wrap=True)
    out.print(f"  samples {d['samples_done']}/{d['samples_total']}; started {_when(d['created_at'])}, "
              f"finished {_when(d.get('finished_at'))}; results in {d['dir']}/out", soft_wrap=True)
    if d["instances"]:
        t = Table(title="Instances")
        for col in ("id", "state", "type", "price CNY/h", "billing", "launched", "ended"):
            t.add_column(col)
        for i in d["instances"]:
            t.add_row(str(i["provider_id"] or "-"), i["state"], i["instance_type"], str(i["price_cny_h"]),
                      f"{i['increment_s']} s, min {i['minimum_s']} s", _when(i["launched_at"]), _when(i["ended_at"]))
        out.print(t)
    if d["tasks"]:
        t = Table(title="Tasks")
        for col in ("task", "kind", "done", "ok"):
            t.add_column(col)
        for x in d["tasks"]:
            t.add_row(x["task"], x["kind"], str(x["samples"]), str(x["ok"]))
        out.print(t)


def pools_table(rows: list[dict]) -> None:
    if not rows:
        err.print("no pools yet; `budget pool create NAME --yuan AMOUNT`, or the first `budget run` makes one")
        return
    t = Table(title="Budget pools (CNY)", title_justify="left")
    for col in ("pool", "cap", "spent", "committed", "left", "runs", "active"):
        t.add_column(col, justify="left" if col == "pool" else "right")
    for r in rows:
        t.add_row(r["name"], money(r["cap_cny"]), money(r["spent_cny"]), money(r["committed_cny"]), money(r["left_cny"]),
                  str(r["runs"]), str(r["active_runs"]))
    out.print(t)
    out.print("committed = spent + what live instances may still bill up to their leases; left = cap - committed")


def pool_detail(d: dict) -> None:
    out.print(_t("pool ", (d["name"], "bold"), f": cap {money(d['cap_cny'])} CNY, spent {money(d['spent_cny'])} CNY, "
              f"committed {money(d['committed_cny'])} CNY, left {money(d['left_cny'])} CNY; {d['runs']} runs "
              f"({d['active_runs']} active, {d['live_instances']} live instances)"), soft_wrap=True)
    if d["left_cny"] < 0:
        err.print(_t(("warning:", "yellow"), f" the cap is {money(-d['left_cny'])} CNY below what the pool has "
                     "committed: its live runs stop at their next guard tick (leases already handed out still "
                     "bill to their end)"), soft_wrap=True)
    t = Table(title="Cap history", title_justify="left")
    for col in ("when", "change", "cap CNY", "by"):
        t.add_column(col, justify="right" if col == "cap CNY" else "left")
    for e in d["cap_history"]:
        change = "created" if e["kind"] == "created" else f"{money(e['old_cap_cny'])} ->"
        t.add_row(_when(e["at"]), change, money(e["new_cap_cny"]), e["detail"])
    out.print(t)
    if d["run_list"]:
        t = Table(title="Runs (newest first)", title_justify="left")
        for col in ("run", "state", "spent CNY", "cap CNY", "started"):
            t.add_column(col, justify="right" if "CNY" in col else "left")
        for r in d["run_list"]:
            t.add_row(r["id"], r["state"], money(r["spent_cny"]), money(r["cap_cny"]), _when(r["created_at"]))
        out.print(t)


def data_init(written, plan_path, copied) -> None:
    if copied is not None:
        out.print(f"copied the shipped plan to {copied}: its data folder is beside the copy")
    if not written:
        out.print(f"{plan_path} reads no local data: its tasks fetch public data or draw synthetic samples")
        return
    for w in written:
        if w.created:
            out.print(f"wrote {w.path} (task {w.task}, {w.kind}): replace its example lines with yours, one JSON "
                      f"object per sample; put the files it names under {w.path.parent / w.media_dir}/", soft_wrap=True)
        else:
            out.print(f"kept {w.path} (task {w.task}): it exists already", soft_wrap=True)
    out.print(f"then `budget run {plan_path}` checks every file before launching (README: manifest format)",
              soft_wrap=True)


def log_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def ledger_check(doc: dict) -> None:
    out.print(f"ledger {doc['ledger']}: {'ok' if doc['ok'] else 'NOT OK'} - {doc['runs_in_ledger']} run(s) in it, "
              f"{doc['runs_on_disk']} on disk, {doc['live_instances']} live instance(s)")
    for p in doc["problems"]:
        out.print(f"  problem: {p}")
    if not doc["ok"]:
        out.print("  fix: `budget ledger rebuild` (the old file is kept beside it)")


def ledger_rebuilt(doc: dict) -> None:
    aside = f"; the old one is kept as {doc['moved_aside']}" if doc["moved_aside"] else ""
    out.print(f"rebuilt {doc['ledger']}: {doc['runs']} run(s), {doc['instances']} instance(s){aside}")


def stopped(run: dict) -> None:
    out.print(f"run {run['id']}: {run['state']}" + (f" ({run['reason']})" if run.get("reason") else ""))


def report(doc: dict, to_string: bool = False) -> str | None:
    """`budget report` as tables: printed, or returned as plain text (for --out)."""
    con = Console(file=io.StringIO(), width=200, highlight=False, markup=False, color_system=None) \
        if to_string else out
    if doc["view"] == "quality":
        _quality(con, doc)
    else:
        _statement(con, doc)
    return con.file.getvalue() if to_string else None


def _statement(con: Console, d: dict) -> None:
    period = f"{d['period']['since'] or 'the first run'} to {d['period']['until'] or d['generated_at']}"
    con.print(_t(("Statement", "bold"), f" of {', '.join(d['pools'])}, {period} (amounts in CNY, at launch prices)"))
    burn = d["burn"]
    runway = f"{d['runway_h']} h at {d['runway_basis']}" if d["runway_h"] else d["runway_basis"]
    for label, value in (("cap", f"{d['cap_cny']} CNY"), ("opening balance", f"{d['opening_balance_cny']} CNY"),
                         ("spent in period", f"{d['spent_cny']} CNY"), ("remaining", f"{d['remaining_cny']} CNY"),
                         ("burn", f"{burn['average_cny_per_day'] or '-'} CNY/day on average, {burn['current_cny_per_h']}"
                                  f" CNY/h now ({burn['live_instances']} live instance(s))"),
                         ("runway", runway)):
        con.print(f"  {label:<16} {value}")
    if len(d["subtotals"]) > 1:
        con.print("  subtotals        " + ", ".join(f"{s['pool']} {s['amount_cny']} CNY" for s in d["subtotals"]))
    for e in d["cap_changes"]:
        con.print(f"  cap change       {e['at']} {e['pool']}: {e['old_cap_cny'] or '-'} -> {e['new_cap_cny']} CNY")
    if "groups" in d:
        t = Table(title=f"By {d['by']}", title_justify="left")
        for col in (d["by"], "billed", "amount (CNY)", "share"):
            t.add_column(col, justify="left" if col == d["by"] else "right")
        for g in d["groups"]:
            t.add_row(g["key"], _duration(float(g["billed_s"])), g["amount_cny"], f"{g['share_pct']}%")
        t.add_row(_t(("total", "bold")), "", _t((d["spent_cny"], "bold")), "")
    else:
        t = Table(title="Charges", title_justify="left")
        for col in ("run", "provider", "instance", "GPU", "rate at launch", "billed", "amount (CNY)", "status"):
            t.add_column(col, justify="right" if col in ("billed", "amount (CNY)") else "left")
        for c in d["charges"]:
            rate = "-" if c["rate_cny_h"] is None else (
                f"{money(c['rate_cny_h'])} CNY/h" + ("" if c["currency"] == "CNY" else
                                                     f" ({c['rate_original_h']} {c['currency']}/h x {c['fx_cny_per_unit']})"))
            gpu = f"{c['gpu']} x{c['gpu_count']}" if c["gpu"] else "-"
            kind = "spot" if c["spot"] else "on-demand"
            status = c["status"] + (f": {c['reason']}" if c["reason"] else "")
            t.add_row(c["run"], f"{c['provider']} {c['region']}".strip(), f"{c['instance_type'] or '-'} {kind}", gpu,
                      rate, c["billed"], c["amount_cny"], status)
        t.add_row(_t(("total", "bold")), "", "", "", "", "", _t((d["spent_cny"], "bold")), "")
    con.print(t)
    v = d["variance"]
    if v["runs"]:
        t = Table(title="Against the plan's estimate", title_justify="left")
        for col in ("run", "state", "estimate (CNY)", "actual (CNY)", "variance (CNY)", "variance"):
            t.add_column(col, justify="left" if col in ("run", "state") else "right")
        for r in v["runs"]:
            t.add_row(r["run"], r["state"], r["estimate_cny"] or "-", r["actual_cny"], r["variance_cny"] or "-",
                      f"{r['variance_pct']}%" if r["variance_pct"] else "-")
        con.print(t)
        con.print(f"finished runs: {v['finished_actual_cny']} CNY spent against {v['finished_estimate_cny']} CNY "
                  f"estimated ({v['finished_variance_cny']} CNY, {v['finished_variance_pct'] or '-'}%)")


def _quality(con: Console, d: dict) -> None:
    t = Table(title="Cost of quality (CNY at launch prices)", title_justify="left")
    cols = ("task", "quant", "metric", "value", "samples", "CNY/sample", "CNY/1k tok", "tok/s", "peak mem",
            "agree 16-bit", "cost (CNY)")
    for col in cols:
        t.add_column(col, justify="left" if col in ("task", "quant", "metric") else "right")
    for r in d["rows"]:
        t.add_row(r["task"], r["quant"], r["metric"] or "-", r["value"] or "-", str(r["samples"]),
                  r["cny_per_sample"] or "-", r["cny_per_1k_tokens"] or "-", r["tokens_per_s"] or "-",
                  f"{r['peak_memory_gib']} GiB" if r["peak_memory_gib"] else "-",
                  f"{float(r['agreement_16bit']) * 100:.0f}% of {r['agreement_samples']}" if r["agreement_16bit"] else "-",
                  r["cost_cny"])
    con.print(t)
    for v in d["verdicts"]:
        con.print(_t(("  " + v, "bold")))
    con.print(f"runs: {', '.join(r['run'] + ' (' + r['quant'] + ', ' + r['spent_cny'] + ' CNY)' for r in d['runs'])}")
    con.print(d["allocation"])


def wrote(path, fmt: str) -> None:
    err.print(f"wrote {path} ({fmt})")


def swept(doc: dict) -> None:
    rows = doc["resources"]
    for line in doc["unchecked"]:
        err.print(_t(("warning:", "yellow"), f" {line}"), soft_wrap=True)
    if not rows:
        out.print("nothing tagged as gpubudget's: no leaks" + (" where it could look" if doc["unchecked"] else ""))
        return
    t = Table(title="Resources tagged as gpubudget's", title_justify="left")
    for col in ("provider", "kind", "id", "run", "region", "detail", "CNY/h", "leak?", "why"):
        t.add_column(col, justify="right" if col == "CNY/h" else "left")
    for r in rows:
        state = ("deleted" if r["deleted"] else f"NOT deleted: {r['error']}" if r["error"] else "leak") if r["leak"] \
            else "kept"
        t.add_row(r["provider"], r["kind"], r["id"], r["run"] or "-", r["region"] or "-", r["detail"],
                  "?" if r["cny_per_h"] is None else money(r["cny_per_h"]), state, r["why"])
    out.print(t)
    verb = "deleted" if doc["deleted"] else "found"
    out.print(f"{doc['leaks']} leak(s) {verb}, costing about {money(doc['leak_cny_per_h'])} CNY/h ({doc['assumptions']})")
    if doc["leaks"] and not doc["deleted"]:
        out.print("delete them with `budget sweep --yes`")


def unattended(run_id: str) -> None:
    out.print(f"run {run_id} runs unattended: its instance holds the deadline its budget pays, uploads its results "
              "to S3 and powers itself off when done - this machine may sleep")
    out.print(f"collect it (results, spend settled) with `budget status {run_id}`")


# --------------------------------------------------------------------------- budget estimate / calibrate


def estimate(r) -> None:
    out.print(_t((f"{r.model}", "bold"), f" ({r.model_type}, {_params(r.params)} params) on {r.gpu} x{r.gpu_count}, "
                 f"{r.quantization}, batch {r.batch}: {r.prompt_tokens} prompt + {r.visual_tokens} visual tokens "
                 f"(prefill {r.prefill_tokens}), {r.new_tokens} new"), soft_wrap=True)
    t = Table(title=f"Peak memory of the fullest card: {r.peak_memory_gib:.2f} GiB of {_gib(r.usable_bytes)}"
                    f"{'' if r.fits else ' - DOES NOT FIT'}", title_justify="left")
    t.add_column("component")
    t.add_column("GiB", justify="right")
    for k, v in r.memory.items():
        if k != "total":
            t.add_row(k.replace("_", " "), f"{v / 2**30:.3f}")
    t.add_row(Text("total", style="bold"), f"{r.memory['total'] / 2**30:.3f}")
    t.add_row("(allocator peak: weights + KV + activations + scratch)", f"{r.allocated_bytes / 2**30:.3f}")
    out.print(t)
    out.print("(activations and vision encoder do not overlap: the peak counts the larger)")
    out.print(f"time: vision {r.vision_s:.3f} s + prefill {r.prefill_s:.3f} s -> first token at {r.ttft_s:.3f} s; "
              f"decode {r.decode_s:.2f} s at {r.decode_tokens_per_s:.1f} tokens/s; total {r.total_s:.2f} s",
              soft_wrap=True)
    out.print("assumed: " + "; ".join(r.assumptions), soft_wrap=True)
    out.print(r.calibration or "uncalibrated: the defaults above (`budget calibrate` fits them to your runs)",
              soft_wrap=True)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.0f}%"


def calibrated(cal) -> None:
    t = Table(title=f"Calibration stored {cal.created_at}", title_justify="left")
    for col in ("device", "quant", "samples", "factors", "time error before", "after", "memory error before", "after"):
        t.add_column(col, justify="right" if "error" in col or col in ("after", "samples") else "left")
    for r in cal.rigs:
        t.add_row(r.device, r.quantization, str(r.samples), ", ".join(f"{k}={v:g}" for k, v in r.factors.items()),
                  _pct(r.error_before).lstrip("+"), _pct(r.error_after).lstrip("+"),
                  _pct(r.memory_error_before).lstrip("+"), _pct(r.memory_error_after).lstrip("+"))
    for p in cal.providers:
        t.add_row(p.provider, "(fixed costs)", str(len(p.runs)), ", ".join(f"{k}={v:g}" for k, v in p.factors.items()),
                  _pct(p.error_before).lstrip("+"), _pct(p.error_after).lstrip("+"), "-", "-")
    out.print(t)
    for r in cal.rigs:
        for o in r.outliers:
            err.print(f"outlier left out of {r.device}/{r.quantization}: {o}", soft_wrap=True)
    for x in cal.excluded:
        err.print(f"not used: {x}", soft_wrap=True)
    out.print("errors are mean |estimate - measured| / measured over the rows used; `budget plan`, `budget estimate` "
              "and `budget run` now use these factors on these rigs", soft_wrap=True)


def calibration_show(doc: dict) -> None:
    t = Table(title="Finished runs: estimate vs actual", title_justify="left")
    for col in ("run", "provider", "quant", "actual h", "estimate h", "error", "now h", "error now", "actual CNY",
                "estimate CNY"):
        t.add_column(col, justify="left" if col in ("run", "provider", "quant") else "right")
    for r in doc["runs"]:
        t.add_row(r["run"], r["provider"], r["quantization"], f"{r['actual_h']:.4f}", f"{r['estimate_h']:.4f}",
                  _pct(r["error_before"]), "-" if r["estimate_after_h"] is None else f"{r['estimate_after_h']:.4f}",
                  _pct(r["error_after"]), money(Decimal(r["actual_cny"])), r["estimate_cny"] or "-")
    out.print(t)
    cal = doc["calibration"]
    out.print(f"mean |error|: {_pct(doc['mean_error_before']).lstrip('+')} as estimated at launch, "
              f"{_pct(doc['mean_error_after']).lstrip('+')} with "
              + (f"the calibration of {cal['created_at']}" if cal else "no calibration stored (`budget calibrate`)"),
              soft_wrap=True)

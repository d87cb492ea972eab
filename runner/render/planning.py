"""Printers of the planning commands: `budget plan` (recommendation, per-card memory, alternatives, merged
rejections, the command that runs it), `estimate`, `prices list` / `import`, `model inspect`, and
`calibrate` (the stored fit, and estimate vs actual with --show)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

from rich.text import Text

from planner.catalog import ImportResult
from planner.models import GIB, InspectReport, PlanReport, PriceList, Recommendation

from ..units import band, duration, iso, money
from . import base
from .base import Table, billing, gib, styled

REJECTED_SHOWN = 12  # a screenful; `budget plan --all` lists every group


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _rig(c: Recommendation) -> str:
    """'T4 x1', 'T4 x4 replicas' (a model per card), 'T4 x4 split' (one model over the cards)."""
    return f"{c.gpu} x{c.gpu_count}" + (f" {c.layout}" if c.gpu_count > 1 else "")


def _deadline(r: PlanReport, c: Recommendation) -> str:
    """The recommendation against the deadline, and what the deadline costs over the cheapest option."""
    d = r.deadline
    line = (f"  deadline  up to {duration(c.hours_high * 3600)} (the upper end of {band(c.time.band)}) of the "
            f"{duration(d.seconds_left)} left, by {d.deadline_at}")
    low = d.cheapest
    if low is None or d.extra_cny is None:
        return line
    if d.extra_cny == 0:
        return line + "; it costs nothing: the cheapest option meets it"
    return line + (f"; the deadline costs +{money(d.extra_cny)} CNY over the cheapest option ({low.provider}:"
                   f"{low.instance_type}, {_rig(low)}, {low.quantization}, {low.engine}: {money(low.cost_cny)} CNY), "
                   f"which would take up to {duration(low.hours_high * 3600)}")


def _gib_cell(b: int) -> str:
    return "-" if b == 0 else "<0.01" if b < GIB / 100 else f"{b / GIB:.2f}"


def _fitting(rows, width: int, lines: int = 30) -> int:
    """How many merged rejection rows to show: at most REJECTED_SHOWN, and no more than fill about `lines` lines
    once their reasons wrap in the `why` column this console leaves (a narrow terminal shows fewer)."""
    why = max(16, width - 64)  # what GPU, quant, engine and offers (and the padding) leave
    used = 0
    for n, x in enumerate(rows[:REJECTED_SHOWN]):
        used += -(-len(x[4]) // why)
        if used > lines:
            return max(n, 1)
    return min(len(rows), REJECTED_SHOWN)


def _merge_rejections(rows) -> list[tuple[str, str, str, int, str]]:
    """One row per GPU and kind of reason: counts, quantizations and engines merged, the figure that varies as a
    range ("needs 65.9-526.8 GiB per GPU; A100-40GB has 40.0 GiB")."""
    number = re.compile(r"\d+(?:\.\d+)?")
    groups: dict[tuple[str, str], list] = {}
    for x in rows:
        reason = re.sub(r"on card \d+ of \d+", "per GPU", x.reason)
        groups.setdefault((x.gpu, number.sub("#", reason)), []).append((x, reason))
    merged = []
    for (gpu, _), items in groups.items():
        counts = sorted({x.gpu_count for x, _ in items})
        quants = sorted({x.quantization or "-" for x, _ in items})
        engines = sorted({x.engine or "any" for x, _ in items}, key=_ENGINE_ORDER.get)
        firsts = [float(m.group()) for _, reason in items if (m := number.search(reason))]
        reason = items[0][1]
        if firsts and min(firsts) != max(firsts):
            reason = number.sub(f"{min(firsts):g}-{max(firsts):g}", reason, count=1)
        rig = "all" if gpu == "*" else f"{gpu} x{counts[0]}" + (f"-{counts[-1]}" if len(counts) > 1 else "")
        merged.append((rig, "/".join(quants), "/".join(engines), sum(x.offers for x, _ in items), reason))
    return merged


_ENGINE_ORDER = {"hf": 0, "transformers": 1, "vllm": 2, "sglang": 3, "any": 4}
SERVERS = ("vllm", "sglang")


def _versus(c: Recommendation, engine: str) -> str:
    """How `engine` compares on a row's offer: '1.4x, +1.40' (time, CNY more), 'refused' or '-' (the row's own)."""
    if c.engine == engine:
        return "-"
    o = next((o for o in c.other_engines if o.engine == engine), None)
    if o is None or o.cost_cny is None:
        return "-" if o is None else "refused"
    diff = o.cost_cny - c.cost_cny
    return f"{o.hours * 3600 / c.time.total_s:.1f}x, {'+' if diff >= 0 else '-'}{money(abs(diff))}"


def plan(r: PlanReport, show_all: bool = False, free: list[Recommendation] = (), missed: list[str] = ()) -> None:
    """`free`: options a person runs (providers the catalog's terms declare manual), shown after the ranking with
    their limits; `missed`: one line each for those the plan cannot run on."""
    out = base.out
    m = r.model
    d = r.deadline
    out.print(styled(("Plan", "bold"), f" {r.plan}: its tasks on ", (m.name, "bold"),
                     f" ({_params(m.params.total)} params) — budget {r.budget_cny} CNY, objective: {r.objective}"
                     + (f", deadline {d.deadline} ({d.deadline_at})" if d else "")))
    c = r.recommendation
    if c is not None:
        out.print(styled("\n", ("Recommended:", "bold green"),
                         f" {c.provider} {c.instance_type} ({c.region or '-'}) — {_rig(c)}, {c.quantization}, "
                         f"{c.engine}, {'spot' if c.spot else 'on-demand'}"))
        orig = "" if c.currency == "CNY" else f" = {c.price_original_per_hour} {c.currency}/h"
        tb, mb = band(c.time.band), band(c.memory_band)
        out.print(f"  cost      {money(c.cost_cny)} CNY, {money(c.cost_low_cny)}-{money(c.cost_high_cny)} CNY at {tb} time  "
                  f"({money(c.price_cny_per_hour)} CNY/h{orig}, billed {c.billing}: {duration(c.billed_hours * 3600)})")
        if d is not None:
            out.print(_deadline(r, c), soft_wrap=True)
        if c.cost_cny > 0:
            out.print(f"  budget    {money(c.budget_left_cny)} CNY left of {money(r.budget_cny)} CNY; the plan fits "
                      f"{c.plan_fits_times} times in it")
        else:
            out.print(f"  budget    nothing of the {money(r.budget_cny)} CNY is spent: it runs free of charge")
        if c.other_engines:
            out.print(f"  engines   {c.engine}" + (f" ({c.concurrency} in flight)" if c.concurrency else "") + "; "
                      + "; ".join(f"{o.engine}" + (f" ({o.quantization})" if o.quantization not in (None, c.quantization)
                                                   else "") + f": {o.reason}" for o in c.other_engines), soft_wrap=True)
        out.print(f"  time      {duration(c.time.total_s)} {tb} = " + " + ".join(
            f"{k} {duration(v)} {tb}" for k, v in [("boot", c.time.boot_s), ("install", c.time.install_s),
                                              (f"{c.engine} install", c.time.engine_install_s),
                                              ("download", c.time.download_s), ("load", c.time.load_s),
                                              (f"{c.engine} start", c.time.engine_start_s),
                                              *c.time.tasks.items(), ("spot risk", c.time.spot_overhead_s)] if v))
        server = c.engine in SERVERS
        held = f"{c.engine} holds {c.engine_memory_fraction:.0%}: " if server else "peak "
        out.print(f"  memory    {held}{c.memory_per_gpu_gib:.2f} GiB {mb} per GPU of {c.gpu_memory_gib:.1f} GiB "
                  f"({c.gpu}):")
        mem = Table(title=f"  GiB per card, each {mb}", title_justify="left")
        mem.add_column("component", no_wrap=True)
        for g in c.memory:
            mem.add_column(f"card {g.gpu_index}" if len(c.memory) < 5 else f"#{g.gpu_index}", justify="right")
        for label, attr in (("decoder layers", "layers"), ("weights", "weights"), ("KV cache", "kv_cache"),
                            ("LLM activations", "activations"), ("vision encoder", "vision_activations"),
                            ("dequant scratch", "dequant_scratch"),
                            ("CUDA context + graphs" if server else "CUDA context", "cuda_context"),
                            ("allocator slack", "allocator_slack"), ("up to 1.2x weights", "floor_adjust"),
                            ("preallocated" if server else "peak", "total")):
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
        t = Table(title="Alternatives" if c else "Cheapest options" + (" that meet the deadline" if d else "")
                  + " (none within budget)", title_justify="left")
        fits = not all(a.fits_budget for a in r.alternatives)  # the column only says something when one does not
        vs_hf = any(a.engine != "hf" and any(o.engine == "hf" for o in a.other_engines) for a in r.alternatives)
        for col in ("offer", "rig", "quant", "engine", "GiB/GPU", "time") + (("up to",) if d else ()) + (
                "CNY", "at most") + (("hf: time, CNY",) if vs_hf else ()) + (("fits",) if fits else ()):
            t.add_column(col, justify="right" if col in ("GiB/GPU", "time", "up to", "CNY", "at most") else "left",
                         no_wrap=col in ("offer", "rig", "GiB/GPU"))
        for a in r.alternatives:
            t.add_row(f"{a.provider}:{a.instance_type}" + (f"@{a.region}" if a.region else ""),
                      _rig(a) + (" spot" if a.spot else ""), a.quantization, a.engine,
                      f"{a.memory_per_gpu_gib:.1f} {band(a.memory_band)}", f"{duration(a.time.total_s)} {band(a.time.band)}",
                      *((duration(a.hours_high * 3600),) if d else ()), money(a.cost_cny), money(a.cost_high_cny),
                      *((_versus(a, "hf"),) if vs_hf else ()),
                      *(("yes" if a.fits_budget else "no",) if fits else ()))
        out.print(t)
        out.print("  (at most: the cost at the upper end of the time band, under the offer's billing rule"
                  + ("; up to: the time at that end, what the deadline judges" if d else "")
                  + ("; hf: the hf engine on the same offer, its time over the row's and the CNY it adds" if vs_hf
                     else "") + ")")
    if r.rejected:
        rows = sorted(r.rejected, key=lambda x: (x.reason.startswith(("over", "misses")), x.gpu, x.gpu_count))
        merged = rows if show_all else _merge_rejections(rows)
        t = Table(title=f"Rejected ({sum(x.offers for x in r.rejected)} offer x layout x quantization x engine)",
                  title_justify="left")
        for col in ("GPU", "quant", "engine", "offers", "why"):
            t.add_column(col, no_wrap=col != "why", justify="right" if col == "offers" else "left")
        shown = len(merged) if show_all else _fitting(merged, out.width)
        for x in merged[:shown]:
            if show_all:
                x = ("all" if x.gpu == "*" else f"{x.gpu} x{x.gpu_count}", x.quantization or "-", x.engine or "any",
                     x.offers, x.reason)
            t.add_row(x[0], x[1], x[2], str(x[3]), x[4])
        out.print(t)
        if not show_all:
            more = len(merged) - shown
            out.print(f"  GPU counts, quantizations and engines with the same reason are merged"
                      f"{f'; {more} more rows' if more > 0 else ''}"
                      " (`--all` lists every group)")
    if r.ranked_by == "cost_high":
        out.print("Ranked by the upper end of each cost band: the cheapest estimate could cost more than the budget.")
    out.print(f"{r.candidates} candidates, {r.feasible} runnable, {r.within_budget} within budget"
              + (f" and by the deadline ({d.late} miss it)" if d else "") + ". "
              "Estimates assume the defaults listed by `budget plan --json` (assumptions); "
              "override any with --assume NAME=VALUE.")
    if r.next is not None:
        out.print(styled("\n", ("Run it:", "bold"), " ", r.next.command), soft_wrap=True)
        for line in r.next.setup:
            out.print(f"  {line}", soft_wrap=True)
    _free(free, missed)


def _free(shown: list[Recommendation], missed: list[str]) -> None:
    """Options a person runs, apart from the ranking: each with its figures, limits and the command that uses it."""
    if not shown and not missed:
        return
    base.out.print(styled("\n", ("Free, if you run it yourself", "bold"), " (not ranked: nothing here starts, watches "
                          "or stops it; `budget plan --provider NAME` plans it alone)"))
    for a in shown:
        base.out.print(f"  {a.provider}:{a.instance_type} — {_rig(a)}, {a.quantization}, {a.engine}: "
                       f"{money(a.cost_cny)} CNY, {duration(a.time.total_s)} {band(a.time.band)}, "
                       f"{a.memory_per_gpu_gib:.1f} GiB {band(a.memory_band)} of {a.gpu_memory_gib:.1f} GiB",
                       soft_wrap=True)
        for n in a.notes:
            base.out.print(f"    {n}", soft_wrap=True)
    for line in missed:
        base.out.print(f"  {line}", soft_wrap=True)


def prices(p: PriceList) -> None:
    dates = sorted({o.date for o in p.offers})
    t = Table(title=f"{len(p.offers)} offers, CNY per hour (original currency beside); `budget run --offer ID` takes "
              "the id", title_justify="left")
    cols = ("offer id", "GPU", "CNY/h", "spot", "original", "billed per") + (("as of",) if len(dates) > 1 else ())
    for col in cols:
        t.add_column(col, justify="right" if col in ("CNY/h", "spot") else "left", no_wrap=col != "as of",
                     min_width=6 if col in ("CNY/h", "spot") else None)
    for o in p.offers:
        t.add_row(o.id, f"{o.gpu} x{o.gpu_count}", money(o.price_cny_per_hour),
                  "-" if o.spot_price_cny_per_hour is None else money(o.spot_price_cny_per_hour),
                  "-" if o.currency == "CNY" else f"{o.price_original_per_hour} {o.currency}",
                  billing(o.billing_increment_s, o.billing_minimum_s), *((o.date,) if len(dates) > 1 else ()))
    base.out.print(t)
    if len(dates) == 1:
        base.out.print(f"prices as of {dates[0]}")
    base.out.print("FX: " + "; ".join(f"1 {r.currency} = {r.cny_per_unit} CNY ({r.date})" for r in p.fx
                                      if r.currency != "CNY"))


def imported(r: ImportResult, dest: str) -> None:
    providers = sorted({o.provider for o in r.offers})
    base.out.print(f"imported {r.rows_used} rows -> {len(r.offers)} offers for {', '.join(providers)} into {dest}")
    if r.problems:
        base.err.print(f"skipped {len(r.problems)} rows:")
        for p in r.problems:
            base.err.print(f"  {p}", soft_wrap=True)


def inspect(r: InspectReport) -> None:
    p = r.params
    base.out.print(styled((r.name, "bold"), f" ({r.model_type}) from {r.source}"))
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
    base.out.print(t)
    w = Table(title="Weights in GPU memory (bitsandbytes leaves embeddings, lm_head, norms, MoE experts 16-bit)",
              title_justify="left")
    for col in ("quantization", "vision tower", "double quant", "weights", "seed's claim"):
        w.add_column(col, justify="right" if col in ("weights", "seed's claim") else "left")
    for row in r.weights:
        w.add_row(row.quantization, "16-bit" if row.vision_16bit or row.quantization == "bf16" else "quantized",
                  "yes" if row.double_quant else "-", f"{row.weights_gib:.2f} GiB",
                  "-" if row.seed_claim_gb is None else f"{row.seed_claim_gb:g} GB")
    base.out.print(w)
    base.out.print(f"KV cache: {r.kv_cache_kib_per_token:g} KiB per token (16-bit). Add KV cache, activations and the "
                   "CUDA context for a real peak: `budget plan` does.")


def estimate(r) -> None:
    out = base.out
    out.print(styled((f"{r.model}", "bold"), f" ({r.model_type}, {_params(r.params)} params) on {r.gpu} "
                     f"x{r.gpu_count}, {r.quantization}, {r.engine}, batch {r.batch}: {r.prompt_tokens} prompt + "
                     f"{r.visual_tokens} visual tokens (prefill {r.prefill_tokens}), {r.new_tokens} new"), soft_wrap=True)
    held = "" if r.engine_memory_fraction is None else f" ({r.engine} preallocates {r.engine_memory_fraction:.0%})"
    t = Table(title=f"Peak memory of the fullest card: {r.peak_memory_gib:.2f} GiB {band(r.memory_band)} of "
                    f"{gib(r.usable_bytes)}{held}{'' if r.fits else ' - DOES NOT FIT'}", title_justify="left")
    t.add_column("component")
    t.add_column(f"GiB {band(r.memory_band)}", justify="right")
    for k, v in r.memory.items():
        if k != "total":
            t.add_row(k.replace("_", " "), f"{v / 2**30:.3f}")
    t.add_row(Text("total", style="bold"), f"{r.memory['total'] / 2**30:.3f}")
    t.add_row("(allocator peak: weights + KV + activations + scratch)", f"{r.allocated_bytes / 2**30:.3f}")
    out.print(t)
    out.print("(activations and vision encoder do not overlap: the peak counts the larger)")
    b = band(r.time_band)
    out.print(f"time: vision {duration(r.vision_s)} {b} + prefill {duration(r.prefill_s)} {b} -> first token at "
              f"{duration(r.ttft_s)} {b}; decode {duration(r.decode_s)} {b} at {r.decode_tokens_per_s:.1f} tokens/s "
              f"{b}; total {duration(r.total_s)} {b}", soft_wrap=True)
    out.print(f"(bands: 90% of the time model's residuals on measured calls fall within {b}, of the memory "
              f"model's within {band(r.memory_band)})", soft_wrap=True)
    out.print("assumed: " + "; ".join(r.assumptions), soft_wrap=True)
    out.print(r.calibration or "uncalibrated: the defaults above (`budget calibrate` fits them to your runs)",
              soft_wrap=True)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.0f}%"


def _stored(created_at: str) -> str:
    """A calibration's time of storing (ISO 8601 with an offset, as calibrate writes it), spelled as iso()."""
    return iso(dt.datetime.fromisoformat(created_at).timestamp())


def calibrated(cal) -> None:
    t = Table(title=f"Calibration stored {_stored(cal.created_at)}", title_justify="left")
    for col in ("device", "quant", "samples", "factors", "time error before", "after", "memory error before", "after"):
        t.add_column(col, justify="right" if "error" in col or col in ("after", "samples") else "left")
    for r in cal.rigs:
        t.add_row(r.device, r.quantization, str(r.samples), ", ".join(f"{k}={v:g}" for k, v in r.factors.items()),
                  _pct(r.error_before).lstrip("+"), _pct(r.error_after).lstrip("+"),
                  _pct(r.memory_error_before).lstrip("+"), _pct(r.memory_error_after).lstrip("+"))
    for p in cal.providers:
        t.add_row(p.provider, "(fixed costs)", str(len(p.runs)), ", ".join(f"{k}={v:g}" for k, v in p.factors.items()),
                  _pct(p.error_before).lstrip("+"), _pct(p.error_after).lstrip("+"), "-", "-")
    base.out.print(t)
    for r in cal.rigs:
        for o in r.outliers:
            base.err.print(f"outlier left out of {r.device}/{r.quantization}: {o}", soft_wrap=True)
    for x in cal.excluded:
        base.err.print(f"not used: {x}", soft_wrap=True)
    base.out.print("errors are mean |estimate - measured| / measured over the rows used; `budget plan`, "
                   "`budget estimate` and `budget run` now use these factors on these rigs", soft_wrap=True)


def calibration_show(doc: dict) -> None:
    t = Table(title="Finished runs: estimate vs actual", title_justify="left")
    for col in ("run", "provider", "quant", "actual", "estimate", "error", "now", "error now", "actual CNY",
                "estimate CNY"):
        t.add_column(col, justify="left" if col in ("run", "provider", "quant") else "right")
    for r in doc["runs"]:
        t.add_row(r["run"], r["provider"], r["quantization"], duration(r["actual_h"] * 3600),
                  duration(r["estimate_h"] * 3600), _pct(r["error_before"]),
                  "-" if r["estimate_after_h"] is None else duration(r["estimate_after_h"] * 3600),
                  _pct(r["error_after"]), money(Decimal(r["actual_cny"])),
                  money(Decimal(r["estimate_cny"])) if r["estimate_cny"] else "-")
    base.out.print(t)
    cal = doc["calibration"]
    base.out.print(f"mean |error|: {_pct(doc['mean_error_before']).lstrip('+')} as estimated at launch, "
                   f"{_pct(doc['mean_error_after']).lstrip('+')} with "
                   + (f"the calibration of {_stored(cal['created_at'])}" if cal
                      else "no calibration stored (`budget calibrate`)"), soft_wrap=True)

"""Printers of `budget report`: the spend statement (per instance, or grouped --by) and the cost of quality,
as tables on stdout or as plain text for --out."""

from __future__ import annotations

import io

from rich.console import Console

from ..units import duration, money
from . import base
from .base import Table, add_columns, show, styled


def report(doc: dict, to_string: bool = False) -> str | None:
    """`budget report` as tables: printed, or returned as plain text (for --out)."""
    con = Console(file=io.StringIO(), width=200, highlight=False, markup=False, color_system=None) \
        if to_string else base.out
    if doc["view"] == "quality":
        _quality(con, doc)
    else:
        _statement(con, doc)
    return con.file.getvalue() if to_string else None


def _statement(con: Console, d: dict) -> None:
    period = f"{d['period']['since'] or 'the first run'} to {d['period']['until'] or d['generated_at']}"
    con.print(styled(("Statement", "bold"),
                     f" of {', '.join(d['pools'])}, {period} (amounts in CNY, at launch prices)"))
    burn = d["burn"]
    runway = f"{duration(float(d['runway_h']) * 3600)} at {d['runway_basis']}" if d["runway_h"] else d["runway_basis"]
    for label, value in (("cap", f"{d['cap_cny']} CNY"), ("opening balance", f"{d['opening_balance_cny']} CNY"),
                         ("spent in period", f"{d['spent_cny']} CNY"), ("remaining", f"{d['remaining_cny']} CNY"),
                         ("burn", (f"{burn['average_cny_per_day'] or '-'} CNY/day on average, "
                                   f"{burn['current_cny_per_h']} CNY/h now ({burn['live_instances']} live instance(s))")),
                         ("runway", runway)):
        con.print(f"  {label:<16} {value}")
    if len(d["subtotals"]) > 1:
        con.print("  subtotals        " + ", ".join(f"{s['pool']} {s['amount_cny']} CNY" for s in d["subtotals"]))
    for e in d["cap_changes"]:
        con.print(f"  cap change       {e['at']} {e['pool']}: {e['old_cap_cny'] or '-'} -> {e['new_cap_cny']} CNY")
    if "groups" in d:
        t = Table(title=f"By {d['by']}", title_justify="left")
        add_columns(t, (d["by"], "billed", "amount (CNY)", "share"), whole=(d["by"], "amount (CNY)"),
                    right=("billed", "amount (CNY)", "share"))
        for g in d["groups"]:
            t.add_row(g["key"], duration(float(g["billed_s"])), g["amount_cny"], f"{g['share_pct']}%")
        t.add_row(styled(("total", "bold")), "", styled((d["spent_cny"], "bold")), "")
    else:
        t = Table(title="Charges", title_justify="left")
        add_columns(t, ("run", "provider", "instance", "GPU", "rate at launch", "billed", "amount (CNY)", "status"),
                    whole=("run", "amount (CNY)"), right=("billed", "amount (CNY)"))
        for c in d["charges"]:
            rate = "-" if c["rate_cny_h"] is None else (
                f"{money(c['rate_cny_h'])} CNY/h" + ("" if c["currency"] == "CNY" else
                                                     f" ({c['rate_original_h']} {c['currency']}/h x {c['fx_cny_per_unit']})"))
            gpu = f"{c['gpu']} x{c['gpu_count']}" if c["gpu"] else "-"
            kind = "spot" if c["spot"] else "on-demand"
            status = c["status"] + (f": {c['reason']}" if c["reason"] else "")
            t.add_row(c["run"], f"{c['provider']} {c['region']}".strip(), f"{c['instance_type'] or '-'} {kind}", gpu,
                      rate, duration(float(c["billed_s"])), c["amount_cny"], status)
        t.add_row(styled(("total", "bold")), "", "", "", "", "", styled((d["spent_cny"], "bold")), "")
    show(con, t)
    v = d["variance"]
    if v["runs"]:
        t = Table(title="Against the plan's estimate", title_justify="left")
        cols = ("run", "state", "estimate (CNY)", "actual (CNY)", "variance (CNY)", "variance")
        add_columns(t, cols, whole=(cols[0], *cols[2:5]), right=cols[2:])
        for r in v["runs"]:
            t.add_row(r["run"], r["state"], r["estimate_cny"] or "-", r["actual_cny"], r["variance_cny"] or "-",
                      f"{r['variance_pct']}%" if r["variance_pct"] else "-")
        show(con, t)
        con.print(f"finished runs: {v['finished_actual_cny']} CNY spent against {v['finished_estimate_cny']} CNY "
                  f"estimated ({v['finished_variance_cny']} CNY, {v['finished_variance_pct'] or '-'}%)")


def _quality(con: Console, d: dict) -> None:
    t = Table(title="Cost of quality (CNY at launch prices)", title_justify="left")
    cols = ("task", "quant", "metric", "value", "vs 16-bit", "samples", "CNY/sample", "CNY/1k tok", "tok/s",
            "peak mem", "agree 16-bit", "cost (CNY)")
    for col in cols:
        t.add_column(col, justify="left" if col in ("task", "quant", "metric") else "right")
    for r in d["rows"]:
        change = r.get("change_vs_16bit_pct")
        t.add_row(r["task"], r["quant"], r["metric"] or "-", r["value"] or "-", "-" if change is None else f"{change}%",
                  str(r["samples"]), r["cny_per_sample"] or "-", r["cny_per_1k_tokens"] or "-", r["tokens_per_s"] or "-",
                  f"{r['peak_memory_gib']} GiB" if r["peak_memory_gib"] else "-",
                  f"{float(r['agreement_16bit']) * 100:.0f}% of {r['agreement_samples']}" if r["agreement_16bit"] else "-",
                  r["cost_cny"])
    show(con, t)
    for v in d["verdicts"]:
        con.print(styled(("  " + v, "bold")))
    con.print(f"runs: {', '.join(r['run'] + ' (' + r['quant'] + ', ' + r['spent_cny'] + ' CNY)' for r in d['runs'])}")
    con.print(d["allocation"])
    if (d.get("reference") or {}).get("rows"):
        _reference(con, d["reference"])


def _reference(con: Console, ref: dict) -> None:
    """The comparison with hosted reference models (`budget compare` runs), on the same cases."""
    t = Table(title=f"Against reference models ({', '.join(ref.get('models') or [])}), on the same cases",
              title_justify="left")
    cols = ("task", "metric", "cases", "quant", "value", "reference", "ref value", "score", "CNY/case",
            "ref CNY/case", "cost")
    add_columns(t, cols, whole=("CNY/case", "ref CNY/case"),
                right=("cases", "value", "ref value", "score", "CNY/case", "ref CNY/case", "cost"))
    for r in ref["rows"]:
        t.add_row(r["task"], r["metric"] or "-", str(r["cases"]), r["quant"], r["value"] or "-", r["reference"],
                  r["reference_value"] or "-", _pct(r["score_pct"]), r["cny_per_case"] or "-",
                  r["reference_cny_per_case"] or "-", _pct(r["cost_pct"]))
    show(con, t)
    for h in ref.get("headlines") or []:
        con.print(styled(("  " + h, "bold")))
    if ref.get("note"):
        con.print(f"note: {ref['note']}")


def _pct(x) -> str:
    return "-" if x is None else f"{x}%"


def wrote(path, fmt: str) -> None:
    base.err.print(f"wrote {path} ({fmt})")

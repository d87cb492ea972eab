"""Printers of `budget pool`: every pool's money, and one pool with its runs and the history of its cap."""

from __future__ import annotations

from ..units import iso, money
from . import base
from .base import Table, add_columns, show, styled


def pools_table(rows: list[dict]) -> None:
    if not rows:
        base.err.print("no pools yet; `budget pool create NAME --yuan AMOUNT`, or the first `budget run` makes one")
        return
    t = Table(title="Budget pools (CNY)", title_justify="left")
    cols = ("pool", "cap", "spent", "committed", "left", "runs", "active")
    add_columns(t, cols, whole=cols[:5], right=cols[1:])
    for r in rows:
        t.add_row(r["name"], money(r["cap_cny"]), money(r["spent_cny"]), money(r["committed_cny"]), money(r["left_cny"]),
                  str(r["runs"]), str(r["active_runs"]))
    show(base.out, t)
    base.out.print("committed = spent + what live instances may still bill up to their leases; left = cap - committed")


def pool_detail(d: dict) -> None:
    out = base.out
    out.print(styled("pool ", (d["name"], "bold"), f": cap {money(d['cap_cny'])} CNY, spent "
                     f"{money(d['spent_cny'])} CNY, committed {money(d['committed_cny'])} CNY, left "
                     f"{money(d['left_cny'])} CNY; {d['runs']} runs ({d['active_runs']} active, "
                     f"{d['live_instances']} live instances)"), soft_wrap=True)
    if d["left_cny"] < 0:
        base.err.print(styled(("warning:", "yellow"), f" the cap is {money(-d['left_cny'])} CNY below what the pool "
                              "has committed: its live runs stop at their next guard tick (leases already handed "
                              "out still bill to their end)"), soft_wrap=True)
    t = Table(title="Cap history", title_justify="left")
    for col in ("when", "change", "cap CNY", "by"):
        t.add_column(col, justify="right" if col == "cap CNY" else "left")
    for e in d["cap_history"]:
        change = "created" if e["kind"] == "created" else f"{money(e['old_cap_cny'])} ->"
        t.add_row(iso(e["at"]), change, money(e["new_cap_cny"]), e["detail"])
    show(out, t)
    if d["run_list"]:
        t = Table(title="Runs (newest first)", title_justify="left")
        add_columns(t, ("run", "state", "spent CNY", "cap CNY", "started"), whole=("run", "spent CNY", "cap CNY"),
                    right=("spent CNY", "cap CNY"))
        for r in d["run_list"]:
            t.add_row(r["id"], r["state"], money(r["spent_cny"]), money(r["cap_cny"]), iso(r["created_at"]))
        show(out, t)

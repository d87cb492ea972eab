"""Printer of `budget sweep`: every resource tagged as ours, leak or kept and why, with its cost per hour."""

from __future__ import annotations

from ..units import money
from . import base
from .base import Table, styled


def swept(doc: dict) -> None:
    out = base.out
    rows = doc["resources"]
    for line in doc["unchecked"]:
        base.err.print(styled(("warning:", "yellow"), f" {line}"), soft_wrap=True)
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

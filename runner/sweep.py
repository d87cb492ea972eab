"""`budget sweep`: leaks. Every resource tagged as ours (gpubudget:managed) that no live run owns - instances,
volumes, security groups, key pairs, result prefixes in S3, and local instances - with what it costs per
hour, and, on --yes, deleting them (instances first, so what they held can go after).

A run owns its resources while the ledger says it is not finished (created or running: `budget stop RUN`
is its tool, not sweep), and so does a run created after the sweep began. A resource used by an instance that
is kept is kept too, and a key pair (every run with the same login key shares it) while any run is live.
Results in S3 of a run the ledger knows are never swept (results are not lost to a cleanup), only those of runs
it does not. Anything else tagged as ours - a run finished or failed whose teardown did not complete, a run
missing from the ledger - is a leak. Each resource is decided against the ledger as it is listed and again as
it is deleted (listing many regions is slow: a run may start meanwhile); an instance swept whose run the ledger
still counts live ends settled, in a final state.

Costs per hour are estimates at today's catalog, and say so: an instance at its catalog price in its region
(on-demand), an EBS volume at gp3's list price, an S3 prefix at S3 Standard's, converted at the catalog's
exchange rate; security groups and key pairs cost nothing."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

from planner.catalog import Catalog
from planner.errors import GpuBudgetError

from . import config as configmod
from .clock import SYSTEM, Clock
from .cloud import registry
from .cloud.base import Leftover
from .errors import ProviderError
from .money.ledger import FINAL, Ledger
from .run import teardown
from .run.request import Request, policy_for

# list prices, us-east-1 (https://aws.amazon.com/ebs/pricing/, https://aws.amazon.com/s3/pricing/, 2026-11)
GP3_USD_PER_GIB_MONTH = Decimal("0.08")
S3_USD_PER_GIB_MONTH = Decimal("0.023")
HOURS_PER_MONTH = Decimal(730)
ORDER = ("instance", "volume", "security-group", "key-pair", "s3-prefix")


def cost_cny_h(item: Leftover, provider: str, catalog: Catalog) -> Decimal | None:
    usd = catalog.fx.get("USD")
    fx = usd.cny_per_unit if usd else None
    if item.kind == "instance":
        offers = [o for o in catalog.offers if o.provider == provider and o.instance_type == item.instance_type]
        offer = next((o for o in offers if o.region == item.region), offers[0] if offers else None)
        if offer is None:
            return None
        rate = catalog.fx.get(offer.currency.upper())
        return offer.price * rate.cny_per_unit if rate else None
    if item.kind in ("volume", "s3-prefix") and fx is not None:
        per_month = GP3_USD_PER_GIB_MONTH if item.kind == "volume" else S3_USD_PER_GIB_MONTH
        return Decimal(str(item.size_gib)) * per_month / HOURS_PER_MONTH * fx
    return Decimal(0) if item.kind in ("security-group", "key-pair") else None


def find(home: Path, led: Ledger, catalog: Catalog, regions: list[str] | None = None,
         started: float | None = None) -> tuple[list[dict], list[str]]:
    """Every resource tagged as ours, each marked leak or kept (and why, read from the ledger once its region is
    listed), with its cost per hour; and the places that could not be checked (with why). `started`: when the
    sweep began (a run created since is kept)."""
    started = time.time() if started is None else started
    out, unchecked = [], []
    used: dict[str, set[str]] = {}
    for name, region in led.db.execute("SELECT DISTINCT provider, region FROM instances"):
        used.setdefault(name, set()).add(region)
    for label, name, provider in registry.placements(configmod.load(home), home, used, regions):
        try:
            if isinstance(provider, GpuBudgetError):
                raise provider
            items = provider.leftovers()
        except GpuBudgetError as e:
            unchecked.append(f"{label}: not checked: {e.message}" + (f" ({e.hint})" if e.hint else ""))
            continue
        runs_of = {i.id: i.run_id for i in items if i.kind == "instance"}  # what uses a resource, by its run
        for item in sorted(items, key=lambda i: (ORDER.index(i.kind), i.id)):
            why = kept(led, item, started, runs_of)
            out.append({"provider": name, "item": item, "leak": not why, "why": why or _leak(led, item),
                        "cny_per_h": cost_cny_h(item, name, catalog), "_provider": provider, "_runs_of": runs_of})
    return out, unchecked


def kept(led: Ledger, item: Leftover, started: float, runs_of: dict[str, str | None]) -> str:
    """Why `item` is not a leak, as the ledger says now ("" when it is one)."""
    run = led.run(item.run_id) if item.run_id else None
    if run is not None and run["state"] not in FINAL:
        return f"run {item.run_id} is live (`budget stop {item.run_id}` ends it)"
    if run is not None and run["created_at"] >= started:
        return f"run {item.run_id} started after this sweep began"
    if item.kind == "s3-prefix" and run is not None:  # results are never a leak while their run is known
        return f"results of run {item.run_id} (not swept; `budget status {item.run_id}` collects them)"
    if item.kind == "key-pair":
        live = led.db.execute(f"SELECT id FROM runs WHERE state NOT IN ({', '.join('?' * len(FINAL))}) OR "
                              "created_at >= ? ORDER BY id LIMIT 1", (*FINAL, started)).fetchone()
        if live is not None:
            return f"every run with this login key shares it; run {live[0]} is live"
    users = sorted(i for i in item.used_by if kept(led, Leftover("instance", i, runs_of.get(i)), started, runs_of))
    return f"used by {', '.join(users)}, which a live run owns" if users else ""


def _leak(led: Ledger, item: Leftover) -> str:
    run = led.run(item.run_id) if item.run_id else None
    return f"run {item.run_id} is {run['state']}" if run else f"run {item.run_id or '?'} is not in the ledger"


def sweep(home: Path, led: Ledger, catalog: Catalog, regions: list[str] | None = None, yes: bool = False,
          clock: Clock = SYSTEM) -> dict:
    started = clock.now()
    found, unchecked = find(home, led, catalog, regions, started)
    for f in sorted((f for f in found if f["leak"]), key=lambda f: ORDER.index(f["item"].kind)) if yes else []:
        item = f["item"]
        why = kept(led, item, started, f["_runs_of"])  # again, now: a run may have started since the listing
        if why:
            f["leak"], f["why"] = False, why
            continue
        try:
            _remove(led, home, f["_provider"], item, clock)
            f["deleted"] = True
            if item.run_id and led.run(item.run_id) is not None:
                led.event(item.run_id, "swept", f"{item.kind} {item.id} deleted by budget sweep")
        except ProviderError as e:
            f["deleted"], f["error"] = False, e.message
    leaks = [f for f in found if f["leak"]]
    rows = [{"provider": f["provider"], "kind": f["item"].kind, "id": f["item"].id, "run": f["item"].run_id,
             "region": f["item"].region, "detail": f["item"].detail, "leak": f["leak"], "why": f["why"],
             "cny_per_h": None if f["cny_per_h"] is None else str(f["cny_per_h"]),
             "deleted": f.get("deleted", False), "error": f.get("error")} for f in found]
    leak_h = sum((f["cny_per_h"] or Decimal(0) for f in leaks), Decimal(0))
    return {"resources": rows, "leaks": len(leaks), "leak_cny_per_h": str(leak_h), "deleted": yes,
            "unchecked": unchecked,
            "assumptions": "CNY/h at today's catalog: instances at their on-demand offer price, volumes at gp3 "
                           f"({GP3_USD_PER_GIB_MONTH} USD/GiB-month), S3 at Standard ({S3_USD_PER_GIB_MONTH} "
                           "USD/GiB-month), USD at the catalog's rate"}


def _remove(led: Ledger, home: Path, provider, item: Leftover, clock: Clock) -> None:
    """Delete one leak. An instance the ledger still counts as live (its teardown failed, or its launch's answer
    was lost: a row with no id) ends the way every instance does - terminated and settled by the one teardown,
    in a final state; anything else the provider removes."""
    rows = led.instances(run_id=item.run_id, live=True) if item.kind == "instance" and item.run_id else []
    live = [i for i in rows if i.provider_id == item.id] or [i for i in rows if i.provider_id is None]
    if not live:
        provider.remove(item)
        return
    run = led.run(item.run_id)
    try:
        policy = Request.load(Path(run["dir"]) / "request.json").policy_obj
    except GpuBudgetError:
        policy = policy_for(configmod.load(home), provider)

    for inst in live:  # the lost launches' rows find their instances by tag; one found none is settled too
        def event(kind: str, detail: str, iid: int = inst.id) -> None:
            led.event(item.run_id, kind, f"{detail} (budget sweep)", iid)
        teardown.end(led, provider, inst, how="swept", run_dir=Path(run["dir"]), policy=policy, event=event,
                     clock=clock)
    if provider.status(item.id).state not in ("terminated",):
        provider.remove(item)

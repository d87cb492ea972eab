"""`budget sweep`: leaks. Every resource tagged as ours (gpubudget:managed) that no live run owns - instances,
volumes, security groups, key pairs, result prefixes in S3, and local instances - with what it costs per
hour, and, on --yes, deleting them (instances first, so what they held can go after).

A run owns its resources while the ledger says it is not finished (created or running: `budget stop RUN`
is its tool, not sweep). A resource used by an instance that is kept is kept too. Results in S3 of a run the
ledger knows are never swept (results are not lost to a cleanup), only those of runs it does not. Anything else tagged as
ours - a run finished or failed whose teardown did not complete, a run missing from the ledger - is a leak.

Costs per hour are estimates at today's catalog, and say so: an instance at its catalog price in its region
(on-demand), an EBS volume at gp3's list price, an S3 prefix at S3 Standard's, converted at the catalog's
exchange rate; security groups and key pairs cost nothing."""

from __future__ import annotations

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


def find(home: Path, led: Ledger, catalog: Catalog, regions: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Every resource tagged as ours, each marked leak or kept (and why), with its cost per hour; and the
    places that could not be checked (with why)."""
    live_runs = {r["id"] for r in led.db.execute(
        f"SELECT id FROM runs WHERE state NOT IN ({', '.join('?' * len(FINAL))})", FINAL)}
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
        kept = {i.id for i in items if i.kind == "instance" and i.run_id in live_runs}
        for item in sorted(items, key=lambda i: (ORDER.index(i.kind), i.id)):
            known = item.run_id is not None and led.run(item.run_id) is not None
            if item.run_id in live_runs:
                why = f"run {item.run_id} is live (`budget stop {item.run_id}` ends it)"
            elif item.kind == "s3-prefix" and known:  # results are never a leak while their run is known
                why = f"results of run {item.run_id} (not swept; `budget status {item.run_id}` collects them)"
            elif kept & set(item.used_by):
                why = f"used by {', '.join(sorted(kept & set(item.used_by)))}, which a live run owns"
            else:
                why = ""
            out.append({"provider": name, "item": item, "leak": not why,
                        "why": why or (f"run {item.run_id} is {led.run(item.run_id)['state']}" if known
                                       else f"run {item.run_id or '?'} is not in the ledger"),
                        "cny_per_h": cost_cny_h(item, name, catalog), "_provider": provider})
    return out, unchecked


def sweep(home: Path, led: Ledger, catalog: Catalog, regions: list[str] | None = None, yes: bool = False,
          clock: Clock = SYSTEM) -> dict:
    found, unchecked = find(home, led, catalog, regions)
    leaks = [f for f in found if f["leak"]]
    for f in sorted(leaks, key=lambda f: ORDER.index(f["item"].kind)) if yes else []:
        item = f["item"]
        try:
            _remove(led, home, f["_provider"], item, clock)
            f["deleted"] = True
            if item.run_id and led.run(item.run_id) is not None:
                led.event(item.run_id, "swept", f"{item.kind} {item.id} deleted by budget sweep")
        except ProviderError as e:
            f["deleted"], f["error"] = False, e.message
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
    """Delete one leak. An instance the ledger still counts as live (its teardown failed) ends the way every
    instance does - terminated and settled by the one teardown; anything else the provider removes."""
    live = [i for i in led.instances(run_id=item.run_id, live=True) if i.provider_id == item.id] \
        if item.kind == "instance" and item.run_id else []
    if not live:
        provider.remove(item)
        return
    run = led.run(item.run_id)
    try:
        policy = Request.load(Path(run["dir"]) / "request.json").policy_obj
    except GpuBudgetError:
        policy = policy_for(configmod.load(home), provider)

    def event(kind: str, detail: str) -> None:
        led.event(item.run_id, kind, f"{detail} (budget sweep)", live[0].id)
    teardown.end(led, provider, live[0], how="swept", run_dir=Path(run["dir"]), policy=policy, event=event,
                 clock=clock)

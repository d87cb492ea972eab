"""`budget run`'s choice, before anything is written or spent: the cap the run draws under, the offers the
provider can launch at the prices they bill, the planner's pick (its next cheapest too, for a spot run's
relaunches), the time and cost on the rig that really runs it, the job, and the request a controller drives.
Each step is its own function; `prepare` strings them together."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from planner.catalog import Catalog
from planner.errors import GpuBudgetError, InputError
from planner.models import EvalPlan, Offer, Recommendation

from .. import calibrate, jobs, plandata
from .. import config as configmod
from .. import home as homes
from ..clock import SYSTEM, Clock
from ..cloud import registry
from ..money import pools
from .request import Request, new_run_id, policy_doc, policy_for


@dataclass(frozen=True)
class Ask:
    """What the user asked of `budget run`, beyond the plan."""

    yuan: Decimal | None = None
    pool: str = "default"
    offer_id: str | None = None
    spot: bool = False
    quant: str | None = None
    price_yuan_h: Decimal | None = None
    limit: int | None = None
    batch_size: int | str | None = None
    model_path: Path | None = None
    remote_python: str | None = None
    unattended: bool = False
    engine: str | None = None  # --engine: pins the planner's choice


@dataclass
class Prepared:
    request: Request
    plan: EvalPlan
    recommendation: Recommendation
    cap: pools.RunCap
    run_dir: Path

    @property
    def cap_cny(self) -> Decimal:
        return self.cap.cap_cny

    @property
    def pool(self) -> str:
        return self.cap.pool


def check_unattended(provider) -> None:
    """--unattended needs a provider whose instance uploads its results and ends itself: refused otherwise,
    before anything is asked of a cloud."""
    refusal = _unattended_refusal(provider.name, provider.caps.uploads)
    if refusal is not None:
        raise refusal


def _unattended_refusal(name: str, uploads: bool) -> InputError | None:
    """Why provider `name` cannot run --unattended (`uploads`: it is configured to upload), or None."""
    if uploads:
        return None
    if registry.PROVIDERS[name].unattended:
        return InputError(f"--unattended needs --provider {name} and {name}.results_bucket: the instance uploads "
                          "its results to S3 and powers itself off, with no controller",
                          f"set {name}.results_bucket in $BUDGET_HOME/config.yaml (a bucket you own)")
    return InputError(f"--unattended works with --provider {' or '.join(registry.UNATTENDED)} only (not {name}): its "
                      "instance uploads to S3", "use --provider aws, or --detach (a background controller on this "
                      "machine)")


WORKER_NEEDS = ("torch", "transformers")  # the worker extra's libraries the worker cannot start without
WORKER_HINT = 'install it with: pip install "gpubudget[worker]"'


def worker_missing() -> str | None:
    """The first library of the worker extra this Python lacks (None: it has them); nothing is imported."""
    from importlib.util import find_spec

    for name in WORKER_NEEDS:
        try:
            if find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a broken install reads as a missing one
            return name
    return None


def prerequisites(name: str, home: Path, plan: EvalPlan, plan_path: Path, ask: Ask) -> None:
    """Everything `budget run` needs that can be checked before anything is written, launched or billed - the
    provider's libraries (cloud extra), the worker extra where the worker runs on this machine, an SSH host's
    configuration, what --unattended needs, the plan's own data - checked all at once. One missing: its own
    error; several: one InputError with the count and the list, and every fix in the hint."""
    from importlib.util import find_spec

    entry = registry.PROVIDERS.get(name)
    if entry is None:
        return  # registry.make names the providers there are
    cfg = configmod.load(home)
    found: list[GpuBudgetError] = []
    lacking = [m for m in entry.needs if find_spec(m) is None]
    if lacking:
        found.append(InputError(f"--provider {name} needs the cloud extra ({lacking[0]} is not installed)",
                                'install it with: pip install "gpubudget[cloud]"'))
    lib = worker_missing() if entry.this_machine and not ask.remote_python else None
    if lib:
        found.append(InputError(f"--provider {name} runs the worker on this machine: it needs the worker extra "
                                f"({lib} is not installed)", WORKER_HINT))
    if name == "ssh":
        found += _ssh_needs(cfg.ssh, ask)
    if entry.this_machine and ask.engine in ("vllm", "sglang") and shutil.which("nvidia-smi") is None:
        found.append(InputError(f"--engine {ask.engine} needs a CUDA GPU and this machine has none (its wheels are "
                                "CUDA builds)", "use --engine hf or --engine transformers here"))
    refusal = _unattended_refusal(name, bool(getattr(getattr(cfg, name, None), "results_bucket", None))) \
        if ask.unattended else None
    if refusal is not None:
        found.append(refusal)
    try:
        plandata.require(plan, plan_path)
    except GpuBudgetError as e:
        found.append(e)
    if len(found) == 1:
        raise found[0]
    if found:
        hints = list(dict.fromkeys(e.hint for e in found if e.hint))
        raise InputError(f"{len(found)} prerequisites of this run are missing: " +
                         " ".join(f"({i}) {e.message};" for i, e in enumerate(found, 1)).rstrip(";"),
                         "; ".join(hints) + "; then run it again")


def _ssh_needs(ssh, ask: Ask) -> list[GpuBudgetError]:
    """What an SSH host's provider refuses to start without (cloud/ssh_host.py), and its offer."""
    found: list[GpuBudgetError] = []
    if not ssh.host:
        found.append(InputError("no SSH host configured (ssh.host)",
                                "set ssh.host (and ssh.user, ssh.key) in $BUDGET_HOME/config.yaml"))
    key = Path(ssh.key or "~/.ssh/id_ed25519").expanduser()
    if not key.is_file():
        found.append(InputError(f"SSH key {key} not found", "set ssh.key in $BUDGET_HOME/config.yaml"))
    known = Path(ssh.known_hosts or "~/.ssh/known_hosts").expanduser()
    if not known.is_file():
        found.append(InputError(f"known_hosts file {known} not found", "put the host's key in known_hosts "
                                "(ssh.known_hosts): gpubudget verifies it"))
    if not (ask.offer_id or ssh.offer):
        found.append(InputError("an SSH host needs its offer (GPU and price): --offer ID or ssh.offer",
                                "pass --offer ID (see `budget prices list`) or set ssh.offer"))
    return found


def provider(name: str, home: Path, ask: Ask, clock: Clock = SYSTEM):
    """The provider, after checking what can be checked before asking the user to spend: its configuration
    (an SSH host, key and known_hosts), that it can do what was asked (--unattended), its credentials."""
    p = registry.make(name, configmod.load(home), home, clock=clock)
    if ask.unattended:
        check_unattended(p)
    p.preflight()
    return p


def run_cap(home: Path, ask: Ask, plan: EvalPlan) -> pools.RunCap:
    """The cap the run draws under (never above its pool's), after checking the home can take a run."""
    homes.writable(home)
    led = homes.ledger(home)
    try:
        return pools.run_cap(led, ask.pool, ask.yuan, plan.budget_yuan)
    finally:
        led.close()


def priced_offers(catalog: Catalog, provider, ask: Ask) -> list[Offer]:
    """The catalog offers the provider can launch, at the price the run would be billed."""
    caps = provider.caps
    if caps.own_prices and ask.price_yuan_h is not None:
        raise InputError(f"--price-yuan-hour does not apply to {provider.name}: it bills its own price",
                         "refresh the catalog's prices with `budget prices import` instead")
    offer_id = ask.offer_id or caps.offer
    if caps.rented and offer_id is None:
        raise InputError("an SSH host needs its offer (GPU and price) to plan the run",
                         "pass --offer ID (see `budget prices list`) or set ssh.offer in $BUDGET_HOME/config.yaml")
    price = ask.price_yuan_h if ask.price_yuan_h is not None else caps.price_cny_h
    offers = catalog.offers
    if offer_id:
        offers = [o for o in offers if o.id == offer_id or o.id.startswith(offer_id + "@")]
        if not offers:
            raise InputError(f"no offer {offer_id!r} in the catalog", "see `budget prices list` for offer ids")
        if caps.offers_from and any(o.provider != caps.offers_from for o in offers):
            raise InputError(f"offer {offer_id} is not an EC2 instance type", "pick one from "
                             f"`budget prices list --provider {caps.offers_from}`, or run it with --provider ssh")
    elif caps.offers_from:  # in the region it launches in, when one is configured
        region = caps.region
        offers = [o for o in offers if o.provider == caps.offers_from and (not region or o.region == region)]
    if price is not None:  # the price the run is billed at is the one it is planned and estimated at
        offers = [o.model_copy(update={"price": price, "currency": "CNY", "spot_price": price if ask.spot else None})
                  for o in offers]
    return offers


def choose(plan: EvalPlan, catalog: Catalog, offers: list[Offer], cap: Decimal, provider, ask: Ask, cal):
    """The planner's recommendation among `offers` (run anyway when the plan costs more than the cap: the guard
    stops it when the money ends and the finished samples are kept - render.run_estimate says so before asking),
    and for a spot run up to three fallbacks of the same provider and quantization, cheapest first."""
    from planner.optimize import optimize

    cat = dataclasses.replace(catalog, offers=offers)
    spec = catalog.model(plan.model)
    spot_only = True if ask.spot else (None if provider.caps.this_machine else False)
    quants = [ask.quant] if ask.quant else None
    # this machine runs what needs no CUDA build: the in-process path unless a server engine is asked for
    engines = [ask.engine] if ask.engine else (["hf"] if provider.caps.this_machine else None)
    result = optimize(plan, spec, cat, cap, spot=spot_only, quantizations=quants, top=6, calibration=cal,
                      engines=engines)
    rec = result.report.recommendation
    if rec is None and result.rows:
        rec = optimize(plan, spec, cat, Decimal(10) ** 12, spot=spot_only, quantizations=quants, top=1,
                       calibration=cal, engines=engines).report.recommendation
    if rec is None:
        raise result.shortfall(plan.name, spec.name)
    return rec, (_fallbacks(result.report, rec, offers) if rec.spot else [])


def _offer_of(rec, offers: list[Offer]) -> Offer | None:
    return next((o for o in offers if (o.provider, o.instance_type, o.region) ==
                 (rec.provider, rec.instance_type, rec.region)), None)


def _fallbacks(report, rec, offers) -> list[dict]:
    out = []
    for alt in report.alternatives:
        if (alt.provider, alt.instance_type, alt.region) == (rec.provider, rec.instance_type, rec.region) or \
                alt.provider != rec.provider or alt.quantization != rec.quantization or alt.spot != rec.spot or \
                alt.engine != rec.engine:
            continue
        if alt.replicas != rec.replicas or rec.engine in ("vllm", "sglang") and \
                (alt.gpu, alt.gpu_count, alt.layout) != (rec.gpu, rec.gpu_count, rec.layout):
            continue  # the job's replicas, memory share and tensor parallelism were priced for the recommendation's rig
        offer = _offer_of(alt, offers)
        if offer is not None:
            out.append({"offer": offer.model_dump(mode="json"), "price_cny_h": str(alt.price_cny_per_hour),
                        "price_original_h": str(alt.price_original_per_hour)})
    return out[:3]


def on_this_machine(rec, offer: Offer, plan: EvalPlan, catalog: Catalog, home: Path, cal):
    """`rec` with the time and cost of running on this machine (its CPU profile, calibrated where `budget
    calibrate` fitted it), billed under the offer's rule at its price."""
    from planner.money import billed_seconds, charge

    t, said = calibrate.run_time(plan, catalog, home, "local", rec.gpu, 1, rec.quantization, False, cal, True)
    billed = billed_seconds(t.total_s, offer.billing_increment_s, offer.billing_minimum_s)
    note = said or ("estimated on this machine's CPU profile (uncalibrated: `budget calibrate` after a local run "
                    "fits it)")
    return rec.model_copy(update={"time": t, "hours": round(t.total_s / 3600, 3),
                                  "billed_hours": round(billed / 3600, 4),
                                  "cost_cny": charge(rec.price_cny_per_hour, billed), "notes": [*rec.notes, note]})


def engine_section(rec) -> dict:
    """The job's engine for the planner's choice: a server engine started on the instance with the memory share,
    context and tensor parallelism the planner priced."""
    out: dict = {"kind": rec.engine}
    if rec.concurrency is not None and rec.engine != "hf":
        out["concurrency"] = rec.concurrency
    if rec.engine in ("vllm", "sglang"):  # replicas: one server per GPU, each on its own card
        out["tensor_parallel"] = 1 if rec.layout == "replicas" else rec.gpu_count
        if rec.engine_memory_fraction is not None:
            out["memory_fraction"] = rec.engine_memory_fraction
        if rec.max_model_len is not None:
            out["max_model_len"] = rec.max_model_len
    return out


def prepare(plan: EvalPlan, plan_path: Path, catalog: Catalog, home: Path, provider, ask: Ask,
            clock: Clock = SYSTEM) -> Prepared:
    """Pick the offer and quantization (the planner's choice unless given), the cap it runs under, the job,
    and the request a controller drives. Nothing is written yet."""
    cap = run_cap(home, ask, plan)
    offers = priced_offers(catalog, provider, ask)
    cal = calibrate.calibration(home)
    rec, fallbacks = choose(plan, catalog, offers, cap.cap_cny, provider, ask, cal)
    offer = _offer_of(rec, offers)
    price, original = rec.price_cny_per_hour, rec.price_original_per_hour
    if provider.caps.this_machine:  # it runs on this CPU, simulated at the chosen offer's rule and price
        rec = on_this_machine(rec, offer, plan, catalog, home, cal)
        offer = offer.model_copy(update={"provider": provider.name, "price": price, "currency": "CNY",
                                         "spot_price": None, "instance_type": f"{rec.provider}:{rec.instance_type}"})
        original = price
    run_id = new_run_id(plan.name, clock.now())
    job = jobs.build(plan, plan_path, catalog, home, quantization=rec.quantization, model_path=ask.model_path,
                     limit=ask.limit, batch_size=ask.batch_size, run_id=run_id, engine=engine_section(rec))
    if rec.layout == "replicas":  # a worker process per GPU on its shard of the samples (runner/worker/replicas.py)
        job["replicas"] = rec.replicas
    cfg = configmod.load(home)
    req = Request(run_id=run_id, plan_path=str(plan_path), provider=provider.name, offer=offer.model_dump(mode="json"),
                  quantization=rec.quantization, spot=rec.spot, price_cny_h=str(price), price_original_h=str(original),
                  job=job, policy=policy_doc(policy_for(cfg, provider)), remote_python=ask.remote_python,
                  model_path=str(ask.model_path) if ask.model_path else None,
                  ssh_wait_s=registry.ssh_wait(cfg, provider), bootstrap_timeout_s=cfg.run.bootstrap_timeout_s,
                  unattended=ask.unattended, fallbacks=tuple(fallbacks))
    return Prepared(req, plan, rec, cap, homes.directory(home, run_id))

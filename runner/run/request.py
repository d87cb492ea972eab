"""A run's request: everything a controller needs to drive it, frozen and saved once as request.json in the
run directory (a detached controller, `budget resume` and `budget stop` read the same file). The offers a
run may use are its own and, for spot runs, the planner's next cheapest (`fallbacks`); which one an attempt
runs on is an index the run's state carries, recorded with each instance in the ledger - never a rewrite of
this file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from planner.models import Offer

from ..config import Config
from ..errors import RunError
from ..money.guard import Policy
from ..worker.tiny import NAME as TINY


@dataclass(frozen=True)
class OfferChoice:
    """One offer a run may launch on, at the prices it is billed (CNY/h, and in the offer's currency)."""

    offer: Offer
    price_cny_h: Decimal
    price_original_h: Decimal


@dataclass(frozen=True)
class Request:
    run_id: str
    plan_path: str
    provider: str
    offer: dict
    quantization: str
    spot: bool
    price_cny_h: str
    price_original_h: str
    job: dict
    policy: dict
    remote_python: str | None = None
    model_path: str | None = None
    ssh_wait_s: float = 600.0
    bootstrap_timeout_s: float = 3600.0
    unattended: bool = False  # hand the instance its deadline and upload URLs once the worker runs, then leave
    fallbacks: tuple = ()     # spot: offers to relaunch on when its own has no capacity

    def save(self, path: Path) -> None:
        doc = dataclasses.asdict(self)
        doc["fallbacks"] = list(self.fallbacks)
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Request:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            doc["fallbacks"] = tuple(doc.get("fallbacks") or ())
            return cls(**doc)
        except (OSError, ValueError, TypeError) as e:
            raise RunError(f"{path}: cannot read the run's request ({e})", "start a new run") from None

    @property
    def offers(self) -> list[OfferChoice]:
        """Its own offer first, then the fallbacks in the planner's order."""
        own = {"offer": self.offer, "price_cny_h": self.price_cny_h, "price_original_h": self.price_original_h}
        return [OfferChoice(Offer.model_validate(o["offer"]), Decimal(o["price_cny_h"]), Decimal(o["price_original_h"]))
                for o in (own, *self.fallbacks)]

    @property
    def policy_obj(self) -> Policy:
        p = dict(self.policy)
        p["reserve_cny"] = Decimal(p["reserve_cny"])
        return Policy(**p)


def new_run_id(plan: str, now: float) -> str:
    return f"{plan}-{dt.datetime.fromtimestamp(now, dt.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def policy_for(cfg: Config, provider) -> Policy:
    """The guard's policy for a run on `provider` (its own teardown time unless configured)."""
    teardown = cfg.run.teardown_s if cfg.run.teardown_s is not None else provider.caps.teardown_s
    return Policy(tick_s=cfg.run.tick_s, teardown_s=teardown, reserve_cny=cfg.run.reserve_yuan, lease_s=cfg.run.lease_s)


def policy_doc(policy: Policy) -> dict:
    return {**dataclasses.asdict(policy), "reserve_cny": str(policy.reserve_cny)}


def worker_requirements() -> str:
    """requirements.txt for bootstrap.sh: the installed package's `worker` extra."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("gpubudget") or []
    except PackageNotFoundError:
        reqs = []
    lines = [r.split(";")[0].strip() for r in reqs if "extra == \"worker\"" in r.replace("'", '"')]
    fallback = ["torch", "torchvision", "transformers", "accelerate", "bitsandbytes", "pillow", "av"]
    return "\n".join(lines or fallback) + "\n"


def ready_python(req: Request, caps) -> str | None:
    """The Python that can run the worker there without bootstrap.sh: the one given (--remote-python), or this
    one where the instance is this machine; None when bootstrap.sh has to find one."""
    if req.remote_python:
        return req.remote_python
    return sys.executable if caps.this_machine else None


def remote_job(job: dict, root: str, this_machine: bool) -> dict:
    """The job as the instance sees it: the tiny model built there, the user's model pushed beside it (on this
    machine the job reads everything in place)."""
    job = json.loads(json.dumps(job))
    if this_machine:
        return job
    model = job["model"]
    if model.get("recipe") == TINY:
        model["source"] = f"{root}/models/{TINY}"
    elif Path(model["source"]).is_absolute():
        model["source"] = f"{root}/model"
    job["cache_dir"] = f"{root}/../../cache"
    return job

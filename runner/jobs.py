"""Turn a plan (planner.models.EvalPlan) into the worker's `job.json` (schema gpubudget.job/1). This is
the one place the controller's vocabulary meets the worker's: the worker never imports the planner."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from planner.catalog import Catalog
from planner.errors import InputError
from planner.models import EvalPlan

from . import plandata
from .worker.job import QUANTS as WORKER_QUANTS
from .worker.job import SCHEMA, JobError
from .worker.job import parse as parse_job
from .worker.tiny import NAME as TINY


def model_source(plan: EvalPlan, catalog: Catalog, model_path: Path | None, home: Path) -> dict:
    """Where the worker loads the model from: --model-path, the tiny model built on demand under
    $BUDGET_HOME/models, or the catalog entry's hub id (downloaded on the instance)."""
    if model_path is not None:
        if not (Path(model_path) / "config.json").is_file():
            raise InputError(f"--model-path {model_path}: no config.json there",
                             "point it at a directory saved by save_pretrained (config, weights, processor)")
        return {"name": plan.model, "source": str(Path(model_path).resolve())}
    spec = catalog.model(plan.model)
    if spec.vision is None:
        raise InputError(f"model {spec.name} is text-only ({spec.model_type}): the worker runs vision-language models",
                         "`budget plan` and `budget estimate` price it; run a Qwen-VL model with `budget run`")
    if spec.name == TINY:
        return {"name": TINY, "source": str((home / "models" / TINY).resolve()), "recipe": TINY}
    if not spec.hf_id:
        raise InputError(f"model {spec.name} has no hub id in the catalog", "pass --model-path DIR")
    return {"name": spec.name, "source": spec.hf_id}


def _task(task, plan_dir: Path) -> dict:
    d = task.model_dump(exclude={"prompt_tokens"}, exclude_defaults=False)
    if task.image_size is None:  # the worker's tasks show the model an image; a text-only prompt is planned only
        raise InputError(f"task {task.name!r} has image_size: null (a text-only prompt): `budget plan` and "
                         "`budget estimate` price it, but the worker runs image tasks only",
                         "give the task an image_size to run it, or use `budget plan` for the estimate")
    d["image_size"] = list(task.image_size)
    d["resolutions"] = [list(r) for r in task.resolutions]
    if task.video is not None:
        d["video"] = dict(task.video.model_dump(), frame_size=list(task.video.frame_size))
    else:
        d.pop("video")
    if task.max_new_tokens is None:
        d.pop("max_new_tokens")
    ds = task.dataset.model_dump() if task.dataset else {"kind": "synthetic"}
    if ds["kind"] == "local":  # plandata.require checked it and the files it names
        ds["path"] = str(plandata.manifest_path(task, plan_dir).resolve())
    d["dataset"] = {k: v for k, v in ds.items() if v}
    return d


def build(plan: EvalPlan, plan_path: Path, catalog: Catalog, home: Path, *, quantization: str,
          model_path: Path | None = None, limit: int | None = None, batch_size: int | str | None = None,
          device: str = "auto", run_id: str = "", deadline: dt.datetime | None = None,
          max_memory: dict[str, str] | None = None, engine: dict | None = None) -> dict:
    """The job document for running `plan` once in `quantization`; refused while the plan's own data is
    incomplete (every missing file named at once)."""
    plandata.require(plan, plan_path)
    if quantization not in WORKER_QUANTS:
        raise InputError(f"unknown quantization {quantization!r}", "use one of " + ", ".join(WORKER_QUANTS))
    doc = {
        "schema": SCHEMA, "run_id": run_id,
        "model": model_source(plan, catalog, model_path, home),
        "quantization": quantization, "double_quant": plan.double_quant,
        "keep_vision_16bit": plan.keep_vision_16bit, "device": device,
        "generation": plan.generation.model_dump(),
        "image_limits": plan.image_limits.model_dump(),
        "batch_size": batch_size or plan.batch_size, "seed": plan.seed,
        "tasks": [_task(t, plan_path.parent) for t in plan.tasks],
    }
    if limit is not None:
        doc["limit"] = limit
    if plan.allow_private_urls:  # the worker checks every address it fetches (and each redirect) by it too
        doc["allow_private_urls"] = True
    if deadline is not None:
        doc["deadline"] = deadline.astimezone(dt.UTC).isoformat()
    if max_memory:
        doc["max_memory"] = max_memory
    if engine and engine != {"kind": "hf"}:
        doc["engine"] = engine  # hf with its defaults stays unsaid: earlier jobs' fingerprints hold
    if not run_id:
        doc["run_id"] = "eval-" + fingerprint(doc)[:12]
    try:  # the worker's own validation, here: a job it would refuse is refused before anything starts
        parse_job(doc)
    except JobError as e:
        raise InputError(f"plan {plan.name}: the worker would refuse its job: {e}",
                         "fix the plan (plans/qwen3-vl-8b.yaml shows the schema by example)") from None
    return doc


def fingerprint(job: dict) -> str:
    """What makes two jobs the same work (their results can be shared): everything but run id, deadline and how
    many replicas share it (worker/replicas.py: their lines merge into the same results)."""
    core = {k: v for k, v in job.items() if k not in ("run_id", "deadline", "replicas")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()

"""`budget colab PLAN`: the free Colab path. One self-contained Jupyter notebook (nbformat v4) that carries a
plan's job - the job.json `budget run` would build for the planner's choice on Colab's free T4 (catalog:
offers/colab.csv, its limits in offers/colab.terms.csv) - with the plan's own data embedded, installs the
worker, runs it (rerunning the run cell resumes: the worker goes on from the result lines in its output
directory) and zips the results for `budget import` (runner/imported.py), which records them as a 0 CNY run.

The notebook needs no Colab module: on a plain Jupyter kernel it runs top to bottom the same way (the zip is
written and its path printed instead of downloaded). Paths in the job are relative to the notebook's working
folder (`gpubudget-colab/`) until its job cell places them, as `budget run` places them under an instance's
root (runner/run/request.py remote_job, runner/run/instance.py's dataset push)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from planner import names
from planner.catalog import Catalog
from planner.errors import InputError
from planner.models import EvalPlan, Recommendation

from . import jobs, plandata
from .clock import SYSTEM, Clock
from .worker.tiny import NAME as TINY

PROVIDER = "colab"      # the catalog provider whose offer the notebook runs on (offers/colab.csv)
EMBED_CAP = 16 << 20    # the plan's own data carried in a notebook (before base64): Colab opens it in a browser
WHEEL_CAP = 16 << 20    # a --worker-from wheel carried in it
FOLDER = "gpubudget-colab"  # the notebook's working folder, beside it (on Colab: /content/gpubudget-colab)
WORKER_EXTRA = "worker"  # pyproject's extra with the worker's dependencies


def package_version() -> str:
    try:
        return version("gpubudget")
    except PackageNotFoundError:
        return "0.1.0"


def choose(plan: EvalPlan, catalog: Catalog, quant: str | None) -> Recommendation:
    """The planner's choice for `plan` on the free Colab offer (`quant`: only that quantization)."""
    from planner.errors import CatalogError
    from planner.optimize import optimize

    terms = catalog.terms.get(PROVIDER)
    if terms is None or not any(o.provider == PROVIDER for o in catalog.offers):
        raise CatalogError(f"the catalog has no {PROVIDER} offer (offers/{PROVIDER}.csv) or no terms "
                           f"(offers/{PROVIDER}.terms.csv)", f"restore them, or see `budget prices list --provider "
                           f"{PROVIDER}`")
    spec = catalog.model(plan.model)
    got = optimize(plan, spec, catalog, plan.budget_yuan or Decimal(1), providers=[PROVIDER],
                   quantizations=[quant] if quant else None, top=1)
    rec = got.report.recommendation
    if rec is None:
        why = min(got.report.rejected, key=lambda x: (x.gpu == "*", x.reason.startswith("over")), default=None)
        gpu = next(o.gpu for o in catalog.offers if o.provider == PROVIDER)
        raise InputError(f"plan {plan.name} cannot run on Colab's free {gpu}" + (f" as {quant}" if quant else "")
                         + (f": {why.reason}" if why else ""),
                         f"`budget plan --plan PLAN --provider {PROVIDER}` shows why; try --quant nf4, or a smaller "
                         "plan")
    return rec


def placed_job(job: dict) -> dict:
    """The job with its paths relative to the notebook's folder: the tiny model built there, downloads cached
    there, each local dataset under data/<task>/ (the notebook's job cell makes them absolute)."""
    job = json.loads(json.dumps(job))
    model = job["model"]
    if model.get("recipe") == TINY:
        model["source"] = f"models/{TINY}"
    elif Path(model["source"]).is_absolute():
        raise InputError("a model on this machine's disk cannot travel in a notebook",
                         "use a model of the catalog (downloaded from the hub there), e.g. the plan's own")
    job["cache_dir"] = "cache"
    for task in job["tasks"]:
        ds = task.get("dataset") or {}
        if ds.get("kind") == "local":
            task["dataset"] = dict(ds, path=f"data/{task['name']}/{Path(ds['path']).name}")
    return job


def data_files(job: dict, plan: EvalPlan) -> dict[str, bytes]:
    """Every file of the plan's own data (manifests and their media), by its path in the notebook's folder.
    Refused past EMBED_CAP: a notebook is not a way to carry gigabytes."""
    out: dict[str, bytes] = {}
    size = 0
    for task in job["tasks"]:
        ds = task.get("dataset") or {}
        if ds.get("kind") != "local":
            continue
        manifest = Path(ds["path"])
        files = [manifest, *(manifest.parent / rel for _, rel in
                             plandata.media_files(manifest, task["name"], plan.allow_private_urls, task["kind"]))]
        for f in files:
            size += f.stat().st_size
            if size > EMBED_CAP:
                raise InputError(f"plan {plan.name}'s own data is over {EMBED_CAP >> 20} MiB (at task {task['name']}): "
                                 "a notebook is not a way to carry gigabytes",
                                 "put the data where Colab can fetch it (a `kind: url` manifest), use builtin public "
                                 "data (plans/qwen3-vl-8b-public.yaml), or pass --limit N")
            out[f"data/{task['name']}/{f.relative_to(manifest.parent).as_posix()}"] = f.read_bytes()
    return out


def drive_folder(folder: str | None) -> str | None:
    """A folder under Drive's MyDrive, as `a/b`: each part a plain name."""
    if folder is None:
        return None
    parts = folder.strip("/").split("/")
    try:
        for p in parts:
            names.check(p, "--drive folder part")
    except ValueError as e:
        raise InputError(str(e), "name a folder under your Drive's MyDrive, e.g. --drive gpubudget") from None
    return "/".join(parts)


def worker_source(worker_from: Path | None) -> tuple[str, str, bytes]:
    """(how the notebook installs the worker: index | wheel | source, what it installs, the wheel's bytes)."""
    if worker_from is None:
        return "index", f"gpubudget[{WORKER_EXTRA}]=={package_version()}", b""
    p = Path(worker_from).expanduser()
    if p.is_file() and p.name.endswith(".whl"):
        if p.stat().st_size > WHEEL_CAP:
            raise InputError(f"--worker-from {p}: over {WHEEL_CAP >> 20} MiB", "build the wheel of this package "
                             "alone (pip wheel --no-deps .)")
        return "wheel", p.name, p.read_bytes()
    if p.is_dir() and (p / "runner" / "worker" / "__main__.py").is_file():
        return "source", str(p.resolve()), b""
    raise InputError(f"--worker-from {worker_from}: neither a wheel (.whl) nor a source tree with runner/worker/",
                     "pass the repository's folder or a wheel built from it (pip wheel --no-deps .)")


def requirements() -> list[str]:
    from .run.request import worker_requirements

    return worker_requirements().split()


def build(plan: EvalPlan, plan_path: Path, catalog: Catalog, home: Path, *, quant: str | None = None,
          limit: int | None = None, worker_from: Path | None = None, drive: str | None = None,
          clock: Clock = SYSTEM) -> tuple[dict, dict, Recommendation]:
    """(the notebook, its job as the notebook places it, the planner's choice it runs)."""
    from .run.prepare import engine_section
    from .run.request import new_run_id

    folder = drive_folder(drive)
    mode, what, wheel = worker_source(worker_from)
    rec = choose(plan, catalog, quant)
    job = jobs.build(plan, plan_path, catalog, home, quantization=rec.quantization, limit=limit,
                     run_id=new_run_id(plan.name, clock.now()), engine=engine_section(rec))
    data = data_files(job, plan)
    placed = placed_job(job)
    terms = catalog.terms[PROVIDER]
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}, "accelerator": "GPU",
                       "colab": {"provenance": [], "gpuType": rec.gpu}},
          "cells": cells(plan=plan, plan_arg=str(plan_path), rec=rec, terms=terms, job=placed, folder=FOLDER,
                         data={k: base64.b64encode(v).decode() for k, v in data.items()},
                         install=(mode, what, base64.b64encode(wheel).decode()), requirements=requirements(),
                         drive=folder, made=f"{dt.datetime.fromtimestamp(clock.now(), dt.UTC):%Y-%m-%d %H:%M} UTC")}
    return nb, placed, rec


def write(nb: dict, out: Path) -> None:
    """The notebook to `out` (put in place whole)."""
    out = Path(out)
    if out.suffix != ".ipynb":
        raise InputError(f"-o {out}: a notebook's name ends in .ipynb", "e.g. -o plan.ipynb")
    if out.is_dir():
        raise InputError(f"-o {out} is a directory", "pass a file name, e.g. -o plan.ipynb")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(out)
    except OSError as e:
        raise InputError(f"-o {out}: cannot write it ({e.strerror or e})", "pass a path in a folder you can write")


# --------------------------------------------------------------------------- the cells


def _cell(kind: str, text: str, n: int) -> dict:
    lines = text.strip("\n").split("\n")
    cell = {"cell_type": kind, "id": f"cell-{n}", "metadata": {}, "source": [x + "\n" for x in lines[:-1]] + lines[-1:]}
    return cell if kind == "markdown" else {**cell, "execution_count": None, "outputs": []}


def _lines(name: str, text: str) -> str:
    """`name = "\\n".join([...])`: a long text as one Python literal per line (readable, and any text is safe)."""
    return f"{name} = \"\\n\".join([\n" + "".join(f"    {line!r},\n" for line in text.split("\n")) + "])"


def cells(*, plan, plan_arg, rec, terms, job, folder, data, install, requirements, drive, made) -> list[dict]:
    mode, what, wheel = install
    run_id, tasks = job["run_id"], job["tasks"]
    samples = ", ".join(f"{t['name']} ({t['kind']}, {t.get('samples')})" for t in tasks)
    limits = "\n".join(f"- {t}" for t in terms.limits)
    how = {"index": f"installs `{what}` from the package index (torch and transformers come preinstalled on Colab; "
                    "pip adds the rest of the worker's dependencies); where the index has no such release, make the "
                    "notebook again with `--worker-from` a wheel of this package (`pip wheel --no-deps . -w dist`)",
           "wheel": f"installs the wheel `{what}` carried in this notebook (generated with --worker-from), without "
                    "its dependencies, then pip-installs only those of the worker's dependencies this Python lacks",
           "source": f"runs the worker from the source tree `{what}` on the machine that generated it (no install: "
                     "it is put on the worker's PYTHONPATH, as `budget eval` runs it) and pip-installs only those "
                     "of the worker's dependencies this Python lacks - for a local Jupyter or a test, not for Colab"}
    intro = f"""
# gpubudget: plan `{plan.name}` on Colab's free {rec.gpu}

This notebook runs one evaluation of plan **{plan.name}** ({plan.description or 'no description'}) with gpubudget's
worker, then zips its results for `budget import`. Generated by `budget colab {plan_arg}` on {made}; run id `{run_id}`.

- **Job:** model `{job['model']['name']}`, {rec.quantization}, engine {rec.engine}; tasks: {samples}{
        f"; at most {job['limit']} samples a task" if job.get('limit') else ''}.
- **Estimate on a {rec.gpu} x{rec.gpu_count}:** {rec.hours:.2f} h (±{rec.time.band:.0%}), peak
  {rec.memory_per_gpu_gib:.1f} GiB of {rec.gpu_memory_gib:.1f} GiB per card; 0 CNY.
- **Run it:** Runtime > Change runtime type > T4 GPU; Runtime > Run all; keep this tab open. Stopped or disconnected
  while the machine is still there: run the run cell again - it resumes from the result lines in `{folder}/out`. A
  session that has ended gives a new, empty machine: zip what you have first if you can (the last cell), then Run all
  starts the plan again.
- **Then, on your machine:** download `{run_id}-results.zip` (the last cell offers it{
        f', and copies it to Drive under MyDrive/{drive}' if drive else ''}) and record it as a 0 CNY run:
  `budget import {run_id}-results.zip --plan {plan_arg}`; `budget report --plan {plan.name}` shows it beside paid runs.
- **The install cell** {how[mode]}.

**The free plan's limits** (the Colab FAQ, research.google.com/colaboratory/faq.html, deliberately publishes no exact
limits; what it says and does not, with the date it was read):

{limits}
"""
    setup = f"""
import os, sys
ROOT = os.path.abspath({folder!r})  # this notebook's working folder (on Colab: /content/{folder})
OUT = os.path.join(ROOT, "out")     # the worker's output: job.json, status.json, results/, summary.json, worker.log
RUN_ID = {run_id!r}
os.makedirs(OUT, exist_ok=True)
print("working in", ROOT)
"""
    setup_install = f"""
# Install the worker: {how[mode]}.
import base64, importlib.util, subprocess
MODE, WHAT = {mode!r}, {what!r}
WORKER_PATH = ""  # put first on the worker's PYTHONPATH
REQUIREMENTS = {requirements!r}  # the worker extra of gpubudget {package_version()}


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def module_of(requirement):
    name = requirement.split(";")[0].split("[")[0]
    for op in "<>=!~ ":
        name = name.split(op)[0]
    return {{"pillow": "PIL"}}.get(name.lower(), name.replace("-", "_"))


if MODE == "index":
    pip(WHAT)
else:
    if MODE == "wheel":
        wheel = os.path.join(ROOT, WHAT)
        with open(wheel, "wb") as f:
            f.write(base64.b64decode(WHEEL))
        WORKER_PATH = os.path.join(ROOT, "site")
        pip("--no-deps", "--upgrade", "--target", WORKER_PATH, wheel)
    else:
        WORKER_PATH = WHAT
    missing = [r for r in REQUIREMENTS if importlib.util.find_spec(module_of(r)) is None]
    if missing:
        pip(*missing)
print("worker:", MODE, WHAT)
"""
    wheel_line = f"WHEEL = {wheel!r}\n" if mode == "wheel" else ""
    job_cell = f"""
# The job (what `budget run` would give the worker for this plan) and the plan's own data, placed under ROOT.
import json
{_lines("JOB_JSON", json.dumps(job, indent=1, ensure_ascii=False))}
DATA = {json.dumps(data, indent=1)}  # the plan's own files, base64, by their path under ROOT
job = json.loads(JOB_JSON)
job["cache_dir"] = os.path.join(ROOT, job["cache_dir"])
if job["model"].get("recipe"):  # the tiny model, built here on first use
    job["model"]["source"] = os.path.join(ROOT, job["model"]["source"])
for task in job["tasks"]:
    if task.get("dataset", {{}}).get("kind") == "local":
        task["dataset"]["path"] = os.path.join(ROOT, task["dataset"]["path"])
for rel, b64 in DATA.items():
    path = os.path.join(ROOT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(base64.b64decode(b64))
JOB_PATH = os.path.join(OUT, "job.json")
with open(JOB_PATH, "w", encoding="utf-8") as f:
    json.dump(job, f, indent=1, ensure_ascii=False)
print(len(job["tasks"]), "tasks,", len(DATA), "data files; job in", JOB_PATH)
"""
    run_cell = """
# Run the worker. Rerun this cell to resume: the worker goes on after the result lines already in OUT.
env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
if WORKER_PATH:
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [WORKER_PATH, env.get("PYTHONPATH")]))
cmd = [sys.executable, "-m", "runner.worker", JOB_PATH, OUT]
with open(os.path.join(OUT, "worker.stderr.log"), "a", encoding="utf-8") as log:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in proc.stdout:
            log.write(line)
            print(line, end="")
        rc = proc.wait()
    except KeyboardInterrupt:  # the stop button: the worker finishes its files and exits
        proc.terminate()
        rc = proc.wait()
if rc == 3:
    print("stopped early: rerun this cell to resume")
elif rc != 0:
    raise RuntimeError(f"the worker exited with {rc}: see {OUT}/worker.log; rerun this cell to resume")
else:
    print("done")
"""
    zip_cell = f"""
# Zip the results for `budget import` (job, status, summary, result lines, logs); download it or copy it to Drive.
import shutil, zipfile
DRIVE = {drive!r}  # a folder under MyDrive (budget colab --drive), or None
names = ["job.json", "status.json", "summary.json", "worker.log", "worker.stderr.log"]
if os.path.isdir(os.path.join(OUT, "results")):
    names += sorted("results/" + n for n in os.listdir(os.path.join(OUT, "results")) if n.endswith(".jsonl"))
ZIP = os.path.join(ROOT, RUN_ID + "-results.zip")
with zipfile.ZipFile(ZIP + ".part", "w", zipfile.ZIP_DEFLATED) as z:
    for name in names:
        path = os.path.join(OUT, name)
        if os.path.isfile(path) and not os.path.islink(path):
            z.write(path, name)
os.replace(ZIP + ".part", ZIP)
print(ZIP, os.path.getsize(ZIP), "bytes; then: budget import", os.path.basename(ZIP), "--plan", {plan_arg!r})
try:
    from google.colab import drive, files
except ImportError:  # not on Colab: the zip stays where it is
    print("not on Colab: the zip is at", ZIP)
else:
    if DRIVE:
        drive.mount("/content/drive")
        dest = os.path.join("/content/drive/MyDrive", DRIVE)
        os.makedirs(dest, exist_ok=True)
        shutil.copy(ZIP, dest)
        print("copied to", dest)
    files.download(ZIP)
"""
    return [_cell(k, t, n) for n, (k, t) in enumerate(
        [("markdown", intro), ("code", setup), ("code", wheel_line + setup_install), ("code", job_cell),
         ("code", run_cell), ("code", zip_cell)], 1)]

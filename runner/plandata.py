"""A plan's own data as the controller sees it, before anything is launched: which local manifests a plan
reads and which media files they name (paths resolved inside the manifest's folder - never absolute,
never `..`, never longer than a path can be - and each under its kind's size cap), every missing one listed
at once, and `budget data init`: template manifests with the fields each task kind expects, for data only
the user has (their documents, poetry images, clips, pictures of numbers). Builtin public datasets and URL
manifests are fetched on the instance; their addresses are checked here (http(s) only, no private or local
host unless the plan sets allow_private_urls), and a local manifest names files, never URLs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputError
from planner.models import EvalPlan
from planner.plans import bundled_plan

from .worker.manifests import MEDIA_KEYS, check_row, check_size, inside, media_refs, read_manifest
from .worker.sample import DatasetError

URL_HINT = ("datasets are fetched over http(s) from public hosts; for a mirror on your own network set "
            "allow_private_urls: true in the plan")

# What one manifest line holds, per task kind (README: manifest format); `budget data init` writes these.
TEMPLATES: dict[str, list[dict]] = {
    "caption": [{"id": "photo-001", "image": "images/photo-001.jpg",
                 "references": ["a reference caption", "another way to say it"]}],
    "document": [{"id": "page-001", "image": "pages/page-001.png", "question": "What is the invoice total?",
                  "answers": ["1,234.00", "1234.00"]}],
    "multiturn_vqa": [{"id": "scene-001", "image": "images/scene-001.jpg",
                       "turns": ["What is here?", "How many cars are there?", "What is here?"]}],
    "poetry": [{"id": "poem-001", "image": "paintings/poem-001.jpg", "prompt": "请描述这幅画的意境。",
                "keywords": ["月", "松"]}],
    "video": [{"id": "clip-001", "video": "clips/clip-001.mp4"},
              {"id": "clip-002", "frames": ["clips/clip-002/f0.jpg", "clips/clip-002/f1.jpg"], "fps": 1}],
    # the number as printed, in quotes; a prompt naming the one to read where the picture holds several
    "digits": [{"id": "receipt-001", "image": "images/receipt-001.jpg", "prompt": "Read the TOTAL amount exactly "
                "as printed.", "answer": "1,234.50"},
               {"id": "meter-001", "image": "images/meter-001.jpg", "answer": "004512"}],
}


@dataclass(frozen=True)
class Missing:
    task: str
    path: Path  # as the user wrote it, relative to the plan or the manifest
    looked_at: Path
    what: str  # "manifest" or "image", "video", "frames"


def manifest_path(task, plan_dir: Path) -> Path:
    p = Path(task.dataset.path)
    return p if p.is_absolute() else plan_dir / p


def media_files(manifest: Path, task_name: str, allow_private_urls: bool = False,
                kind: str = "") -> list[tuple[str, str]]:
    """(key, relative path) of every media file a manifest names. A malformed row - one missing what a task
    of `kind` needs (a digits row's answer) -, or a path that is absolute or leaves the manifest's folder
    (`..`, a symlink pointing out), is refused: it would read - and upload - files outside the data. So is a
    URL: the worker reads a local manifest's media from the files pushed beside it (`file://` and private
    hosts are named as such)."""
    try:
        rows = read_manifest(manifest, f"task {task_name}")
    except DatasetError as e:
        raise InputError(str(e), "one JSON object per line with a unique id (`budget data init PLAN` writes "
                         "templates)") from None
    found = []
    for row in rows:
        if kind:
            try:
                check_row(row, kind)
            except DatasetError as e:
                raise InputError(f"task {task_name}: {manifest}: sample {row['id']}: {e}",
                                 f"`budget data init PLAN` writes a template with the fields a {kind} task "
                                 "reads") from None
        for key in MEDIA_KEYS:
            if key not in row:
                continue
            try:
                check_row(row)
                refs = media_refs(row, key)
                for ref in refs:
                    if "://" in ref:
                        from .worker.downloads import check_url  # urllib / http / ssl: only for a URL

                        check_url(ref, allow_private_urls)
                        raise DatasetError(f"{ref}: a local manifest names files beside it, not URLs (a manifest "
                                           "of URLs is a `kind: url` dataset)")
                    inside(manifest.parent, ref)
            except DatasetError as e:
                raise InputError(f"task {task_name}: {manifest}: sample {row['id']}: {e}",
                                 "media paths are relative to the manifest, inside its folder (they are copied to "
                                 "the instance beside it); `budget data init PLAN` shows the fields") from None
            found += [(key, ref) for ref in refs]
    return found


def check_urls(plan: EvalPlan) -> None:
    """Every dataset address of the plan (a URL manifest, a builtin's mirror) by downloads.check_url."""
    for task in plan.tasks:
        if task.dataset is not None and task.dataset.url:
            from .worker.downloads import check_url  # urllib / http / ssl: only for a URL

            try:
                check_url(task.dataset.url, plan.allow_private_urls)
            except DatasetError as e:
                raise InputError(f"task {task.name}: dataset {e}", URL_HINT) from None


def _oversized(task_name: str, manifest: Path, key: str, path: Path) -> None:
    try:
        check_size(key, path)
    except DatasetError as e:
        raise InputError(f"task {task_name}: {manifest}: {e}", "make it smaller (images are resized to the plan's "
                         "image_limits anyway), or leave it out of the manifest") from None


def missing(plan: EvalPlan, plan_path: Path) -> list[Missing]:
    """Every local manifest and media file the plan needs that is not there."""
    gone = []
    for task in plan.tasks:
        if task.dataset is None or task.dataset.kind != "local":
            continue
        manifest = manifest_path(task, plan_path.parent)
        if not manifest.is_file():
            gone.append(Missing(task.name, Path(task.dataset.path), manifest, "manifest"))
            continue
        for key, rel in media_files(manifest, task.name, plan.allow_private_urls, task.kind):
            if not (manifest.parent / rel).is_file():
                gone.append(Missing(task.name, Path(rel), manifest.parent / rel, key))
            else:
                _oversized(task.name, manifest, key, manifest.parent / rel)
    return gone


def require(plan: EvalPlan, plan_path: Path) -> None:
    """Refuse a plan whose dataset addresses are refused (check_urls) or whose local data is incomplete
    (every missing file named in one line) or oversized."""
    check_urls(plan)
    gone = missing(plan, plan_path)
    if not gone:
        return
    manifests = [m for m in gone if m.what == "manifest"]
    listed = "; ".join(f"{m.looked_at} ({m.what} of task {m.task})" for m in gone[:12])
    more = f"; and {len(gone) - 12} more" if len(gone) > 12 else ""
    public = " (or run plans/qwen3-vl-8b-public.yaml, which fetches public data)" if manifests else ""
    bundled = plan_path.resolve().parent == bundled_plan().resolve().parent
    shown = f"plans/{plan_path.name}" if bundled else str(plan_path)
    raise InputError(f"{len(gone)} data file{'s' if len(gone) > 1 else ''} of plan {plan.name} missing: {listed}{more}",
                     (f"`budget data init {shown}` writes template manifests to fill in" if manifests
                      else "add the files the manifests name, or remove their lines") + public)


@dataclass(frozen=True)
class Written:
    task: str
    kind: str
    path: Path
    media_dir: str
    created: bool  # False: a manifest was there already and is left as it is


def init(plan: EvalPlan, plan_path: Path) -> list[Written]:
    """Write a template manifest for every local dataset of the plan that has none (existing files are never
    touched); the folders its example lines name are created, empty, beside it."""
    done = []
    for task in plan.tasks:
        if task.dataset is None or task.dataset.kind != "local":
            continue
        manifest = manifest_path(task, plan_path.parent)
        rows = TEMPLATES.get(task.kind, TEMPLATES["caption"])
        example = rows[0].get("image") or rows[0].get("video") or rows[0]["frames"][0]
        media_dir = Path(example).parts[0]
        if manifest.exists():
            done.append(Written(task.name, task.kind, manifest, media_dir, False))
            continue
        try:
            manifest.parent.mkdir(parents=True, exist_ok=True)
            (manifest.parent / media_dir).mkdir(exist_ok=True)
            manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot write {manifest} ({e.strerror})", "copy the plan into a folder you can "
                             "write, and run `budget data init` on that copy") from None
        done.append(Written(task.name, task.kind, manifest, media_dir, True))
    return done

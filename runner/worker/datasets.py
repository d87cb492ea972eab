"""Where a task's samples come from, resolved on the instance: `resolve` picks the source - a local or
URL manifest (manifests.py), samples drawn here (synthetic.py), or one of the builtin public sets this
module fetches: COCO val2017 captions (annotations + N seeded images), scripted multi-turn questions on
COCO images, DocVQA validation pages through the Hugging Face dataset viewer's /rows API, and public
video clips. Every download goes through downloads.py (http(s) only, size-capped, retried) and is
cached under the job's cache directory, so a rerun fetches nothing twice."""

from __future__ import annotations

import json
import random
import urllib.parse
import zipfile
from pathlib import Path

from . import downloads, manifests, synthetic
from .downloads import download
from .job import BUILTIN  # the schema names the builtin datasets; this module fetches them
from .sample import DatasetError, Sample

COCO_BASE_URL = "http://images.cocodataset.org/"
COCO_ANNOTATIONS = "annotations/annotations_trainval2017.zip"
COCO_CAPTIONS_MEMBER = "annotations/captions_val2017.json"

# Hugging Face's dataset viewer serves any public dataset's rows as JSON (100 a page), images as URLs
HF_ROWS_URL = "https://datasets-server.huggingface.co/"
DOCVQA = {"dataset": "lmms-lab/DocVQA", "config": "DocVQA", "split": "validation"}
# Public clips with stable addresses (Blender Foundation films cut to 10 s by test-videos.co.uk; Qwen's
# and transformers' demo clips): (id, url). A plan's dataset.url replaces the host part (tests, mirrors).
PUBLIC_CLIPS = (
    ("bbb-10s", "https://test-videos.co.uk/vids/bigbuckbunny/mp4/h264/360/Big_Buck_Bunny_360_10s_1MB.mp4"),
    ("jellyfish-10s", "https://test-videos.co.uk/vids/jellyfish/mp4/h264/360/Jellyfish_360_10s_1MB.mp4"),
    ("sintel-10s", "https://test-videos.co.uk/vids/sintel/mp4/h264/360/Sintel_360_10s_1MB.mp4"),
    ("qwen-space", "https://qianwen-res.oss-cn-beijing.aliyuncs.com/Qwen2-VL/space_woaudio.mp4"),
    ("hf-demo-1", "https://huggingface.co/datasets/raushan-testing-hf/videos-test/resolve/main/sample_demo_1.mp4"),
)
MULTITURN_QUESTIONS = ("What is the main subject of this image?", "How many people can you see?",
                       "What colours dominate the scene?", "Where might this photo have been taken?",
                       "What is happening in the image?")


def _builtin(task, cache: Path, n: int, seed: int, where: str) -> list[Sample]:
    name = task.dataset.name
    if name not in BUILTIN:
        raise DatasetError(f"{where}: unknown builtin dataset {name!r} (known: {', '.join(BUILTIN)})")
    if name == "docvqa-val":
        return _docvqa(task, cache / "docvqa", n, seed, where)
    if name == "public-clips":
        return _clips(task, cache / "clips", n, where)
    multiturn = name == "coco-val2017-multiturn"
    samples = _coco(task, cache, n, seed + 1 if multiturn else seed, where)  # other images than the captions'
    if multiturn:  # scripted questions; the last repeats the first (are answers stable?)
        turns = [MULTITURN_QUESTIONS[t % len(MULTITURN_QUESTIONS)] for t in range(task.turns)]
        if task.turns >= 2:
            turns[-1] = turns[0]
        for s in samples:
            s.turns = list(turns)
    return samples


def _docvqa(task, cache: Path, n: int, seed: int, where: str) -> list[Sample]:
    """`n` consecutive DocVQA validation questions from a seeded offset, through the dataset viewer's
    /rows API (JSON, no parquet reader on the instance); pages and images are cached."""
    base = task.dataset.url or HF_ROWS_URL
    base = base if base.endswith("/") else base + "/"

    def page(offset: int, length: int) -> dict:
        q = urllib.parse.urlencode({**DOCVQA, "offset": offset, "length": length})
        path = download(f"{base}rows?{q}", cache / f"rows-{offset}-{length}.json", max_bytes=16 * 2**20)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc["rows"], list) or int(doc["num_rows_total"]) < 0:
                raise ValueError("rows is not a list")
        except (ValueError, KeyError, TypeError) as e:
            path.unlink(missing_ok=True)
            raise DatasetError(f"{where}: {base}rows: not a dataset-viewer rows page ({e.__class__.__name__}: {e})")
        return doc

    total = int(page(0, 1)["num_rows_total"])
    if n > total:
        raise DatasetError(f"{where}: asked for {n} DocVQA questions, the split has {total}")
    start = random.Random(seed).randrange(0, total - n + 1)
    out = []
    for offset in range(start, start + n, 100):
        for r in page(offset, min(100, start + n - offset))["rows"]:
            row = r.get("row") or {}
            image = row.get("image") or {}
            if not isinstance(image, dict) or not image.get("src") or not row.get("question"):
                raise DatasetError(f"{where}: DocVQA row {r.get('row_idx')} has no image src or question")
            ext = Path(urllib.parse.urlparse(image["src"]).path).suffix[:8] or ".png"
            path = download(image["src"], cache / "images" / f"{r.get('row_idx')}{ext}", max_bytes=64 * 2**20)
            out.append(Sample(id=f"docvqa-{row.get('questionId', r.get('row_idx'))}", image=path,
                              prompt=str(row["question"]), answers=[str(a) for a in row.get("answers") or []]))
    return out


def _clips(task, cache: Path, n: int, where: str) -> list[Sample]:
    if n > len(PUBLIC_CLIPS):
        raise DatasetError(f"{where}: asked for {n} public clips, there are {len(PUBLIC_CLIPS)}")
    out = []
    for clip_id, url in PUBLIC_CLIPS[:n]:
        if task.dataset.url:
            url = urllib.parse.urljoin(task.dataset.url if task.dataset.url.endswith("/") else task.dataset.url + "/",
                                       Path(urllib.parse.urlparse(url).path).name)
        path = download(url, cache / f"{clip_id}{Path(urllib.parse.urlparse(url).path).suffix or '.mp4'}",
                        max_bytes=128 * 2**20)
        out.append(Sample(id=clip_id, video=path))
    return out


def _coco(task, cache: Path, n: int, seed: int, where: str) -> list[Sample]:
    base = task.dataset.url or COCO_BASE_URL
    base = base if base.endswith("/") else base + "/"
    zpath = download(base + COCO_ANNOTATIONS, cache / "coco" / Path(COCO_ANNOTATIONS).name, task.dataset.sha256)
    try:
        with zipfile.ZipFile(zpath) as z:
            captions = json.loads(z.read(COCO_CAPTIONS_MEMBER))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise DatasetError(f"{where}: {zpath} holds no readable {COCO_CAPTIONS_MEMBER} ({e})") from None
    refs: dict[int, list[str]] = {}
    for ann in captions["annotations"]:
        refs.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    images = sorted((im for im in captions["images"] if im["id"] in refs), key=lambda im: im["id"])
    if n > len(images):
        raise DatasetError(f"{where}: asked for {n} COCO images, the annotations have {len(images)}")
    chosen = random.Random(seed).sample(images, n)
    out = []
    for im in chosen:
        path = download(base + "val2017/" + im["file_name"], cache / "coco" / "val2017" / im["file_name"])
        out.append(Sample(id=str(im["id"]), image=path, references=refs[im["id"]]))
    return out


def resolve(task, job, base_dir: Path, cache_dir: Path) -> list[Sample]:
    """The samples of `task` (at most task.samples, and at most job.limit), in a stable order."""
    where = f"task {task.name}"
    downloads.policy(job.allow_private_urls)  # what every fetch below (and each redirect) may reach
    n = task.samples if job.limit is None else min(task.samples, job.limit)
    kind = task.dataset.kind
    if task.kind == "memory_sweep":
        samples = []
        for w, h in task.resolutions:
            for i in range(n):
                img, _ = synthetic.image("memory_sweep", (w, h), job.seed + i)
                samples.append(Sample(id=f"{w}x{h}-{i}", image=img, size=(w, h)))
        return samples
    if kind == "synthetic":
        return synthetic.samples(task, n, job.seed)
    if kind == "local":
        rows = manifests.local_samples(task, base_dir, where)
    elif kind == "url":
        rows = manifests.url_samples(task, Path(cache_dir) / task.name, where)
    else:
        return _builtin(task, Path(cache_dir), n, job.seed, where)
    return rows[:n]

"""Where a task's samples come from, resolved on the instance: local manifests (JSONL + files shipped
with the job), URL manifests (downloaded with retries and checksums), the builtin public sets - COCO
val2017 captions (annotations + N seeded images), scripted multi-turn questions on COCO images, DocVQA
validation pages through the Hugging Face dataset viewer's /rows API, and public video clips - and
synthetic samples drawn here (no files at all). Every download is http(s) only, size-capped, retried
and cached under the job's cache directory, so a rerun fetches nothing twice.

A manifest line is one JSON object: `id`, then what the task needs — `image` (or `video`, or
`frames` + `fps`), `prompt` (or `question`), `references` (captions), `answers` (documents),
`keywords` (poetry), `turns` (multi-turn questions) and optionally `sha256: {"image": HEX, ...}`.
Relative paths resolve against the manifest's own location (directory or URL)."""

from __future__ import annotations

import hashlib
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .job import BUILTIN, MAX_PROMPT_CHARS  # the schema names the builtin datasets; this module fetches them

COCO_BASE_URL = "http://images.cocodataset.org/"
COCO_ANNOTATIONS = "annotations/annotations_trainval2017.zip"
COCO_CAPTIONS_MEMBER = "annotations/captions_val2017.json"
MEDIA_KEYS = ("image", "video", "frames")
MAX_DOWNLOAD_BYTES = 512 * 2**20  # the COCO annotations zip is 241 MB; nothing we fetch is larger
MAX_MANIFEST_BYTES = 64 * 2**20  # a URL manifest
MAX_MEDIA_BYTES = 256 * 2**20  # one image, clip or frame a URL manifest names

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


class DatasetError(Exception):
    """A dataset cannot be resolved (missing file, bad manifest, failed download, wrong checksum)."""


@dataclass
class Sample:
    id: str
    image: object = None  # a path, or a PIL image for synthetic samples
    video: object = None  # a path to a video file, a list of frame paths, or ("synthetic", seed)
    fps: float | None = None  # frames-list videos: their frame rate
    prompt: str = ""
    references: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # memory sweep: the resolution under test
    error: str = ""  # the row is unusable (bad field, file missing or outside the dataset): recorded, not run


# --------------------------------------------------------------------------- downloads

def download(url: str, dest: Path, sha256: str = "", attempts: int = 4, backoff_s: float = 1.0,
             max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Fetch `url` to `dest` (kept if already there with the right checksum). Only http(s); a body past
    `max_bytes` is refused. Retries connection errors, timeouts, 429 and 5xx with exponential backoff; a
    checksum mismatch is retried once as a corrupt transfer, then fails."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DatasetError(f"cannot download {url}: only http(s) addresses are fetched")
    dest = Path(dest)
    if dest.exists() and (not sha256 or _sha256(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    mismatches = 0
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                if int(resp.headers.get("Content-Length") or 0) > max_bytes:
                    raise DatasetError(f"cannot download {url}: {resp.headers['Content-Length']} bytes is over the "
                                       f"{max_bytes >> 20} MiB cap")
                got = 0
                while block := resp.read(1 << 20):
                    got += len(block)
                    if got > max_bytes:
                        raise DatasetError(f"cannot download {url}: over the {max_bytes >> 20} MiB cap")
                    out.write(block)
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
            if e.code != 429 and e.code < 500:
                break
            continue
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = str(getattr(e, "reason", e))
            continue
        except DatasetError:
            tmp.unlink(missing_ok=True)
            raise
        if sha256 and _sha256(tmp) != sha256.lower():
            mismatches += 1
            last = f"sha256 {_sha256(tmp)[:12]}... is not the expected {sha256[:12]}..."
            if mismatches > 1:
                break
            continue
        tmp.replace(dest)
        return dest
    tmp.unlink(missing_ok=True)
    raise DatasetError(f"cannot download {url}: {last}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_name(url: str) -> str:
    suffix = Path(urllib.parse.urlparse(url).path).suffix[:8]
    return hashlib.sha256(url.encode()).hexdigest()[:24] + suffix


# --------------------------------------------------------------------------- manifests

def read_manifest(path: Path, where: str, strict: bool = True) -> list[dict]:
    """A JSONL manifest's rows (blank lines skipped, a UTF-8 BOM allowed), each with a string `id`.
    `strict` (the controller, before launch): any bad line or repeated id is a DatasetError. Otherwise (the
    worker, on the instance): a line that is not a JSON object becomes a row carrying `_error` (a
    per-sample error, id `line-N`), and a repeated id keeps its first row - one bad row never ends a run."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DatasetError(f"{where}: cannot read manifest {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{where}: manifest {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    rows, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = "" if isinstance(row, dict) else "expected an object"
        except ValueError as e:
            row, problem = None, f"not JSON ({e.msg})"
        if problem:
            if strict:
                raise DatasetError(f"{where}: {path}:{n}: {problem}")
            row = {"id": f"line-{n}", "_error": f"{Path(path).name}:{n}: {problem}"}
        row.setdefault("id", str(n))
        if not isinstance(row["id"], str | int) or isinstance(row["id"], bool):
            if strict:
                raise DatasetError(f"{where}: {path}:{n}: id must be a string or a number")
            row = {"id": f"line-{n}", "_error": f"{Path(path).name}:{n}: id must be a string or a number"}
        row["id"] = str(row["id"])
        if row["id"] in seen:
            if strict:
                raise DatasetError(f"{where}: {path}: sample id {row['id']!r} repeats (line {n})")
            continue
        seen.add(row["id"])
        rows.append(row)
    return rows


def media_refs(row: dict, key: str) -> list[str]:
    """The media references of one row under `key`: one string, or (frames) a non-empty list of strings."""
    value = row[key]
    refs = value if key == "frames" else [value]
    if key == "frames" and (not isinstance(value, list) or not value):
        raise DatasetError("frames: expected a non-empty list of paths")
    if not all(isinstance(r, str) and r for r in refs):
        raise DatasetError(f"{key}: expected a path string, got {json.dumps(value)[:60]}")
    return refs


def check_row(row: dict) -> None:
    """What a row must hold before any of its files are touched (a problem is this sample's error)."""
    if row.get("_error"):
        raise DatasetError(row["_error"])
    fps = row.get("fps")
    if fps is not None and not (isinstance(fps, int | float) and not isinstance(fps, bool) and 0 < fps <= 1000):
        raise DatasetError(f"fps: expected a positive number, got {json.dumps(fps)}")
    for key in ("prompt", "question"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise DatasetError(f"{key}: expected text")
        if len(row.get(key) or "") > MAX_PROMPT_CHARS:
            raise DatasetError(f"{key}: {len(row[key])} characters is over the {MAX_PROMPT_CHARS} cap")
    for key in ("references", "answers", "keywords", "turns"):
        if row.get(key) is not None and not (isinstance(row[key], list) and all(isinstance(x, str) for x in row[key])):
            raise DatasetError(f"{key}: expected a list of strings")
        if sum(len(x) for x in row.get(key) or []) > MAX_PROMPT_CHARS:
            raise DatasetError(f"{key}: over the {MAX_PROMPT_CHARS} character cap")


def inside(root: Path, ref: str) -> Path:
    """`ref` (relative, from a manifest) as a path inside `root`, symlinks followed; anything that
    would leave it - absolute, `..`, a link pointing out - is refused."""
    if Path(ref).is_absolute() or ".." in Path(ref).parts:
        raise DatasetError(f"{ref}: media paths must be relative to the manifest, inside its folder")
    base = Path(root).resolve()
    full = (base / ref).resolve()
    if not full.is_relative_to(base):
        raise DatasetError(f"{ref}: a link that points outside the dataset's folder ({full})")
    return full


def _sample(row: dict, media: dict) -> Sample:
    return Sample(
        id=row["id"], image=media.get("image"), video=media.get("video") or media.get("frames"),
        fps=row.get("fps"), prompt=row.get("prompt") or row.get("question") or "",
        references=list(row.get("references") or []), answers=list(row.get("answers") or []),
        keywords=list(row.get("keywords") or []), turns=list(row.get("turns") or []))


def _rows(rows: list[dict], media_of) -> list[Sample]:
    """Samples from manifest rows; a row whose fields or files are unusable is a sample carrying its error."""
    out = []
    for row in rows:
        try:
            check_row(row)
            media = {key: media_of(key, media_refs(row, key)) for key in MEDIA_KEYS if key in row}
            out.append(_sample(row, {k: v if k == "frames" else v[0] for k, v in media.items()}))
        except DatasetError as e:
            out.append(Sample(id=row["id"], error=str(e)))
    return out


def _local(task, base: Path, where: str) -> list[Sample]:
    manifest = Path(task.dataset.path)
    manifest = manifest if manifest.is_absolute() else base / manifest
    rows = read_manifest(manifest, where, strict=False)
    if task.dataset.sha256 and _sha256(manifest) != task.dataset.sha256.lower():
        raise DatasetError(f"{where}: {manifest}: sha256 differs from the plan's")

    def media_of(key: str, refs: list[str]) -> list[Path]:
        paths = [inside(manifest.parent, r) for r in refs]
        for p in paths:
            if not p.is_file():
                raise DatasetError(f"{key} file {p} not found" if not p.exists() else f"{key} {p} is not a regular file")
        return paths

    return _rows(rows, media_of)


def _url(task, cache: Path, where: str) -> list[Sample]:
    url = task.dataset.url
    manifest = download(url, cache / _cache_name(url), task.dataset.sha256, max_bytes=MAX_MANIFEST_BYTES)
    sums: dict = {}

    def media_of(key: str, refs: list[str]) -> list[Path]:
        files = []
        for ref in refs:
            full = urllib.parse.urljoin(url, ref)
            files.append(download(full, cache / _cache_name(full), sums.get(key, "") if key != "frames" else "",
                                  max_bytes=MAX_MEDIA_BYTES))
        return files

    rows = read_manifest(manifest, where, strict=False)
    out = []
    for row in rows:
        sums = row.get("sha256") if isinstance(row.get("sha256"), dict) else {}
        out += _rows([row], media_of)
    return out


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


# --------------------------------------------------------------------------- synthetic

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 210, 20),
           "black": (10, 10, 10), "purple": (140, 40, 170)}
SHAPES = ("circle", "square", "triangle")


def _draw_shapes(size, rng: random.Random, count: int):
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    drawn = []
    for i in range(count):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        s = max(4, min(w, h) // (2 + i))
        x, y = rng.randint(0, max(0, w - s)), rng.randint(0, max(0, h - s))
        box = [x, y, x + s, y + s]
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=COLOURS[colour])
        drawn.append((colour, shape))
    return img, drawn


def synthetic_image(kind: str, size: tuple[int, int], seed: int):
    """A deterministic image for `kind` plus what a correct answer would mention."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    w, h = size
    if kind == "document":
        img = Image.new("RGB", (w, h), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        total = rng.randint(10, 999)
        for i, line in enumerate(["INVOICE", f"ITEMS {rng.randint(1, 9)}", f"TOTAL {total}"]):
            draw.text((8, 8 + i * max(12, h // 8)), line, fill=(0, 0, 0))
        return img, {"answers": [str(total)]}
    if kind == "poetry":
        img = Image.new("RGB", (w, h), (20, 30, 70))
        draw = ImageDraw.Draw(img)
        r = max(3, min(w, h) // 8)
        draw.ellipse([w - 3 * r, r, w - r, 3 * r], fill=(250, 240, 200))
        draw.polygon([(0, h), (w // 3, h // 2), (2 * w // 3, h)], fill=(40, 80, 50))
        return img, {"keywords": ["月", "山"]}
    if kind == "memory_sweep":
        img = Image.effect_noise((w, h), 64).convert("RGB")
        return img, {}
    img, drawn = _draw_shapes(size, rng, rng.randint(1, 3))
    names = " and ".join(f"a {c} {s}" for c, s in drawn)
    return img, {"references": [f"{names} on a white background", f"a white picture with {names}",
                                f"{len(drawn)} shapes: {names}"]}


_TURNS = ["What shapes are in the image?", "What colour is the largest shape?", "How many shapes are there?",
          "Is the background white?", "Where is the largest shape?"]


def _synthetic(task, n: int, seed: int) -> list[Sample]:
    out = []
    for i in range(n):
        s = seed * 1_000_003 + i
        if task.kind == "video":
            out.append(Sample(id=f"syn-{i}", video=("synthetic", s)))
            continue
        size = task.image_size
        img, truth = synthetic_image(task.kind if task.kind != "multiturn_vqa" else "caption", size, s)
        turns = []
        if task.kind == "multiturn_vqa":
            turns = [_TURNS[t % len(_TURNS)] for t in range(task.turns)]
            if task.turns >= 2:
                turns[-1] = turns[0]  # a repeated question: do the answers agree?
        out.append(Sample(id=f"syn-{i}", image=img, turns=turns, **truth))
    return out


def synthetic_frames(seed: int, size: tuple[int, int], indices: list[int]):
    """Frames of a square moving across the picture; only the requested indices are drawn."""
    import numpy as np

    rng = random.Random(seed)
    w, h = size
    colour = COLOURS[rng.choice(sorted(COLOURS))]
    s = max(8, min(w, h) // 4)
    frames = np.full((len(indices), h, w, 3), 255, dtype=np.uint8)
    for j, idx in enumerate(indices):
        x = (idx * 7) % max(1, w - s)
        frames[j, h // 3:h // 3 + s, x:x + s] = colour
    return frames


# --------------------------------------------------------------------------- entry point

def resolve(task, job, base_dir: Path, cache_dir: Path) -> list[Sample]:
    """The samples of `task` (at most task.samples, and at most job.limit), in a stable order."""
    where = f"task {task.name}"
    n = task.samples if job.limit is None else min(task.samples, job.limit)
    kind = task.dataset.kind
    if task.kind == "memory_sweep":
        samples = []
        for w, h in task.resolutions:
            for i in range(n):
                img, _ = synthetic_image("memory_sweep", (w, h), job.seed + i)
                samples.append(Sample(id=f"{w}x{h}-{i}", image=img, size=(w, h)))
        return samples
    if kind == "synthetic":
        return _synthetic(task, n, job.seed)
    if kind == "local":
        rows = _local(task, base_dir, where)
    elif kind == "url":
        rows = _url(task, Path(cache_dir) / task.name, where)
    else:
        return _builtin(task, Path(cache_dir), n, job.seed, where)
    return rows[:n]

"""Manifest datasets: a JSONL file, local (shipped with the job) or at a URL (downloaded with its media),
read into samples. A row whose fields or files are unusable becomes a sample carrying its error, so one
bad row never ends a run; the controller reads the same rows strictly before launch.

A manifest line is one JSON object: `id`, then what the task needs — `image` (or `video`, or
`frames` + `fps`), `prompt` (or `question`), `references` (captions), `answers` (documents),
`keywords` (poetry), `turns` (multi-turn questions), `answer` (digits: the number as printed, as text) and
optionally `sha256: {"image": HEX, ...}`. Relative paths resolve against the manifest's own location
(directory or URL)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from . import metrics
from .downloads import cache_name, download, file_sha256
from .job import MAX_PROMPT_CHARS
from .sample import DatasetError, Sample

MEDIA_KEYS = ("image", "video", "frames")
MAX_MANIFEST_BYTES = 64 * 2**20  # a URL manifest
# One media file, local or fetched: an image or a frame 64 MiB (as the builtin DocVQA pages, datasets.py), a
# clip 512 MiB (a user's own clips run longer than the public 10 s ones, 128 MiB). The controller refuses a
# local file over its cap before launch (it would be pushed whole to the instance); the worker, one fetched.
MAX_MEDIA_BYTES = {"image": 64 * 2**20, "frames": 64 * 2**20, "video": 512 * 2**20}
MAX_PATH_CHARS = 1024  # a media path in a manifest (a file system's own limit is 4096, a name's 255 bytes)
MAX_ANSWER_CHARS = 64  # a digits answer: a number as printed (a 12-digit amount with separators is 17)


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


def check_row(row: dict, kind: str = "") -> None:
    """What a row must hold before any of its files are touched (a problem is this sample's error); `kind`,
    the task's kind, adds the fields that kind cannot do without."""
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
    if kind == "digits":
        _digits_row(row)


def _digits_row(row: dict) -> None:
    """A digits row: a picture and the number it shows as text, exactly as printed - one number as the task
    reads a prediction (metrics.number_text), else no prediction could ever match it."""
    if "image" not in row:
        raise DatasetError("image: a digits sample needs the picture of its number")
    answer = row.get("answer")
    if answer is None:
        raise DatasetError('answer: missing: the number the picture shows, as printed ("answer": "1,234.50")')
    if not isinstance(answer, str):
        raise DatasetError(f"answer: expected text - the number as printed, in quotes (\"1,234.50\"), got "
                           f"{json.dumps(answer)[:40]}")
    if len(answer) > MAX_ANSWER_CHARS:
        raise DatasetError(f"answer: {len(answer)} characters is over the {MAX_ANSWER_CHARS} cap of a number")
    if not metrics.is_number(answer):
        raise DatasetError(f"answer: {answer!r} is not one number: digits, with '.', ',', '-', '/' or ':' between "
                           "them, a leading '-' at most - no currency sign, space or word")


def inside(root: Path, ref: str) -> Path:
    """`ref` (relative, from a manifest) as a path inside `root`, symlinks followed; anything that
    would leave it - absolute, `..`, a link pointing out - is refused, and so is a path too long to open."""
    if len(ref) > MAX_PATH_CHARS or any(len(part.encode()) > 255 for part in Path(ref).parts):
        shown = ref if len(ref) <= 60 else ref[:60] + "..."
        raise DatasetError(f"{shown}: a media path of {len(ref)} characters (at most {MAX_PATH_CHARS}, 255 bytes a "
                           "name)")
    if Path(ref).is_absolute() or ".." in Path(ref).parts:
        raise DatasetError(f"{ref}: media paths must be relative to the manifest, inside its folder")
    base = Path(root).resolve()
    full = (base / ref).resolve()
    if not full.is_relative_to(base):
        raise DatasetError(f"{ref}: a link that points outside the dataset's folder ({full})")
    return full


def check_size(key: str, path: Path) -> None:
    """A media file over its kind's cap is refused (`path` exists)."""
    size, cap = path.stat().st_size, MAX_MEDIA_BYTES[key]
    if size > cap:
        raise DatasetError(f"{key} {path} is {size >> 20} MiB: over the {cap >> 20} MiB cap of "
                           f"{'an image' if key == 'image' else 'a frame' if key == 'frames' else 'a video'}")


def _sample(row: dict, media: dict, kind: str) -> Sample:
    answers = [row["answer"].strip()] if kind == "digits" else list(row.get("answers") or [])
    return Sample(
        id=row["id"], image=media.get("image"), video=media.get("video") or media.get("frames"),
        fps=row.get("fps"), prompt=row.get("prompt") or row.get("question") or "",
        references=list(row.get("references") or []), answers=answers,
        keywords=list(row.get("keywords") or []), turns=list(row.get("turns") or []))


def _rows(rows: list[dict], media_of, kind: str) -> list[Sample]:
    """Samples from manifest rows; a row whose fields or files are unusable is a sample carrying its error."""
    out = []
    for row in rows:
        try:
            check_row(row, kind)
            media = {key: media_of(key, media_refs(row, key)) for key in MEDIA_KEYS if key in row}
            out.append(_sample(row, {k: v if k == "frames" else v[0] for k, v in media.items()}, kind))
        except DatasetError as e:
            out.append(Sample(id=row["id"], error=str(e)))
    return out


def local_samples(task, base: Path, where: str) -> list[Sample]:
    manifest = Path(task.dataset.path)
    manifest = manifest if manifest.is_absolute() else base / manifest
    rows = read_manifest(manifest, where, strict=False)
    if task.dataset.sha256 and file_sha256(manifest) != task.dataset.sha256.lower():
        raise DatasetError(f"{where}: {manifest}: sha256 differs from the plan's")

    def media_of(key: str, refs: list[str]) -> list[Path]:
        paths = [inside(manifest.parent, r) for r in refs]
        for p in paths:
            if not p.is_file():
                raise DatasetError(f"{key} file {p} not found" if not p.exists() else f"{key} {p} is not a regular file")
            check_size(key, p)
        return paths

    return _rows(rows, media_of, task.kind)


def url_samples(task, cache: Path, where: str) -> list[Sample]:
    url = task.dataset.url
    manifest = download(url, cache / cache_name(url), task.dataset.sha256, max_bytes=MAX_MANIFEST_BYTES)
    sums: dict = {}

    def media_of(key: str, refs: list[str]) -> list[Path]:
        files = []
        for ref in refs:
            full = urllib.parse.urljoin(url, ref)
            files.append(download(full, cache / cache_name(full), sums.get(key, "") if key != "frames" else "",
                                  max_bytes=MAX_MEDIA_BYTES[key]))
        return files

    rows = read_manifest(manifest, where, strict=False)
    out = []
    for row in rows:
        sums = row.get("sha256") if isinstance(row.get("sha256"), dict) else {}
        out += _rows([row], media_of, task.kind)
    return out

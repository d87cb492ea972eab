"""Fetching a dataset's files over http(s): nothing else is fetched, bodies are size-capped, transient
failures are retried with backoff, checksums are verified, and a file already cached is not fetched again."""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .sample import DatasetError

MAX_DOWNLOAD_BYTES = 512 * 2**20  # the COCO annotations zip is 241 MB; nothing we fetch is larger


def download(url: str, dest: Path, sha256: str = "", attempts: int = 4, backoff_s: float = 1.0,
             max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Fetch `url` to `dest` (kept if already there with the right checksum). Only http(s); a body past
    `max_bytes` is refused. Retries connection errors, timeouts, 429 and 5xx with exponential backoff; a
    checksum mismatch is retried once as a corrupt transfer, then fails."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DatasetError(f"cannot download {url}: only http(s) addresses are fetched")
    dest = Path(dest)
    if dest.exists() and (not sha256 or file_sha256(dest) == sha256.lower()):
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
        if sha256 and file_sha256(tmp) != sha256.lower():
            mismatches += 1
            last = f"sha256 {file_sha256(tmp)[:12]}... is not the expected {sha256[:12]}..."
            if mismatches > 1:
                break
            continue
        tmp.replace(dest)
        return dest
    tmp.unlink(missing_ok=True)
    raise DatasetError(f"cannot download {url}: {last}")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_name(url: str) -> str:
    suffix = Path(urllib.parse.urlparse(url).path).suffix[:8]
    return hashlib.sha256(url.encode()).hexdigest()[:24] + suffix

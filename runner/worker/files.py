"""Everything the worker writes, written so that a SIGKILL at any instant loses at most the batch in
flight: JSON documents are replaced atomically (write aside, fsync, rename), result lines are appended
and fsynced per batch, and a torn last line left by a kill is cut off when the file is reopened."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

LOCK_FILE = ".worker.lock"


class Busy(Exception):
    """Another worker holds the output directory."""


def lock_out(out: Path) -> int:
    """Take the output directory for this process: an exclusive flock on out/.worker.lock, held until the
    process ends (the kernel drops it on any death, kill -9 included). Two writers on one directory would
    interleave result lines; the second one gets Busy. Returns the lock's descriptor."""
    fd = os.open(Path(out) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = (Path(out) / LOCK_FILE).read_text(errors="replace").strip() or "another process"
        raise Busy(f"{out} is in use by another worker ({holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}\n".encode())
    return fd


@contextlib.contextmanager
def holding(out: Path, on_signal: Callable):
    """`out` taken for this process (lock_out: Busy when another holds it), its worker.log receiving the
    "gpubudget" logs and SIGTERM/SIGINT sent to `on_signal` - all given back on the way out. The worker and the
    replicas' supervisor each run inside one."""
    lock = lock_out(out)
    handler = logging.FileHandler(Path(out) / "worker.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("gpubudget")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        os.close(lock)
        for sig, h in previous.items():
            signal.signal(sig, h)
        root.removeHandler(handler)
        handler.close()


def locked(out: Path) -> str | None:
    """Who holds `out` (a live worker), or None."""
    try:
        fd = lock_out(out)
    except Busy as e:
        return str(e)
    except OSError:
        return None
    os.close(fd)
    return None


def write_json(path: Path, doc: dict) -> None:
    """Replace `path` with `doc` atomically: readers see the old or the new document, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class ResultFile:
    """`results/<task>.jsonl`: one JSON object per finished sample, keyed by its `id`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.damaged = 0  # complete lines that are not a result (skipped; their samples run again)
        self.lines: list[dict] = self._recover()

    def _recover(self) -> list[dict]:
        """Read the finished lines. A torn tail (a kill mid-write: the last piece has no newline) is cut so
        appends start on a clean line; a damaged *complete* line is skipped and left in place - the finished
        lines after it are kept, and the file never shrinks under a reader that fetches by offset."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        pieces = data.split(b"\n")
        lines = []
        for raw in pieces[:-1]:  # the last piece is b"" or a torn line
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if isinstance(line, dict) and isinstance(line.get("id"), str):
                lines.append(line)
            elif raw.strip():
                self.damaged += 1
        if pieces[-1]:
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(pieces[-1]))
                f.flush()
                os.fsync(f.fileno())
        return lines

    @property
    def done_ids(self) -> set[str]:
        return {line["id"] for line in self.lines}

    def append(self, lines: list[dict]) -> None:
        if not lines:
            return
        blob = "".join(json.dumps(x, ensure_ascii=False, default=str) + "\n" for x in lines).encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        self.lines.extend(lines)

"""Everything the worker writes, written so that a SIGKILL at any instant loses at most the batch in
flight: JSON documents are replaced atomically (write aside, fsync, rename), result lines are appended
and fsynced per batch, and a torn last line left by a kill is cut off when the file is reopened."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


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
        self.lines: list[dict] = self._recover()

    def _recover(self) -> list[dict]:
        """Read the finished lines; cut a torn tail (a kill mid-write) so appends start on a clean line."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines, good = [], 0
        for raw in data.split(b"\n")[:-1]:  # the last piece is b"" or a torn line
            try:
                lines.append(json.loads(raw))
            except ValueError:
                break
            good += len(raw) + 1
        if good != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
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

"""status.json, the run as the controller watches it: phase, attempt, per-task progress, tokens, peak
memory, batch size, samples/s and ETA. Rewritten atomically on every change, and by a heartbeat thread in
between, so a worker that is busy on one long batch still looks alive."""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import threading
import time
from pathlib import Path

from . import files

SCHEMA = "gpubudget.status/1"

log = logging.getLogger("gpubudget.worker")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Status:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        previous = files.read_json(path) or {}
        self.attempt = int(previous.get("attempt", 0)) + 1
        self.fields: dict = {
            "schema": SCHEMA, "run_id": previous.get("run_id"), "phase": "starting", "attempt": self.attempt,
            "pid": os.getpid(), "host": platform.node(), "started_at": now().isoformat(), "updated_at": None,
            "task": None, "tasks": {}, "tokens": {"prefill": 0, "decode": 0}, "peak_memory_bytes": 0,
            "memory": [], "batch_size": None, "samples_per_s": None, "eta_s": None, "stopped": None, "error": None,
        }
        self._running_since: float | None = None
        self._samples_done = 0

    def update(self, **fields) -> None:
        with self.lock:
            self.fields.update(fields)
            self.fields["updated_at"] = now().isoformat()
            files.write_json(self.path, self.fields)

    def heartbeat(self, interval_s: float) -> None:
        threading.Thread(target=self._beat, args=(interval_s,), name="heartbeat", daemon=True).start()

    def _beat(self, interval_s: float) -> None:
        while True:
            time.sleep(interval_s)
            if self.fields["phase"] in ("done", "stopped", "failed"):
                return
            try:
                self.update()
            except OSError:  # a full disk must not kill the run from a side thread
                log.exception("heartbeat write failed")

    def running(self) -> None:
        """The ETA's clock starts at the first model loaded this attempt, not at the loading."""
        self._running_since = self._running_since or time.monotonic()

    def progress(self, task: str, progress: dict) -> None:
        with self.lock:
            self.fields["tasks"][task] = progress

    def record(self, task: str, lines: list[dict], progress: dict) -> None:
        """A batch's lines, counted; written with the next update."""
        ok = [x for x in lines if x.get("status") == "ok"]
        self._samples_done += len(lines)
        with self.lock:
            tok = self.fields["tokens"]
            tok["prefill"] += sum(x.get("prefill_tokens", 0) for x in ok)
            tok["decode"] += sum(x.get("decode_tokens", 0) for x in ok)
            self.fields["peak_memory_bytes"] = max([self.fields["peak_memory_bytes"]] + [x["peak_memory_bytes"] or 0 for x in ok])
            self.fields["tasks"][task] = progress
            self._eta()

    def skip(self, skipped: dict[str, str]) -> None:
        """A skipped task has nothing left to do: the bar's total and the ETA leave it out."""
        with self.lock:
            for name, why in skipped.items():
                self.fields["tasks"][name]["skipped"] = why
            self._eta()

    def _eta(self) -> None:
        """Samples per second over this attempt's running time and the time the rest would take at
        that rate (sweeps and multi-turn samples cost more than captions: a rough guide)."""
        running = time.monotonic() - (self._running_since or time.monotonic())
        if running <= 0 or not self._samples_done:
            return
        rate = self._samples_done / running
        left = sum(max(0, t["total"] - t["done"]) for t in self.fields["tasks"].values() if "skipped" not in t)
        self.fields["samples_per_s"] = round(rate, 3)
        self.fields["eta_s"] = round(left / rate, 1)

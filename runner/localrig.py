"""This machine as a rig: a device profile of its CPU (cores, memory, memory bandwidth, measured fp32
matmul throughput) in the GPU catalog's shape, so a local run is estimated like any GPU and
`budget calibrate` fits it like one. Measured once and kept in $BUDGET_HOME/devices/cpu.json (keyed
by the processor and core count; `budget calibrate --remeasure` measures again)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from planner.models import Gpu

NAME = "CPU"
COPY_BYTES = 256 * 2**20  # a copy this large leaves the caches: it runs at memory speed


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8192


def _bandwidth_gbs() -> float:
    """Read + write bytes per second of a large in-memory copy (best of three)."""
    src = bytearray(COPY_BYTES)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        bytes(src)
        best = min(best, time.perf_counter() - t)
    return 2 * COPY_BYTES / best / 1e9


def _fp32_tflops() -> float:
    """fp32 matmul throughput through torch (the worker's library), best of a few 512^3 products; 0.05
    TFLOPS (a modest core's worth) where torch is not installed."""
    try:
        import torch
    except ImportError:
        return 0.05
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def measure() -> dict:
    return {"cpu": _cpu_model(), "cores": os.cpu_count() or 1, "memory_mib": _memory_mib(),
            "bandwidth_gbs": round(_bandwidth_gbs(), 2), "fp32_tflops": round(_fp32_tflops(), 4),
            "measured_at": time.strftime("%Y-%m-%d", time.gmtime())}


def profile(home: Path, remeasure: bool = False) -> dict:
    """This machine's profile, measured on first use (or when the processor changed) and kept."""
    path = Path(home) / "devices" / "cpu.json"
    try:
        doc = json.loads(path.read_text())
        if not remeasure and doc.get("cpu") == _cpu_model() and doc.get("cores") == (os.cpu_count() or 1) and \
                all(isinstance(doc.get(k), (int, float)) and doc[k] > 0 for k in ("bandwidth_gbs", "fp32_tflops",
                                                                                   "memory_mib")):
            return doc
    except (OSError, ValueError, AttributeError):
        pass
    doc = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
    return doc


def as_gpu(doc: dict) -> Gpu:
    """The profile as a catalog GPU: the worker runs the model in fp32/bf16 on the cores, so its 'tensor
    TFLOPS' is the measured matmul rate; bf16 is allowed (the worker's CPU default)."""
    return Gpu(name=NAME, aliases=["cpu", "local"], memory_mib=int(doc["memory_mib"]),
               bandwidth_gbs=float(doc["bandwidth_gbs"]), fp16_tflops=float(doc["fp32_tflops"]), int8_tops=0,
               bf16=True, compute_capability=8.0, link="none",
               source=f"measured on this machine: {doc['cpu']}, {doc['cores']} cores", date=str(doc["measured_at"]))

"""The worker's side of a server engine: for a job whose engine is not `hf`, what the generations run
on (an endpoint already running, or vllm/sglang/`transformers serve` installed if missing and started here,
stopped however the phase ends), how its memory is read, and which task kinds it cannot run, with why."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gpubudget.worker")

STARTED = ("vllm", "sglang", "transformers")  # engines the worker starts itself


def cannot_run(engine: str) -> dict[str, str]:
    """Task kinds a server engine does not run, and why (they are skipped with the reason)."""
    if engine == "hf":
        return {}
    out = {
        "memory_sweep": "a server engine preallocates its memory (or keeps it out of sight): a sweep of peak memory "
                        "per resolution measures nothing there; run it with --engine hf",
        "fp16_verify": "a server serves one quantization: the 16-bit check needs the hf engine (--engine hf)",
    }
    if engine == "transformers":
        out["video"] = "transformers serve takes no video data URI (HTTP 500): run video with vllm, sglang or hf"
    return out


class ServedMemory:
    """ctx.memory for a server engine: what the engine holds, as the card (or the process table) says."""

    def __init__(self, probe):
        self.probe = probe
        self.device = "server"

    def current(self) -> list[dict]:
        return self.probe()

    def free_bytes(self) -> int:
        return 0

    @contextlib.contextmanager
    def cap(self, headroom_mib):
        yield


@dataclass
class Served:
    engine: object
    memory: ServedMemory
    load: dict  # the phase's record in summary.json's loads


@contextlib.contextmanager
def serve(job, quant: str, out: Path, status, should_stop, **client):
    """The server engine for this job's phase in `quant`; a server started here is stopped on the way out.
    `client`: more arguments for the client (a meter and its sleep, when the controller runs the loop itself)."""
    from .client import ServerEngine

    e = job.engine
    server = None
    started = time.monotonic()
    record = {"quantization": quant, "engine": e.kind, "device": "server"}
    try:
        if e.kind == "server":
            base_url, model, probe = e.base_url, e.served_model or job.model.name, list
            api_key = os.environ.get(e.api_key_env, "") if e.api_key_env else ""
        else:
            server, model = _start(job, quant, out, status, should_stop, record)
            base_url, probe, api_key = server.base_url, server.memory, ""
        record["load_s"] = round(time.monotonic() - started, 3)
        engine = ServerEngine(base_url, model, job.generation, job.seed, should_stop, api_key=api_key,
                              concurrency=e.concurrency, request_timeout_s=e.request_timeout_s, memory=probe, **client)
        memory = ServedMemory(probe)
        record["memory_after_load"] = memory.current()
        yield Served(engine=engine, memory=memory, load=record)
    finally:
        if server is not None:
            server.stop()


def _start(job, quant: str, out: Path, status, should_stop, record: dict):
    from . import engine_commands as commands
    from .model import resolve_source
    from .server import Server, free_port, install

    e = job.engine
    log_path = out / "engine.log"
    status.update(phase="installing-engine")
    t = time.monotonic()
    cache = Path(job.cache_dir) if job.cache_dir else out / "cache"
    python = install(e.kind, cache, log_path)
    record["install_s"] = round(time.monotonic() - t, 3)
    source = resolve_source(job.model)
    params = commands.ServerParams(
        engine=e.kind, model=source, served_name=e.served_model or job.model.name, port=free_port(),
        quantization=quant, revision=job.model.revision, max_model_len=e.max_model_len,
        memory_fraction=e.memory_fraction, tensor_parallel=e.tensor_parallel,
        # one image per request (a multi-turn history carries its one image), one clip for a video task
        max_images=1, max_videos=int(any(t.kind == "video" for t in job.tasks)),
        seed=job.seed, device=job.device, concurrency=e.concurrency)
    try:
        argv = commands.command(params, python=python, moe=_moe(source))
    except commands.Unsupported as err:
        from .model import LoadError

        raise LoadError(str(err)) from None
    server = Server(argv, params.port, commands.health_path(e.kind), log_path)
    status.update(phase="starting-engine")
    server.start()
    try:
        record["start_s"] = round(server.wait_ready(e.ready_timeout_s, should_stop), 3)
    except BaseException:
        server.stop()
        raise
    log.info("engine %s ready at %s", e.kind, server.base_url)
    return server, commands.request_model(params)


def _moe(source: str) -> bool:
    """Whether a local checkpoint is a mixture of experts (its config names experts). A hub id is not known
    here before the engine downloads it: the planner refused what an engine cannot run for it already."""
    import json

    try:
        cfg = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    text = cfg.get("text_config", cfg)
    return bool(text.get("num_experts") or text.get("num_local_experts"))

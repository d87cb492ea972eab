"""`job.json`, schema `gpubudget.job/1`: what the controller asks the worker to do. Parsed strictly with
the stdlib (the worker carries no pydantic): an unknown key, a missing key or a wrong type is a
JobError naming the field, so a controller/worker version mismatch fails loudly before any GPU time."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .shards import MAX_REPLICAS, MAX_SHARDS

SCHEMA = "gpubudget.job/1"
QUANTS = ("fp32", "fp16", "bf16", "int8", "nf4", "fp8")  # fp8: the server engines only (vLLM, SGLang)
ENGINES = ("hf", "server", "vllm", "sglang", "transformers")  # hf: in-process; server: an endpoint already running;
# vllm / sglang / transformers: a server the worker starts on loopback and stops when it ends
KINDS = ("caption", "document", "multiturn_vqa", "poetry", "memory_sweep", "video", "fp16_verify", "digits")
DATASET_KINDS = ("builtin", "local", "url", "synthetic")
# the builtin public datasets (runner/worker/datasets.py fetches them) and the task kind each serves
# names become file names (results/<task>.jsonl, data/<task>/, runs/<run id>/): the controller's rule
# (planner/names.py), restated because the worker runs alone on the instance
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MAX_PROMPT_CHARS = 65536  # a task's or a sample's prompt; longer is a mistake, and tokenizing it stalls the run
MAX_PIXELS = 2**26  # image_limits.max_pixels at most (64 Mpx): the processor resizes down to it
GENERATION = {"max_new_tokens": (int, 1, 1 << 16), "num_beams": (int, 1, 64), "top_k": (int, 0, 1 << 20),
              "do_sample": (bool, None, None), "top_p": (float, 0.0, 1.0), "temperature": (float, 0.0, 100.0),
              "repetition_penalty": (float, 0.0, 100.0)}
BUILTIN = {"coco-val2017-captions": "caption", "coco-val2017": "caption", "coco-val2017-multiturn": "multiturn_vqa",
           "docvqa-val": "document", "public-clips": "video"}


class JobError(ValueError):
    """job.json is malformed; the message names the field."""


@dataclass
class Dataset:
    kind: str
    name: str = ""
    path: str = ""
    url: str = ""
    sha256: str = ""


@dataclass
class Video:
    duration_s: float = 10.0
    source_fps: float = 30.0
    fps: float = 1.0
    max_frames: int = 768
    min_frames: int = 4
    frame_size: tuple[int, int] = (640, 360)


@dataclass
class Task:
    name: str
    kind: str
    samples: int = 1
    image_size: tuple[int, int] = (640, 480)
    resolutions: list[tuple[int, int]] = field(default_factory=list)
    prompt: str = ""
    max_new_tokens: int | None = None
    turns: int = 1
    video: Video | None = None
    of_task: str = ""
    dataset: Dataset = field(default_factory=lambda: Dataset("synthetic"))
    metrics: list[str] = field(default_factory=list)


@dataclass
class Model:
    name: str
    source: str  # a local directory or a hub id
    recipe: str = ""  # "tiny-random-qwen3-vl": build it at `source` if it is not there
    revision: str = ""


@dataclass
class Engine:
    """How the job's generations are run. `hf`: transformers' generate in this process; `server`: the
    OpenAI-compatible endpoint at base_url; vllm/sglang/transformers: that server, started by the worker."""

    kind: str = "hf"
    compile: bool = False  # hf: static KV cache + torch.compile (generate compiles on CUDA only)
    base_url: str = ""  # server: e.g. http://127.0.0.1:8000/v1
    served_model: str = ""  # the model name the server answers to (default: the job model's source)
    api_key_env: str = ""  # server: the environment variable holding the key - never the key itself
    concurrency: int = 8  # requests in flight at once (the server batches them)
    memory_fraction: float | None = None  # vllm/sglang: the share of each card the engine preallocates
    max_model_len: int | None = None  # vllm/sglang: the longest context it must hold
    tensor_parallel: int = 1  # vllm/sglang: GPUs one model is split across
    ready_timeout_s: float = 1800.0  # a started server must answer /health within this (install excluded)
    request_timeout_s: float = 600.0  # one request, first byte to last


@dataclass
class Job:
    run_id: str
    model: Model
    quantization: str
    tasks: list[Task]
    compute_dtype: str = "auto"  # nf4/int8: auto | fp16 | bf16 | fp32
    double_quant: bool = True
    keep_vision_16bit: bool = False
    device: str = "auto"  # auto | cpu | cuda
    max_memory: dict[str, str] = field(default_factory=dict)
    generation: dict = field(default_factory=lambda: {"max_new_tokens": 128, "do_sample": False})
    image_limits: dict = field(default_factory=lambda: {"min_pixels": 65536, "max_pixels": 16777216})
    batch_size: int | str = 1  # or "auto": sized from free memory after the first batch
    seed: int = 0
    deadline: dt.datetime | None = None
    limit: int | None = None  # at most this many samples per task (smoke runs)
    heartbeat_s: float = 10.0
    sweep_memory_cap_mib: int | None = None  # simulate a smaller card during the memory sweep
    cache_dir: str = ""  # downloads; default <out>/cache
    allow_private_urls: bool = False  # the plan's: datasets may be fetched from loopback/private hosts
    engine: Engine = field(default_factory=Engine)
    shard: tuple[int, int] | None = None  # (index, count): this job runs shard `index` of `count` (worker/shards.py)
    replicas: int = 1  # worker processes, one per GPU, each on its own shards (worker/replicas.py)

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)


def _take(doc: dict, where: str, spec: dict[str, tuple[type | tuple, bool]]) -> dict:
    if not isinstance(doc, dict):
        raise JobError(f"{where}: expected an object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(spec))
    if unknown:
        raise JobError(f"{where}.{unknown[0]}: unknown field (this worker reads {SCHEMA})")
    out = {}
    for key, (types, required) in spec.items():
        if key not in doc:
            if required:
                raise JobError(f"{where}.{key}: missing")
            continue
        value = doc[key]
        if value is not None and not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
            raise JobError(f"{where}.{key}: expected {_names(types)}, got {json.dumps(value)[:40]}")
        out[key] = value
    return out


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _name(value: str, where: str) -> str:
    if not NAME.fullmatch(value):
        raise JobError(f"{where}: {value!r} is not allowed: use letters, digits, '.', '_' and '-' (at most 128, not "
                       "starting with '.' or '-'); it names files")
    return value


def _generation(gen: dict) -> dict:
    for key, value in gen.items():
        if key not in GENERATION:
            raise JobError(f"job.generation.{key}: unknown field")
        kind, lo, hi = GENERATION[key]
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        else:
            ok = _finite(value) and (lo < value or key == "temperature" and value == 0) and value <= hi
        if not ok:
            rng = "true or false" if kind is bool else f"{kind.__name__} in ({lo}, {hi}]" if kind is float \
                else f"integer in [{lo}, {hi}]"
            raise JobError(f"job.generation.{key}: expected {rng}, got {json.dumps(value)}")
    return {"max_new_tokens": 128, "do_sample": False, **gen}


def _image_limits(lim: dict) -> dict:
    out = {"min_pixels": 65536, "max_pixels": 16777216}
    for key, value in lim.items():
        if key not in out:
            raise JobError(f"job.image_limits.{key}: unknown field")
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PIXELS):
            raise JobError(f"job.image_limits.{key}: expected an integer in [1, {MAX_PIXELS}], got {json.dumps(value)}")
        out[key] = value
    if out["min_pixels"] > out["max_pixels"]:
        raise JobError("job.image_limits: min_pixels is above max_pixels")
    return out


def _names(types) -> str:
    return " or ".join(t.__name__ for t in _tuple(types))


def _size(value, where: str) -> tuple[int, int]:
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise JobError(f"{where}: expected [width, height] in pixels, got {json.dumps(value)}")
    return int(value[0]), int(value[1])


def _task(doc: dict, where: str) -> Task:
    d = _take(doc, where, {
        "name": (str, True), "kind": (str, True), "samples": (int, False), "image_size": (list, False),
        "resolutions": (list, False), "prompt": (str, False), "max_new_tokens": (int, False), "turns": (int, False),
        "video": (dict, False), "of_task": (str, False), "dataset": (dict, False), "metrics": (list, False),
    })
    _name(d["name"], f"{where}.name")
    if d["kind"] not in KINDS:
        raise JobError(f"{where}.kind: {d['kind']!r} is not one of {', '.join(KINDS)}")
    if len(d.get("prompt") or "") > MAX_PROMPT_CHARS:
        raise JobError(f"{where}.prompt: {len(d['prompt'])} characters is over the {MAX_PROMPT_CHARS} cap")
    if "image_size" in d:
        d["image_size"] = _size(d["image_size"], f"{where}.image_size")
    d["resolutions"] = [_size(r, f"{where}.resolutions[{i}]") for i, r in enumerate(d.get("resolutions") or [])]
    if d.get("video") is not None:
        v = _take(d["video"], f"{where}.video", {
            "duration_s": ((int, float), False), "source_fps": ((int, float), False), "fps": ((int, float), False),
            "max_frames": (int, False), "min_frames": (int, False), "frame_size": (list, False)})
        if "frame_size" in v:
            v["frame_size"] = _size(v["frame_size"], f"{where}.video.frame_size")
        for key in ("duration_s", "source_fps", "fps"):
            if key in v and not (_finite(v[key]) and 0 < v[key] <= 1e6):
                raise JobError(f"{where}.video.{key}: must be a positive number, got {json.dumps(v[key])}")
        for key in ("max_frames", "min_frames"):
            if key in v and not 1 <= v[key] <= 100_000:
                raise JobError(f"{where}.video.{key}: must be between 1 and 100000, got {v[key]}")
        d["video"] = Video(**v)
    if "dataset" in d:
        ds = _take(d["dataset"], f"{where}.dataset", {k: (str, k == "kind") for k in ("kind", "name", "path", "url", "sha256")})
        if ds["kind"] not in DATASET_KINDS:
            raise JobError(f"{where}.dataset.kind: {ds['kind']!r} is not one of {', '.join(DATASET_KINDS)}")
        if ds["kind"] == "builtin" and BUILTIN.get(ds.get("name", "")) != d["kind"]:
            known = ", ".join(n for n, k in BUILTIN.items() if k == d["kind"]) or "none"
            raise JobError(f"{where}.dataset.name: {ds.get('name', '')!r} is not a builtin {d['kind']} dataset "
                           f"(known: {known})")
        d["dataset"] = Dataset(**ds)
    for key in ("samples", "turns", "max_new_tokens"):
        if d.get(key) is not None and d[key] < 1:
            raise JobError(f"{where}.{key}: must be at least 1")
    if d["kind"] == "memory_sweep" and not d["resolutions"]:
        raise JobError(f"{where}.resolutions: a memory_sweep needs at least one [width, height]")
    if d["kind"] == "video" and d.get("video") is None:
        d["video"] = Video()
    return Task(**{k: v for k, v in d.items() if v is not None})


URL = re.compile(r"https?://[A-Za-z0-9.\[\]:_-]+(/[A-Za-z0-9._~/-]*)?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _engine(doc: dict, quantization: str) -> Engine:
    e = _take(doc, "job.engine", {
        "kind": (str, True), "compile": (bool, False), "base_url": (str, False), "served_model": (str, False),
        "api_key_env": (str, False), "concurrency": (int, False), "memory_fraction": (float, False),
        "max_model_len": (int, False), "tensor_parallel": (int, False), "ready_timeout_s": ((int, float), False),
        "request_timeout_s": ((int, float), False)})
    if e["kind"] not in ENGINES:
        raise JobError(f"job.engine.kind: {e['kind']!r} is not one of {', '.join(ENGINES)}")
    if e["kind"] == "server" and not URL.fullmatch(e.get("base_url") or ""):
        raise JobError(f"job.engine.base_url: an http(s) URL is needed for a server engine, got {e.get('base_url')!r}")
    if e["kind"] != "server" and e.get("base_url"):
        raise JobError(f"job.engine.base_url: only a server engine takes one (this is {e['kind']})")
    if e.get("api_key_env") and not ENV_NAME.fullmatch(e["api_key_env"]):
        raise JobError(f"job.engine.api_key_env: {e['api_key_env']!r} is not an environment variable name")
    if len(e.get("served_model") or "") > 256:
        raise JobError("job.engine.served_model: longer than 256 characters")
    for key, hi in (("concurrency", 1024), ("max_model_len", 1 << 22), ("tensor_parallel", 64)):
        if e.get(key) is not None and not 1 <= e[key] <= hi:
            raise JobError(f"job.engine.{key}: must be between 1 and {hi}, got {e[key]}")
    if e.get("memory_fraction") is not None and not (_finite(e["memory_fraction"]) and 0 < e["memory_fraction"] < 1):
        raise JobError(f"job.engine.memory_fraction: a fraction in (0, 1), got {e['memory_fraction']}")
    for key in ("ready_timeout_s", "request_timeout_s"):
        if key in e and not (_finite(e[key]) and 1 <= e[key] <= 86400):
            raise JobError(f"job.engine.{key}: seconds in [1, 86400], got {json.dumps(e[key])}")
    if e.get("compile") and e["kind"] != "hf":
        raise JobError("job.engine.compile: only the hf engine compiles (servers bring their own graphs)")
    if quantization == "fp8" and e["kind"] in ("hf", "transformers"):
        raise JobError(f"job.quantization: fp8 runs on vllm or sglang, not {e['kind']}")
    return Engine(**{k: v for k, v in e.items() if v is not None})


def parse(doc: dict) -> Job:
    """Validate a job document (already JSON-decoded) into a Job."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else None
        raise JobError(f"schema: expected {SCHEMA!r}, got {got!r} (controller and worker versions differ)")
    d = _take({k: v for k, v in doc.items() if k != "schema"}, "job", {
        "run_id": (str, True), "model": (dict, True), "quantization": (str, True), "tasks": (list, True),
        "double_quant": (bool, False), "keep_vision_16bit": (bool, False), "device": (str, False),
        "compute_dtype": (str, False),
        "max_memory": (dict, False), "generation": (dict, False), "image_limits": (dict, False),
        "batch_size": ((int, str), False), "seed": (int, False), "deadline": (str, False), "limit": (int, False),
        "heartbeat_s": ((int, float), False), "sweep_memory_cap_mib": (int, False), "cache_dir": (str, False),
        "allow_private_urls": (bool, False), "engine": (dict, False), "shard": (dict, False), "replicas": (int, False),
    })
    _name(d["run_id"], "job.run_id")
    d["model"] = Model(**_take(d["model"], "job.model", {k: (str, k in ("name", "source"))
                                                            for k in ("name", "source", "recipe", "revision")}))
    if d["quantization"] not in QUANTS:
        raise JobError(f"job.quantization: {d['quantization']!r} is not one of {', '.join(QUANTS)}")
    if d.get("compute_dtype", "auto") not in ("auto", "fp16", "bf16", "fp32"):
        raise JobError(f"job.compute_dtype: {d['compute_dtype']!r} is not auto, fp16, bf16 or fp32")
    if d.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise JobError(f"job.device: {d['device']!r} is not auto, cpu or cuda")
    if not d["tasks"]:
        raise JobError("job.tasks: at least one task")
    d["tasks"] = [_task(t, f"job.tasks[{i}]") for i, t in enumerate(d["tasks"])]
    names = [t.name for t in d["tasks"]]
    if len(set(names)) != len(names):
        raise JobError("job.tasks: task names must be unique")
    for t in d["tasks"]:
        if t.kind == "fp16_verify" and t.of_task not in names:
            raise JobError(f"job.tasks.{t.name}.of_task: {t.of_task!r} is not a task of this job")
    bs = d.get("batch_size", 1)
    if not (bs == "auto" or isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1):
        raise JobError(f"job.batch_size: a positive integer or \"auto\", got {json.dumps(bs)}")
    if d.get("deadline"):
        try:
            deadline = dt.datetime.fromisoformat(d["deadline"])
        except ValueError:
            raise JobError(f"job.deadline: {d['deadline']!r} is not an ISO 8601 time") from None
        if deadline.tzinfo is None:
            raise JobError("job.deadline: give a time zone (e.g. 2026-11-25T20:00:00Z)")
        d["deadline"] = deadline
    if d.get("limit") is not None and d["limit"] < 1:
        raise JobError("job.limit: must be at least 1")
    d["engine"] = _engine(d.get("engine") or {"kind": "hf"}, d["quantization"])
    if d.get("shard") is not None:
        d["shard"] = _shard(d["shard"])
    if not 1 <= d.get("replicas", 1) <= MAX_REPLICAS:
        raise JobError(f"job.replicas: between 1 and {MAX_REPLICAS}, got {d['replicas']}")
    if d.get("replicas", 1) > 1 and d.get("shard"):
        raise JobError("job.replicas: a shard's job runs one process (its replicas field must be 1)")
    d["generation"] = _generation(d.get("generation") or {})
    d["image_limits"] = _image_limits(d.get("image_limits") or {})
    hb = d.get("heartbeat_s", 10.0)
    if not (_finite(hb) and 0.1 <= hb <= 3600):
        raise JobError(f"job.heartbeat_s: expected seconds in [0.1, 3600], got {json.dumps(hb)}")
    if d.get("sweep_memory_cap_mib") is not None and d["sweep_memory_cap_mib"] < 1:
        raise JobError("job.sweep_memory_cap_mib: must be at least 1")
    return Job(**{k: v for k, v in d.items() if v is not None})


def _shard(doc) -> tuple[int, int]:
    s = _take(doc, "job.shard", {"index": (int, True), "count": (int, True)})
    if not 1 <= s["count"] <= MAX_SHARDS or not 0 <= s["index"] < s["count"]:
        raise JobError(f"job.shard: index in [0, count), count in [1, {MAX_SHARDS}]; got {json.dumps(doc)[:60]}")
    return s["index"], s["count"]


def load(path: Path) -> Job:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise JobError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise JobError(f"{path} is not JSON: {e}") from None
    return parse(doc)

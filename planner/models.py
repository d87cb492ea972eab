"""Pydantic models shared by the planner and the CLI. All forbid unknown fields, so a typo in a
plan or catalog is an error, not a silent default. Money is Decimal; sizes are bytes unless the
field name says otherwise."""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from . import names, numbers

Quant = Literal["fp16", "bf16", "int8", "nf4", "fp8"]
# Higher is better quality; fp16 and bf16 are the same 16-bit reference; fp8 (vLLM/SGLang only) stores 8-bit
# weights as LLM.int8 does.
QUALITY_RANK: dict[str, int] = {"nf4": 0, "int8": 1, "fp8": 1, "fp16": 2, "bf16": 2}
# How a plan's generations run (planner/engines.py): transformers' generate in the worker's process, or a server
# the worker starts on the instance
EngineName = Literal["hf", "vllm", "sglang", "transformers"]
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)
# how a rig uses its cards (planner/layouts.py): one card; one model over the cards; a model per card
Layout = Literal["single", "split", "replicas"]
GIB = 1024**3


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    @field_validator("*", mode="before")
    @classmethod
    def _ascii_numbers(cls, v, info: ValidationInfo):
        """A number written as text (a CSV cell, YAML that is not a plain number) in ASCII digits only:
        pydantic would read '1_000' and Decimal '１０' (planner/numbers.py)."""
        if isinstance(v, (str, list, tuple)) and info.field_name in _numeric_fields(cls):
            _check_numbers(v)
        return v


def _numeric(annotation) -> bool:
    """The annotation holds a number (int, float, Decimal - not bool) and no str a number could be."""
    args = get_args(annotation)
    if args:
        return any(_numeric(a) for a in args) and str not in args
    return annotation in (int, float, Decimal)


@cache
def _numeric_fields(cls) -> frozenset[str]:
    return frozenset(n for n, f in cls.model_fields.items() if _numeric(f.annotation))


def _check_numbers(v) -> None:
    if isinstance(v, str):
        if not numbers.is_number(v):
            raise ValueError(f"{v!r} is not a number: {numbers.SYNTAX}")
    elif isinstance(v, (list, tuple)):
        for x in v:
            _check_numbers(x)


# --------------------------------------------------------------------------- catalogs


class Gpu(Model):
    """One GPU model. `memory_mib` is what the driver reports as total (nvidia-smi), before the
    CUDA context; the memory model subtracts the context itself."""

    name: str
    aliases: list[str] = []
    memory_mib: int = Field(gt=0)
    bandwidth_gbs: float = Field(gt=0)
    fp16_tflops: float = Field(gt=0)
    int8_tops: float = Field(ge=0)
    bf16: bool
    compute_capability: float
    link: str
    source: str
    date: str


class Offer(Model):
    """A rentable rig: `price` is for the whole rig per hour in `currency`.
    Billing: charged in `billing_increment_s` steps with at least `billing_minimum_s`."""

    provider: str
    instance_type: str
    gpu: str
    gpu_count: int = Field(gt=0)
    price: Decimal = Field(ge=0)
    spot_price: Decimal | None = None
    currency: str = "CNY"
    region: str = ""
    zones: list[str] = []
    billing_increment_s: int = Field(default=3600, gt=0)
    billing_minimum_s: int = Field(default=3600, ge=0)
    gpu_memory_mib: int | None = None
    vcpus: float | None = None
    memory_gib: float | None = None
    source: str = ""
    date: str = ""

    @property
    def id(self) -> str:
        return f"{self.provider}:{self.instance_type}" + (f"@{self.region}" if self.region else "")


class FxRate(Model):
    currency: str
    cny_per_unit: Decimal = Field(gt=0)
    date: str
    source: str


# --------------------------------------------------------------------------- model architecture


class TextArch(Model):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    attention_bias: bool = False  # bias on q, k, v and o (Qwen3, Llama's attention_bias)
    qkv_bias: bool = False  # bias on q, k and v only (Qwen2 / Qwen2-VL / Qwen2.5-VL)
    qk_norm: bool = True  # per-head RMSNorm of q and k (Qwen3 family)
    mlp_bias: bool = False  # Llama's mlp_bias
    # MoE (qwen3_vl_moe); num_experts == 0 means dense
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = []


class VisionArch(Model):
    """The vision tower. `kind`: qwen3 (LayerNorm, fc1/fc2 MLP, learned position table, deepstack
    mergers), qwen2 (Qwen2-VL: LayerNorm, fc1/fc2, one merger), qwen2_5 (Qwen2.5-VL: RMSNorm, gated
    MLP with biases, window attention except in `fullatt_block_indexes`)."""

    kind: Literal["qwen3", "qwen2", "qwen2_5"] = "qwen3"
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: list[int] = []
    window_size: int = 0  # pixels; 0 = full attention in every block
    fullatt_block_indexes: list[int] = []


MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe", "qwen2_vl", "qwen2_5_vl", "qwen2", "qwen3", "qwen3_moe", "llama", "mistral")


class ModelSpec(Model):
    """A model's architecture. `vision` is None for a text-only decoder."""

    name: str
    hf_id: str = ""
    model_type: Literal["qwen3_vl", "qwen3_vl_moe", "qwen2_vl", "qwen2_5_vl", "qwen2", "qwen3", "qwen3_moe", "llama",
                        "mistral"]
    text: TextArch
    vision: VisionArch | None
    tie_word_embeddings: bool = False
    source: str = ""


class ParamBreakdown(Model):
    """Exact parameter counts by component (lm_head is 0 when tied: it shares the embedding)."""

    vision: int
    embeddings: int
    lm_head: int
    attention: int
    mlp: int
    norms: int
    total: int
    active: int  # per token: MoE counts only the top-k experts
    tied: bool


# --------------------------------------------------------------------------- plans


class GenerationConfig(Model):
    max_new_tokens: int = Field(default=128, gt=0, le=numbers.MAX_TOKENS)
    num_beams: int = Field(default=1, ge=1)
    do_sample: bool = False
    top_p: float = Field(default=1.0, gt=0, le=1)
    temperature: float = Field(default=1.0, gt=0)


class VideoSpec(Model):
    duration_s: float = Field(gt=0)
    source_fps: float = Field(default=30, gt=0)
    fps: float = Field(default=1.0, gt=0)
    max_frames: int = Field(default=768, ge=2)
    min_frames: int = Field(default=4, ge=2)
    frame_size: tuple[int, int] = (640, 360)


class Dataset(Model):
    """Where a task's samples come from; the worker resolves it on the instance."""

    kind: Literal["builtin", "local", "url", "synthetic"]
    name: str = ""
    path: str = ""
    url: str = ""
    sha256: str = ""


class Task(Model):
    name: str
    kind: Literal["caption", "document", "multiturn_vqa", "poetry", "memory_sweep", "video", "fp16_verify", "digits"]
    samples: int = Field(default=1, gt=0, le=10_000_000)
    image_size: tuple[int, int] | None = (640, 480)  # None: a text-only prompt
    resolutions: list[tuple[int, int]] = []
    prompt_tokens: int = Field(default=32, ge=1, le=numbers.MAX_TOKENS)
    prompt: str = ""  # the worker's default for the kind when empty; a dataset line's own prompt wins
    max_new_tokens: int | None = Field(default=None, gt=0, le=numbers.MAX_TOKENS)
    turns: int = Field(default=1, ge=1)
    video: VideoSpec | None = None
    of_task: str = ""  # fp16_verify: which task's samples to re-run in 16-bit
    dataset: Dataset | None = None
    metrics: list[str] = []

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:  # it names the task's result file and data folder
        return names.check(v, "task name")

    @model_validator(mode="after")
    def _kind_fields(self) -> Task:
        if self.kind == "memory_sweep" and not self.resolutions:
            raise ValueError("a memory_sweep task needs `resolutions` (list of [width, height])")
        if self.kind == "video" and self.video is None:
            raise ValueError("a video task needs `video` (duration_s, fps, ...)")
        if self.kind == "fp16_verify" and not self.of_task:
            raise ValueError("an fp16_verify task needs `of_task` (the task whose samples it re-runs)")
        if self.image_size is None and self.kind in ("memory_sweep", "video", "digits"):
            raise ValueError(f"a {self.kind} task is visual: image_size: null does not apply")
        for w, h in [s for s in (self.image_size, *self.resolutions) if s is not None]:
            if w <= 0 or h <= 0:
                raise ValueError(f"image sizes must be positive, got {w}x{h}")
        return self


class ImageLimits(Model):
    """The processor's resize limits in pixels (Qwen3-VL ships 64..16384 tokens of 32x32 px)."""

    min_pixels: int = Field(default=64 * 32 * 32, gt=0)
    max_pixels: int = Field(default=16384 * 32 * 32, gt=0)


class EvalPlan(Model):
    name: str
    description: str = ""
    model: str
    quantizations: list[Quant] = ["bf16", "fp16", "fp8", "int8", "nf4"]
    quality_floor: Quant = "nf4"
    # the engines the planner may choose among (planner/engines.py: each has the quantizations it runs)
    engines: list[EngineName] = list(ENGINE_NAMES)
    keep_vision_16bit: bool = False
    double_quant: bool = True
    batch_size: int = Field(default=1, ge=1, le=numbers.MAX_BATCH)
    generation: GenerationConfig = GenerationConfig()
    image_limits: ImageLimits = ImageLimits()
    tasks: list[Task] = Field(min_length=1)
    budget_yuan: Decimal | None = Field(default=None, gt=0)
    seed: int = 0
    # dataset URLs on loopback, link-local or private hosts (a mirror on your own network, the tests' server);
    # refused before launch otherwise (runner/worker/downloads.py check_url)
    allow_private_urls: bool = False

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:  # it starts every run id, and run ids name run directories
        if len(v) > names.PLAN_MAX:
            raise ValueError(f"a plan name is at most {names.PLAN_MAX} characters (its run ids add 21)")
        return names.check(v, "plan name")

    @field_validator("quantizations")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one quantization")
        return v

    @field_validator("engines")
    @classmethod
    def _some_engine(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one engine")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _refs(self) -> EvalPlan:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        for t in self.tasks:
            if t.kind == "fp16_verify" and t.of_task not in names:
                raise ValueError(f"task {t.name!r}: of_task {t.of_task!r} is not a task of this plan")
        return self


# --------------------------------------------------------------------------- estimates


class GpuMemory(Model):
    """One card's modelled peak, in bytes, by component."""

    gpu_index: int
    layers: int
    weights: int
    kv_cache: int
    activations: int
    vision_activations: int
    dequant_scratch: int
    cuda_context: int
    allocator_slack: int
    floor_adjust: int  # added when the sum is under Qwen's "at least 1.2x the weights"
    total: int
    usable: int  # the card's memory (what the driver reports)


class MemoryEstimate(Model):
    quantization: Quant
    gpu_count: int
    weights_total: int
    per_gpu: list[GpuMemory]
    fits: bool
    reason: str = ""


class TimeEstimate(Model):
    """Seconds, by phase. `tasks` maps task name -> seconds; skipped tasks have a reason."""

    boot_s: float
    install_s: float
    download_s: float
    load_s: float
    tasks: dict[str, float]
    engine_install_s: float = 0.0  # a server engine's packages, installed on the instance when the plan uses it
    engine_start_s: float = 0.0  # a server engine's start beside the weights' load (compile, graph capture)
    skipped: dict[str, str] = {}
    spot_overhead_s: float = 0.0
    total_s: float
    band: float = 0.0  # +- fraction around every time above: the time model's residuals (Assumptions.time_band)


# --------------------------------------------------------------------------- planner output


class EngineComparison(Model):
    """Another engine on the same offer and market: its cheapest quantization there and what it would cost, or why
    it cannot run there (`cost_cny` None)."""

    engine: str
    quantization: Quant | None
    hours: float | None
    cost_cny: Decimal | None
    reason: str  # "4.1x the time, 1.90 CNY more" or the refusal


class Recommendation(Model):
    """One costed candidate: an offer x GPU count x quantization x engine x spot/on-demand."""

    provider: str
    instance_type: str
    region: str
    gpu: str
    gpu_count: int
    layout: Layout  # single (one card), split (one model over the cards) or replicas (a model per card)
    replicas: int  # models run at once, each on its share of the samples: gpu_count for replicas, else 1
    quantization: Quant
    engine: EngineName
    engine_memory_fraction: float | None = None  # vllm/sglang: the share of each card the engine preallocates
    max_model_len: int | None = None  # vllm/sglang: the plan's longest context (prompt + visual + new tokens)
    concurrency: int | None = None  # server engines: requests in flight at once (transformers serve: 1)
    other_engines: list[EngineComparison] = []  # the other allowed engines on this offer: cost, or why not
    spot: bool
    price_cny_per_hour: Decimal
    price_original_per_hour: Decimal
    currency: str
    billing: str
    gpu_memory_gib: float
    memory_per_gpu_gib: float
    memory: list[GpuMemory]
    hours: float
    hours_high: float  # the upper end of the time band: what --deadline judges
    time: TimeEstimate
    billed_hours: float
    cost_cny: Decimal
    cost_low_cny: Decimal  # billed at the time band's lower and upper ends (billing rules applied)
    cost_high_cny: Decimal
    memory_band: float  # +- fraction around every memory figure
    fits_budget: bool
    budget_left_cny: Decimal
    plan_fits_times: int
    notes: list[str] = []
    offer_source: str
    offer_date: str


class Rejection(Model):
    """Candidates dropped for one reason, grouped (a 100,000-offer catalog would otherwise print
    100,000 lines)."""

    gpu: str
    gpu_count: int
    quantization: Quant | None
    reason: str
    offers: int
    example: str
    engine: EngineName | None = None  # None: whatever the engine (a quality floor)


class ModelSummary(Model):
    name: str
    hf_id: str
    model_type: str
    params: ParamBreakdown
    weights_gib: dict[str, float]


class NextStep(Model):
    """How to run a recommendation: the exact `budget run` command, and the set-up its provider needs."""

    command: str
    setup: list[str] = []


class DeadlineReport(Model):
    """`budget plan --deadline`: the deadline and what it does to the choice (planner/deadline.py). Candidates are
    judged on the upper end of their time band."""

    deadline: str  # as given: a duration (6h) or an ISO date/datetime
    deadline_at: str  # ISO 8601, UTC
    seconds_left: float  # from planning to the deadline
    met: bool  # an option within budget finishes by it (else the plan refuses, exit 2)
    extra_cny: Decimal | None  # what the deadline costs: the recommendation's cost over `cheapest`'s (null: not met)
    cheapest: Recommendation | None  # the cheapest option within budget, deadline or not
    nearest: Recommendation | None  # not met: the cheapest option that meets it over the budget, else the fastest
    late: int  # candidates (offer x market x layout x quantization x engine) that miss it


class PlanReport(Model):
    """`budget plan --json`: exactly this document."""

    budget_cny: Decimal
    objective: Literal["cost", "time"]
    plan: str
    recommendation: Recommendation | None
    alternatives: list[Recommendation]
    # "cost": by the estimate; "cost_high": by the upper end of the cost band, because the cheapest estimate's
    # upper end exceeds the budget; "time": --objective time
    ranked_by: Literal["cost", "cost_high", "time"]
    rejected: list[Rejection]
    model: ModelSummary
    assumptions: list[dict[str, object]]
    catalog: list[str]
    candidates: int
    feasible: int
    within_budget: int
    next: NextStep | None = None  # the command that runs the recommendation, and what it needs first
    # options a person runs (Colab's free notebook): never ranked over a rig that runs alone, shown beside
    free: list[Recommendation] = []
    deadline: DeadlineReport | None = None  # --deadline: what it costs, the options it ruled out


class PriceRow(Model):
    id: str
    provider: str
    instance_type: str
    region: str
    gpu: str
    gpu_count: int
    gpu_memory_gib: float
    price_cny_per_hour: Decimal
    spot_price_cny_per_hour: Decimal | None
    price_original_per_hour: Decimal
    spot_price_original_per_hour: Decimal | None
    currency: str
    billing_increment_s: int
    billing_minimum_s: int
    source: str
    date: str


class PriceList(Model):
    """`budget prices list --json`."""

    offers: list[PriceRow]
    fx: list[FxRate]


class WeightsRow(Model):
    quantization: str
    vision_16bit: bool
    double_quant: bool
    weights_gib: float
    seed_claim_gb: float | None = None


class InspectReport(Model):
    """`budget model inspect --json`."""

    name: str
    source: str
    model_type: str
    params: ParamBreakdown
    text: TextArch
    vision: VisionArch | None
    weights: list[WeightsRow]
    kv_cache_kib_per_token: float

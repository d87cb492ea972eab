"""What a plan asks the model to do, in tokens: for each task, the forward passes (generate
calls) of one sample, with visual tokens computed the way Qwen3-VL's processor resizes images
and samples video frames. Memory and speed models price these shapes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .assumptions import Assumptions
from .errors import InputError
from .models import EvalPlan, ImageLimits, ModelSpec, Task, VideoSpec

TIMESTAMP_TOKENS = 6  # "<1.5 seconds>" text before each temporal patch of a video
BATCHED = ("caption", "document", "poetry", "digits")  # one image, one generate call: run in the plan's batches


@dataclass(frozen=True, slots=True)
class Pass:
    """One generate call for one sample. `vit_seqs` are the patch counts of each image/clip the
    vision tower attends over (attention is per image)."""

    prefill: int
    new: int
    visual: int
    vit_seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TaskLoad:
    name: str
    kind: str
    samples: int
    batch: int
    passes: tuple[Pass, ...]
    sixteen_bit: bool = False  # fp16_verify: run by the 16-bit model

    @property
    def peak_tokens(self) -> int:
        """Longest context (prompt + generated) of any pass."""
        return max(p.prefill + p.new for p in self.passes)


def smart_resize(height: int, width: int, limits: ImageLimits, factor: int = 32) -> tuple[int, int]:
    """qwen-vl-utils' resize: round to multiples of `factor`, then scale into [min, max] pixels."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > limits.max_pixels:
        beta = math.sqrt(height * width / limits.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < limits.min_pixels:
        beta = math.sqrt(limits.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_tokens(size: tuple[int, int], limits: ImageLimits, spec: ModelSpec) -> tuple[int, int]:
    """(LLM tokens, ViT patches) of one image of `size` = (width, height)."""
    v = spec.vision
    if v is None:
        raise InputError(f"{spec.name} is a text-only model ({spec.model_type}): it takes no images",
                         "use a vision-language model, or give the task `image_size: null` (a text-only prompt)")
    factor = v.patch_size * v.spatial_merge_size
    h, w = smart_resize(size[1], size[0], limits, factor)
    tokens = (h // factor) * (w // factor)
    return tokens, tokens * v.spatial_merge_size**2


def video_frames(video: VideoSpec) -> int:
    """Frames kept: duration x sampling fps, clamped, never more than the clip has, even (two
    frames form one temporal patch)."""
    n = video.duration_s * video.fps
    n = min(max(n, video.min_frames), video.max_frames, video.duration_s * video.source_fps)
    return max(2, int(n) // 2 * 2)


def video_tokens(video: VideoSpec, limits: ImageLimits, spec: ModelSpec) -> tuple[int, int]:
    """(LLM tokens incl. timestamps, ViT patches) of one clip."""
    per_frame_tokens, per_frame_patches = image_tokens(video.frame_size, limits, spec)
    pairs = video_frames(video) // spec.vision.temporal_patch_size  # type: ignore[union-attr] - image_tokens checked
    return pairs * (per_frame_tokens + TIMESTAMP_TOKENS), pairs * per_frame_patches


def _passes(task: Task, plan: EvalPlan, spec: ModelSpec, a: Assumptions) -> tuple[Pass, ...]:
    new = task.max_new_tokens or plan.generation.max_new_tokens
    text = task.prompt_tokens + a.template_tokens
    if task.kind == "video":
        assert task.video is not None
        vis, patches = video_tokens(task.video, plan.image_limits, spec)
        return (Pass(vis + text, new, vis, (patches,)),)
    if task.kind == "memory_sweep":
        out = []
        for size in task.resolutions:
            vis, patches = image_tokens(size, plan.image_limits, spec)
            out.append(Pass(vis + text, new, vis, (patches,)))
        return tuple(out)
    vis, patches = image_tokens(task.image_size, plan.image_limits, spec) if task.image_size else (0, 0)
    # multi-turn: each turn is a new generate call over the whole history (no cache reuse), the
    # image is encoded again each time
    seqs = (patches,) if patches else ()
    return tuple(Pass(vis + text + k * (task.prompt_tokens + new), new, vis, seqs) for k in range(task.turns))


def task_loads(plan: EvalPlan, spec: ModelSpec, a: Assumptions) -> list[TaskLoad]:
    """The plan's tasks as token shapes. Sweeps, multi-turn and video run one sample at a time; the single-image
    kinds (a digits task is one image and a short answer, as a document's) in the plan's batches."""
    by_name = {t.name: t for t in plan.tasks}
    loads = []
    for t in plan.tasks:
        src = by_name[t.of_task] if t.kind == "fp16_verify" else t
        batch = plan.batch_size if src.kind in BATCHED else 1
        # a sweep sample walks every resolution: one pass each
        loads.append(TaskLoad(t.name, t.kind, t.samples, min(batch, t.samples), _passes(src, plan, spec, a),
                              sixteen_bit=t.kind == "fp16_verify"))
    return loads

"""Video: frames sampled at the plan's fps (default 1) with a frame cap, fed with their timestamps;
per clip the frames kept, the visual tokens and the peak memory."""

from __future__ import annotations

from .. import synthetic
from ..generation import Request
from . import base

PROMPT = "Describe what happens in this video."


def frame_indices(total: int, source_fps: float, fps: float, min_frames: int, max_frames: int) -> list[int]:
    """Indices of the frames to keep: `fps` per second of a `source_fps` clip, at least `min_frames`,
    at most `max_frames`, an even count (two frames form one temporal patch), spread over the clip."""
    duration = total / source_fps
    n = max(min_frames, min(max_frames, round(duration * fps)))
    n = max(2, min(n, total) // 2 * 2) if total >= 2 else total
    if n * source_fps / fps <= total:
        step = source_fps / fps
        return [int(i * step) for i in range(n)]
    return [round(i * (total - 1) / max(1, n - 1)) for i in range(n)]


def load(sample, spec):
    """(frames [T,H,W,3] uint8, metadata dict for the processor)."""
    import numpy as np

    src = sample.video
    if isinstance(src, tuple) and src[0] == "synthetic":
        total = round(spec.duration_s * spec.source_fps)
        idx = frame_indices(total, spec.source_fps, spec.fps, spec.min_frames, spec.max_frames)
        frames = synthetic.frames(src[1], spec.frame_size, idx)
        fps = spec.source_fps
    elif isinstance(src, list):  # a list of frame images
        if not src:
            raise base.SampleError("the frames list is empty")
        fps = float(sample.fps or spec.source_fps)
        idx = frame_indices(len(src), fps, spec.fps, spec.min_frames, spec.max_frames)
        frames = np.stack([np.asarray(base.load_image(src[i])) for i in idx])
        total = len(src)
    else:
        try:
            frames, idx, total, fps = _decode(src, spec)
        except (OSError, ValueError, IndexError) as e:  # av.error.* are OSError/ValueError subclasses
            raise base.SampleError(f"cannot decode video {src}: {e}") from None
    h, w = frames.shape[1:3]
    return frames, {"total_num_frames": total, "fps": fps, "frames_indices": idx, "duration": total / fps,
                    "width": w, "height": h}


MAX_VIDEO_FRAMES = 216_000  # two hours at 30 fps: longer is not a clip to caption


def _decode(path, spec):
    """Decode only the frames that are kept: a first pass counts the clip's packets (no decoding), a second
    converts just the sampled frames to pixels (a 60 s clip no longer takes GBs of memory)."""
    import numpy as np

    try:
        import av
    except ImportError:
        raise base.SampleError("video files need PyAV on the instance (pip install av)") from None
    base.regular_file(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        fps = rate if rate > 0 else spec.source_fps
        total = sum(1 for packet in container.demux(stream) if packet.size)
    if not total:
        raise ValueError("no video frames")
    if total > MAX_VIDEO_FRAMES:
        raise ValueError(f"{total} frames is over the {MAX_VIDEO_FRAMES} frame cap")
    idx = frame_indices(total, fps, spec.fps, spec.min_frames, spec.max_frames)
    want, kept = set(idx), {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in want:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= idx[-1]:
                break
    if len(kept) < len(idx):  # fewer frames decoded than packets counted: keep what there is, an even count
        idx = sorted(kept)[: max(1, len(kept) // 2 * 2)]
    if not idx:
        raise ValueError("no frame could be decoded")
    return np.stack([kept[i] for i in idx]), idx, total, fps


def run_batch(ctx, task, samples):
    prompt = task.prompt or PROMPT
    clips = {s.id: load(s, task.video) for s in samples}

    def attempt(batch_samples):
        requests = [Request(messages=[{"role": "user", "content": [{"type": "video"},
                                                                   {"type": "text", "text": s.prompt or prompt}]}],
                            videos=[clips[s.id][0]], video_metadata=[clips[s.id][1]]) for s in batch_samples]
        batch = ctx.engine.run(requests, ctx.max_new_tokens(task))
        return [base.line(ctx, task, s.id, status="ok", prompt=s.prompt or prompt, prediction=out.text,
                          frames=len(clips[s.id][1]["frames_indices"]), frame_indices=clips[s.id][1]["frames_indices"],
                          source_fps=clips[s.id][1]["fps"], **base.measures(out, batch, len(batch_samples)))
                for s, out in zip(batch_samples, batch.outputs, strict=True)]

    return base.split_on_oom(samples, attempt, lambda s, e: base.oom_line(
        ctx, task, s.id, e, frames=len(clips[s.id][1]["frames_indices"])))


def summarize(task, lines):
    return base.summary(lines, mean_frames="frames", mean_visual_tokens="visual_tokens")

"""Video from real files: an MP4 decoded with PyAV and a list of frame images, sampled at the plan's
fps with the frame cap, through the whole worker."""

from __future__ import annotations

import json

from PIL import Image

from runner.worker.tasks.video import frame_indices
from tests.publicdata import mp4

from .conftest import job, lines, run_inline, write_job


def test_frame_indices():
    assert frame_indices(300, 30, 1, 4, 768) == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]
    assert frame_indices(300, 30, 1, 4, 6) == [0, 30, 60, 90, 120, 150]  # capped, stays at 1 fps
    assert frame_indices(300, 30, 2, 4, 4) == [0, 15, 30, 45]
    assert frame_indices(20, 10, 1, 4, 768) == [0, 6, 13, 19]  # 2 s clip: min_frames spread over it
    assert frame_indices(50, 10, 1, 2, 768) == [0, 10, 20, 30]  # 5 frames -> 4: whole temporal patches (2 frames)
    assert len(frame_indices(1000, 25, 1, 4, 9)) == 8


def test_mp4_and_frame_list_videos(tiny_model, tmp_path):
    mp4(tmp_path / "clip.mp4")
    for i in range(8):
        Image.new("RGB", (64, 64), (i * 30, 0, 0)).save(tmp_path / f"f{i}.png")
    rows = [{"id": "mp4", "video": "clip.mp4", "prompt": "What moves?"},
            {"id": "frames", "frames": [f"f{i}.png" for i in range(8)], "fps": 2}]
    (tmp_path / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"name": "vid", "kind": "video", "samples": 2, "dataset": {"kind": "local", "path": "videos.jsonl"},
            "video": {"fps": 1, "max_frames": 4, "min_frames": 2}}
    assert run_inline(write_job(tmp_path, job(tiny_model, [task])), tmp_path / "out") == 0
    got = {x["id"]: x for x in lines(tmp_path / "out", "vid")}
    # 60 frames at 12 fps = 5 s -> 5 frames at 1 fps, capped at 4
    assert got["mp4"]["frame_indices"] == [0, 12, 24, 36] and got["mp4"]["source_fps"] == 12.0
    assert got["mp4"]["prompt"] == "What moves?" and got["mp4"]["visual_tokens"] == 2 * 6  # 2 patches of 96x64
    # 8 frames at 2 fps = 4 s -> 4 frames at 1 fps
    assert got["frames"]["frame_indices"] == [0, 2, 4, 6] and got["frames"]["visual_tokens"] == 2 * 4

"""What every dataset source yields - one Sample per row - and the one error a source raises."""

from __future__ import annotations

from dataclasses import dataclass, field


class DatasetError(Exception):
    """A dataset cannot be resolved (missing file, bad manifest, failed download, wrong checksum)."""


@dataclass
class Sample:
    id: str
    image: object = None  # a path, or a PIL image for synthetic samples
    video: object = None  # a path to a video file, a list of frame paths, or ("synthetic", seed)
    fps: float | None = None  # frames-list videos: their frame rate
    prompt: str = ""
    references: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # memory sweep: the resolution under test
    error: str = ""  # the row is unusable (bad field, file missing or outside the dataset): recorded, not run

"""What a generation is asked and gives back - a conversation, its outputs, a batch's measurements - and how it
can fail. No torch here: the task kinds that use these also score result lines on the controller
(money/results.py recomputes each task's summary from the lines it holds)."""

from __future__ import annotations

from dataclasses import dataclass, field


class OutOfMemory(Exception):
    """A batch ran out of memory; its memory has been released."""


class Interrupted(Exception):
    """Generation was cut short by a stop request (deadline, stop file, signal); discard the batch."""


@dataclass
class Request:
    """One conversation to continue: chat messages (images/videos as placeholders) and their media."""

    messages: list[dict]
    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)  # np.ndarray [T, H, W, 3]
    video_metadata: list = field(default_factory=list)  # dicts: fps, frames_indices, total_num_frames, ...


@dataclass
class Output:
    text: str
    prefill_tokens: int
    visual_tokens: int | None  # None: a server does not say how many of the prompt's tokens were visual
    decode_tokens: int
    ttft_s: float | None = None  # this request's own, where it ran on its own (a server's); else the batch's


@dataclass
class Batch:
    outputs: list[Output]
    latency_s: float
    ttft_s: float
    peak_memory: list[dict]

    @property
    def peak_bytes(self) -> int | None:
        """The largest device's peak; None where the engine reports no memory (a server elsewhere)."""
        return max((m["bytes"] for m in self.peak_memory), default=None)

    @property
    def decode_tokens(self) -> int:
        return sum(o.decode_tokens for o in self.outputs)

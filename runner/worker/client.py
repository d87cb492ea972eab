"""The one client of every server engine (vLLM, SGLang, `transformers serve`, any OpenAI-compatible
endpoint): `ServerEngine.run(requests, max_new_tokens) -> Batch`, the contract of the in-process engine,
over the official `openai` package. A batch's requests go out together, at most `concurrency` in flight
(the server batches them); each is streamed, so its time to first token is measured; tokens come from the
server's `usage`; images are PNG data URIs, a video's frames one `video/jpeg` data URI (vLLM's form),
multi-turn sessions real message histories. Connection resets and 429 are retried (tenacity: 7 attempts
0.5-4 s apart, ~15 s - a restarted engine is back within it -, on the injected sleep), a 5xx once; a server
that stays unreachable is EngineDown (the run stops, its finished lines kept, and resumes later); a request
the server refuses (4xx, or 5xx after the retries) is that sample's error. Nothing a server sends is believed unchecked: the reply's text is capped, its token counts must be
non-negative integers below a bound."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .generation import Batch, Interrupted, Output, Request
from .tasks.base import SampleError

log = logging.getLogger("gpubudget.worker")

MAX_REPLY_CHARS = 1 << 20  # a reply longer than this is not an answer to score
MAX_TOKENS = 1 << 24  # usage counts above this are not believed


class EngineDown(Exception):
    """The server cannot be reached (after the retries); nothing more can run now."""


class Refused(SampleError):
    """The server answered this request with an error (after the retries): that sample's error line."""


def data_uri(image, mime: str = "image/png") -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG" if mime == "image/png" else "JPEG", quality=95)
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def video_uri(frames) -> str:
    """A clip's sampled frames as one `data:video/jpeg;base64,F1,F2,...` URI (vLLM's video data URI)."""
    from PIL import Image

    parts = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95)
        parts.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return "data:video/jpeg;base64," + ",".join(parts)


def messages_of(request: Request) -> list[dict]:
    """OpenAI chat messages for a request: each image/video placeholder, in order, becomes its media."""
    images, videos = iter(request.images), iter(request.videos)
    out = []
    for m in request.messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for c in content:
                if c["type"] == "image":
                    parts.append({"type": "image_url", "image_url": {"url": data_uri(next(images))}})
                elif c["type"] == "video":
                    parts.append({"type": "video_url", "video_url": {"url": video_uri(next(videos))}})
                else:
                    parts.append({"type": "text", "text": c["text"]})
            content = parts
        out.append({"role": m["role"], "content": content})
    return out


def sampling(generation: dict, max_new_tokens: int, seed: int) -> dict:
    """The plan's generation settings in the API's words (greedy: temperature 0)."""
    out = {"max_tokens": max_new_tokens, "seed": seed}
    if generation.get("do_sample"):
        out.update({k: generation[k] for k in ("temperature", "top_p") if k in generation})
        if "top_k" in generation:
            out.setdefault("extra_body", {})["top_k"] = generation["top_k"]
    else:
        out["temperature"] = 0.0
    if generation.get("repetition_penalty") not in (None, 1.0):
        out.setdefault("extra_body", {})["repetition_penalty"] = generation["repetition_penalty"]
    return out


def _count(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOKENS:
        raise Refused(f"the server's usage.{what} is {value!r}, not a token count")
    return value


class ServerEngine:
    def __init__(self, base_url: str, model: str, generation: dict, seed: int, should_stop: Callable[[], bool], *,
                 api_key: str = "", concurrency: int = 8, request_timeout_s: float = 600.0,
                 memory: Callable[[], list[dict]] = list, attempts: int = 7, sleep: Callable[[float], None] = time.sleep):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0,
                                    timeout=request_timeout_s)
        self.model = model
        self.generation = generation
        self.seed = seed
        self.should_stop = should_stop
        self.concurrency = concurrency
        self.memory = memory
        self.attempts = attempts
        self.sleep = sleep
        # media kinds (image_url, video_url) the server refused and never took: later requests carrying one are
        # refused here at once, with the server's words, instead of paying the retries again for each sample
        self.refused: dict[str, str] = {}
        self.taken: set[str] = set()

    def run(self, requests: list[Request], max_new_tokens: int) -> Batch:
        """Generate for a batch: every request in flight at once (up to `concurrency`). Raises Interrupted when
        asked to stop, EngineDown when the server is gone; a refused request raises Refused."""
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            outputs = list(pool.map(lambda r: self._retried(r, max_new_tokens, started), requests))
        latency = time.perf_counter() - started
        return Batch(outputs=outputs, latency_s=latency, ttft_s=min(o.ttft_s for o in outputs),
                     peak_memory=self.memory())

    def _retried(self, request: Request, max_new_tokens: int, started: float) -> Output:
        import openai
        import tenacity

        def transient(e: BaseException) -> bool:
            return isinstance(e, openai.APIConnectionError | openai.RateLimitError | openai.InternalServerError)

        def spent(state) -> bool:  # a 5xx is most often the request itself (a media it cannot read): tried twice
            e = state.outcome.exception()
            return state.attempt_number >= (min(2, self.attempts) if isinstance(e, openai.InternalServerError)
                                            else self.attempts)

        retry = tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient), stop=spent,
            wait=tenacity.wait_exponential(multiplier=0.5, max=4), sleep=self.sleep, reraise=True,
            before_sleep=lambda s: log.warning("server: %s; retry %d", _said(s.outcome.exception()), s.attempt_number))
        messages = messages_of(request)
        media = {c["type"] for m in messages if isinstance(m["content"], list) for c in m["content"]} - {"text"}
        known = next((self.refused[k] for k in sorted(media - self.taken) if k in self.refused), None)
        if known:
            raise Refused(known)
        try:
            out = retry(self._one, messages, max_new_tokens, started)
        except openai.APIConnectionError as e:
            raise EngineDown(f"the server at {self.client.base_url} does not answer: {_said(e)}") from None
        except openai.APIStatusError as e:
            why = f"the server refused the request: {_said(e)}"
            for k in media - self.taken:
                self.refused.setdefault(k, f"{why} (it refused {k} before and has taken none)")
            raise Refused(why) from None
        self.taken |= media
        return out

    def _one(self, messages: list[dict], max_new_tokens: int, started: float) -> Output:
        if self.should_stop():
            raise Interrupted()
        settings = sampling(self.generation, max_new_tokens, self.seed)
        stream = self.client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                     stream_options={"include_usage": True}, **settings)
        text, first, usage, chunks = [], None, None, 0
        with stream:
            for chunk in stream:
                if self.should_stop():
                    raise Interrupted()
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices or ():
                    if choice.delta is not None and choice.delta.content:
                        first = first or time.perf_counter()
                        chunks += 1
                        text.append(choice.delta.content)
                if sum(map(len, text)) > MAX_REPLY_CHARS:
                    raise Refused(f"the reply is over {MAX_REPLY_CHARS} characters")
        done = time.perf_counter()
        if usage is None:
            raise Refused("the server sent no usage (stream_options.include_usage): its tokens cannot be counted")
        return Output(text="".join(text).strip(), prefill_tokens=_count(usage.prompt_tokens, "prompt_tokens"),
                      visual_tokens=None, decode_tokens=_count(usage.completion_tokens, "completion_tokens"),
                      ttft_s=(first or done) - started)


def _said(e: BaseException | None) -> str:
    """An API error in one short line (its status and the server's message, never a request header)."""
    status = getattr(e, "status_code", None)
    body = getattr(e, "message", None) or str(e)
    return (f"HTTP {status}: " if status else "") + " ".join(str(body).split())[:200]

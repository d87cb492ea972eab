"""The one client of every server engine (vLLM, SGLang, `transformers serve`, any OpenAI-compatible
endpoint): `ServerEngine.run(requests, max_new_tokens) -> Batch`, the contract of the in-process engine,
over the official `openai` package. A batch's requests go out together, at most `concurrency` in flight
(the server batches them); each is streamed, so its time to first token is measured; tokens come from the
server's `usage`; images are PNG data URIs, a video's frames one `video/jpeg` data URI (vLLM's form),
multi-turn sessions real message histories. Connection resets and 429 are retried (tenacity: 7 attempts
0.5-4 s apart, ~15 s - a restarted engine is back within it -, or as long as the server's Retry-After asks, up
to a minute, on the injected sleep), a 5xx once; a server that stays unreachable is EngineDown (the run
stops, its finished lines kept, and resumes later), one that refuses the key (401/403) Unauthorized; a request
the server refuses (other 4xx, or 5xx after the retries) is that sample's error. Nothing a server sends is
believed unchecked: the reply's text is capped, its token counts must be non-negative integers below a bound.

A `meter` (a hosted model billed per token: the controller's, runner/compare.py) is asked before a batch is
sent to reserve each call's bound (`Call`: what the call carries) - all of the batch or none (OverBudget: the
run goes on one sample at a time, and stops at the first it cannot pay) -, then bills each call from its usage, releases one never sent or answered with an error
status, and bills at its bound one whose outcome is unknown (sent, its answer lost, or an answer whose usage
cannot be believed); a metered call whose answer was lost after it was sent is not sent again. A call the
meter already has an answer for (`answered(key)`: paid for in an earlier run) is answered from it."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .generation import Batch, Interrupted, Output, Request
from .tasks.base import SampleError

log = logging.getLogger("gpubudget.worker")

MAX_REPLY_CHARS = 1 << 20  # a reply longer than this is not an answer to score
MAX_TOKENS = 1 << 24  # usage counts above this are not believed


class EngineDown(Exception):
    """The server cannot be reached (after the retries); nothing more can run now."""


class Unauthorized(EngineDown):
    """The server refused the key (HTTP 401/403): nothing can run with it."""


class Refused(SampleError):
    """The server answered this request with an error (after the retries): that sample's error line."""


class OverBudget(Interrupted):
    """The meter cannot pay the next batch's calls: nothing more is sent, finished lines stand - or, when the
    batch had more than one call (`smaller`), the task loop tries the rest one sample at a time."""

    reason = "budget"
    smaller = False


@dataclass(frozen=True)
class Call:
    """What one call carries, for a meter to bound its cost: its text's UTF-8 bytes, its messages, its images'
    sizes (a video's frames count as images) and the most tokens it may generate."""

    text_bytes: int
    messages: int
    images: tuple[tuple[int, int], ...]
    max_tokens: int


def call_of(request: Request, max_new_tokens: int) -> Call:
    text, n = 0, 0
    for m in request.messages:
        n += 1
        content = m["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        text += len(m["role"].encode()) + sum(len(str(c.get("text", "")).encode()) for c in parts if c["type"] == "text")
    images = [tuple(im.size) for im in request.images]
    images += [(int(f.shape[1]), int(f.shape[0])) for frames in request.videos for f in frames]
    return Call(text, n, tuple(images), max_new_tokens)


RETRY_AFTER_MAX_S = 60.0  # a server asking to wait longer than this is waited on for this long, then asked again


def retry_after(e: BaseException | None) -> float:
    """The seconds a 429/503 reply's Retry-After (or retry-after-ms) asks for; 0 without one."""
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return min(RETRY_AFTER_MAX_S, max(0.0, float(headers["retry-after-ms"]) / 1000))
        value = headers.get("retry-after")
        if not value:
            return 0.0
        try:
            return min(RETRY_AFTER_MAX_S, max(0.0, float(value)))
        except ValueError:  # an HTTP date
            import email.utils

            when = email.utils.parsedate_to_datetime(value)
            return min(RETRY_AFTER_MAX_S, max(0.0, when.timestamp() - time.time()))
    except (TypeError, ValueError, OverflowError):
        return 0.0


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
                 memory: Callable[[], list[dict]] = list, attempts: int = 7, sleep: Callable[[float], None] = time.sleep,
                 meter=None):
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
        self.meter = meter
        # media kinds (image_url, video_url) the server refused and never took: later requests carrying one are
        # refused here at once, with the server's words, instead of paying the retries again for each sample
        self.refused: dict[str, str] = {}
        self.taken: set[str] = set()

    def run(self, requests: list[Request], max_new_tokens: int) -> Batch:
        """Generate for a batch: every request in flight at once (up to `concurrency`). Raises Interrupted when
        asked to stop, EngineDown when the server is gone; a refused request raises Refused. Metered, a request
        the meter has an answer for (paid for by an earlier run: a multi-turn conversation cut by the cap) is
        answered from it, never sent again."""
        # metered, each call's messages make its key (to find an answer paid for before); else each is encoded in
        # its own thread, beside the others' requests in flight
        messages = [messages_of(r) for r in requests] if self.meter is not None else [None] * len(requests)
        keys = [self._key(m, max_new_tokens) for m in messages] if self.meter is not None else [None] * len(requests)
        outputs: list = [self._recalled(k) for k in keys]
        todo = [i for i, o in enumerate(outputs) if o is None]
        holds = self._reserve([requests[i] for i in todo], max_new_tokens)
        started = time.perf_counter()
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
                done = list(pool.map(lambda ih: self._metered(requests[ih[0]], messages[ih[0]], keys[ih[0]], ih[1],
                                                              max_new_tokens, started), zip(todo, holds)))
            for i, o in zip(todo, done):
                outputs[i] = o
        latency = time.perf_counter() - started
        return Batch(outputs=outputs, latency_s=latency, ttft_s=min(o.ttft_s for o in outputs),
                     peak_memory=self.memory())

    def _key(self, messages: list[dict], max_new_tokens: int) -> str:
        """What identifies a call: the model, its messages and its settings."""
        import hashlib
        import json

        doc = {"model": self.model, "messages": messages,
               "settings": sampling(self.generation, max_new_tokens, self.seed)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _recalled(self, key: str | None) -> Output | None:
        said = self.meter.answered(key) if key is not None else None
        if said is None:
            return None
        return Output(text=said["text"], prefill_tokens=said["prompt_tokens"], visual_tokens=None,
                      decode_tokens=said["completion_tokens"], ttft_s=said["ttft_s"])

    def _reserve(self, requests: list[Request], max_new_tokens: int) -> list:
        """The meter's holds for every call of the batch, or none of them (OverBudget)."""
        if self.meter is None:
            return [None] * len(requests)
        holds: list = []
        try:
            for r in requests:
                holds.append(self.meter.reserve(call_of(r, max_new_tokens)))
        except BaseException as e:
            for h in holds:
                self.meter.release(h, "its batch could not be paid whole: not sent")
            if isinstance(e, OverBudget) and len(requests) > 1:
                e.smaller = True  # a batch of fewer calls may still be paid: the task loop goes on one by one
            raise
        return holds

    def _metered(self, request: Request, messages: list[dict], key: str | None, hold, max_new_tokens: int,
                 started: float) -> Output:
        if hold is None:
            return self._retried(request, messages or messages_of(request), max_new_tokens, started, {})
        attempt: dict = {}  # "sent": the last attempt left with its outcome unknown; "why": what ended it
        try:
            out = self._retried(request, messages, max_new_tokens, started, attempt)
        except BaseException as e:
            if attempt.get("sent"):
                self.meter.unknown(hold, f"{type(e).__name__}: {attempt.get('why') or e}"[:300])
            else:
                self.meter.release(hold, f"not billed: {attempt.get('why') or type(e).__name__}"[:300])
            raise
        self.meter.bill(hold, out.prefill_tokens, out.decode_tokens,
                        answer={"key": key, "text": out.text, "prompt_tokens": out.prefill_tokens,
                                "completion_tokens": out.decode_tokens, "ttft_s": round(out.ttft_s, 4)})
        return out

    def _retried(self, request: Request, messages: list[dict], max_new_tokens: int, started: float,
                 attempt: dict) -> Output:
        import openai
        import tenacity

        metered = self.meter is not None

        def transient(e: BaseException) -> bool:
            if metered and attempt.get("sent"):  # sent, its answer lost: it may have been billed - not sent again
                return False
            return isinstance(e, openai.APIConnectionError | openai.RateLimitError | openai.InternalServerError)

        def spent(state) -> bool:  # a 5xx is most often the request itself (a media it cannot read): tried twice
            e = state.outcome.exception()
            return state.attempt_number >= (min(2, self.attempts) if isinstance(e, openai.InternalServerError)
                                            else self.attempts)

        backoff = tenacity.wait_exponential(multiplier=0.5, max=4)

        def wait(state) -> float:  # the backoff, or longer where the server says how long (Retry-After)
            return max(backoff(state), retry_after(state.outcome.exception()))

        retry = tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient), stop=spent, wait=wait, sleep=self.sleep, reraise=True,
            before_sleep=lambda s: log.warning("server: %s; retry %d", _said(s.outcome.exception()), s.attempt_number))
        media = {c["type"] for m in messages if isinstance(m["content"], list) for c in m["content"]} - {"text"}
        known = next((self.refused[k] for k in sorted(media - self.taken) if k in self.refused), None)
        if known:
            raise Refused(known)
        try:
            out = retry(self._one, messages, max_new_tokens, started, attempt)
        except openai.APIConnectionError as e:
            raise EngineDown(f"the server at {self.client.base_url} does not answer: {_said(e)}") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise Unauthorized(f"the server at {self.client.base_url} refused the key: {_said(e)}") from None
        except openai.APIStatusError as e:
            why = f"the server refused the request: {_said(e)}"
            for k in media - self.taken:
                self.refused.setdefault(k, f"{why} (it refused {k} before and has taken none)")
            raise Refused(why) from None
        except openai.APIError as e:  # an error event inside the stream: this request's answer is broken off
            raise Refused(f"the server's reply broke off: {_said(e)}") from None
        self.taken |= media
        return out

    def _one(self, messages: list[dict], max_new_tokens: int, started: float, attempt: dict) -> Output:
        import openai

        if self.should_stop():
            raise Interrupted()
        settings = sampling(self.generation, max_new_tokens, self.seed)
        attempt["sent"], attempt["why"] = True, None
        try:
            stream = self.client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                         stream_options={"include_usage": True}, **settings)
        except openai.APIStatusError as e:  # answered with an error status: providers bill nothing for it
            attempt["sent"], attempt["why"] = False, _said(e)
            raise
        except openai.APIConnectionError as e:
            if _never_sent(e):
                attempt["sent"], attempt["why"] = False, _said(e)
            raise
        text, first, usage, chunks = [], None, None, 0
        with stream:
            try:
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
            except (ValueError, TypeError, AttributeError) as e:  # an event that is not the JSON it should be
                raise Refused(f"the server's reply is not a chat completion stream: {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:120]}") from None
        done = time.perf_counter()
        if usage is None:
            raise Refused("the server sent no usage (stream_options.include_usage): its tokens cannot be counted")
        return Output(text="".join(text).strip(), prefill_tokens=_count(usage.prompt_tokens, "prompt_tokens"),
                      visual_tokens=None, decode_tokens=_count(usage.completion_tokens, "completion_tokens"),
                      ttft_s=(first or done) - started)


def _never_sent(e: BaseException) -> bool:
    """A connection error raised before the request reached the server (refused, unresolvable, no route)."""
    cause = e.__cause__ or e.__context__  # the HTTP library's error (openai names its module httpx or httpx2)
    return type(cause).__name__ in ("ConnectError", "ConnectTimeout")


def _said(e: BaseException | None) -> str:
    """An API error in one short line (its status and the server's message, never a request header)."""
    status = getattr(e, "status_code", None)
    body = getattr(e, "message", None) or str(e)
    return (f"HTTP {status}: " if status else "") + " ".join(str(body).split())[:200]

"""The server engines' client against a real HTTP server on loopback that answers like an OpenAI-compatible
one (server-sent events, a usage chunk) - or does not: 429 then success, 500 for ever, no usage, counts that
are not counts, nothing listening. Waits between retries go to an injected sleep: nothing here waits."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from runner.worker.client import EngineDown, Refused, ServerEngine
from runner.worker.generation import Interrupted, Request


class Fake:
    """What the server does with each request: a list of ("status", body) or ("stream", texts, usage)."""

    def __init__(self):
        self.script: list = []
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    def next(self, body: dict):
        with self.lock:
            self.bodies.append(body)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@pytest.fixture
def server():
    fake = Fake()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            step = fake.next(body)
            if step[0] == "status":
                data = json.dumps({"error": {"message": step[2]}}).encode()
                self.send_response(step[1])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            _, texts, usage = step
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
            chunks += [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in texts]
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": usage})
            for c in chunks:
                c.update(id="x", object="chat.completion.chunk", created=0, model="m")
                self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()


USAGE = {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}


def engine(url: str, slept: list, **kw) -> ServerEngine:
    return ServerEngine(url, "served", {"max_new_tokens": 9, "do_sample": False}, 7, lambda: False,
                        sleep=slept.append, **kw)


def image_request(text: str = "what is it?") -> Request:
    return Request(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                   images=[Image.new("RGB", (32, 24), (200, 10, 10))])


def test_a_batch_is_streamed_with_its_images_and_settings_and_counted_from_usage(server):
    server.script = [("stream", ["a red", " square"], USAGE)]
    slept = []
    batch = engine(server.url, slept, memory=lambda: [{"device": "cpu", "bytes": 5, "source": "server-rss"}]).run(
        [image_request("one"), image_request("two")], 4)
    assert [o.text for o in batch.outputs] == ["a red square"] * 2
    assert all(o.prefill_tokens == 21 and o.decode_tokens == 3 and o.visual_tokens is None for o in batch.outputs)
    assert all(0 <= o.ttft_s <= batch.latency_s for o in batch.outputs)
    assert batch.peak_bytes == 5 and slept == []
    body = server.bodies[0]
    assert body["model"] == "served" and body["max_tokens"] == 4 and body["temperature"] == 0 and body["seed"] == 7
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    image, _ = body["messages"][0]["content"]
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/png;base64,")
    assert {text["text"] for b in server.bodies for text in [b["messages"][0]["content"][1]]} == {"one", "two"}


def test_a_multi_turn_history_is_sent_as_messages_with_its_image_once(server):
    server.script = [("stream", ["ok"], USAGE)]
    history = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q1"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
               {"role": "user", "content": [{"type": "text", "text": "q2"}]}]
    engine(server.url, []).run([Request(messages=history, images=[Image.new("RGB", (8, 8))])], 4)
    sent = server.bodies[0]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [c["type"] for m in sent for c in m["content"]] == ["image_url", "text", "text", "text"]


def test_429_and_500_are_retried_on_the_injected_sleep(server):
    server.script = [("status", 429, "slow down"), ("status", 429, "slow down"), ("status", 429, "slow down"),
                     ("stream", ["fine"], USAGE)]
    slept = []
    batch = engine(server.url, slept).run([image_request()], 4)
    assert batch.outputs[0].text == "fine" and slept == [0.5, 1.0, 2.0] and len(server.bodies) == 4
    server.script, server.bodies = [("status", 503, "busy"), ("stream", ["fine again"], USAGE)], []
    assert engine(server.url, slept).run([image_request()], 4).outputs[0].text == "fine again"


def test_a_request_refused_after_the_retries_is_that_samples_error_and_its_media_is_not_tried_again(server):
    server.script = [("status", 500, "cannot decode the video")]
    slept = []
    eng = engine(server.url, slept)
    with pytest.raises(Refused, match="HTTP 500.*cannot decode"):
        eng.run([image_request()], 4)
    assert len(server.bodies) == 2 and slept == [0.5]  # a 5xx is tried twice (429 and resets: `attempts` times)
    with pytest.raises(Refused, match="refused image_url before"):  # not sent again: no retries paid twice
        eng.run([image_request()], 4)
    assert len(server.bodies) == 2
    server.script = [("stream", ["text only"], USAGE)]  # a request without that media still goes
    text = Request(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert eng.run([text], 4).outputs[0].text == "text only"


def test_a_400_is_refused_at_once(server):
    server.script = [("status", 400, "max_tokens too large")]
    slept = []
    with pytest.raises(Refused, match="HTTP 400"):
        engine(server.url, slept).run([image_request()], 4)
    assert slept == [] and len(server.bodies) == 1


@pytest.mark.parametrize("usage, why", [(None, "no usage"), ({"prompt_tokens": 3, "completion_tokens": -1}, "not a token count"),
                                        ({"prompt_tokens": "3", "completion_tokens": 1}, "not a token count")])
def test_what_the_server_claims_is_checked(server, usage, why):
    server.script = [("stream", ["x"], usage)]
    with pytest.raises(Refused, match=why):
        engine(server.url, []).run([image_request()], 4)


def test_a_server_that_does_not_answer_is_down_after_the_retries():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slept = []
    eng = engine(f"http://127.0.0.1:{port}/v1", slept)
    with pytest.raises(EngineDown, match="does not answer"):
        eng.run([image_request()], 4)
    assert slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # ~15 s: an engine restarting is back within it


def test_a_stop_request_interrupts_the_batch(server):
    server.script = [("stream", ["a"] * 50, USAGE)]
    eng = ServerEngine(server.url, "served", {"max_new_tokens": 9}, 0, lambda: len(server.bodies) >= 1)
    with pytest.raises(Interrupted):
        eng.run([image_request()], 4)


def test_retry_after_in_seconds_milliseconds_or_a_date_is_waited_up_to_a_minute():
    import email.utils
    import time as _time
    from types import SimpleNamespace

    from runner.worker.client import RETRY_AFTER_MAX_S, retry_after

    def said(**headers):
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert retry_after(said(**{"retry-after": "3"})) == 3.0
    assert retry_after(said(**{"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert retry_after(said(**{"retry-after": "86400"})) == RETRY_AFTER_MAX_S  # asked again after a minute
    when = email.utils.formatdate(_time.time() + 30, usegmt=True)
    assert 25 <= retry_after(said(**{"retry-after": when})) <= 30
    assert retry_after(said(**{"retry-after": "soon"})) == 0.0 and retry_after(said()) == 0.0
    assert retry_after(ValueError("no response")) == 0.0

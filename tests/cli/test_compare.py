"""`budget compare` against a real HTTP server on loopback that speaks chat completions like a hosted model -
server-sent events with `usage`, and the faults a hosted API has: 429 with Retry-After, 500, a slow reply,
malformed JSON, 401. The comparison runs in this process (as the command does), waits go to an injected sleep;
the ledger is a real SQLite file under a temporary BUDGET_HOME."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from planner.catalog import load_catalog
from planner.errors import InputError
from runner import compare
from runner.money import calls
from runner.money.ledger import Ledger
from runner.money.report import statement

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "plans" / "smoke.yaml"
KEY = "sk-test-NOT-A-REAL-KEY-4242"
PRICE = "model,input_per_1m,output_per_1m,currency,source,date,image_rule,image_max_tokens\n" \
        "ref-vl,2.50,10.00,USD,test,2026-12-07,openai-tiles,1445\n"


class Hosted:
    """The endpoint: `faults` are taken one per request first (then every request is answered); each answer's
    usage is derived from its request and recorded, so the test knows what a provider would have billed."""

    def __init__(self):
        self.faults: list = []
        self.billed: list[tuple[int, int]] = []  # usage of every answer sent whole
        self.answered: list[str] = []  # each answered request's messages (to find one sent twice)
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        self.hung = threading.Event()  # a "hang" fault arrived: the request is held, never answered
        self.release = threading.Event()

    def take(self):
        with self.lock:
            return self.faults.pop(0) if self.faults else None


@pytest.fixture
def hosted():
    h = Hosted()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _status(self, code: int, message: str, headers: dict | None = None):
            data = json.dumps({"error": {"message": message, "type": "test"}}).encode()
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            h.auth.add(self.headers.get("Authorization", ""))
            fault = h.take()
            if fault == "401":
                return self._status(401, "Incorrect API key provided")
            if fault == "429":
                return self._status(429, "Rate limit reached", {"Retry-After": "3"})
            if fault == "500":
                return self._status(500, "The server had an error")
            if fault == "slow":
                time.sleep(0.3)
            if fault == "hang":
                self.close_connection = True
                h.hung.set()
                h.release.wait(120)
                return
            messages = json.dumps(body["messages"], sort_keys=True)
            usage = {"prompt_tokens": 40 + len(messages) % 97, "completion_tokens": 1 + len(messages) % 5}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            if fault == "garbled":
                self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {"content": "12\n\n')
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True
                with h.lock:
                    h.billed.append((usage["prompt_tokens"], usage["completion_tokens"]))  # a provider bills it
                return
            chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "a red 12"}}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                      {"choices": [], "usage": usage}]
            for c in chunks:
                c.update(id="c", object="chat.completion.chunk", created=0, model=body["model"])
                self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True
            with h.lock:
                h.billed.append((usage["prompt_tokens"], usage["completion_tokens"]))
                h.answered.append(messages)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.handle_error = lambda request, address: None  # a client gone mid-reply (the faults above) is expected
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    h.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield h
    h.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "catalog").mkdir(parents=True)
    (home / "catalog" / "api_models.csv").write_text(PRICE)
    monkeypatch.setenv("BUDGET_HOME", str(home))
    monkeypatch.setenv("REF_KEY", KEY)
    return home


def ask(hosted, **kw) -> compare.Ask:
    return compare.Ask(base_url=hosted.url, **{"plan": SMOKE, "reference": "ref-vl", "api_key_env": "REF_KEY",
                                               "cases": 1, "yuan": Decimal(1), "concurrency": 2, **kw})


def expected_cny(billed: list[tuple[int, int]]) -> Decimal:
    usd = sum((p * Decimal("2.50") + c * Decimal("10.00")) / 1_000_000 for p, c in billed)
    return usd * load_catalog().fx["USD"].cny_per_unit


def test_a_comparison_bills_each_call_from_its_usage_exactly_and_keeps_the_key_out_of_every_file(hosted, home):
    hosted.faults = ["429", "slow", "500"]
    slept: list[float] = []
    o = compare.run(ask(hosted, cases=2), home, load_catalog(), sleep=slept.append)
    assert o.state == "done", o.reason
    assert 3 in slept  # the 429's Retry-After, waited on the injected sleep
    # 2 cases of each task, multi-turn ones a call per turn; the sweep and the fp16 check left out
    assert set(o.skipped) == {"sweep", "fp16_check"}
    assert {k: t["done"] for k, t in o.tasks.items()} == {"captions": 2, "documents": 2, "multiturn": 2, "poetry": 2,
                                                           "video": 2, "digits": 2}
    assert o.calls["calls"] == len(hosted.billed) >= 18  # one call per turn of each multi-turn case
    led = Ledger(home / "ledger.db")
    try:
        spent = led.spent_run(o.run_id)
        assert spent == expected_cny(hosted.billed)  # usage x the catalog's price x the rate, exact
        assert o.spent_cny == spent
        assert calls.open_calls(led, o.run_id) == []
        doc = statement(led, now=time.time())
        assert Decimal(doc["exact_spent_cny"]) == spent
        line = next(c for c in doc["charges"] if c["run"] == o.run_id)
        assert line["provider"] == "api" and line["instance_type"] == "ref-vl" and f"{len(hosted.billed)} calls" in line["reason"]
        assert Decimal(line["exact_cny"]) == spent
    finally:
        led.close()
    assert hosted.auth == {f"Bearer {KEY}"}
    for f in home.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_a_cap_smaller_than_the_plan_stops_before_overspending_and_a_rerun_resumes_without_paying_twice(hosted, home):
    led = Ledger(home / "ledger.db")
    led.ensure_pool("default", Decimal(5), time.time())  # the run's cap below its pool's
    led.close()
    o = compare.run(ask(hosted, yuan=Decimal("0.01")), home, load_catalog(), sleep=lambda s: None)
    assert (o.state, o.reason) == ("stopped", "budget")
    assert 0 < o.calls["calls"] < 10 and o.spent_cny <= Decimal("0.01")
    kept = sum(t["done"] for t in o.tasks.values())
    assert kept > 0
    first_calls = len(hosted.answered)
    again = compare.run(ask(hosted, yuan=Decimal(1)), home, load_catalog(), sleep=lambda s: None)
    assert again.run_id == o.run_id and again.resumed and again.state == "done"
    assert len(hosted.answered) > first_calls
    assert len(set(hosted.answered)) == len(hosted.answered)  # no case was asked (or paid for) twice
    led = Ledger(home / "ledger.db")
    try:
        assert led.spent_run(o.run_id) == expected_cny(hosted.billed)
        assert len(led.runs()) == 1
    finally:
        led.close()


def test_a_garbled_answer_is_billed_at_its_bound_and_that_case_is_an_error(hosted, home):
    hosted.faults = ["garbled"]
    o = compare.run(ask(hosted, cases=1), home, load_catalog(), sleep=lambda s: None)
    assert o.state == "done"
    led = Ledger(home / "ledger.db")
    try:
        rows = [dict(r) for r in led.db.execute("SELECT * FROM calls WHERE run_id=? ORDER BY id", (o.run_id,))]
    finally:
        led.close()
    garbled = [r for r in rows if r["detail"].startswith("billed at its bound")]
    assert len(garbled) == 1 and garbled[0]["amount_cny"] == garbled[0]["bound_cny"]
    assert Decimal(garbled[0]["bound_cny"]) >= expected_cny([hosted.billed[0]])  # never below what was billed
    assert sum(t.get("errors", 0) for t in o.tasks.values()) == 1


def test_a_refused_key_is_one_error_before_any_spend(hosted, home):
    hosted.faults = ["401"] * 50
    with pytest.raises(InputError) as e:
        compare.run(ask(hosted), home, load_catalog(), sleep=lambda s: None)
    assert "refused the key" in e.value.message and "--api-key-env" in e.value.hint
    led = Ledger(home / "ledger.db")
    try:
        (run,) = led.runs()
        assert run["state"] == "failed" and led.spent_run(run["id"]) == 0
    finally:
        led.close()


def test_refused_before_any_call_unknown_model_unset_key(hosted, home, monkeypatch):
    with pytest.raises(InputError, match="no price for the API model 'gpt-9'"):
        compare.run(ask(hosted, reference="gpt-9"), home, load_catalog())
    monkeypatch.delenv("REF_KEY")
    with pytest.raises(InputError, match="REF_KEY: that variable is not set"):
        compare.run(ask(hosted), home, load_catalog())
    with pytest.raises(InputError, match="needs a key"):
        compare.run(ask(hosted, api_key_env=None), home, load_catalog())
    assert hosted.billed == [] and not (home / "ledger.db").exists()


def test_the_command_prints_its_calls_and_spend_then_json_and_a_stopped_run_is_exit_1(hosted, home, cli):
    code, out, err = cli("compare", SMOKE, "--reference", "ref-vl", "--base-url", hosted.url, "--api-key-env", "REF_KEY",
                         "--cases", "1", "--yuan", "1")
    assert code == 0, err
    assert "ref-vl: run smoke-" in out and "calls billed" in out and "of the 1.00 CNY cap; done" in out
    assert "sweep: not compared" in out and "budget report --plan smoke" in out
    code, out, err = cli("compare", SMOKE, "--reference", "ref-vl", "--base-url", hosted.url, "--api-key-env", "REF_KEY",
                         "--cases", "2", "--yuan", "0.005", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["state"] == "stopped" and doc["reason"] == "budget"
    assert Decimal(doc["spent_cny"]) <= Decimal("0.005") and "rerun the same command to resume with a higher --yuan" in err
    assert "stopped (budget: the next call may cost up to " in err and "of the 0.0050 CNY cap is spent or reserved" in err


def test_bad_input_is_one_error_and_one_hint_exit_2(hosted, home, cli):
    for args, said in ((["--reference", "gpt-9"], "no price for the API model 'gpt-9'"),
                       (["--reference", "ref-vl", "--api-key-env", "1BAD"], "is not an environment variable name"),
                       (["--reference", "ref-vl", "--pool", "../x"], "--pool '../x' is not allowed"),
                       (["--reference", "ref-vl", "--yuan", "-1"], "--yuan")):
        code, _, err = cli("compare", SMOKE, "--base-url", hosted.url, *args)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and said in err and lines[0].startswith("error:") and lines[1].startswith("hint:"), err
        assert len(lines) == 2 and "Traceback" not in err
    assert hosted.billed == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_of_the_controller_mid_call_then_a_rerun_bills_that_call_at_its_bound_and_pays_no_case_twice(
        hosted, home):
    hosted.faults = [None, None, None, "hang"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "compare", str(SMOKE), "--reference", "ref-vl",
                             "--base-url", hosted.url, "--api-key-env", "REF_KEY", "--cases", "1", "--yuan", "1",
                             "--concurrency", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hosted.hung.wait(120), "the fourth call never came"
        os.kill(proc.pid, signal.SIGKILL)  # the controller dies with a call in flight
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    led = Ledger(home / "ledger.db")
    try:
        (run,) = led.runs()
        (open_call,) = calls.open_calls(led, run["id"])  # reserved, its outcome unknown
        bound = Decimal(led.db.execute("SELECT bound_cny FROM calls WHERE id=?", (open_call,)).fetchone()[0])
    finally:
        led.close()
    answered_before = len(hosted.answered)
    o = compare.run(ask(hosted), home, load_catalog(), sleep=lambda s: None)
    assert o.run_id == run["id"] and o.resumed and o.state == "done"
    assert len(hosted.answered) > answered_before and len(set(hosted.answered)) == len(hosted.answered)
    led = Ledger(home / "ledger.db")
    try:
        assert led.spent_run(o.run_id) == expected_cny(hosted.billed) + bound  # never below what it can have cost
    finally:
        led.close()


def test_a_batch_the_cap_cannot_pay_whole_goes_on_one_call_at_a_time_as_far_as_one_sent_alone(hosted, tmp_path,
                                                                                               monkeypatch):
    """Single-turn tasks, 4 calls in flight against 1: the same cases answered for the same yuan when the cap cuts
    in (a conversation's turns interleave with another's when batched, so multi-turn is left out here)."""
    import yaml

    monkeypatch.setenv("REF_KEY", KEY)
    doc = yaml.safe_load(SMOKE.read_text())
    doc["tasks"] = [t for t in doc["tasks"] if t["kind"] in ("caption", "document", "poetry", "digits")]
    plan = tmp_path / "single.yaml"
    plan.write_text(yaml.safe_dump(doc))
    got = {}
    for concurrency in (1, 4):
        home = tmp_path / f"c{concurrency}"
        (home / "catalog").mkdir(parents=True)
        (home / "catalog" / "api_models.csv").write_text(PRICE)
        o = compare.run(ask(hosted, plan=plan, cases=3, yuan=Decimal("0.02"), concurrency=concurrency), home,
                        load_catalog(), sleep=lambda s: None)
        assert (o.state, o.reason) == ("stopped", "budget")
        got[concurrency] = (o.calls["calls"], {k: t["done"] for k, t in o.tasks.items()}, o.spent_cny)
    assert got[4] == got[1]  # no affordable case left behind by a batch the cap could not pay whole


def test_budget_resume_of_a_comparison_says_how_to_resume_it(hosted, home, cli):
    o = compare.run(ask(hosted), home, load_catalog(), sleep=lambda s: None)
    code, _, err = cli("resume", o.run_id)
    assert code != 0 and "is a `budget compare` run" in err and "run the same `budget compare` command again" in err

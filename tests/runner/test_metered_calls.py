"""Metered calls (migration 8) in a real SQLite ledger: reserved against the run's and the pool's caps beside
the instances' projections, billed exactly from usage, released, billed at their bound when their outcome is
unknown; spend, statements (every grouping, the burn-down), the journal's rebuild and the cost of quality's
reference comparison all hold them."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from planner import apiprices
from planner.money import metered
from runner.money import calls, quality, recovery, report, results
from runner.money.aggregation import burn_down
from runner.money.guard import Policy
from runner.money.ledger import Ledger
from runner.money.periods import Period
from tests.runner.test_report import BIG, T0, launch, offer

RATE = calls.Rate("ref-vl", Decimal("2.50"), Decimal("10.00"), "USD", Decimal("7.12"))


def api_run(led: Ledger, run_id: str, pool: str = "p", cap: str = "1", plan: str = "p", run_dir: str = "") -> None:
    led.ensure_pool(pool, Decimal(100), T0 - 10)
    led.create_run(id=run_id, pool=pool, plan=plan, plan_path="x.yaml", provider="api", offer="ref-vl",
                   quantization="api", spot=0, cap_cny=Decimal(cap), estimate_cny=None, dir=run_dir, created_at=T0)


def test_a_call_is_reserved_at_its_bound_then_billed_exactly_from_its_usage(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    api_run(led, "r", cap="0.05")
    d, cid = calls.reserve(led, "r", RATE, Decimal("0.03"), T0)
    assert d.go and cid
    assert led.spent_run("r") == 0 and calls.held(led.db, run_id="r") == Decimal("0.03")
    d2, none = calls.reserve(led, "r", RATE, Decimal("0.03"), T0 + 1)  # 0.06 > 0.05 with the first still open
    assert not d2.go and none is None and d2.reason == "budget"
    amount = calls.bill(led, cid, 1234, 56, T0 + 2)
    assert amount == metered(1234, 56, Decimal("2.50"), Decimal("10.00"), Decimal("7.12")) == Decimal("0.0259524")  # (1234 x 2.5 + 56 x 10) x 7.12 / 1e6
    assert led.spent_run("r") == led.spent_pool("p") == amount
    _, cid3 = calls.reserve(led, "r", RATE, Decimal("0.03"), T0 + 3)  # 0.0259524 + 0.03 > 0.05
    assert cid3 is None
    _, cid4 = calls.reserve(led, "r", RATE, Decimal("0.02"), T0 + 3)
    calls.release(led, cid4, T0 + 4, "HTTP 500: not billed")
    _, cid5 = calls.reserve(led, "r", RATE, Decimal("0.02"), T0 + 5)
    assert calls.bill_bound(led, cid5, T0 + 6, "the connection broke after it was sent") == Decimal("0.02")
    assert led.spent_run("r") == amount + Decimal("0.02")
    assert calls.totals(led, "r")["calls"] == 2
    led.update_run("r", stop_requested=1)  # `budget stop RUN`: no call is reserved after it
    assert calls.reserve(led, "r", RATE, Decimal("0.0001"), T0 + 7)[0].reason == "stopped"
    led.close()


def test_calls_and_instances_share_a_pool_each_counting_the_other(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    led.ensure_pool("shared", Decimal(10), T0 - 10)
    led.create_run(id="gpu", pool="shared", plan="p", plan_path="x.yaml", provider="aws", offer="aws:x",
                   quantization="nf4", spot=0, cap_cny=Decimal(10), estimate_cny=None, dir="", created_at=T0)
    api_run(led, "api", pool="shared", cap="10")
    _, cid = calls.reserve(led, "api", RATE, Decimal("9.5"), T0)
    # a 1 CNY/h instance billed per hour cannot be admitted beside 9.5 CNY reserved under a 10 CNY pool
    d, iid = led.admit("gpu", offer=offer(3600, 3600), price_cny_h=Decimal(1), price_original_h=Decimal(1),
                       spot=False, provider="aws", now=T0, policy=BIG)
    assert not d.go and iid is None
    calls.release(led, cid, T0 + 1, "not sent")
    iid = launch(led, "gpu", offer(3600, 3600), Decimal(8), T0 + 2, [], None)  # now it fits; commits >= 8 CNY
    d, none = calls.reserve(led, "api", RATE, Decimal("2.5"), T0 + 3, Policy(tick_s=5, teardown_s=0))
    assert none is None and not d.go  # the instance's projection leaves less than 2.5 CNY in the pool
    led.close()


def test_statements_rebuild_and_burn_down_hold_metered_calls(tmp_path):
    home = tmp_path / "home"
    run_dir = home / "runs" / "api1"
    run_dir.mkdir(parents=True)
    led = Ledger(home / "ledger.db")
    api_run(led, "api1", cap="100", run_dir=str(run_dir))
    amounts = []
    for k, (p, c) in enumerate([(1000, 10), (2000, 20), (333, 7)]):
        _, cid = calls.reserve(led, "api1", RATE, Decimal(1), T0 + k * 40000)  # across midnight
        amounts.append(calls.bill(led, cid, p, c, T0 + k * 40000 + 5))
    calls.reserve(led, "api1", RATE, Decimal("0.5"), T0 + 90000)  # the controller dies with this call open
    total = sum(amounts, Decimal(0))
    doc = report.statement(led, now=T0 + 100000)
    assert Decimal(doc["exact_spent_cny"]) == total
    (line,) = [c for c in doc["charges"] if c["run"] == "api1"]
    assert line["reason"].startswith("3 calls: 3333 prompt + 37 completion tokens") and line["rate_cny_h"] is None
    for by in ("day", "provider", "run", "pool"):
        g = report.statement(led, by=by, now=T0 + 100000)["groups"]
        assert sum(Fraction(Decimal(x["exact_cny"])) for x in g) == total
    days = report.statement(led, by="day", now=T0 + 100000)["groups"]
    assert len(days) == 2  # the calls fell on two UTC days
    later = report.statement(led, period=Period(T0 + 30000, None), now=T0 + 100000)
    assert Decimal(later["exact_spent_cny"]) == amounts[1] + amounts[2]
    assert burn_down(led, Period(), None, T0 + 100000)[-1][1] == total
    led.close()
    (home / "ledger.db").unlink()
    recovery.rebuild(home, now=T0 + 200000)
    led = Ledger(home / "ledger.db")
    # rebuilt from money.jsonl: the billed calls as they were, the open one billed at its bound (never less)
    assert led.spent_run("api1") == total + Decimal("0.5")
    assert calls.open_calls(led, "api1") == []
    led.close()


def test_the_price_catalog_bounds_a_call_from_above(tmp_path):
    prices = apiprices.load()
    for name in ("gpt-4o", "qwen-vl-max"):
        assert name in prices and prices[name].source and prices[name].date
    gpt = prices["gpt-4o"]
    assert apiprices.openai_tiles(512, 512) == 85 + 170  # one tile
    assert apiprices.openai_tiles(4096, 2048) == 85 + 170 * 6  # fit to 2048x1024, then 1536x768: 3 x 2 tiles
    assert apiprices.image_bound(gpt, 4096, 2048) == min(85 + 170 * 6, gpt.image_max_tokens)
    assert apiprices.dashscope_28px(28, 28) == 4 + 2 and apiprices.dashscope_28px(280, 56) == 20 + 2
    # text: at most one token per UTF-8 byte (a byte-level BPE token covers at least one byte), framing per message
    assert apiprices.prompt_bound(gpt, 300, 2, [(512, 512)]) == 300 + 2 * apiprices.MESSAGE_TOKENS \
        + apiprices.REPLY_TOKENS + 255
    assert apiprices.call_bound(gpt, 1_000_000, 1_000_000) == Decimal("12.50")
    user = tmp_path / "catalog"
    user.mkdir()
    (user / "api_models.csv").write_text("model,input_per_1m,output_per_1m,currency,source,date\n"
                                         "gpt-4o,1,2,USD,our contract,2026-12-01\nmine,0,0,CNY,local,2026-12-01\n")
    mine = apiprices.load(user)
    assert mine["gpt-4o"].input_per_1m == 1 and mine["gpt-4o"].source == "our contract"  # replaced per model
    assert "qwen-vl-max" in mine and mine["mine"].free
    unknown_image = apiprices.ApiPrice("x", Decimal(1), Decimal(1), "USD", "s", "d")
    try:
        apiprices.prompt_bound(unknown_image, 10, 1, [(64, 64)])
    except apiprices.CatalogError as e:
        assert "image_max_tokens" in e.hint
    else:
        raise AssertionError("an image of unknown cost was bounded")


def _lines(task: str, kind: str, quant: str, answers: dict[str, tuple[str, str]]) -> str:
    out = []
    for i, (pred, truth) in answers.items():
        x = {"id": i, "task": task, "kind": kind, "quantization": quant, "attempt": 1, "status": "ok",
             "prompt": "q", "prediction": pred, "answers": [truth], "anls": 0.0, "prefill_tokens": 10,
             "visual_tokens": None, "decode_tokens": 4, "latency_s": 1.0, "ttft_s": 0.1, "batch_size": 1,
             "tokens_per_s": 4.0, "peak_memory": [], "peak_memory_bytes": None, "finished_at": "2026-12-07T00:00:00Z"}
        out.append(json.dumps(x))
    return "\n".join(out) + "\n"


def _held_run(led: Ledger, home: Path, run_id: str, quant: str, answers: dict, price: Decimal | None) -> None:
    d = home / "runs" / run_id
    (d / "out" / "results").mkdir(parents=True)
    job = {"tasks": [{"name": "documents", "kind": "document", "samples": len(answers)}]}
    if quant == "api":
        (d / "out" / "job.json").write_text(json.dumps(job))
        api_run(led, run_id, cap="100", plan="doc", run_dir=str(d))
        _, cid = calls.reserve(led, run_id, RATE, Decimal(1), T0)
        calls.bill(led, cid, 200_000, 10_000, T0 + 1)  # 0.00575 USD x 7.12 ... the reference's whole cost
    else:
        (d / "request.json").write_text(json.dumps({"job": job}))
        led.ensure_pool("p", Decimal(100), T0 - 10)
        led.create_run(id=run_id, pool="p", plan="doc", plan_path="x.yaml", provider="aws", offer="aws:x",
                       quantization=quant, spot=0, cap_cny=Decimal(100), estimate_cny=None, dir=str(d), created_at=T0)
        launch(led, run_id, offer(1, 0), price, T0, [], T0 + 3600)
    (d / "out" / "results" / "documents.jsonl").write_text(_lines("documents", "document", quant, answers))
    results.record_tasks(led, run_id, d / "out", job)


def reference_ledger(home: Path) -> None:
    """Plan `doc` in the ledger at `home`: a bf16 run and an nf4 run of 6 document cases (nf4 wrong on s0 and s5)
    and a compare run that asked the reference the first 2 - each with its result lines on disk."""
    led = Ledger(home / "ledger.db")
    truth = {f"s{i}": f"{1000 + i}.50" for i in range(6)}
    _held_run(led, home, "bf16run", "bf16", {k: (v, v) for k, v in truth.items()}, Decimal("0.60"))
    nf4 = {k: (v if k not in ("s0", "s5") else "0", v) for k, v in truth.items()}
    _held_run(led, home, "nf4run", "nf4", nf4, Decimal("0.30"))
    _held_run(led, home, "ref", "api", {k: (truth[k], truth[k]) for k in ("s0", "s1")}, None)
    led.close()


def test_the_cost_of_quality_puts_the_reference_beside_each_quantization_on_the_same_cases(tmp_path):
    home = tmp_path / "home"
    reference_ledger(home)
    led = Ledger(home / "ledger.db")
    doc = quality.cost_of_quality(led, plan="doc", now=T0 + 7200)
    ref = doc["reference"]
    assert ref["models"] == ["ref-vl"]
    rows = {r["quant"]: r for r in ref["rows"]}
    assert rows["bf16"]["cases"] == rows["nf4"]["cases"] == 2
    assert rows["bf16"]["score_pct"] == "100" and rows["nf4"]["score_pct"] == "50"  # s0 wrong: ANLS 0.5 vs 1.0
    # costs per case: bf16 0.60 CNY over 6 samples = 0.10; nf4 0.05; the reference's 2 calls... over its 2 cases
    r_case = metered(200_000, 10_000, Decimal("2.50"), Decimal("10.00"), Decimal("7.12")) / 2
    assert Decimal(rows["bf16"]["cny_per_case"]) == Decimal("0.1000")
    assert r_case == Decimal("2.136") and rows["bf16"]["cost_pct"] == "4.7"  # 0.10 / 2.136 = 4.68%
    assert ref["headlines"][0].startswith("bf16: 100% of ref-vl's score at ")
    assert any(h.startswith("nf4: 50% of ref-vl's score at ") for h in ref["headlines"])
    main = {r["quant"]: r for r in doc["rows"]}
    assert set(main) == {"bf16", "nf4"}  # the reference is beside the quantizations, not among them
    assert main["nf4"]["change_vs_16bit_pct"] == "-33.3" and main["bf16"]["change_vs_16bit_pct"] is None
    assert Decimal(doc["reference_cny"]) > 0
    led.close()


def test_budget_report_prints_the_real_reference_comparison_in_text_csv_and_json(tmp_path, monkeypatch, cli):
    import csv
    import io

    home = tmp_path / "home"
    reference_ledger(home)
    monkeypatch.setenv("BUDGET_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = cli("report", "--plan", "doc")
    assert code == 0, err
    assert "Against reference models (ref-vl), on the same cases" in out and "nf4: 50% of ref-vl's score at" in out
    code, out, err = cli("report", "--plan", "doc", "--format", "json")
    doc = json.loads(out)
    assert [r["quant"] for r in doc["reference"]["rows"]] == ["bf16", "nf4"]
    code, out, err = cli("report", "--plan", "doc", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.lstrip("\ufeff"))))
    refs = [r for r in rows if r["section"] == "reference"]
    assert {r["quant"]: r["score_pct"] for r in refs} == {"bf16": "100", "nf4": "50"}
    assert {r["quant"]: r["change_vs_16bit_pct"] for r in rows if r["section"] == "quality"}["nf4"] == "-33.3"

"""`budget report`'s statement over real SQLite ledgers written through the Ledger's own API (admission,
ticks, settlement): every grouping sums to the total, exactly, and to the ledger's own total to the cent."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner import money
from planner.models import Offer
from runner.money import aggregation, documents, periods, report, results
from runner.money.guard import Policy
from runner.money.ledger import Ledger
from tests.runner.conftest import need

T0 = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 80000  # 22:13 UTC: runs cross midnight
BIG = Policy(tick_s=5, teardown_s=0, lease_s=10**7)
QUANTS = ["bf16", "fp16", "int8", "nf4"]


def offer(increment: int, minimum: int, gpu: str = "T4", count: int = 1, currency: str = "USD") -> Offer:
    return Offer(provider="aws" if currency == "USD" else "local", instance_type=f"g.{gpu.lower()}x{count}", gpu=gpu,
                 gpu_count=count, price=Decimal(1), currency=currency, region="us-east-1",
                 billing_increment_s=increment, billing_minimum_s=minimum)


def new_run(led: Ledger, run_id: str, pool: str, *, quant="nf4", plan="p", estimate="1.00", at=T0) -> None:
    led.ensure_pool(pool, Decimal(10**6), at - 10)
    led.create_run(id=run_id, pool=pool, plan=plan, plan_path="x.yaml", provider="aws", offer="aws:x",
                   quantization=quant, spot=0, cap_cny=Decimal(10**6), estimate_cny=Decimal(estimate),
                   dir="", created_at=at)


def launch(led: Ledger, run_id: str, o: Offer, price: Decimal, at: float, ticks: list[float],
           end: float | None) -> int:
    d, iid = led.admit(run_id, offer=o, price_cny_h=price, price_original_h=price / Decimal("7.2"), spot=False,
                       provider=o.provider, now=at, policy=BIG)
    assert d.go
    led.set_instance(iid, state="running", launched_at=at)
    for t in ticks:
        led.tick(iid, t, BIG)
    if end is not None:
        led.settle(iid, end)
    return iid


def ledger_total(led: Ledger, pools: list[str] | None = None) -> Decimal:
    q = "SELECT s.amount_cny FROM spend s JOIN instances i ON i.id=s.instance_id"
    rows = led.db.execute(q + (f" WHERE i.pool IN ({','.join('?' * len(pools))})" if pools else ""), pools or [])
    return sum((Decimal(r[0]) for r in rows), Decimal(0))


def no_floats(doc) -> None:
    if isinstance(doc, dict):
        for v in doc.values():
            no_floats(v)
    elif isinstance(doc, list):
        for v in doc:
            no_floats(v)
    else:
        assert not isinstance(doc, float), doc


instance_st = st.fixed_dictionaries({
    "pool": st.integers(0, 2), "run": st.integers(0, 4),
    "price": st.decimals(min_value=Decimal("0.01"), max_value=Decimal(80), places=4),
    "rule": st.sampled_from([(1, 0), (1, 60), (60, 60), (3600, 3600), (86400, 0)]),
    "start": st.floats(0, 3 * 86400), "gaps": st.lists(st.floats(0.5, 9000), min_size=0, max_size=6),
    "ends": st.booleans(), "tail": st.floats(0, 40000),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances=st.lists(instance_st, min_size=1, max_size=8), cut=st.floats(-86400, 5 * 86400),
       width=st.floats(1, 4 * 86400), by=st.sampled_from(periods.GROUPS),
       busy=st.lists(st.integers(0, 500), min_size=3, max_size=3))
def test_every_grouping_sums_to_the_total_to_the_cent(instances, cut, width, by, busy):
    led = Ledger(":memory:")
    for n, spec in enumerate(instances):
        run_id = f"r{spec['run']}-p{spec['pool']}"
        if led.run(run_id) is None:
            new_run(led, run_id, f"pool{spec['pool']}", quant=QUANTS[spec["run"] % 4], plan=f"plan{spec['run'] % 2}")
            if spec["run"] % 2:  # some runs have task results, some with no busy time at all
                results.save_tasks(led, run_id, {f"t{k}": {"kind": "caption", "done": 1, "busy_s": b}
                                                 for k, b in enumerate(busy)})
        start = T0 + spec["start"]
        ticks, t = [], start
        for g in spec["gaps"]:
            t += g
            ticks.append(t)
        launch(led, run_id, offer(*spec["rule"], gpu=["T4", "A10G", "L4"][n % 3], count=1 + n % 2),
               spec["price"], start, ticks, t + spec["tail"] if spec["ends"] else None)
    whole = report.statement(led, by=by, now=T0 + 10 * 86400)
    no_floats(whole)
    # the whole ledger: the statement's total is the ledger's own sum of its spend rows, to the cent
    assert Decimal(whole["spent_cny"]) == ledger_total(led).quantize(Decimal("0.01"))
    assert sum(Decimal(g["amount_cny"]) for g in whole["groups"]) == Decimal(whole["spent_cny"])
    # exactly, before any rounding: the groups' exact sums are the total's
    insts = aggregation.instances(led, None)
    cells = aggregation.billed(led, periods.Period(), by in periods.TIME_GROUPS, None)
    total = sum((insts[i].amount(s) for (_, i), s in cells.items()), Fraction(0))
    assert sum((g[0] for g in aggregation.grouped(cells, insts, by, led).values()), Fraction(0)) == total
    # a period cut anywhere: before + inside + after is the whole, exactly; each view sums to its own total
    lo, hi = T0 + cut, T0 + cut + width
    parts = [periods.Period(None, lo), periods.Period(lo, hi), periods.Period(hi, None)]
    exact = []
    for p in parts:
        c = aggregation.billed(led, p, by in periods.TIME_GROUPS, None)
        exact.append(sum((insts[i].amount(s) for (_, i), s in c.items()), Fraction(0)))
        assert sum((g[0] for g in aggregation.grouped(c, insts, by, led).values()), Fraction(0)) == exact[-1]
    assert sum(exact, Fraction(0)) == total
    mid = report.statement(led, period=parts[1], by=by, now=T0 + 10 * 86400)
    assert sum(Decimal(g["amount_cny"]) for g in mid["groups"]) == Decimal(mid["spent_cny"])
    assert Decimal(mid["opening_balance_cny"]) - Decimal(mid["spent_cny"]) - Decimal(mid["remaining_cny"]) \
        in (Decimal(0), Decimal("0.01"), Decimal("-0.01"))
    # the per-instance statement of one pool: its lines sum to its total, which is the pool's ledger total
    pool = f"pool{instances[0]['pool']}"
    one = report.statement(led, pool=pool, now=T0 + 10 * 86400)
    assert sum(Decimal(c["amount_cny"]) for c in one["charges"]) == Decimal(one["spent_cny"])
    assert Decimal(one["spent_cny"]) == ledger_total(led, [pool]).quantize(Decimal("0.01"))
    led.close()


def test_an_interval_across_midnight_bills_both_days_in_proportion():
    led = Ledger(":memory:")
    midnight = T0 - 80000 + 86400
    new_run(led, "r1", "p")
    # 36 CNY/h per second: one interval from 23:00 to 01:00 -> 36 CNY on each day
    launch(led, "r1", offer(1, 0), Decimal(36), midnight - 3600, [], midnight + 3600)
    doc = report.statement(led, by="day", now=midnight + 86400)
    assert [(g["key"], g["amount_cny"]) for g in doc["groups"]] == [
        (periods.bucket(int((midnight - 1) // 86400), "day"), "36.00"),
        (periods.bucket(int(midnight // 86400), "day"), "36.00")]
    half = report.statement(led, period=periods.Period(midnight - 1800, midnight + 900), now=midnight + 86400)
    assert half["spent_cny"] == "27.00" and half["charges"][0]["billed"] == "0:45:00"


def test_lines_add_up_to_the_printed_total():
    # three lines of 1/3 CNY: 0.33 + 0.33 + 0.34 = 1.00, never 0.99
    assert money.apportion([Fraction(1, 3)] * 3) == [34, 33, 33]
    assert money.apportion([Fraction(1, 200), Fraction(1, 200)]) == [1, 0]  # 0.01 total (half-even of 0.01)
    assert money.yuan(money.cents(Fraction(1, 200))) == "0.00"  # 0.005 -> 0.00 half-even
    assert money.yuan(money.cents(Fraction(3, 200))) == "0.02"  # 0.015 -> 0.02


def test_one_display_rule_for_statements_and_logs():
    """The statement's amounts, runner/units.money and the planner's messages round by planner/money.py."""
    from runner.units import money as shown

    assert shown(Decimal("0.02365")) == money.display(Decimal("0.02365")) == "0.0236"
    assert shown(Decimal("12.345")) == "12.34" and report.exact(Fraction(0)) == "0.000000000000"


def test_charge_lines_say_what_was_recorded_at_launch():
    led = Ledger(":memory:")
    new_run(led, "r1", "p", estimate="10.00")
    iid = launch(led, "r1", offer(3600, 3600, gpu="A10G", count=4), Decimal("36.72"), T0, [T0 + 100], T0 + 4000)
    new_run(led, "r2", "p", at=T0 + 5000)
    led.update_run("r2", state="failed", reason="launch refused: InsufficientInstanceCapacity")
    _d, failed = led.admit("r2", offer=offer(1, 60), price_cny_h=Decimal(5), price_original_h=Decimal("0.69"),
                          spot=True, provider="aws", now=T0 + 5000, policy=BIG)
    led.settle(failed, None, "failed")
    new_run(led, "r3", "p", at=T0 + 6000)
    led.update_run("r3", state="failed", reason="preflight: no SSH key")
    new_run(led, "r4", "p", at=T0 + 7000)
    launch(led, "r4", offer(1, 60), Decimal(18), T0 + 7000, [T0 + 7100], None)
    doc = report.statement(led, now=T0 + 7105)
    by_run = {c["run"]: c for c in doc["charges"]}
    c = by_run["r1"]
    # hourly billing: 4000 s are two hours at 36.72 CNY/h, FX 7.2 at launch
    assert (c["gpu"], c["gpu_count"], c["billed"], c["amount_cny"], c["fx_cny_per_unit"], c["currency"]) == \
        ("A10G", 4, "2:00:00", "73.44", "7.2", "USD")
    assert c["rate_cny_h"] == "36.72" and c["status"] == "terminated"
    assert (by_run["r2"]["amount_cny"], by_run["r2"]["status"]) == ("0.00", "not billed")
    assert "InsufficientInstanceCapacity" in by_run["r2"]["reason"]
    assert (by_run["r3"]["amount_cny"], by_run["r3"]["status"], by_run["r3"]["reason"]) == \
        ("0.00", "never launched", "preflight: no SSH key")
    assert by_run["r4"]["status"] == "accruing" and by_run["r4"]["amount_cny"] == "0.50"  # 100 s at 18 CNY/h
    assert doc["burn"]["current_cny_per_h"] == "18.00" and doc["runway_basis"] == "the live instances' rate"
    var = {v["run"]: v for v in doc["variance"]["runs"]}
    assert (var["r1"]["estimate_cny"], var["r1"]["actual_cny"], var["r1"]["variance_cny"], var["r1"]["variance_pct"]) \
        == ("10.00", "73.44", "63.44", "+634.4")
    assert doc["spent_cny"] == "73.94" and json.loads(json.dumps(doc)) == doc
    iid_row = led.instance(iid)
    assert (iid_row.gpu, iid_row.gpu_count) == ("A10G", 4)
    led.close()


def test_task_grouping_shares_a_run_by_busy_seconds():
    led = Ledger(":memory:")
    new_run(led, "r1", "p")
    results.save_tasks(led, "r1", {"captions": {"kind": "caption", "done": 4, "busy_s": 30},
                                    "documents": {"kind": "document", "done": 2, "busy_s": 10}})
    launch(led, "r1", offer(1, 0), Decimal(36), T0, [], T0 + 1000)  # 10 CNY
    doc = report.statement(led, by="task", now=T0 + 2000)
    assert [(g["key"], g["amount_cny"], g["share_pct"]) for g in doc["groups"]] == [
        ("captions", "7.50", "75.0"), ("documents", "2.50", "25.0")]


# ---------------------------------------------------------------------------------------------- the command


def demo_home(home: Path) -> dict:
    """A ledger like a week of work: three quantizations of one plan (with task results and a memory
    sweep), a launch that never billed, a run that failed before launch, one instance still running."""
    home.mkdir(parents=True, exist_ok=True)
    led = Ledger(home / "ledger.db")
    now = time.time()
    day0 = now - 3 * 86400
    for k, q in enumerate(["bf16", "nf4", "int8"]):
        rid = f"smoke-{q}"
        new_run(led, rid, "team", quant=q, plan="smoke", estimate="5.00", at=day0 + k * 30000)
        results.save_tasks(led, rid, {
            "captions": {"kind": "caption", "done": 4, "ok": 4, "busy_s": 30 - 5 * k, "cider_d": 0.9 - 0.05 * k,
                         "decode_tokens": 400 + 10 * k, "peak_memory_bytes": (3 - k) * 2**30},
            "sweep": {"kind": "memory_sweep", "done": 2, "ok": 2, "busy_s": 3, "peak_memory_bytes": (4 - k) * 2**30,
                      "by_resolution": [{"resolution": [448, 448], "status": "ok", "peak_memory_bytes": (3 - k) * 2**30},
                                        {"resolution": [1024, 1024], "status": "ok",
                                         "peak_memory_bytes": (4 - k) * 2**30}]},
            "fp16_check": {"kind": "fp16_verify", "done": 2, "ok": 2, "busy_s": 4, "agreement": 0.5,
                           "of_task": "captions"}})
        start = day0 + k * 30000
        launch(led, rid, offer(1, 60, gpu="T4"), Decimal("3.7872") * (3 - k) / 2, start, [start + 3000], start + 7000)
        led.update_run(rid, state="done")
    new_run(led, "refused", "team", at=day0 + 100000)
    led.update_run("refused", state="failed", reason="InsufficientInstanceCapacity")
    _, iid = led.admit("refused", offer=offer(1, 60), price_cny_h=Decimal(5), price_original_h=Decimal("0.69"),
                       spot=True, provider="aws", now=day0 + 100000, policy=BIG)
    led.settle(iid, None, "failed")
    new_run(led, "live", "other", at=now - 600)
    launch(led, "live", offer(3600, 3600, gpu="L4", currency="CNY"), Decimal("6.5"), now - 600, [now - 5], None)
    led.close()
    return {"now": now, "day0": day0}


def test_the_files_agree_with_each_other_and_the_ledger(cli, budget_home, tmp_path):
    demo_home(budget_home)
    for args in ([], ["--by", "day"], ["--by", "gpu", "--pool", "team"], ["--plan", "smoke"]):
        code, out, err = cli("report", *args, "--format", "json")
        assert code == 0, err
        doc = json.loads(out)
        code, _, err = cli("report", *args, "--format", "csv", "--out", tmp_path / "r.csv")
        assert code == 0 and "wrote" in err
        raw = (tmp_path / "r.csv").read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") and raw.count(b"\r\n") >= 2  # Excel's UTF-8 marker, one header row
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
        amount = "cost_cny" if doc["view"] == "quality" else "amount_cny"
        total = doc["attributed_cny"] if doc["view"] == "quality" else doc["spent_cny"]
        assert sum(Decimal(r[amount]) for r in rows) == Decimal(total)
        assert all(re.fullmatch(r"-?\d+\.\d\d", r[amount]) for r in rows)
        for r in rows:
            for key in ("started_at", "ended_at"):
                assert key not in r or r[key] == "-" or re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[key])
        try:
            import pandas
        except ImportError:
            continue
        frame = pandas.read_csv(tmp_path / "r.csv", dtype=str, encoding="utf-8-sig")
        assert sum(Decimal(x) for x in frame[amount]) == Decimal(total)
    code, out, _ = cli("report", "--format", "json")
    doc = json.loads(out)
    led = Ledger(budget_home / "ledger.db")
    assert Decimal(doc["spent_cny"]) == ledger_total(led).quantize(Decimal("0.01"))
    led.close()
    status = {c["run"]: c["status"] for c in doc["charges"]}
    assert status["live"] == "accruing" and status["refused"] == "not billed" and status["smoke-bf16"] == "terminated"
    code, out, _ = cli("report", "--plan", "smoke")
    assert code == 0 and "nf4: 94% of bf16's CIDEr-D (captions) at" in out
    code, out, _ = cli("report")
    assert code == 0 and "accruing" in out and "6.50 CNY/h now" in out


@pytest.mark.parametrize("args, message", [
    (["--pool", "nope"], "no pool 'nope'"),
    (["--run", "nope"], "no run 'nope'"),
    (["--plan", "nope"], "no runs of plan 'nope'"),
    (["--since", "2026-11-30", "--until", "2026-11-01"], "is not before --until"),
    (["--since", "last tuesday"], "--since 'last tuesday' is not a date"),
    (["--until", "2026-13-01"], "--until '2026-13-01' is not a date"),
    (["--by", "hour"], "--by 'hour' is not one of"),
    (["--format", "pdf"], "--format 'pdf' is not one of"),
    (["--out", "{tmp}/missing/r.csv", "--format", "csv"], "does not exist"),
    (["--out", "{tmp}", "--format", "csv"], "is a directory"),
    (["--out", "/proc/r.csv", "--format", "csv"], "cannot be written"),
    (["--run", "smoke-nf4", "--by", "day"], "belong to the statement"),
])
def test_bad_input_is_one_error_and_a_hint(cli, budget_home, tmp_path, args, message):
    demo_home(budget_home)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, err = cli("report", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    lines = err.strip().splitlines()
    assert code == 2 and not out and len(lines) == 2, err
    assert lines[0].startswith("error: ") and message in lines[0] and lines[1].startswith("hint: ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_an_empty_ledger_is_bad_input_and_stays_unwritten(cli, budget_home, tmp_path):
    code, _out, err = cli("report", "--format", "csv", "--out", tmp_path / "r.csv")
    assert code == 2 and "nothing has been run" in err and "hint: " in err
    assert not (budget_home / "ledger.db").exists() and not (tmp_path / "r.csv").exists()
    Ledger(budget_home / "ledger.db").close()  # a ledger with no runs yet
    code, _, err = cli("report")
    assert code == 2 and "holds no runs yet" in err


def browser():
    """Playwright driving Debian's chromium (or Playwright's own, if it has one)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, None
    exe = os.environ.get("GPUBUDGET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return sync_playwright, exe


def crowd(home: Path, runs: int = 14) -> None:
    """Many runs with long names, long plan names, foreign-currency rates with long digits, and a launch refused
    with a long reason: the statement a wide table would overflow."""
    led = Ledger(home / "ledger.db")
    at = time.time() - 2 * 86400
    for n in range(runs):
        rid = f"captioning-benchmark-{n:02d}-qwen3-vl-8b-instruct-{QUANTS[n % 4]}-long-descriptive-suffix"
        new_run(led, rid, "research-team-pool-with-a-long-name", quant=QUANTS[n % 4],
                plan="multimodal-evaluation-plan-with-a-very-long-name", at=at + n * 600)
        o = offer(60 if n % 2 else 1, 60, gpu=["A10G", "L40S", "H100"][n % 3], count=1 + n % 4)
        launch(led, rid, o, Decimal("36.7233") + n, at + n * 600, [at + n * 600 + 300], at + n * 600 + 500)
    rid = "captioning-benchmark-refused-qwen3-vl-8b-instruct-nf4-long-descriptive-suffix"
    new_run(led, rid, "research-team-pool-with-a-long-name", at=at + runs * 600)
    led.update_run(rid, state="failed", reason="launch refused: InsufficientInstanceCapacity in every zone tried "
                   "(us-east-1a, us-east-1b, us-east-1c, us-east-1d) after 3 attempts")
    _, iid = led.admit(rid, offer=offer(1, 60), price_cny_h=Decimal(5), price_original_h=Decimal(5) / Decimal(7),
                       spot=True, provider="aws", now=at + runs * 600, policy=BIG)
    led.settle(iid, None, "failed")
    led.close()


REFERENCE = {
    "models": ["gpt-4o"],
    "headlines": ["nf4: 86% of gpt-4o's score at 2% of its cost per case (5 cases of 4 tasks)",
                  "int8: 91% of gpt-4o's score at 3% of its cost per case (5 cases of 4 tasks)"],
    "rows": [{"task": "captions", "metric": "CIDEr-D", "cases": 5, "reference": "gpt-4o", "quant": q,
              "reference_value": "0.8123", "value": v, "score_pct": pct, "reference_cny_per_case": "0.0213",
              "cny_per_case": c, "cost_pct": cp}
             for q, v, pct, c, cp in (("nf4", "0.7011", "86", "0.0004", "2"), ("int8", "0.7400", "91", "0.0006", "3"))],
    "note": "a hosted model's score depends on its version and the date it was asked"}


def with_reference(monkeypatch) -> None:
    """The cost of quality as the real path computes it, its reference comparison and change against 16-bit
    replaced by hand-built ones for plan `smoke` (fixed figures for the layout; test_metered_calls.py and plan
    `doc` below check the real ones)."""
    import copy

    from runner.money import quality

    real = quality.cost_of_quality

    def cost_of_quality(*args, **kw):
        doc = real(*args, **kw)
        if kw.get("plan") != "smoke":
            return doc
        doc["rows"] = [{**{k: v for k, v in r.items() if k != "cost_cny"},
                        "change_vs_16bit_pct": None if r["quant"] == "bf16" or r["value"] is None else "-5.6",
                        "cost_cny": r["cost_cny"]} for r in doc["rows"]]
        doc["reference"] = copy.deepcopy(REFERENCE)
        return doc

    monkeypatch.setattr(quality, "cost_of_quality", cost_of_quality)


def test_the_reference_comparison_in_every_format(cli, budget_home, tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "charts", lambda *a: [])  # the tables only (the browser test draws the charts)
    demo_home(budget_home)
    with_reference(monkeypatch)
    code, out, err = cli("report", "--plan", "smoke", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["reference"] == REFERENCE
    code, out, err = cli("report", "--plan", "smoke")
    assert code == 0, err
    assert "Against reference models (gpt-4o), on the same cases" in out and REFERENCE["headlines"][0] in out
    assert "note: a hosted model's score depends on its version" in out and "-5.6%" in out
    row = next(line.split() for line in out.splitlines() if line.split()[:2] == ["captions", "CIDEr-D"])
    assert row == ["captions", "CIDEr-D", "5", "nf4", "0.7011", "gpt-4o", "0.8123", "86%", "0.0004", "0.0213", "2%"]
    code, out, err = cli("report", "--plan", "smoke", "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out.lstrip("\ufeff"))))
    assert {r["section"] for r in rows} == {"quality", "reference"}
    mine = [r for r in rows if r["section"] == "quality"]
    assert len(mine) == len(doc["rows"]) and {r["change_vs_16bit_pct"] for r in mine} == {"", "-5.6"}
    assert sum(Decimal(r["cost_cny"]) for r in mine) == Decimal(doc["attributed_cny"])
    ref = [r for r in rows if r["section"] == "reference"]
    assert [(r["quant"], r["reference"], r["score_pct"], r["cny_per_case"], r["note"]) for r in ref] == [
        ("nf4", "gpt-4o", "86", "0.0004", REFERENCE["note"]), ("int8", "gpt-4o", "91", "0.0006", REFERENCE["note"])]
    code, _, err = cli("report", "--plan", "smoke", "--format", "html", "--out", tmp_path / "q.html")
    assert code == 0, err
    page = (tmp_path / "q.html").read_text()
    assert all(html_escape(h) in page for h in REFERENCE["headlines"]) and html_escape(REFERENCE["note"]) in page
    for key in REFERENCE["rows"][0]:  # every key of the reference rows has its column
        assert f">{html_escape(documents.header(key))}</th>" in page, key


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_every_table_header_is_a_human_one_and_nothing_is_dropped(cli, budget_home, tmp_path, monkeypatch):
    """One mapping from document keys to headers covers every key the tables show; the charges table keeps the
    reader's columns and every other key of a charge line is in the details table below it."""
    monkeypatch.setattr(documents, "charts", lambda *a: [])  # the tables only (the browser test draws the charts)
    demo_home(budget_home)
    crowd(budget_home, runs=2)
    for args in ([], ["--by", "day"], ["--by", "week"], ["--by", "gpu"], ["--plan", "smoke"]):
        code, out, err = cli("report", *args, "--format", "json")
        assert code == 0, err
        doc = json.loads(out)
        code, _, err = cli("report", *args, "--format", "html", "--out", tmp_path / "r.html")
        assert code == 0, err
        page = (tmp_path / "r.html").read_text()
        heads = re.findall(r"<th[^>]*>([^<]*)</th>", page)
        assert heads and all(re.fullmatch(r"#|[A-Z][^_]*", h) for h in heads), heads
        _, rows = documents.rows_of(doc)
        keys = {k for r in rows for k in r} - {"section"} - set(documents.FOLDED)
        keys |= {k for r in doc.get("variance", {}).get("runs", []) for k in r}
        assert keys <= set(documents.HEADERS), keys - set(documents.HEADERS)
        assert all(f">{html_escape(documents.header(k))}</th>" in page for k in keys), args
    charges = json.loads(cli("report", "--format", "json")[1])["charges"]
    cli("report", "--format", "html", "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    main, details = page.split("<h3>Charges: details</h3>")
    main = main.split("<h2>Charges</h2>")[1]
    main_heads = re.findall(r"<th[^>]*>([^<]*)</th>", main)
    assert main_heads == ["#", "Run", "Plan", "Quantization", "Provider", "GPU", "Started (UTC)", "Ended (UTC)",
                          "Billed (h:mm:ss)", "Rate (CNY/h)", "Amount (CNY)", "Status"]
    assert "InsufficientInstanceCapacity in every zone" in main and "A10G\u00a0x" in main  # folded into cells
    for n, c in enumerate(charges, 1):  # the details table is joined on # and run
        row = re.search(rf"<tr><td class=\"n\">{n}</td><td[^>]*>(.*?)</tr>", details).group(1)
        assert html_escape(c["run"]) in row and c["exact_cny"] in row and c["instance_type"] in row
        assert c["fx_cny_per_unit"] is None or c["fx_cny_per_unit"] in row
    assert documents.header("some_new_rate_cny_h") == "Some new rate (CNY/h)"  # a key the mapping lacks




def test_the_html_report_renders_in_a_real_browser(cli, budget_home, tmp_path, monkeypatch):
    """The statement and the cost of quality (with a reference comparison) as a reader sees them at 1280 px:
    no horizontal scrollbar for many runs with long names, human headers, money right-aligned in tabular
    figures, every chart drawn, nothing fetched or run."""
    sync_playwright, exe = browser()
    need("playwright + chromium (apt-get install chromium; pip install playwright)", sync_playwright is not None
         and exe is not None)
    from tests.runner.test_metered_calls import reference_ledger

    demo_home(budget_home)
    crowd(budget_home)
    reference_ledger(budget_home)  # plan `doc`: bf16 and nf4 runs and a real compare run, lines on disk
    with_reference(monkeypatch)
    pages = {"statement": tmp_path / "report.html", "quality": tmp_path / "quality.html",
             "reference": tmp_path / "reference.html"}
    for args, page_file in ((["report"], pages["statement"]), (["report", "--plan", "smoke"], pages["quality"]),
                            (["report", "--plan", "doc"], pages["reference"])):
        code, _, err = cli(*args, "--format", "html", "--out", page_file)
        assert code == 0, err
        text = page_file.read_text()
        assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing fetched or run
    seen = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = b.new_page(viewport={"width": 1280, "height": 900})
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: problems.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            for name, page_file in pages.items():
                page.goto(page_file.as_uri(), wait_until="load")
                seen[name] = page.evaluate("""() => ({
                  width: document.documentElement.scrollWidth,
                  images: Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]),
                  headers: Array.from(document.querySelectorAll('th')).map(t => t.textContent),
                  money: Array.from(document.querySelectorAll('td.money')).map(c => [c.textContent,
                    getComputedStyle(c).textAlign, getComputedStyle(c).fontVariantNumeric]),
                  amounts: Array.from(document.querySelectorAll('table')).flatMap(t => {
                    const i = Array.from(t.querySelectorAll('th')).findIndex(h => h.textContent === 'Amount (CNY)');
                    return i < 0 ? [] : Array.from(t.querySelectorAll('tbody tr')).map(r => r.cells[i].className)}),
                  headlines: Array.from(document.querySelectorAll('ul.headlines li')).map(li => li.textContent)})""")
                shot = tmp_path / f"{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                assert int.from_bytes(shot.read_bytes()[16:20], "big") == 1280  # IHDR width: no sideways overflow
        finally:
            b.close()
    assert not problems, problems
    for name, got in seen.items():
        assert got["width"] <= 1280, (name, got["width"])  # no horizontal scrollbar
        assert got["headers"] and all(re.fullmatch(r"#|[A-Z][^_]*", h) for h in got["headers"]), got["headers"]
        assert got["money"] and all(a == "right" and "tabular-nums" in f for _, a, f in got["money"]), got["money"]
        assert all(done and width > 0 for _, done, width in got["images"]), got["images"]
    statement, quality = seen["statement"], seen["quality"]
    assert len(statement["amounts"]) >= 14 + 5 and all("money" in c for c in statement["amounts"])
    assert {"Amount (CNY)", "Rate (CNY/h)", "Instance type", "Billed (s)", "FX (CNY per unit)"} <= set(
        statement["headers"])
    titles = [alt for alt, _, _ in statement["images"]]
    assert any("Burn-down" in t for t in titles) and any("provider and GPU" in t for t in titles)
    assert any("Cost vs quality" in t for t in titles) and any("memory sweep" in t for t in titles)
    assert quality["headlines"] == REFERENCE["headlines"]
    assert {"Reference model", "Score vs reference (%)", "Change vs 16-bit (%)"} <= set(quality["headers"])
    real = seen["reference"]["headlines"]  # computed by quality.py from the compare run's lines, not hand-built
    assert len(real) == 2 and real[0].startswith("bf16: 100% of ref-vl's score at ") and real[1].startswith(
        "nf4: 50% of ref-vl's score at ")


def test_a_ledger_from_before_reports_migrates_its_rows(tmp_path):
    """Migration 4 on a ledger written by the previous version: each spend row's billed seconds derived from its
    amount and price, the GPU from the run's request.json."""
    import sqlite3

    from runner.money.ledger import MIGRATIONS

    run_dir = tmp_path / "runs" / "old"
    run_dir.mkdir(parents=True)
    (run_dir / "request.json").write_text(json.dumps({"offer": {"gpu": "A10G", "gpu_count": 4}}))
    db = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    for n, step in enumerate(MIGRATIONS[:3], start=1):
        step(db)
        db.execute(f"PRAGMA user_version = {n}")
    db.execute("INSERT INTO pools VALUES ('p', '100', ?)", (T0,))
    db.execute("INSERT INTO runs (id, pool, plan, plan_path, provider, offer, quantization, spot, cap_cny, state, dir, "
               "created_at) VALUES ('old', 'p', 'smoke', 'x', 'aws', 'aws:x', 'nf4', 0, '100', 'done', ?, ?)",
               (str(run_dir), T0))
    db.execute("INSERT INTO instances (run_id, pool, provider, instance_type, region, spot, price_cny_h, "
               "price_original_h, currency, increment_s, minimum_s, state, started_at, lease_until, ended_at) VALUES "
               "('old', 'p', 'aws', 'g5.12xlarge', 'us-east-1', 0, '40.32', '5.6', 'USD', 1, 60, 'terminated', ?, ?, ?)",
               (T0, T0 + 300, T0 + 300))
    for a, b, amount in ((T0, T0 + 100, Decimal("40.32") * 100 / 3600), (T0 + 100, T0 + 300, Decimal("40.32") * 200 / 3600)):
        db.execute("INSERT INTO spend (instance_id, start_at, end_at, amount_cny) VALUES (1, ?, ?, ?)", (a, b, str(amount)))
    db.close()
    led = Ledger(tmp_path / "ledger.db")
    assert [r[0] for r in led.db.execute("SELECT billed_s FROM spend ORDER BY id")] == [100, 200]
    doc = report.statement(led, now=T0 + 1000)
    [c] = doc["charges"]
    assert (c["gpu"], c["gpu_count"], c["billed"], c["amount_cny"]) == ("A10G", 4, "0:05:00", "3.36")
    led.close()


def test_html_without_matplotlib_says_what_to_install(cli, budget_home, tmp_path, monkeypatch):
    import sys

    demo_home(budget_home)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the `report` extra were not installed
    code, _out, err = cli("report", "--format", "html", "--out", tmp_path / "r.html")
    assert code == 2 and "gpubudget[report]" in err and err.count("\n") == 2 and not (tmp_path / "r.html").exists()
    assert not list(tmp_path.glob(".r.html*"))

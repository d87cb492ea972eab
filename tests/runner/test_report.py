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
from runner.money import aggregation, periods, report, results
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
    d, failed = led.admit("r2", offer=offer(1, 60), price_cny_h=Decimal(5), price_original_h=Decimal("0.69"),
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
    code, out, err = cli("report", "--format", "csv", "--out", tmp_path / "r.csv")
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


def test_the_html_report_renders_in_a_real_browser(cli, budget_home, tmp_path):
    sync_playwright, exe = browser()
    need("playwright + chromium (apt-get install chromium; pip install playwright)", sync_playwright is not None
         and exe is not None)
    demo_home(budget_home)
    page_file = tmp_path / "report.html"
    code, _, err = cli("report", "--format", "html", "--out", page_file)
    assert code == 0, err
    text = page_file.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing fetched or run
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = b.new_page()
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: problems.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(page_file.as_uri(), wait_until="load")
            images = page.evaluate("() => Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            b.close()
    assert not problems, problems
    titles = [alt for alt, _, _ in images]
    assert all(done and width > 0 for _, done, width in images), images
    assert any("Burn-down" in t for t in titles) and any("provider and GPU" in t for t in titles)
    assert any("Cost vs quality" in t for t in titles) and any("memory sweep" in t for t in titles)
    assert (tmp_path / "report.png").stat().st_size > 10_000


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
    code, out, err = cli("report", "--format", "html", "--out", tmp_path / "r.html")
    assert code == 2 and "gpubudget[report]" in err and err.count("\n") == 2 and not (tmp_path / "r.html").exists()
    assert not list(tmp_path.glob(".r.html*"))

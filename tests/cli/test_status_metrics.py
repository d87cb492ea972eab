"""`budget status RUN` and the end of `budget run` print each task's metric beside done/ok, from the ledger's
task summaries (the kind's metric as the cost of quality names it); a run still going shows no metric."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from runner.money import results
from runner.money.ledger import Ledger
from runner.money.quality import METRIC

SUMMARIES = {
    "captions": {"kind": "caption", "done": 40, "ok": 40, "total": 40, "cider_d": 0.812345},
    "documents": {"kind": "document", "done": 12, "ok": 11, "total": 20, "anls": 0.5},
    "poems": {"kind": "poetry", "done": 3, "ok": 0, "total": 3},  # nothing scored: no value to show
    "sweep": {"kind": "memory_sweep", "done": 2, "ok": 2, "total": 2},  # a kind without a metric
}


def ledger_with(home: Path, run_id: str, state: str, tasks: dict | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    led = Ledger(home / "ledger.db")
    led.ensure_pool("team", Decimal(50), 1.0)
    led.create_run(id=run_id, pool="team", plan="smoke", plan_path="plans/smoke.yaml", provider="local",
                   offer="local:cpu", quantization="nf4", spot=0, cap_cny=Decimal(5), state=state,
                   dir=str(home / "runs" / run_id), created_at=1.0)
    led.update_run(run_id, samples_done=57, samples_total=65)
    if tasks:
        results.save_tasks(led, run_id, tasks)
    led.close()


def task_rows(out: str) -> dict[str, list[str]]:
    """The Tasks table's rows: task name -> its cells (split on runs of 2+ spaces)."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in SUMMARIES:
            rows[cells[0]] = cells
    return rows


def test_status_of_a_finished_run_shows_each_tasks_metric(cli, budget_home):
    ledger_with(budget_home, "done-run", "done", SUMMARIES)
    code, out, err = cli("status", "done-run")
    assert code == 0, err
    rows = task_rows(out)
    assert rows["captions"] == ["captions", "caption", "40/40", "40", "CIDEr-D 0.8123"]
    assert rows["documents"] == ["documents", "document", "12/20", "11", "ANLS 0.5000"]
    assert rows["poems"] == ["poems", "poetry", "3/3", "0", f"{METRIC['poetry'][1]} -"]
    assert rows["sweep"] == ["sweep", "memory_sweep", "2/2", "2"]  # no metric column filled
    assert "samples 57/65" in out


def test_a_run_still_going_shows_its_progress_and_no_metric(cli, budget_home, monkeypatch):
    ledger_with(budget_home, "live-run", "running", None)
    code, out, err = cli("status", "live-run")
    assert code == 0, err
    assert "samples 57/65" in out and "Tasks" not in out and "CIDEr-D" not in out
    # summaries left by an earlier attempt (a resumed run): done/ok shown, the metric waits for the end
    ledger_with(budget_home / "b", "resumed", "running", {"captions": SUMMARIES["captions"]})
    monkeypatch.setenv("BUDGET_HOME", str(budget_home / "b"))
    code, out, err = cli("status", "resumed")
    assert code == 0, err
    assert task_rows(out)["captions"] == ["captions", "caption", "40/40", "40"] and "CIDEr-D" not in out


def test_the_end_of_budget_run_prints_the_same_lines(cli, budget_home, monkeypatch, capsys):
    """`budget run` drives the run, then prints it through the same printer as `budget status RUN`."""
    from runner.cli import runs
    from runner.run import commands

    ledger_with(budget_home, "r1", "done", SUMMARIES)
    monkeypatch.setattr(commands, "drive", lambda run_id, home, on_progress, resume=False: "done")
    runs._drive("r1", resume=False)
    out = capsys.readouterr().out
    assert task_rows(out)["captions"][-1] == "CIDEr-D 0.8123" and task_rows(out)["documents"][-1] == "ANLS 0.5000"
    code, status, _ = cli("status", "r1")
    assert code == 0 and task_rows(status) == task_rows(out)


def test_a_garbled_summary_shows_no_metric_and_no_error():
    from runner.render.runs import task_lines

    lines = task_lines([{"task": "captions", "kind": "caption", "samples": 4, "ok": 4, "summary": "{not json"},
                        {"task": "odd", "kind": "caption", "samples": 1, "ok": 1, "summary": '[1, 2]'},
                        {"task": "skip", "kind": "document", "samples": 0, "ok": 0,
                         "summary": '{"skipped": "no data\\u001b[31m", "total": true}'}], finished=True)
    assert lines == [("captions", "caption", "4", "4", "CIDEr-D -"), ("odd", "caption", "1", "1", "CIDEr-D -"),
                     ("skip", "document", "0", "0", "skipped: no data\\x1b[31m")]

"""This machine as a rig, judged against recorded runs: three real local runs of the tiny model were recorded
once (benchmarks/record_calibration_runs.py -> tests/runner/fixtures/calibration.json: their ledger rows,
request, summary, result lines and the CPU profile of the machine they ran on). Calibrating on two, the third
- another image size, token count, batch and sample count - is estimated within +-25% of its recorded wall
time. Nothing here measures the machine the test runs on, nor races its clock: a busy CI machine made the
old wall-clock version of this test fail 3 runs in 3."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from runner import localrig
from runner.money.ledger import Ledger

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "calibration.json").read_text())
RUN_COLUMNS = ("id", "pool", "plan", "provider", "offer", "quantization", "spot", "cap_cny", "estimate_cny",
               "estimate_s", "created_at", "state")
INSTANCE_COLUMNS = ("pool", "provider", "provider_id", "instance_type", "region", "spot", "price_cny_h",
                    "price_original_h", "currency", "increment_s", "minimum_s", "state", "started_at", "launched_at",
                    "lease_until", "ended_at", "gpu", "gpu_count")


@pytest.fixture
def recorded(budget_home, tmp_path, monkeypatch) -> list[str]:
    """$BUDGET_HOME holding the recorded runs, and this machine's profile as the one they ran on."""
    monkeypatch.setattr(localrig, "profile", lambda home, remeasure=False: dict(FIXTURE["profile"]))
    led = Ledger(budget_home / "ledger.db")
    ids = []
    for r in FIXTURE["runs"]:
        run, inst = r["run"], r["instance"]
        run_dir = budget_home / "runs" / run["id"]
        (run_dir / "out" / "results").mkdir(parents=True)
        plan = tmp_path / f"{run['plan']}.yaml"
        plan.write_text(r["plan"])
        (run_dir / "request.json").write_text(json.dumps(dict(r["request"], plan_path=str(plan))))
        (run_dir / "out" / "summary.json").write_text(json.dumps(r["summary"]))
        for name, text in r["results"].items():
            (run_dir / "out" / "results" / name).write_text(text)
        led.ensure_pool(run["pool"], Decimal(run["cap_cny"]), run["created_at"])
        led.create_run(**{k: run[k] for k in RUN_COLUMNS}, plan_path=str(plan), dir=str(run_dir))
        led.update_run(run["id"], phase=run["phase"], finished_at=run["finished_at"],
                       samples_done=run["samples_done"], samples_total=run["samples_total"])
        cols = ", ".join(("run_id", *INSTANCE_COLUMNS))
        led.db.execute(f"INSERT INTO instances ({cols}) VALUES ({', '.join('?' * (1 + len(INSTANCE_COLUMNS)))})",
                       (run["id"], *(inst[k] for k in INSTANCE_COLUMNS)))
        ids.append(run["id"])
    led.close()
    return ids


def test_calibrated_on_two_recorded_runs_the_third_is_estimated_within_25_percent(cli, recorded):
    *fit, held = recorded
    code, out, err = cli("calibrate", "--run", fit[0], "--run", fit[1], "--json")
    assert code == 0, err
    cal = json.loads(out)
    [cpu] = [r for r in cal["rigs"] if r["device"] == "CPU"]
    # fitted piece by piece (decode steps, then prefill), not on whole-call time: its whole-call error on these
    # two rows is reported, not promised to fall - the hold-out below is the check of the fit
    assert set(cpu["sources"]) == {f"{i}:captions" for i in fit} and cpu["error_after"] is not None
    [local] = cal["providers"]
    assert local["provider"] == "local" and sorted(local["runs"]) == sorted(fit)

    code, out, err = cli("calibrate", "--show", "--json")
    assert code == 0, err
    rows = {r["run"]: r for r in json.loads(out)["runs"]}
    assert set(rows) == set(recorded)
    wall = [r for r in FIXTURE["runs"] if r["run"]["id"] == held][0]["instance"]
    assert rows[held]["actual_h"] == pytest.approx((wall["ended_at"] - wall["started_at"]) / 3600)
    assert abs(rows[held]["error_after"]) <= 0.25, rows[held]  # the held-out run, estimated with the fit
    for i in fit:
        assert rows[i]["error_after"] is not None and rows[i]["estimate_after_h"] > 0
    code, out, _ = cli("calibrate", "--show")
    assert code == 0 and held in out and "mean |error|" in out


def test_a_run_that_never_finished_is_refused(cli, recorded, budget_home):
    led = Ledger(budget_home / "ledger.db")
    led.update_run(recorded[0], state="stopped", reason="budget")
    led.close()
    code, _, err = cli("calibrate", "--run", recorded[0])
    assert code == 2 and "not used" in err and "hint:" in err


def test_nothing_to_calibrate_is_one_error(cli):
    code, _, err = cli("calibrate")
    assert code == 2 and err.count("error:") == 1 and "hint:" in err and "nothing to calibrate" in err

"""`budget run --provider ray`'s refusals: each one `error:` line and one `hint:` line, exit 2 (1 for a cluster that
does not answer), and nothing written - never a half-started run."""

from __future__ import annotations

import builtins
import json

import pytest

from tests.conftest import REPO

SMOKE = REPO / "plans" / "smoke.yaml"


def _refused(cli, budget_home, *args, code=2) -> str:
    got, _, err = cli("run", SMOKE, "--provider", "ray", *args, "--yes")
    assert got == code and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    assert not (budget_home / "runs").exists()
    if (budget_home / "ledger.db").exists():  # the cap's check opened it: no run, no pool in it
        from runner.money.ledger import Ledger

        led = Ledger(budget_home / "ledger.db")
        try:
            assert not led.runs() and not led.db.execute("SELECT * FROM pools").fetchall()
        finally:
            led.close()
    return err


def test_a_ray_run_without_a_price_is_refused_before_anything(cli, budget_home):
    err = _refused(cli, budget_home)
    assert "needs the price of one GPU-hour" in err and "--price-yuan-hour" in err and "--offer" in err
    err = _refused(cli, budget_home, "--price-yuan-hour", "2", "--offer", "aws:g4dn.xlarge")
    assert "pass one" in err


def test_ray_missing_is_one_error_with_the_install_hint(cli, budget_home, monkeypatch):
    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    err = _refused(cli, budget_home, "--price-yuan-hour", "2")
    assert "needs the ray extra (ray is not installed)" in err and "pip install 'gpubudget[ray]'" in err


def test_files_of_this_machine_are_refused_for_a_cluster_elsewhere(cli, budget_home, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    # refused before any connection is tried: 203.0.113.7 (TEST-NET-3) would never answer
    err = _refused(cli, budget_home, "--price-yuan-hour", "2", "--address", "ray://203.0.113.7:10001",
                   "--model-path", str(model))
    assert "cannot read this machine's files" in err and f"model {model}" in err and "hub id" in err


@pytest.mark.parametrize("args,message", [
    (["--address", "nowhere"], "is not HOST:PORT"),
    (["--per-task", "tpu"], "not gpu or cpu"),
    (["--spot"], "--spot is not for --provider ray"),
    (["--remote-python", "python3"], "--remote-python is not for --provider ray"),
    (["--unattended"], "--unattended is not for --provider ray"),
])
def test_what_a_ray_run_cannot_take_is_refused(cli, budget_home, args, message):
    assert message in _refused(cli, budget_home, "--price-yuan-hour", "2", *args)


def test_a_cluster_that_does_not_answer_is_one_error_and_nothing_is_written(cli, budget_home):
    err = _refused(cli, budget_home, "--price-yuan-hour", "2", "--address", "127.0.0.1:1", code=1)
    assert "does not answer" in err and "nothing was started" in err


def test_ray_options_without_the_ray_provider_are_refused(cli, budget_home):
    got, _, err = cli("run", SMOKE, "--provider", "local", "--address", "auto", "--shards", "3", "--yes")
    assert got == 2 and "--address, --shards are only for --provider ray" in err and "hint:" in err


def test_resume_of_a_ray_run_says_how_it_is_run(budget_home):
    from planner.errors import InputError
    from runner.cloud import registry
    from runner.config import Config

    with pytest.raises(InputError) as e:
        registry.make("ray", Config(), budget_home)
    assert "runs tasks on a cluster" in e.value.message and "budget stop RUN" in e.value.hint


def test_an_offers_price_per_gpu_is_each_tasks_price(budget_home):
    from decimal import Decimal

    from planner.catalog import load_catalog
    from runner.scaleout import launch

    catalog = load_catalog(budget_home / "catalog")
    multi = next(o for o in catalog.offers if o.gpu_count > 1 and o.currency != "CNY")
    cny, original, currency, gpu = launch.price(launch.Ask(plan=SMOKE, offer_id=multi.id), catalog)
    assert (original, currency, gpu) == (multi.price / multi.gpu_count, multi.currency, multi.gpu)
    assert cny == catalog.cny(multi.price, multi.currency) / multi.gpu_count
    assert launch.price(launch.Ask(plan=SMOKE, price_yuan_h=Decimal("2.5")), catalog) == \
        (Decimal("2.5"), Decimal("2.5"), "CNY", None)

"""The `budget` CLI: layering, --json shapes, bad input -> one clear line and exit 2."""

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from runner.cli import main

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def test_budget_plan_does_not_import_torch_boto3_paramiko(tmp_path):
    code = ("import sys, runpy\n"
            "sys.argv = ['budget', 'plan', '--yuan', '2000', '--json']\n"
            "from runner.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "bad = [m for m in ('torch', 'boto3', 'botocore', 'paramiko', 'transformers') if m in sys.modules]\n"
            "sys.stderr.write('LOADED=' + ','.join(bad))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "BUDGET_HOME": str(tmp_path / "h")}, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().endswith("LOADED="), p.stderr
    doc = json.loads(p.stdout)  # exactly one JSON document
    assert doc["recommendation"]["fits_budget"] is True


def test_console_script_runs_from_any_directory(tmp_path):
    exe = Path(sys.executable).parent / "budget"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "runner.cli"]
    p = subprocess.run(cmd + ["plan", "--yuan", "2000"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "BUDGET_HOME": str(tmp_path / "h")}, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "Recommended:" in p.stdout and "CNY" in p.stdout and "GiB" in p.stdout


def test_plan_json_shape(capsys):
    code, out, err = run(capsys, "plan", "--yuan", "2000", "--json", "--top", "3")
    assert code == 0
    doc = json.loads(out)
    assert {"budget_cny", "recommendation", "alternatives", "rejected", "model", "assumptions"} <= set(doc)
    for cand in [doc["recommendation"], *doc["alternatives"]]:
        assert {"provider", "instance_type", "gpu", "gpu_count", "quantization", "spot", "memory_per_gpu_gib",
                "hours", "cost_cny", "fits_budget"} <= set(cand)
    assert len(doc["alternatives"]) == 2
    assert doc["model"]["params"]["total"] == 8_767_123_696
    assert {a["name"] for a in doc["assumptions"]} >= {"headroom", "nf4_decode_slowdown", "download_mb_s"}
    assert all(a["why"] for a in doc["assumptions"])
    assert doc["rejected"] and all(r["reason"] for r in doc["rejected"])


def test_plan_options(capsys, tmp_path):
    code, out, _ = run(capsys, "plan", "--yuan", "2000", "--json", "--provider", "csdn", "--quant", "nf4",
                       "--assume", "download_mb_s=5", "--plan", "plans/qwen3-vl-8b.yaml")
    doc = json.loads(out)
    rec = doc["recommendation"]
    assert code == 0 and rec["provider"] == "csdn" and rec["quantization"] == "nf4"
    assert rec["time"]["download_s"] == pytest.approx(2 * 8_767_123_696 / 5e6)
    code, out, _ = run(capsys, "plan", "--yuan", "2000", "--json", "--model", "2b", "--on-demand")
    doc = json.loads(out)
    assert doc["model"]["name"] == "Qwen3-VL-2B-Instruct" and doc["recommendation"]["spot"] is False
    cfg = tmp_path / "config.json"
    cfg.write_text((REPO / "planner/data/models/Qwen3-VL-4B-Instruct.json").read_text())
    code, out, _ = run(capsys, "plan", "--yuan", "2000", "--json", "--model-config", str(cfg))
    assert code == 0 and json.loads(out)["model"]["params"]["total"] == 4_437_815_808


def test_budget_too_small_names_cheapest(capsys):
    code, out, err = run(capsys, "plan", "--yuan", "0.01")
    assert code == 1
    assert "is not enough" in err and "the cheapest option is" in err and "CNY" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args,needle", [
    (["plan", "--yuan", "-5"], "positive"),
    (["plan", "--yuan", "0"], "positive"),
    (["plan", "--yuan", "lots"], "not a number"),
    (["plan", "--yuan", "2000", "--model", "qwen9-vl"], "unknown model"),
    (["plan", "--yuan", "2000", "--provider", "nowhere"], "no offers"),
    (["plan", "--yuan", "2000", "--provider", "csdn", "--spot"], "with a spot price"),
    (["plan", "--yuan", "2000", "--quant", "fp8"], "unknown quantization"),
    (["plan", "--yuan", "2000", "--objective", "vibes"], "unknown objective"),
    (["plan", "--yuan", "2000", "--assume", "warp=9"], "unknown assumption"),
    (["plan", "--yuan", "2000", "--fx", "USD"], "CURRENCY=RATE"),
    (["plan", "--yuan", "2000", "--plan", "nope.yaml"], "no such plan file"),
    (["model", "inspect", "llama-7b"], "unknown model"),
    (["prices", "list", "--gpu", "K80"], "unknown GPU"),
])
def test_bad_input_is_one_line_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error:") and needle in lines[0]
    assert len(lines) == 2 and lines[1].startswith("hint:")
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("text,needle", [
    ("name: x\nmodel: m\ntasks: [\n", "bad.yaml:"),
    ("name: x\nmodel: m\nbudgett: 3\ntasks: [{name: a, kind: caption}]\n", "bad.yaml:budgett: unknown field"),
    ("name: x\nmodel: m\nbatch_size: two\ntasks: [{name: a, kind: caption}]\n", "bad.yaml:batch_size:"),
])
def test_bad_plans_exit_2(capsys, tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    code, out, err = run(capsys, "plan", "--yuan", "2000", "--plan", str(p))
    assert code == 2 and needle in err and "Traceback" not in err


def test_unusable_configs_exit_2(capsys, tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    code, _, err = run(capsys, "model", "inspect", str(p))
    assert code == 2 and "not a Qwen3-VL" in err
    p.write_text("{")
    code, _, err = run(capsys, "plan", "--yuan", "2000", "--model-config", str(p))
    assert code == 2 and "not a readable JSON" in err


def test_model_inspect(capsys, tmp_path):
    code, out, _ = run(capsys, "model", "inspect", "8b", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["params"]["total"] == 8_767_123_696 and doc["kv_cache_kib_per_token"] == 144
    nf4 = next(w for w in doc["weights"] if w["quantization"] == "nf4" and w["double_quant"] and not w["vision_16bit"])
    assert nf4["weights_gib"] == pytest.approx(5.94, abs=0.01) and nf4["seed_claim_gb"] == 4
    code, out, _ = run(capsys, "model", "inspect", str(REPO / "planner/data/models/Qwen3-VL-2B-Instruct.json"))
    assert code == 0 and "tied" in out and "2,127,532,032" in out


def test_prices_list_filters(capsys):
    code, out, _ = run(capsys, "prices", "list", "--gpu", "t4", "--json")
    rows = json.loads(out)["offers"]
    assert code == 0 and rows and all(r["gpu"] == "T4" for r in rows)
    prices = [Decimal(r["price_cny_per_hour"]) for r in rows]  # money is a decimal string in JSON
    assert prices == sorted(prices)
    code, out, _ = run(capsys, "prices", "list", "--provider", "aws", "--max-yuan-hour", "5", "--json")
    rows = json.loads(out)["offers"]
    assert rows and all(r["provider"] == "aws" and float(r["price_cny_per_hour"]) <= 5 for r in rows)
    assert all(r["currency"] == "USD" and r["price_original_per_hour"] for r in rows)
    code, out, _ = run(capsys, "prices", "list")
    assert code == 0 and "CNY/h" in out and "USD" in out


def test_prices_import_round_trip(capsys, tmp_path, budget_home):
    src = tmp_path / "vms.csv"
    src.write_text(
        "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,"
        "AvailabilityZone\n"
        "g6.xlarge,L4,1.0,4.0,16.0,\"{'Gpus': [{'Name': 'L4', 'Manufacturer': 'NVIDIA', 'Count': 1, "
        "'MemoryInfo': {'SizeInMiB': 22888}}], 'TotalGpuMemoryInMiB': 22888}\",0.8048,0.3,eu-west-1,eu-west-1a\n"
        "c5.large,,,2.0,4.0,,0.085,,eu-west-1,eu-west-1a\n")
    code, out, err = run(capsys, "prices", "import", str(src), "--format", "skypilot")
    assert code == 0 and "imported 1 rows -> 1 offers for aws" in out and "line 3" in err
    assert (budget_home / "catalog" / "offers" / "aws.vms.csv").is_file()
    code, out, _ = run(capsys, "prices", "list", "--provider", "aws", "--json")
    rows = json.loads(out)["offers"]
    assert [(r["instance_type"], r["region"], r["price_original_per_hour"], r["spot_price_original_per_hour"])
            for r in rows] == [("g6.xlarge", "eu-west-1", "0.8048", "0.3")]
    code, out, _ = run(capsys, "plan", "--yuan", "2000", "--provider", "aws", "--json")
    assert json.loads(out)["recommendation"]["instance_type"] == "g6.xlarge"
    bad = tmp_path / "bad.csv"
    bad.write_text("InstanceType,Price\nx,1\n")
    code, _, err = run(capsys, "prices", "import", str(bad))
    assert code == 2 and "header lacks" in err
    code, _, err = run(capsys, "prices", "import", str(tmp_path / "missing.csv"))
    assert code == 2 and "cannot read" in err


@pytest.mark.parametrize("args", [["plan", "--top", "0"], ["plan", "--bogus"], ["prices", "import"]])
def test_usage_errors_exit_2(capsys, args):
    code, out, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and lines[0].startswith("error: ") and "Traceback" not in err
    assert lines[1].startswith("hint: see `budget ") and lines[1].endswith(" --help`")


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "plan", "--help")
    assert code == 0 and "--yuan" in out


def test_broken_user_catalog_is_one_line(capsys, budget_home):
    offers = budget_home / "catalog" / "offers"
    offers.mkdir(parents=True)
    (offers / "mine.csv").write_text("provider,instance_type\nx,y\n")
    code, out, err = run(capsys, "plan", "--yuan", "2000")
    assert code == 2 and "mine.csv" in err and "header lacks" in err and "Traceback" not in err

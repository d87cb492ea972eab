"""The `budget` CLI: layering, --json shapes, bad input -> one clear line and exit 2."""

import json
import os
import re
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
    assert {a["name"] for a in doc["assumptions"]} >= {"headroom", "nf4_overhead_ms_per_linear", "download_mb_s", "time_band"}
    assert all(a["why"] for a in doc["assumptions"])
    assert doc["rejected"] and all(r["reason"] for r in doc["rejected"])


def test_every_time_cost_and_memory_figure_carries_its_band(capsys):
    """`budget plan` and `budget estimate`: each time with the time model's band, each memory figure with the
    memory model's, the cost with its range at the band's ends; --json carries the bands."""
    code, out, _ = run(capsys, "plan", "--yuan", "2000", "--top", "3")
    assert code == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith(("  cost ", "  time ", "  memory "))}
    assert "CNY at ±55% time" in lines["cost"]
    time_text = " ".join(out.split("\n  time ", 1)[1].split("\n  memory ", 1)[0].split())  # wrapped lines joined
    total, parts = time_text.split(" = ", 1)
    assert total.endswith("±55%") and all(part.endswith("±55%") for part in parts.split(" + ")), time_text
    assert "GiB ±3% per GPU" in lines["memory"] and "GiB per card, each ±3%" in out
    alternatives = out.split("Alternatives", 1)[1].split("Rejected", 1)[0]
    rows = [ln for ln in alternatives.splitlines() if ":" in ln and "CNY" not in ln and "at most:" not in ln]
    assert rows and all("±55%" in ln and "±3%" in ln for ln in rows)
    code, out, _ = run(capsys, "plan", "--yuan", "2000", "--json")
    rec = json.loads(out)["recommendation"]
    assert rec["time"]["band"] == 0.55 and rec["memory_band"] == 0.03
    assert Decimal(rec["cost_low_cny"]) < Decimal(rec["cost_cny"]) < Decimal(rec["cost_high_cny"])
    code, out, _ = run(capsys, "estimate", "--model", "8b", "--gpu", "H100", "--quant", "nf4", "--prompt-tokens", "64",
                       "--new-tokens", "32")
    assert code == 0
    time_line = next(ln for ln in out.splitlines() if ln.startswith("time:"))
    assert time_line.count("±55%") == 6  # vision, prefill, first token, decode, tokens/s, total
    assert "GiB ±3% of" in out
    code, out, _ = run(capsys, "estimate", "--model", "8b", "--gpu", "H100", "--quant", "nf4", "--prompt-tokens", "64",
                       "--new-tokens", "32", "--json")
    doc = json.loads(out)
    assert doc["time_band"] == 0.55 and doc["memory_band"] == 0.03


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


def test_plan_and_estimate_engines(capsys):
    """`--engine` restricts the plan's choice (repeatable or a comma list) and picks the estimate's engine; every row
    names its engine, a server's recommendation its memory fraction and context, and the command pins it."""
    code, out, _ = run(capsys, "plan", "--yuan", "2000", "--json", "--engine", "hf")
    doc = json.loads(out)
    rows = [doc["recommendation"], *doc["alternatives"]]
    assert code == 0 and {r["engine"] for r in rows} == {"hf"} and doc["recommendation"]["other_engines"] == []
    assert doc["recommendation"]["engine_memory_fraction"] is None and "--engine" not in doc["next"]["command"]
    code, out, _ = run(capsys, "plan", "--yuan", "2000", "--json", "--engine", "vllm,hf", "--engine", "sglang")
    rec = json.loads(out)["recommendation"]
    assert code == 0 and rec["engine"] in ("vllm", "sglang") and 0 < rec["engine_memory_fraction"] <= 0.92
    assert rec["max_model_len"] > 0 and rec["concurrency"] >= 1
    assert {o["engine"] for o in rec["other_engines"]} == {"hf", "vllm", "sglang"} - {rec["engine"]}
    assert f"--engine {rec['engine']}" in json.loads(out)["next"]["command"]
    code, out, _ = run(capsys, "plan", "--model", "30b-a3b", "--yuan", "2000")
    assert code == 0 and re.search(r"Recommended: .*, bf16, (vllm|sglang), ", out)
    assert re.search(r"engines   (vllm|sglang) \(\d+ in flight\);.* hf: [\d.]+x the time, [\d.]+ CNY more", out)
    code, out, _ = run(capsys, "estimate", "--model", "8b", "--gpu", "H100", "--quant", "fp8", "--prompt-tokens", "64",
                       "--new-tokens", "32", "--engine", "vllm", "--batch", "8", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["engine"] == "vllm" and 0 < doc["engine_memory_fraction"] < 1 and doc["fits"]
    code, out, _ = run(capsys, "estimate", "--model", "8b", "--gpu", "H100", "--quant", "bf16", "--prompt-tokens", "64",
                       "--new-tokens", "32", "--json")
    assert json.loads(out)["engine"] == "hf" and json.loads(out)["engine_memory_fraction"] is None


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
    (["plan", "--yuan", "2000", "--quant", "fp4"], "unknown quantization"),
    (["plan", "--yuan", "2000", "--engine", "tgi"], "unknown engine 'tgi'"),
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
    p.write_text(json.dumps({"model_type": "gemma3", "hidden_size": 4096}))
    code, _, err = run(capsys, "model", "inspect", str(p))
    assert code == 2 and "'gemma3' is not supported (supported model types: qwen3_vl" in err
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


def test_budget_estimate_json_has_every_key_and_adds_up(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGET_HOME", str(tmp_path / "h"))
    code, out, err = cli("estimate", "--model", "8b", "--gpu", "A100-80GB", "--quant", "nf4", "--prompt-tokens", "64",
                         "--image", "1024x768", "--image", "448x448", "--new-tokens", "128", "--batch", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    for key in ("peak_memory_gib", "memory", "prefill_s", "decode_s", "decode_tokens_per_s", "ttft_s", "total_s",
                "assumptions"):
        assert key in doc
    m = doc["memory"]  # activations and the vision tower do not overlap: the peak counts the larger
    assert m["total"] == sum(v for k, v in m.items() if k not in ("total", "activations", "vision_activations")) + max(
        m["activations"], m["vision_activations"]) == max(doc["per_card_bytes"])
    assert doc["visual_tokens"] == 768 + 196 and doc["ttft_s"] == pytest.approx(doc["vision_s"] + doc["prefill_s"] + doc[
        "decode_s"] / 127)
    assert doc["total_s"] == pytest.approx(doc["ttft_s"] + doc["decode_s"])
    assert doc["decode_tokens_per_s"] == pytest.approx(2 * 127 / doc["decode_s"])
    assert any("bandwidth_efficiency=0.642" in a for a in doc["assumptions"]) and doc["calibration"] == ""
    # a text-only decoder from its config.json, a video, two cards
    code, out, err = cli("estimate", "--model", "Qwen3-8B", "--gpu", "H20", "--quant", "bf16", "--prompt-tokens", "1",
                         "--new-tokens", "2048", "--json")
    assert code == 0, err
    assert json.loads(out)["model_type"] == "qwen3"
    code, out, err = cli("estimate", "--model", "32b", "--gpu", "L4", "--gpus", "2", "--quant", "nf4", "--prompt-tokens",
                         "16", "--video", "20@2", "--new-tokens", "64")
    assert code == 0, err
    assert "Peak memory of the fullest card" in out and "tokens/s" in out and "uncalibrated" in out


@pytest.mark.parametrize("args,needle", [
    (["--gpu", "Z100"], "unknown GPU 'Z100'"),
    (["--prompt-tokens", "0"], "--prompt-tokens must be at least 1"),
    (["--new-tokens", "0"], "--new-tokens must be at least 1"),
    (["--image", "0x480"], "--image '0x480' is not WIDTHxHEIGHT"),
    (["--image", "640"], "--image '640' is not WIDTHxHEIGHT"),
    (["--video", "0@2"], "--video '0@2'"),
    (["--quant", "q3"], "unknown quantization 'q3'"),
    (["--model", "Qwen3-8B", "--image", "64x64"], "text-only model"),
    (["--gpu", "T4", "--quant", "bf16"], "no bf16 on T4"),
    (["--engine", "vllm", "--quant", "int8"], "run no bitsandbytes (int8, nf4)"),
    (["--engine", "hf", "--quant", "fp8"], "no fp8 path"),
    (["--engine", "tgi"], "unknown engine 'tgi'"),
])
def test_budget_estimate_bad_input_is_one_error_and_a_hint(cli, tmp_path, monkeypatch, args, needle):
    monkeypatch.setenv("BUDGET_HOME", str(tmp_path / "h"))
    base = {"--model": "8b", "--gpu": "A10G", "--quant": "nf4", "--prompt-tokens": "8", "--new-tokens": "8"}
    given = dict(zip(args[::2], args[1::2]))
    argv = [x for k, v in {**base, **given}.items() for x in (k, v)]
    code, out, err = cli("estimate", *argv)
    assert code == 2 and out == "" and needle in err, err
    assert err.count("error:") == 1 and err.count("hint:") == 1 and "Traceback" not in err


def test_calibrate_bad_input(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGET_HOME", str(tmp_path / "h"))
    code, _, err = cli("calibrate")  # an empty ledger
    assert code == 2 and "nothing to calibrate from" in err and err.count("hint:") == 1
    bad = tmp_path / "m.jsonl"
    for text, needle in (("{not json\n", "m.jsonl:1: not JSON"), ('{"schema": "x"}\n', "not a gpubudget.measurement/1"),
                         ('{"schema": "gpubudget.measurement/1", "model": "8b", "device": "H200", "quantization": '
                          '"nf4", "batch": 1, "prefill_tokens": -3}\n', "prefill_tokens must be a non-negative"),
                         ('{"schema": "gpubudget.measurement/1", "model": "8b", "device": "Z9", "quantization": "nf4"}\n',
                          "unknown device 'Z9'")):
        bad.write_text(text)
        code, _, err = cli("calibrate", "--measurements", bad)
        assert code == 2 and needle in err and err.count("error:") == 1, err
    code, _, err = cli("calibrate", "--measurements", tmp_path / "none.jsonl")
    assert code == 2 and "no such measurement file" in err
    code, _, err = cli("calibrate", "--run", "nosuchrun")
    assert code == 2 and err.count("error:") == 1 and "hint:" in err


def test_calibrate_from_recorded_measurements_then_plan_and_estimate_say_so(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGET_HOME", str(tmp_path / "h"))
    code, out, err = cli("calibrate", "--measurements", REPO / "benchmarks" / "measured" / "nvidia-h200.jsonl")
    assert code == 0, err
    assert "H200" in out
    code, out, err = cli("estimate", "--model", "8b", "--gpu", "H200", "--quant", "nf4", "--prompt-tokens", "8",
                         "--new-tokens", "64", "--json")
    assert code == 0, err
    assert "measurements (nvidia-h200.jsonl) on H200/nf4" in json.loads(out)["calibration"]
    code, out, err = cli("plan", "--yuan", "2000", "--json")
    assert code == 0, err  # no H200 offer in the bundled catalog: the plan is unchanged and says nothing of H200
    assert not any("H200" in n for n in json.loads(out)["recommendation"]["notes"])


def test_published_accuracy_runs_without_torch():
    code = ("import runpy, sys\n"
            "sys.argv = ['published_accuracy.py']\n"
            "runpy.run_path('benchmarks/published_accuracy.py', run_name='__main__')\n"
            "sys.stderr.write('TORCH=' + str('torch' in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().endswith("TORCH=False")
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith(("qwen2.5-", "qwen3-"))]
    assert len(rows) == 192  # every published row, each in its own speed definition
    assert any(ln.endswith("prompt+generated") for ln in rows) and any(ln.endswith(" generated") for ln in rows)
    held = next(ln for ln in p.stdout.splitlines() if ln.startswith("time, published rows:"))
    assert "174/192 (90.6%) held-out predictions within +-25%" in held
    assert "input 1: 14/14 within +-10%" in p.stdout

"""Every task kind, in full precision, nf4 and int8 (bitsandbytes on CPU): result files' schema and
accounting, status.json, summary.json."""

from __future__ import annotations

import pytest

from .conftest import job, lines, run_inline, status, summary, write_job

ALL_KINDS = [
    {"name": "captions", "kind": "caption", "samples": 3, "image_size": [64, 64]},
    {"name": "docs", "kind": "document", "samples": 2, "image_size": [128, 96]},
    {"name": "chat", "kind": "multiturn_vqa", "samples": 3, "turns": 5, "image_size": [64, 64]},
    {"name": "poems", "kind": "poetry", "samples": 2, "image_size": [96, 64]},
    {"name": "sweep", "kind": "memory_sweep", "samples": 1, "resolutions": [[64, 64], [128, 128], [256, 192]]},
    {"name": "clips", "kind": "video", "samples": 2,
     "video": {"duration_s": 4, "source_fps": 10, "fps": 1, "max_frames": 8, "frame_size": [96, 64]}},
    {"name": "verify", "kind": "fp16_verify", "of_task": "captions", "samples": 2},
]
COMMON = {"id": str, "task": str, "kind": str, "quantization": str, "attempt": int, "status": str, "finished_at": str}
MEASURED = {"prefill_tokens": int, "visual_tokens": int, "decode_tokens": int, "latency_s": float, "ttft_s": float,
            "batch_size": int, "peak_memory": list, "peak_memory_bytes": int}


def _check_line(x: dict, quant: str) -> None:
    for key, typ in {**COMMON, **MEASURED}.items():
        assert isinstance(x.get(key), typ), (key, x.get(key))
    assert x["status"] == "ok"
    assert x["prefill_tokens"] > x["visual_tokens"] > 0
    assert 1 <= x["decode_tokens"] <= 6 * (len(x["turns"]) if "turns" in x else 1)
    assert 0 < x["ttft_s"] <= x["latency_s"]
    assert [m["device"] for m in x["peak_memory"]] == ["cpu"]
    assert x["peak_memory_bytes"] == max(m["bytes"] for m in x["peak_memory"]) > 100 * 2**20
    assert isinstance(x["prediction"], str)


@pytest.fixture(scope="module", params=["fp32", "nf4", "int8"])
def evaluated(request, tiny_model, tmp_path_factory):
    quant = request.param
    root = tmp_path_factory.mktemp(f"all-{quant}")
    code = run_inline(write_job(root, job(tiny_model, ALL_KINDS, quant)), root / "out")
    return quant, code, root / "out"


def test_every_kind_runs_and_accounts(evaluated):
    quant, code, out = evaluated
    assert code == 0
    s, st = summary(out), status(out)
    assert st["phase"] == "done" and st["attempt"] == 1 and st["error"] is None
    assert st["samples_per_s"] > 0 and st["eta_s"] == 0
    assert s["complete"] is True and s["stopped"] is None and s["quantization"] == quant
    assert s["loads"][0]["quantization"] == quant and s["loads"][0]["load_s"] > 0
    for spec in ALL_KINDS:
        name = spec["name"]
        got = lines(out, name)
        t = s["tasks"][name]
        if "skipped" in t:
            continue
        expected = spec["samples"] * len(spec.get("resolutions") or [1])
        assert len(got) == expected == t["done"] == t["total"] == t["ok"], name
        assert len({x["id"] for x in got}) == len(got)
        for x in got:
            _check_line(x, quant)
            assert x["task"] == name and x["kind"] == spec["kind"]
        # the summary adds up to the lines
        assert t["decode_tokens"] == sum(x["decode_tokens"] for x in got)
        assert t["prefill_tokens"] == sum(x["prefill_tokens"] for x in got)
        assert t["peak_memory_bytes"] == max(x["peak_memory_bytes"] for x in got)
        assert t["busy_s"] == pytest.approx(sum(x["latency_s"] / x["batch_size"] for x in got), abs=1e-3)
        assert st["tasks"][name]["done"] == expected
    assert st["tokens"]["decode"] == sum(t.get("decode_tokens", 0) for n, t in s["tasks"].items()
                                         if n != "verify" or "skipped" not in t)


def test_quantized_lines_say_so(evaluated):
    quant, _, out = evaluated
    assert {x["quantization"] for x in lines(out, "captions")} == {quant}
    footprint = summary(out)["loads"][0]["footprint_bytes"]
    if quant == "fp32":
        assert footprint > 2_900_000  # ~0.75 M params x 4 bytes
    else:
        assert footprint < 2_000_000  # linear layers packed by bitsandbytes


def test_kind_specific_fields(evaluated):
    quant, _, out = evaluated
    s = summary(out)["tasks"]
    cap = s["captions"]
    assert 0.0 <= cap["bleu4"] <= 1.0 and cap["cider_d"] >= 0.0
    assert all(len(x["references"]) == 3 for x in lines(out, "captions"))
    assert all(x["answers"] and 0.0 <= x["anls"] <= 1.0 for x in lines(out, "docs"))
    poems = lines(out, "poems")
    assert all(x["keywords"] == ["月", "山"] and "请" in x["prompt"] for x in poems)
    for conv in lines(out, "chat"):
        assert len(conv["turns"]) == 5 and conv["repeats"] == 1
        assert conv["turns"][4]["question"] == conv["turns"][0]["question"]
        assert conv["memory_growth_bytes"] == conv["turns"][4]["peak_memory_bytes"] - conv["turns"][0]["peak_memory_bytes"]
        # the history grows: every turn prefills more than the one before
        prefill = [t["prefill_tokens"] for t in conv["turns"]]
        assert prefill == sorted(prefill) and prefill[0] < prefill[-1]
        assert conv["consistency"] in (0.0, 1.0)
    assert len(s["chat"]["mean_turn_latency_s"]) == 5
    sweep = {tuple(x["resolution"]): x for x in lines(out, "sweep")}
    # 32x32 px per token: 64x64 -> 4, 128x128 -> 16, 256x192 -> 48 visual tokens
    assert {r: x["visual_tokens"] for r, x in sweep.items()} == {(64, 64): 4, (128, 128): 16, (256, 192): 48}
    assert s["sweep"]["largest_ok"] == [256, 192]
    for clip in lines(out, "clips"):
        # 4 s at 1 fps from a 10 fps source: frames 0, 10, 20, 30; 2 temporal patches of 96x64 -> 2x6 tokens
        assert clip["frame_indices"] == [0, 10, 20, 30] and clip["visual_tokens"] == 12
    verify = s["verify"]
    if quant == "fp32":
        assert verify["done"] == 0 and "already runs in fp32" in verify["skipped"]
    else:
        assert [ld["quantization"] for ld in summary(out)["loads"]] == [quant, "bf16"]
        got = lines(out, "verify")
        assert [x["id"] for x in got] == [x["id"] for x in lines(out, "captions")][:2]
        quantized = {x["id"]: x["prediction"] for x in lines(out, "captions")}
        assert all(x["quantized_prediction"] == quantized[x["id"]] and x["quantization"] == "bf16" for x in got)
        assert 0.0 <= verify["agreement"] <= 1.0 and 0.0 <= verify["agreement_f1"] <= 1.0


def test_auto_batch_size_from_free_memory(tiny_model, tmp_path):
    task = {"name": "cap", "kind": "caption", "samples": 12, "image_size": [64, 64]}
    out = tmp_path / "out"
    assert run_inline(write_job(tmp_path, job(tiny_model, [task], batch_size="auto")), out) == 0
    s = summary(out)
    used = s["batch_size"]["used"]
    assert s["batch_size"]["requested"] == "auto" and 2 <= used <= 32
    assert "free" in s["batch_size"]["note"] and f"batch {used}" in s["batch_size"]["note"]
    sizes = [x["batch_size"] for x in lines(out, "cap")]
    # one sample measures the per-sample memory first; the other 11 go in batches of `used`
    chunks = [min(used, 11 - i) for i in range(0, 11, used)]
    assert sizes == [1] + [c for c in chunks for _ in range(c)]


def test_unreadable_sample_is_recorded_and_the_run_goes_on(tiny_model, tmp_path):
    from PIL import Image

    for name in ("a", "c"):
        Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / f"{name}.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    (tmp_path / "m.jsonl").write_text("".join(
        f'{{"id": "{n}", "image": "{n}.png", "references": ["a green square"]}}\n' for n in "abc"))
    task = {"name": "cap", "kind": "caption", "samples": 3, "dataset": {"kind": "local", "path": "m.jsonl"}}
    out = tmp_path / "out"
    assert run_inline(write_job(tmp_path, job(tiny_model, [task], batch_size=2)), out) == 0
    got = {x["id"]: x for x in lines(out, "cap")}
    assert {k: x["status"] for k, x in got.items()} == {"a": "ok", "b": "error", "c": "ok"}
    assert "cannot read image" in got["b"]["error"] and str(tmp_path / "b.png") in got["b"]["error"]
    s = summary(out)
    assert s["complete"] and s["tasks"]["cap"]["errors"] == 1 and s["tasks"]["cap"]["ok"] == 2
    assert status(out)["tasks"]["cap"] == {"done": 3, "total": 3, "ok": 2, "oom": 0, "errors": 1}


def test_fp16_verify_skipped_when_the_16bit_model_cannot_fit(tiny_model, tmp_path, monkeypatch):
    from runner.worker import engine

    # a machine whose free memory after unloading the nf4 model is 1 MiB (the 16-bit tiny model needs ~1.7)
    monkeypatch.setattr(engine.Memory, "free_bytes", lambda self: 2**20)
    tasks = [ALL_KINDS[0], ALL_KINDS[-1]]
    out = tmp_path / "out"
    assert run_inline(write_job(tmp_path, job(tiny_model, tasks, "nf4")), out) == 0
    s = summary(out)
    assert "the 16-bit model needs about" in s["tasks"]["verify"]["skipped"]
    assert s["tasks"]["verify"]["done"] == 0 and s["complete"]
    assert [ld["quantization"] for ld in s["loads"]] == ["nf4"]  # the reference was never loaded

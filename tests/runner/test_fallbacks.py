"""A spot run's fallback offers (relaunched on after a reclaim with the same job): the same provider,
quantization, market and engine - and, for a server engine, the same card and count, since the job carries
the memory share and tensor parallelism the planner priced for the recommendation's rig; for replicas, the same
layout and count (the job runs a worker per GPU)."""

from __future__ import annotations

from types import SimpleNamespace

from runner.run.prepare import _fallbacks, engine_section


def row(region: str, gpu: str = "A100-80GB", count: int = 1, engine: str = "vllm", **kw):
    base = {"provider": "aws", "instance_type": f"{gpu}x{count}", "region": region, "gpu": gpu, "gpu_count": count,
            "quantization": "bf16", "spot": True, "engine": engine, "price_cny_per_hour": 1, "price_original_per_hour": 1,
            "layout": "single" if count == 1 else "split", "replicas": 1}
    return SimpleNamespace(**{**base, **kw})


def offer(r):
    return SimpleNamespace(provider=r.provider, instance_type=r.instance_type, region=r.region,
                           model_dump=lambda mode: {"region": r.region, "type": r.instance_type})


def test_a_server_engines_fallbacks_keep_its_card_and_count():
    rec = row("us-east-1")
    alts = [row("us-west-2"), row("eu-west-1", count=2), row("us-east-2", gpu="H100"), row("ap-south-1", engine="hf"),
            row("us-west-1", quantization="fp8")]
    got = _fallbacks(SimpleNamespace(alternatives=alts), rec, [offer(a) for a in alts])
    assert [f["offer"]["region"] for f in got] == ["us-west-2"]


def test_hfs_fallbacks_may_change_card():
    rec = row("us-east-1", engine="hf")
    alts = [row("us-west-2", gpu="A10G", engine="hf"), row("eu-west-1", count=2, engine="hf"), row("us-east-2")]
    got = _fallbacks(SimpleNamespace(alternatives=alts), rec, [offer(a) for a in alts])
    assert [f["offer"]["region"] for f in got] == ["us-west-2", "eu-west-1"]


def test_a_replicas_runs_fallbacks_keep_its_replicas_and_its_servers_run_one_per_gpu():
    rec = row("us-east-1", gpu="T4", count=4, engine="hf", layout="replicas", replicas=4)
    alts = [row("us-west-2", gpu="T4", count=4, engine="hf", layout="replicas", replicas=4),
            row("eu-west-1", gpu="T4", count=4, engine="hf"),  # the same box split: another job
            row("us-east-2", gpu="A10G", engine="hf")]  # one card: another job
    got = _fallbacks(SimpleNamespace(alternatives=alts), rec, [offer(a) for a in alts])
    assert [f["offer"]["region"] for f in got] == ["us-west-2"]
    served = SimpleNamespace(engine="vllm", concurrency=8, gpu_count=4, layout="replicas", engine_memory_fraction=0.9,
                             max_model_len=4096)
    assert engine_section(served)["tensor_parallel"] == 1  # one server per GPU: data parallelism, not TP over 4
    assert engine_section(SimpleNamespace(**{**vars(served), "layout": "split"}))["tensor_parallel"] == 4

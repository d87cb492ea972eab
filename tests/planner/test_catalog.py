"""Catalogs: bundled data is stamped and complete; SkyPilot's real layout parses and round-trips;
user overrides; plans load with file:field errors."""

from decimal import Decimal
from pathlib import Path

import pytest

from planner.catalog import load_catalog, parse_offers_csv, parse_skypilot, prepare_import, with_fx, write_skypilot
from planner.errors import CatalogError, PlanError
from planner.plans import bundled_plan, load_plan, parse_plan

SKY = '''InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
g5.xlarge,A10G,1.0,4.0,16.0,"{'Gpus': [{'Name': 'A10G', 'Manufacturer': 'NVIDIA', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 22888}}], 'TotalGpuMemoryInMiB': 22888}",1.006,0.4024,us-east-1,us-east-1a
g5.xlarge,A10G,1.0,4.0,16.0,"{'Gpus': [{'Name': 'A10G', 'Manufacturer': 'NVIDIA', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 22888}}], 'TotalGpuMemoryInMiB': 22888}",1.006,0.3917,us-east-1,us-east-1b
m5.large,,,2.0,8.0,,0.096,0.04,us-east-1,us-east-1a
p4de.24xlarge,A100,8.0,96.0,1152.0,"{'Gpus': [{'Name': 'A100', 'Manufacturer': 'NVIDIA', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 655360}",40.966,,us-east-1,us-east-1c
g4dn.xlarge,T4,1.0,4.0,16.0,{broken,0.526,,us-east-1,us-east-1a
inf2.xlarge,Inferentia2,1.0,4.0,16.0,"{'Gpus': [{'Name': 'Inferentia2', 'Manufacturer': 'AWS', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 32768}}]}",0.76,,us-east-1,us-east-1a
g6.xlarge,L4,1.0,4.0,16.0,"{'Gpus': [{'Name': 'L4', 'Manufacturer': 'NVIDIA', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 22888}}], 'TotalGpuMemoryInMiB': 22888}",n/a,,us-east-1,us-east-1a
g6.2xlarge,L4,0.5,4.0,16.0,"{'Gpus': [{'Name': 'L4', 'Manufacturer': 'NVIDIA', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 22888}}], 'TotalGpuMemoryInMiB': 22888}",1.0,,us-east-1,us-east-1a
'''


def test_bundled_catalog_is_complete_and_stamped():
    cat = load_catalog()
    assert {"T4", "A10G", "RTX3090", "RTX4090", "L4", "L40S", "V100-16GB", "A100-40GB", "A100-80GB", "H100",
            "H20"} <= set(cat.gpus)
    assert all(o.source and o.date for o in cat.offers)
    aws = [o for o in cat.offers if o.provider == "aws"]
    assert {o.region for o in aws} >= {"us-east-1", "us-west-2"}
    assert {o.instance_type.split(".")[0] for o in aws} >= {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5"}
    assert any(o.spot_price is None for o in aws) and any(o.spot_price for o in aws)
    seed = {(o.gpu, o.gpu_count): o.price for o in cat.offers if o.provider == "csdn"}
    assert seed == {("T4", 1): Decimal("1.5"), ("T4", 2): Decimal("3.0"), ("A10G", 1): Decimal("2.2"),
                    ("A10G", 2): Decimal("4.4"), ("RTX3090", 1): Decimal("3.5"), ("RTX3090", 2): Decimal("7.0")}
    assert all(o.billing_increment_s == 3600 for o in cat.offers if o.provider == "csdn")
    assert any(o.provider == "autodl" for o in cat.offers)
    assert cat.fx["USD"].date and cat.fx["USD"].cny_per_unit > 0
    g4 = next(o for o in aws if o.instance_type == "g4dn.xlarge" and o.region == "us-east-1")
    assert g4.price == Decimal("0.526") and g4.zones == ["us-east-1a", "us-east-1b"]
    assert g4.spot_price == min(Decimal("0.1999"), Decimal("0.2209"))  # cheapest zone


def test_skypilot_rows_and_problems_with_line_numbers():
    rows, problems, _ = parse_skypilot(SKY, "vms.csv")
    assert [r.instance_type for r in rows] == ["g5.xlarge", "g5.xlarge", "p4de.24xlarge", "inf2.xlarge"]
    assert rows[2].spot_price is None and rows[2].count == 8 and rows[2].gpu_memory_mib == 81920
    by_line = {p.line: p.message for p in problems}
    assert "CPU instance" in by_line[4]
    assert "GpuInfo" in by_line[6]
    assert "not a number" in by_line[8]
    assert "whole number" in by_line[9]
    res = prepare_import(SKY, "vms.csv", "skypilot", None, load_catalog(), "2026-01-01")
    assert "unknown GPU 'Inferentia2'" in {p.line: p.message for p in res.problems}[7]
    a100 = next(o for o in res.offers if o.instance_type == "p4de.24xlarge")
    assert a100.gpu == "A100-80GB"  # resolved by GpuInfo memory
    g5 = next(o for o in res.offers if o.instance_type == "g5.xlarge")
    assert g5.spot_price == Decimal("0.3917") and g5.billing_increment_s == 1 and g5.billing_minimum_s == 60


def test_skypilot_round_trip():
    rows, _, meta = parse_skypilot(SKY, "vms.csv")
    again, problems, meta2 = parse_skypilot(write_skypilot(rows, {"source": "x", "date": "2026-01-01"}), "copy")
    assert not problems and meta2 == {"source": "x", "date": "2026-01-01"}
    key = lambda r: (r.instance_type, r.count, r.gpu_memory_mib, r.price, r.spot_price, r.region, r.zone)
    assert [key(r) for r in again] == [key(r) for r in rows]


def test_import_replaces_the_provider_in_the_user_catalog(tmp_path: Path):
    res = prepare_import(SKY, "vms.csv", "skypilot", None, load_catalog(), "2026-01-01")
    user = tmp_path / "catalog"
    (user / "offers").mkdir(parents=True)
    (user / "offers" / res.file_name).write_text(res.content)
    cat = load_catalog(user)
    aws = [o for o in cat.offers if o.provider == "aws"]
    assert {o.instance_type for o in aws} == {"g5.xlarge", "p4de.24xlarge"}
    assert all(o.date == "2026-01-01" for o in aws)
    assert any(o.provider == "csdn" for o in cat.offers)  # other providers untouched


def test_our_csv_layout_and_errors():
    text = ("provider,instance_type,gpu,gpu_count,price_per,price,spot_price,currency,region,billing_increment_s,"
            "billing_minimum_s,source,date\n"
            "x,box,RTX 4090,1-3,gpu,2.0,,CNY,cn,60,60,s,2026-01-01\n"
            "x,big,H100,8,instance,80,30,CNY,cn,3600,3600,s,2026-01-01\n"
            "x,bad,T4,1,gpu,-1,,CNY,cn,60,60,s,d\n"
            "x,bad2,K80,1,gpu,1,,CNY,cn,60,60,s,d\n"
            "x,short,T4\n")
    offers, problems = parse_offers_csv(text, "x.csv", load_catalog())
    assert [(o.instance_type, o.gpu, o.gpu_count, o.price) for o in offers] == [
        ("boxx1", "RTX4090", 1, Decimal("2.0")), ("boxx2", "RTX4090", 2, Decimal("4.0")),
        ("boxx3", "RTX4090", 3, Decimal("6.0")), ("big", "H100", 8, Decimal(80))]
    assert [p.line for p in problems] == [4, 5, 6]
    assert "non-negative" in problems[0].message and "K80" in problems[1].message


def test_nothing_usable_is_an_error():
    with pytest.raises(CatalogError, match="no usable offer rows"):
        prepare_import(SKY.splitlines()[0] + "\n" + SKY.splitlines()[3] + "\n", "f.csv", "skypilot", None,
                       load_catalog(), "d")
    with pytest.raises(CatalogError, match="header lacks"):
        prepare_import("a,b,c\n1,2,3\n", "f.csv", "skypilot", None, load_catalog(), "d")


def test_user_gpu_and_fx_overrides(tmp_path: Path):
    user = tmp_path / "catalog"
    user.mkdir()
    (user / "gpus.csv").write_text("name,aliases,memory_mib,bandwidth_gbs,fp16_tflops,int8_tops,bf16,"
                                   "compute_capability,link,source,date\nT4,,16000,400,65,130,false,7.5,PCIe 3,me,2026\n")
    (user / "fx.yaml").write_text("- {currency: USD, cny_per_unit: '7.5', date: '2026-01-01', source: me}\n")
    cat = load_catalog(user)
    assert cat.gpus["T4"].memory_mib == 16000 and cat.fx["USD"].cny_per_unit == Decimal("7.5")
    assert with_fx(cat, ["usd=7.0"]).fx["USD"].cny_per_unit == Decimal("7.0")
    with pytest.raises(CatalogError, match="CURRENCY=RATE"):
        with_fx(cat, ["USD=-1"])


def test_bundled_plans_load():
    plan = load_plan(None)
    assert plan.model == "Qwen3-VL-8B-Instruct" and plan.generation.max_new_tokens == 128
    assert plan.generation.top_p == 0.9 and plan.generation.temperature == 0.7 and plan.generation.do_sample
    kinds = {t.kind for t in plan.tasks}
    assert kinds == {"caption", "document", "multiturn_vqa", "poetry", "memory_sweep", "video", "fp16_verify"}
    caption = next(t for t in plan.tasks if t.kind == "caption")
    assert caption.samples == 100
    sweep = next(t for t in plan.tasks if t.kind == "memory_sweep")
    assert sweep.resolutions[0] == (512, 512) and max(w for w, _ in sweep.resolutions) >= 1536
    assert next(t for t in plan.tasks if t.kind == "video").video.fps == 1
    assert next(t for t in plan.tasks if t.kind == "multiturn_vqa").turns == 5
    assert load_plan("plans/smoke.yaml").name == "smoke"
    assert bundled_plan().is_file()


@pytest.mark.parametrize("text,needle", [
    ("name: x\nmodel: m\ntasks: [\n", "x.yaml:"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("name: x\nmodel: m\ntaks: []\n", "x.yaml:tasks: Field required"),
    ("name: x\nmodel: m\ntasks: [{name: a, kind: caption, sample: 3}]\n", "x.yaml:tasks.0.sample: unknown field"),
    ("name: x\nmodel: m\ntasks: [{name: a, kind: caption, samples: many}]\n", "x.yaml:tasks.0.samples:"),
    ("name: x\nmodel: m\ntasks: [{name: a, kind: teleport}]\n", "x.yaml:tasks.0.kind:"),
    ("name: x\nmodel: m\ntasks: [{name: a, kind: memory_sweep}]\n", "needs `resolutions`"),
    ("name: x\nmodel: m\nquantizations: [fp4]\ntasks: [{name: a, kind: caption}]\n", "quantizations.0"),
    ("name: x\nmodel: m\nengines: [tgi]\ntasks: [{name: a, kind: caption}]\n", "engines.0"),
    ("name: x\nmodel: m\ntasks: [{name: a, kind: fp16_verify, of_task: zz}]\n", "not a task of this plan"),
])
def test_plan_errors_name_file_and_field(text, needle):
    with pytest.raises(PlanError) as e:
        parse_plan(text, "x.yaml")
    assert needle in e.value.message and "\n" not in e.value.message


def test_bad_user_gpu_row_names_its_line(tmp_path: Path):
    user = tmp_path / "catalog"
    user.mkdir()
    (user / "gpus.csv").write_text("name,aliases,memory_mib,bandwidth_gbs,fp16_tflops,int8_tops,bf16,"
                                   "compute_capability,link,source,date\nX1,,lots,400,65,130,false,7.5,PCIe 3,me,2026\n")
    with pytest.raises(CatalogError, match=r"gpus.csv: line 2: memory_mib"):
        load_catalog(user)

"""`budget plan --deadline` and layouts on the command line: what the deadline costs, the refusal when the budget
cannot meet it (exit 2, an error line and a hint line naming the nearest feasible option), the --json fields."""

import json
from decimal import ROUND_CEILING, Decimal

import pytest

# 10,000 captions on the in-process engine: about 4.4 h on one RTX 4090 (up to 6.8 h at +55%), so a 6 h
# deadline rules the single cards out and two replicas meet it
BIG = """name: big-captions
model: Qwen3-VL-8B-Instruct
quantizations: [bf16, fp16, int8, nf4]
engines: [hf]
batch_size: 4
tasks:
  - {name: coco_captions, kind: caption, samples: 10000, image_size: [640, 480], prompt_tokens: 12}
"""


@pytest.fixture
def big(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text(BIG)
    return p


def test_plan_with_a_deadline_says_what_it_costs(cli, big):
    code, out, _ = cli("plan", "--yuan", "2000", "--plan", big, "--json", "--top", "3")
    free = json.loads(out)
    assert code == 0 and free["deadline"] is None and free["recommendation"]["hours_high"] * 3600 > 6 * 3600
    code, out, _ = cli("plan", "--yuan", "2000", "--plan", big, "--json", "--top", "3", "--deadline", "6h")
    doc = json.loads(out)
    rec, d = doc["recommendation"], doc["deadline"]
    assert code == 0 and rec["hours_high"] <= 6
    assert rec["layout"] == "replicas" and rec["replicas"] == rec["gpu_count"] > 1
    assert rec["hours_high"] == round(rec["time"]["total_s"] * (1 + rec["time"]["band"]) / 3600, 3)
    assert {"deadline", "deadline_at", "seconds_left", "met", "extra_cny", "cheapest", "nearest", "late"} == set(d)
    assert d["deadline"] == "6h" and d["seconds_left"] == 6 * 3600 and d["met"] and d["nearest"] is None
    assert d["deadline_at"].endswith("Z") and d["late"] > 0
    assert d["cheapest"]["cost_cny"] == free["recommendation"]["cost_cny"] and d["cheapest"]["hours_high"] > 6
    assert Decimal(d["extra_cny"]) == Decimal(rec["cost_cny"]) - Decimal(d["cheapest"]["cost_cny"]) > 0
    assert all(a["hours_high"] <= 6 for a in doc["alternatives"])
    assert all(r["layout"] in ("single", "split", "replicas") and r["replicas"] >= 1
               for r in [rec, *doc["alternatives"], d["cheapest"]])
    code, out, _ = cli("plan", "--yuan", "2000", "--plan", big, "--top", "3", "--deadline", "6h")
    assert code == 0 and "deadline 6h (" in out.splitlines()[0]
    assert f" x{rec['gpu_count']} replicas, {rec['quantization']}, hf, " in out
    text = " ".join(out.split())  # rich wraps long lines
    assert f"the deadline costs +{d['extra_cny'][:4]}" in text and "over the cheapest option (" in text
    assert "which would take up to 6 h" in text and " up to " in out.split("Alternatives")[1]
    assert "misses the deadline: up to " in text and "within budget and by the deadline (" in text


def test_a_deadline_the_budget_cannot_meet_exits_2_naming_what_it_needs(cli, big):
    code, out, _ = cli("plan", "--yuan", "2000", "--plan", big, "--json", "--deadline", "6h")
    rec = json.loads(out)["recommendation"]
    budget = str(Decimal(rec["cost_cny"]) - Decimal("0.05"))  # still pays the single card that misses it
    code, out, err = cli("plan", "--yuan", budget, "--plan", big, "--deadline", "6h")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith("error: no option within the ") and "finishes by the deadline, 6h (" in lines[0]
    needs = f"{Decimal(rec['cost_cny']):.2f}"
    assert lines[0].endswith(f"it needs {needs} CNY, over the {Decimal(budget):.2f} CNY budget")
    enough = (Decimal(rec["cost_cny"]) * 100).to_integral_value(rounding=ROUND_CEILING) / 100  # pays it, to the cent
    assert lines[1] == f"hint: raise --yuan to {enough:.2f} or more, or allow a later --deadline"
    assert "Cheapest options that meet the deadline (none within budget)" in out
    code, out, err = cli("plan", "--yuan", budget, "--plan", big, "--deadline", "6h", "--json")
    doc = json.loads(out)
    assert code == 2 and doc["recommendation"] is None and not doc["deadline"]["met"]
    assert doc["deadline"]["nearest"]["cost_cny"] == rec["cost_cny"] and doc["deadline"]["extra_cny"] is None
    code, _, err = cli("plan", "--yuan", "2000", "--plan", big, "--deadline", "20m")
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith("error: nothing finishes by the deadline, 20m (")
    assert "the fastest option, " in lines[0] and " takes up to " in lines[0]
    assert lines[1].startswith("hint: allow a later --deadline (at least ")


@pytest.mark.parametrize("value,needle", [("yesterday", "neither a duration nor"), ("2020-01-01", "not in the future"),
                                          ("0m", "not in the future"), ("2026-02-30", "not a valid date")])
def test_a_bad_deadline_is_one_error_and_a_hint(cli, value, needle):
    code, out, err = cli("plan", "--yuan", "2000", "--deadline", value)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 2
    assert lines[0].startswith("error: --deadline ") and needle in lines[0]
    assert lines[1].startswith("hint: pass --deadline")

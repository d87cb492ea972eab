"""The digits task: its metrics on hand-made predictions (values worked out by hand), its pictures (the same
seed gives the same bytes), the user's manifest (refused where it would read outside its folder or has no
answer), the planner's view of it, and the task itself on the tiny model in nf4 and fp16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.worker import digit_images, metrics, synthetic
from runner.worker.job import Dataset, Task
from runner.worker.manifests import check_row, local_samples
from runner.worker.tasks import digits

from .conftest import job, lines, run_inline, summary, write_job

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- metrics

@pytest.mark.parametrize("prediction,answer,exact,accuracy", [
    ("1,234.50", "1,234.50", 1, 1.0),  # exact
    ("The number is 1,234.50.", "1,234.50", 1, 1.0),  # words around it, the sentence's full stop
    ("The TOTAL on line 3 is 1,234.50", "1,234.50", 1, 1.0),  # of two numbers, the one with more digits
    ("1,23.50", "1,234.50", 0, 0.875),  # a digit missing: 1 edit of 8 characters
    ("1,243.50", "1,234.50", 0, 0.75),  # two digits swapped: 2 edits
    ("1,234.50 2", "1,234.50", 1, 1.0),  # a space ends a number
    ("1234.50", "1,234.50", 0, 0.875),  # the thousands separator is part of the answer
    ("14.03.2026", "14/03/2026", 0, 0.8),  # the wrong separator twice
    ("2026-03-14", "2026-03-14", 1, 1.0),  # a date's '-' is not a sign
    ("０９：４１", "09:41", 1, 1.0),  # full-width digits and colon (NFKC)
    ("2026\u201303\u201314", "2026-03-14", 1, 1.0),  # en dashes
    ("INV-1234", "1234", 1, 1.0),  # a '-' after a letter is no minus sign
    ("\u221212.50", "-12.50", 1, 1.0),  # the minus sign is '-'
    ("", "1,234.50", 0, 0.0),  # empty
    ("I cannot read it.", "1,234.50", 0, 0.0),  # no number
    ("12345678", "1,234.50", 0, 0.375),  # 5 edits of 8 (worked out below)
    ("123456789", "12", 0, 0.0),  # floored at 0: 7 edits of 2 characters
    ("", "", 1, 1.0),  # nothing asked, nothing given
])
def test_metrics_on_hand_made_predictions(prediction, answer, exact, accuracy):
    assert metrics.digits_exact(prediction, answer) == exact
    assert metrics.char_accuracy(prediction, answer) == pytest.approx(accuracy, abs=1e-12)


def test_the_hand_worked_edit_distances():
    # "1,234.50" from "12345678": insert ',' and '.', 6 -> 0, delete 7 and 8 - no alignment does it in fewer
    # (only 6 of the answer's 8 characters are digits it shares, in order, and the lengths are equal)
    assert metrics.levenshtein("12345678", "1,234.50") == 5
    assert metrics.levenshtein("1,243.50", "1,234.50") == 2
    assert metrics.levenshtein("14.03.2026", "14/03/2026") == 2


def test_the_number_a_prediction_gives():
    assert metrics.number_text("Total: $1,234.50.") == "1,234.50"
    assert metrics.number_text("on 14/03/2026 at 09:41") == "14/03/2026"  # 8 digits before 4
    assert metrics.number_text("3 or 4") == "3"  # equal digits: the first
    assert metrics.number_text("-5 and 6") == "-5"
    assert metrics.number_text("no digits, only words.") == ""
    assert [metrics.is_number(x) for x in ("1,234.50", " 2026-03-14 ", "-7", "$1,234.50", "1 234", "N/A", "",
                                           "12.")] == [True, True, True, False, False, False, False, False]


def test_a_huge_prediction_scores_zero_without_being_compared():
    # a line's prediction is untrusted on the controller: longer than twice the answer, it cannot score above 0
    assert metrics.char_accuracy("9" * 200_000, "1,234.50") == 0.0
    assert metrics.digits_exact("9" * 200_000, "1,234.50") == 0


# --------------------------------------------------------------------------- pictures

def test_the_same_seed_draws_the_same_picture_and_answer():
    for seed in (0, 1, 12345):
        for size in ((160, 96), (640, 480)):
            a, b = digit_images.draw(seed, size), digit_images.draw(seed, size)
            assert a.image.tobytes() == b.image.tobytes() and a.image.size == size and a.image.mode == "RGB"
            assert (a.answer, a.prompt, a.layout, a.format) == (b.answer, b.prompt, b.layout, b.format)
    assert digit_images.draw(1, (160, 96)).image.tobytes() != digit_images.draw(2, (160, 96)).image.tobytes()


def test_pictures_cover_every_format_and_layout_and_ask_by_label():
    drawn = [digit_images.draw(seed, (200, 120)) for seed in range(60)]
    assert {d.format for d in drawn} == set(digit_images.FORMATS)
    assert {d.layout for d in drawn} == set(digit_images.LAYOUTS)
    for d in drawn:
        assert metrics.is_number(d.answer) and 3 <= sum(c.isdigit() for c in d.answer) <= 12, d.answer
        assert d.prompt.startswith(f"Read the {d.label}") and d.prompt.endswith("exactly as printed.")
    amounts = [d.answer for d in drawn if d.format == "amount"]
    assert amounts and all(a[-3] == "." for a in amounts)  # two decimals, never the sign


def test_the_default_font_lacks_the_yen_sign_and_an_amount_carries_one_it_draws():
    font = digit_images.Font(20)
    signs = digit_images.currencies(font)
    assert "RMB " in signs and all(digit_images.has_glyph(font.font, s) for s in signs if s != "RMB ")
    assert not digit_images.has_glyph(font.font, "\u4e00")  # a character no default font has
    if font.scalable is not None:  # Aileron (Pillow >= 10.1): ¥ comes out as the missing-glyph box
        assert "¥" not in signs and "$" in signs


def test_without_a_scalable_font_the_bitmap_font_is_scaled_up(monkeypatch):
    monkeypatch.setattr(digit_images, "_scalable", lambda px: None)  # an old Pillow, or one without FreeType
    a, b = digit_images.draw(5, (320, 200)), digit_images.draw(5, (320, 200))
    assert a.image.tobytes() == b.image.tobytes() and a.answer == b.answer
    assert digit_images.Font(33).factor == 3 and digit_images.Font(33).height > digit_images.Font(11).height
    assert "¥" in digit_images.currencies(digit_images.Font(22))  # the bitmap font has it
    assert sum(a.image.convert("L").histogram()[:100]) > 300  # dark pixels: text was drawn


def test_synthetic_digits_samples_carry_their_prompt_and_answer():
    task = Task(name="d", kind="digits", samples=3, image_size=(160, 96))
    first, again = synthetic.samples(task, 3, 7), synthetic.samples(task, 3, 7)
    assert [s.id for s in first] == ["syn-0", "syn-1", "syn-2"]
    for s, t in zip(first, again, strict=True):
        assert s.image.tobytes() == t.image.tobytes() and s.answers == t.answers and len(s.answers) == 1
        assert s.prompt.startswith("Read the ") and metrics.is_number(s.answers[0])


# --------------------------------------------------------------------------- the user's manifest

def _manifest(folder: Path, rows: list[dict]) -> Task:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "images" / "r1.png").write_bytes(b"png")  # read only when the sample runs
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return Task(name="mine", kind="digits", samples=10, dataset=Dataset("local", path="m.jsonl"))


def test_manifest_rows_are_checked(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"x")
    task = _manifest(tmp_path / "data", [
        {"id": "ok", "image": "images/r1.png", "answer": "1,234.50", "prompt": "Read the TOTAL amount."},
        {"id": "escapes", "image": "../secret.png", "answer": "12"},
        {"id": "no-answer", "image": "images/r1.png"},
        {"id": "a-number", "image": "images/r1.png", "answer": 1234.5},
        {"id": "with-sign", "image": "images/r1.png", "answer": "$12.00"},
        {"id": "too-long", "image": "images/r1.png", "answer": "1" * 65},
        {"id": "no-image", "answer": "12"},
        {"id": "missing", "image": "images/none.png", "answer": "12"},
    ])
    got = {s.id: s for s in local_samples(task, tmp_path / "data", "task mine")}
    assert got["ok"].error == "" and got["ok"].answers == ["1,234.50"] and got["ok"].prompt == "Read the TOTAL amount."
    assert got["ok"].image == (tmp_path / "data" / "images" / "r1.png").resolve()
    assert "inside its folder" in got["escapes"].error
    assert got["no-answer"].error.startswith("answer: missing")
    assert "expected text" in got["a-number"].error and "1234.5" in got["a-number"].error
    assert "is not one number" in got["with-sign"].error
    assert "over the 64 cap" in got["too-long"].error
    assert "needs the picture" in got["no-image"].error
    assert "not found" in got["missing"].error


def test_the_controller_refuses_a_bad_row_before_launch(tmp_path):
    from planner.errors import InputError
    from runner import plandata

    escapes = _manifest(tmp_path / "a", [{"id": "x", "image": "../../etc/passwd", "answer": "12"}])
    with pytest.raises(InputError, match="sample x: .*inside its folder"):
        plandata.media_files(tmp_path / "a" / "m.jsonl", escapes.name, kind="digits")
    _manifest(tmp_path / "b", [{"id": "ok", "image": "images/r1.png", "answer": "12"},
                               {"id": "y", "image": "images/r1.png"}])
    with pytest.raises(InputError, match="sample y: answer: missing") as e:
        plandata.media_files(tmp_path / "b" / "m.jsonl", "mine", kind="digits")
    assert "budget data init PLAN" in e.value.hint


def test_data_init_writes_a_digits_template_that_passes_its_own_check(tmp_path):
    from planner.plans import parse_plan
    from runner import plandata

    for row in plandata.TEMPLATES["digits"]:
        check_row(row, "digits")
    plan = parse_plan("name: mine\nmodel: tiny-random-qwen3-vl\ntasks:\n  - {name: meters, kind: digits, "
                      "dataset: {kind: local, path: meters/manifest.jsonl}}\n", "mine.yaml")
    (written,) = plandata.init(plan, tmp_path / "mine.yaml")
    assert written.created and written.kind == "digits" and written.media_dir == "images"
    rows = [json.loads(x) for x in (tmp_path / "meters" / "manifest.jsonl").read_text().splitlines()]
    assert rows == plandata.TEMPLATES["digits"] and (tmp_path / "meters" / "images").is_dir()
    gone = plandata.missing(plan, tmp_path / "mine.yaml")  # the template's pictures are the user's to add
    assert [(m.what, str(m.path)) for m in gone] == [("image", "images/receipt-001.jpg"),
                                                      ("image", "images/meter-001.jpg")]


# --------------------------------------------------------------------------- the planner

def test_the_planner_prices_digits_like_a_document():
    from planner.assumptions import Assumptions
    from planner.catalog import load_catalog
    from planner.plans import load_plan, parse_plan
    from planner.workload import image_tokens, task_loads

    spec = load_catalog().model("8b")
    plan = parse_plan("name: p\nmodel: m\nbatch_size: 4\ntasks:\n"
                      "  - {name: n, kind: digits, samples: 10, image_size: [640, 480], prompt_tokens: 40, "
                      "max_new_tokens: 32}\n"
                      "  - {name: d, kind: document, samples: 10, image_size: [640, 480], prompt_tokens: 40, "
                      "max_new_tokens: 32}\n", "p.yaml")
    n, d = task_loads(plan, spec, Assumptions())
    assert n.passes == d.passes and n.batch == d.batch == 4 and len(n.passes) == 1
    assert n.passes[0].visual == image_tokens((640, 480), plan.image_limits, spec)[0] and n.passes[0].new == 32
    for name in ("smoke.yaml", "qwen3-vl-8b-public.yaml"):
        assert (REPO / "plans" / name).read_bytes() == (REPO / "planner" / "data" / "plans" / name).read_bytes()
        (task,) = [t for t in load_plan(f"plans/{name}").tasks if t.kind == "digits"]
        assert task.dataset.kind == "synthetic"
    assert "digits" not in {t.kind for t in load_plan("plans/qwen3-vl-8b.yaml").tasks}  # the seed's plan as it was


# --------------------------------------------------------------------------- on the tiny model

TASKS = [{"name": "numbers", "kind": "digits", "samples": 2, "image_size": [160, 96], "max_new_tokens": 8},
         {"name": "mine", "kind": "digits", "samples": 5, "max_new_tokens": 8,
          "dataset": {"kind": "local", "path": "data/m.jsonl"}}]


@pytest.fixture(scope="module", params=["nf4", "fp16"])
def evaluated(request, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"digits-{request.param}")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    drawn = digit_images.draw(99, (128, 96))
    drawn.image.save(data / "images" / "r1.png")
    (data / "m.jsonl").write_text(json.dumps({"id": "r1", "image": "images/r1.png", "answer": drawn.answer,
                                              "prompt": drawn.prompt}) + "\n"
                                  + json.dumps({"id": "r2", "image": "images/r1.png"}) + "\n", encoding="utf-8")
    code = run_inline(write_job(root, job(tiny_model, TASKS, request.param)), root / "out")
    return request.param, code, root / "out", drawn


def test_the_task_runs_and_scores_each_line_from_its_own_prediction(evaluated):
    quant, code, out, drawn = evaluated
    assert code == 0
    s = summary(out)["tasks"]
    for name in ("numbers", "mine"):
        ok = [x for x in lines(out, name) if x["status"] == "ok"]
        for x in ok:
            assert x["kind"] == "digits" and x["quantization"] == quant and isinstance(x["prediction"], str)
            assert x["prompt"].endswith(digits.PROMPT) and x["prompt"].startswith("Read the ")
            assert x["exact"] == metrics.digits_exact(x["prediction"], x["answer"]) and x["exact"] in (0, 1)
            assert x["char_accuracy"] == round(metrics.char_accuracy(x["prediction"], x["answer"]), 6)
            assert 0.0 <= x["char_accuracy"] <= 1.0 and 1 <= x["decode_tokens"] <= 8
        t = s[name]
        assert t["kind"] == "digits" and t["ok"] == len(ok)
        assert t["exact_match"] == pytest.approx(sum(x["exact"] for x in ok) / len(ok), abs=1e-6)
        assert t["char_accuracy"] == pytest.approx(sum(x["char_accuracy"] for x in ok) / len(ok), abs=1e-6)
        assert t["decode_tokens"] == sum(x["decode_tokens"] for x in ok)
    numbers = lines(out, "numbers")
    assert len(numbers) == 2 and all(metrics.is_number(x["answer"]) for x in numbers)
    mine = {x["id"]: x for x in lines(out, "mine")}
    assert mine["r1"]["status"] == "ok" and mine["r1"]["answer"] == drawn.answer
    assert mine["r1"]["prompt"].startswith(drawn.prompt)
    assert mine["r2"]["status"] == "error" and mine["r2"]["error"].startswith("answer: missing")
    assert s["mine"]["errors"] == 1


def test_the_summary_believes_no_score_a_line_claims(evaluated):
    _, _, out, _ = evaluated
    got = lines(out, "numbers")
    forged = [{**x, "prediction": "nothing", "exact": 1, "char_accuracy": 1.0} for x in got]
    task = Task(name="numbers", kind="digits")
    assert digits.summarize(task, forged)["exact_match"] == 0.0
    right = [{**x, "prediction": f"It says {x['answer']}.", "exact": 0, "char_accuracy": 0.0} for x in got]
    s = digits.summarize(task, right)
    assert s["exact_match"] == 1.0 and s["char_accuracy"] == 1.0 and s["ok"] == 2
    broken = [{**got[0], "prediction": None}, {**got[1], "prediction": got[1]["answer"]}]
    assert digits.summarize(task, broken)["exact_match"] == 1.0  # a line that cannot be scored counts no score

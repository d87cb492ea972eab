"""Metrics against reference values computed by other code, never against our own output."""

from __future__ import annotations

import pytest

from runner.worker import metrics

# Reference values from pycocoevalcap 1.2 (the COCO caption evaluation code), computed with:
#   from pycocoevalcap.bleu.bleu import Bleu; from pycocoevalcap.cider.cider import Cider
#   Bleu(4).compute_score(GTS, RES); Cider().compute_score(GTS, RES)
GTS = {
    "1": ["a man riding a wave on top of a surfboard", "a surfer rides a large wave in the ocean",
          "a person on a surfboard riding a wave"],
    "2": ["a cat sitting on a wooden table", "a small cat sits on the table near a window",
          "an orange cat resting on a table"],
    "3": ["two dogs running across a grassy field", "a pair of dogs play in the grass", "dogs run on green grass"],
    "4": ["a red double decker bus on a city street", "a bus driving down the street",
          "a red bus parked next to a sidewalk"],
}
RES = {"1": "a man riding a wave on a surfboard", "2": "a cat sitting on a table", "3": "a dog running in the grass",
       "4": "a red bus on the street"}
PYCOCO_BLEU = [0.9615384614644968, 0.8869685939122942, 0.7833915600289337, 0.6437165253485436]
PYCOCO_BLEU4_PER_IMAGE = [0.8408964150152106, 0.7648825823211365, 7.259795289430573e-05, 9.036020032446394e-05]
PYCOCO_CIDER = 2.5821222358808003
PYCOCO_CIDER_PER_IMAGE = [3.6860502112254516, 3.4039509940534134, 1.0238126154655791, 2.214675122778758]


def test_bleu_matches_pycocoevalcap():
    corpus, per = metrics.bleu([RES[k] for k in GTS], [GTS[k] for k in GTS])
    assert corpus == pytest.approx(PYCOCO_BLEU, abs=1e-12)
    assert per[3] == pytest.approx(PYCOCO_BLEU4_PER_IMAGE, rel=1e-9)


def test_cider_d_matches_pycocoevalcap():
    score, per = metrics.cider_d([RES[k] for k in GTS], [GTS[k] for k in GTS])
    assert score == pytest.approx(PYCOCO_CIDER, abs=1e-9)
    assert per == pytest.approx(PYCOCO_CIDER_PER_IMAGE, abs=1e-9)


def test_bleu_hand_computed_example():
    # Papineni et al.'s style check: hypothesis "the the the the" against "the cat is on the mat":
    # clipped unigram precision 2/4, no bigram matches -> BLEU-4 ~ 0 (tiny), brevity penalty exp(1 - 6/4).
    corpus, _ = metrics.bleu(["the the the the"], [["the cat is on the mat"]])
    import math

    assert corpus[0] == pytest.approx(0.5 * math.exp(1 - 6 / 4), rel=1e-6)
    assert corpus[3] < 1e-4


def test_caption_tokenizer_drops_ptb_punctuation():
    assert metrics.tokenize("A Cat, sitting on a table.") == "a cat sitting on a table"


@pytest.mark.parametrize("pred, answers, expected", [
    ("kitten", ["sitting"], 1 - 3 / 7),    # edit distance 3 over 7 characters: NL 0.43 < 0.5
    ("42", ["42"], 1.0),
    ("TOTAL 42 ", ["total 42"], 1.0),       # case and outer spaces do not count
    ("4", ["42"], 0.0),                    # NL = 0.5 is at the threshold -> 0
    ("421", ["42"], 1 - 1 / 3),            # NL = 1/3
    ("hello", ["world", "hellp"], 0.8),    # the best answer counts
])
def test_anls_docvqa_definition(pred, answers, expected):
    assert metrics.anls(pred, answers) == pytest.approx(expected)


def test_levenshtein_reference_values():
    assert metrics.levenshtein("kitten", "sitting") == 3
    assert metrics.levenshtein("flaw", "lawn") == 2
    assert metrics.levenshtein("", "abc") == 3


def test_keyword_recall_chinese_and_fullwidth():
    assert metrics.keyword_recall("明月松间照，清泉石上流", ["月", "泉", "山"]) == pytest.approx(2 / 3)
    assert metrics.keyword_recall("ＭＯＯＮ over hills", ["moon"]) == 1.0  # NFKC folds full-width letters
    assert metrics.keyword_recall("anything", []) == 0.0


def test_token_f1_squad_style():
    assert metrics.token_f1("a red circle", "the red circle") == pytest.approx(2 / 3)
    assert metrics.token_f1("明月", "明月光") == pytest.approx(0.8)  # CJK by character: P 2/3, R 1
    assert metrics.exact_match("A red circle.", "a red circle")

"""Scores, implemented here so the worker needs no extra package. BLEU-4 and CIDEr-D follow the COCO
caption evaluation code (pycocoevalcap) exactly, quirks included, so our numbers compare with
published ones; ANLS follows the DocVQA / ST-VQA definition (threshold 0.5); the digits task's exact match and
character accuracy are defined at `number_text` below."""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter

# PTBTokenizer's punctuation list in pycocoevalcap, which the COCO captions are scored after.
_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def tokenize(text: str) -> str:
    """Lowercase, split off punctuation, drop it: the shape PTBTokenizer gives COCO captions."""
    text = unicodedata.normalize("NFKC", text).lower()
    words = re.findall(r"[\w']+|[^\w\s]", text)
    return " ".join(w for w in words if w not in _PUNCT and w not in string.punctuation)


def _ngrams(sentence: str, n: int = 4) -> tuple[int, Counter]:
    words = sentence.split()
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return len(words), counts


def bleu(hypotheses: list[str], references: list[list[str]], n: int = 4) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and per-sentence BLEU-1..n as pycocoevalcap's Bleu ('closest' reference
    length for the brevity penalty; 1e-9/1e-15 smoothing). Inputs are tokenized strings."""
    small, tiny = 1e-9, 1e-15
    total_guess, total_correct = [0] * n, [0] * n
    total_test = total_ref = 0
    per_sentence: list[list[float]] = [[] for _ in range(n)]
    for hyp, refs in zip(hypotheses, references, strict=True):
        maxcounts: dict = {}
        reflens = []
        for ref in refs:
            length, counts = _ngrams(ref, n)
            reflens.append(length)
            for gram, c in counts.items():
                maxcounts[gram] = max(maxcounts.get(gram, 0), c)
        testlen, counts = _ngrams(hyp, n)
        reflen = min((abs(length - testlen), length) for length in reflens)[1]
        guess = [max(0, testlen - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for gram, c in counts.items():
            correct[len(gram) - 1] += min(maxcounts.get(gram, 0), c)
        total_test += testlen
        total_ref += reflen
        score = 1.0
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            score *= (correct[k] + tiny) / (guess[k] + small)
            per_sentence[k].append(score ** (1.0 / (k + 1)))
        ratio = (testlen + tiny) / (reflen + small)
        if ratio < 1:
            for k in range(n):
                per_sentence[k][-1] *= math.exp(1 - 1 / ratio)
    corpus, score = [], 1.0
    for k in range(n):
        score *= (total_correct[k] + tiny) / (total_guess[k] + small)
        corpus.append(score ** (1.0 / (k + 1)))
    ratio = (total_test + tiny) / (total_ref + small)
    if ratio < 1:
        corpus = [b * math.exp(1 - 1 / ratio) for b in corpus]
    return corpus, per_sentence


def cider_d(hypotheses: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D as pycocoevalcap's Cider: tf-idf n-gram cosine with clipping, a Gaussian length penalty
    (sigma 6), x10; document frequencies from this corpus' references. Like the reference code, the
    length it penalizes is the number of bigrams (a quirk kept so scores stay comparable)."""
    crefs = [[_ngrams(r, n)[1] for r in refs] for refs in references]
    ctest = [_ngrams(h, n)[1] for h in hypotheses]
    df: Counter = Counter()
    for refs in crefs:
        for gram in {g for ref in refs for g in ref}:
            df[gram] += 1
    ref_len = math.log(float(len(crefs)))

    def vec(counts: Counter):
        v: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            v[k][gram] = tf * (ref_len - math.log(max(1.0, df[gram])))
            norm[k] += v[k][gram] ** 2
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for test, refs in zip(ctest, crefs, strict=True):
        vh, nh, lh = vec(test)
        total = [0.0] * n
        for ref in refs:
            vr, nr, lr = vec(ref)
            delta = float(lh - lr)
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        scores.append(sum(total) / n / len(refs) * 10.0)
    return (sum(scores) / len(scores) if scores else 0.0), scores


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one prediction: the best 1 - NL over the accepted
    answers, where NL = edit distance / longer length, and 0 when NL >= threshold (DocVQA)."""
    p = _norm(prediction)
    best = 0.0
    for answer in answers:
        a = _norm(answer)
        if not a and not p:
            return 1.0
        longer = max(len(a), len(p))
        if abs(len(a) - len(p)) / longer >= threshold:  # the distance is at least the length difference: NL >= it
            continue
        nl = levenshtein(a, p) / longer
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def keyword_recall(prediction: str, keywords: list[str]) -> float:
    """Share of the reference keywords found in the prediction (NFKC, case-folded substring match, so
    Chinese keywords need no word segmentation)."""
    return len(keywords_found(prediction, keywords)) / len(keywords) if keywords else 0.0


def keywords_found(prediction: str, keywords: list[str]) -> list[str]:
    """The reference keywords present in the prediction (the match keyword_recall counts)."""
    p = unicodedata.normalize("NFKC", prediction).casefold()
    return [k for k in keywords if unicodedata.normalize("NFKC", k).casefold() in p]


def token_f1(a: str, b: str) -> float:
    """Bag-of-tokens F1 between two answers (SQuAD-style); characters for CJK text."""
    ta, tb = _units(a), _units(b)
    if not ta and not tb:
        return 1.0
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(tb), common / len(ta)
    return 2 * precision * recall / (precision + recall)


def _units(text: str) -> list[str]:
    out = []
    for word in tokenize(text).split():
        out.extend(list(word) if any("\u4e00" <= ch <= "\u9fff" for ch in word) else [word])
    return out


def exact_match(a: str, b: str) -> bool:
    return tokenize(a) == tokenize(b)


# --------------------------------------------------------------------------- digits
# A number as printed: ASCII digits with the separators '.', ',', '-', '/', ':' between them (1,234.50,
# 2026-03-14, 14/03/2026, 09:41), and a leading '-' when it does not follow a letter or digit (-12.50, not the
# '-' of INV-1234). It starts and ends with a digit, so a sentence's full stop is not part of it.
_NUMBER = re.compile(r"(?:(?<![0-9A-Za-z])-)?[0-9](?:[0-9.,/:-]*[0-9])?")
_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2212\ufe63"), "-")  # typographic dashes, minus


def _digits_text(text: str) -> str:
    """NFKC (full-width digits and punctuation become ASCII), typographic dashes and the minus sign become
    '-', surrounding space stripped."""
    return unicodedata.normalize("NFKC", text).translate(_DASHES).strip()


def number_text(prediction: str) -> str:
    """The number a prediction gives, for the digits task. After _digits_text, the number-like spans (_NUMBER) of
    the prediction; of several, the one with the most digits (the first of equals): "The TOTAL on line 3 is
    1,234.50." gives "1,234.50". A span never holds a space ("1 234" is two spans) and no currency sign or
    word: the answer is the number only. No span: ""."""
    best, digits = "", -1
    for m in _NUMBER.finditer(_digits_text(prediction)):
        n = sum(ch.isdigit() for ch in m.group())
        if n > digits:
            best, digits = m.group(), n
    return best


def is_number(text: str) -> bool:
    """Whether `text` is one number as number_text reads it, whole (a digits answer must be: "1,234.50", not
    "$1,234.50", "1 234" or "N/A"), surrounding space aside."""
    return bool(_digits_text(text)) and number_text(text) == _digits_text(text)


def digits_exact(prediction: str, answer: str) -> int:
    """1 when the prediction's number (number_text) is the answer character for character - separators
    included: "1234.50" is not "1,234.50" -, else 0. The answer is taken as written (_digits_text only)."""
    return int(number_text(prediction) == _digits_text(answer))


def char_accuracy(prediction: str, answer: str) -> float:
    """1 - Levenshtein(number_text(prediction), answer) / max(len(answer), 1), floored at 0: one missing,
    extra or wrong character of "1,234.50" costs 1/8, two swapped digits 2/8. The distance is at least the
    difference in length, so a number longer than twice the answer scores 0 without computing it (a line's
    prediction is untrusted when the controller scores it again)."""
    p, a = number_text(prediction), _digits_text(answer)
    longest = max(len(a), 1)
    if abs(len(p) - len(a)) >= longest:
        return 0.0
    return max(0.0, 1.0 - levenshtein(p, a) / longest)

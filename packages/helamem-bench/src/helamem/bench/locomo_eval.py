"""LoCoMo's answer metrics: token F1 and BLEU-1 with its normalisation.

The scoring follows the official LoCoMo evaluation (``task_eval/evaluation.py``
of snap-research/LoCoMo, Maharana et al., ACL 2024), reimplemented here:

- normalisation: commas removed, lowercased, punctuation removed, the words
  *a*, *an*, *the* and *and* removed, whitespace collapsed; every token is
  then Porter-stemmed (NLTK's default ``PorterStemmer`` mode, reimplemented
  in :class:`PorterStemmer`, so nltk is not needed);
- category 1 (multi-hop): multi-answer F1: prediction and gold are split on
  ``,``; each gold part takes its best F1 over the prediction parts; the mean
  over gold parts is the score;
- categories 2 and 4: token F1; category 3: token F1 against the gold answer
  up to its first ``;``;
- category 5 (adversarial): 1 when the answer says the information is not
  there (it contains *no information available* or *not mentioned*), else 0.

BLEU-1 is not part of the official code; it is the sentence BLEU with weights
(1, 0, 0, 0) of ``nltk.translate.bleu_score`` (clipped unigram precision times
the brevity penalty; smoothing does not change it: a prediction without any
matching unigram scores 0) over the same normalised, stemmed tokens, against
the same gold answer as F1. For category 5 both metrics are the abstention
score above.

Examples:
    >>> normalize_answer("The cat, and a Dog!")
    'cat dog'
    >>> f1_score("went to the beach", "The beach")  # P = 1/3, R = 1
    0.5
    >>> score_answer("Not mentioned in the conversation", "pottery", 5).f1
    1.0
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "AnswerScore",
    "PorterStemmer",
    "bleu1",
    "f1_multi",
    "f1_score",
    "gold_answer",
    "normalize_answer",
    "says_not_available",
    "score_answer",
    "stem_tokens",
]

_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCTUATION = frozenset(string.punctuation)
_NOT_AVAILABLE = ("no information available", "not mentioned")


class PorterStemmer:
    """The Porter stemmer as NLTK's ``PorterStemmer()`` (its default mode) stems.

    That is M. F. Porter's 1980 algorithm ("An algorithm for suffix
    stripping") with the NLTK extensions: a few irregular forms (*dying* →
    *die*, *skies* → *sky*), *-ies*/*-ied* on four-letter words, *y* → *i*
    only after a consonant, *-bli* → *-ble*, *-fulli* and *-logi* in step 2,
    and words of at most two letters left alone.

    Examples:
        >>> s = PorterStemmer()
        >>> [s.stem(w) for w in ("caresses", "ponies", "relational", "hopping", "dying")]
        ['caress', 'poni', 'relat', 'hop', 'die']
    """

    _IRREGULAR: ClassVar[dict[str, str]] = {
        "skies": "sky",
        "sky": "sky",
        "dying": "die",
        "lying": "lie",
        "tying": "tie",
        "news": "news",
        "innings": "inning",
        "inning": "inning",
        "outings": "outing",
        "outing": "outing",
        "cannings": "canning",
        "canning": "canning",
        "howe": "howe",
        "proceed": "proceed",
        "exceed": "exceed",
        "succeed": "succeed",
    }
    _VOWELS = frozenset("aeiou")
    _STEP2 = (
        ("ational", "ate"),
        ("tional", "tion"),
        ("enci", "ence"),
        ("anci", "ance"),
        ("izer", "ize"),
        ("bli", "ble"),
        ("alli", "al"),
        ("entli", "ent"),
        ("eli", "e"),
        ("ousli", "ous"),
        ("ization", "ize"),
        ("ation", "ate"),
        ("ator", "ate"),
        ("alism", "al"),
        ("iveness", "ive"),
        ("fulness", "ful"),
        ("ousness", "ous"),
        ("aliti", "al"),
        ("iviti", "ive"),
        ("biliti", "ble"),
        ("fulli", "ful"),
        ("logi", "log"),
    )
    _STEP3 = (
        ("icate", "ic"),
        ("ative", ""),
        ("alize", "al"),
        ("iciti", "ic"),
        ("ical", "ic"),
        ("ful", ""),
        ("ness", ""),
    )
    _STEP4 = (
        "al",
        "ance",
        "ence",
        "er",
        "ic",
        "able",
        "ible",
        "ant",
        "ement",
        "ment",
        "ent",
        "ion",
        "ou",
        "ism",
        "ate",
        "iti",
        "ous",
        "ive",
        "ize",
    )

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def stem(self, word: str) -> str:
        """The stem of ``word`` (lowercased first).

        Args:
            word: One token.

        Returns:
            Its stem.

        Examples:
            >>> PorterStemmer().stem("Happiness")
            'happi'
        """
        w = word.lower()
        cached = self._cache.get(w)
        if cached is not None:
            return cached
        if w in self._IRREGULAR:
            out = self._IRREGULAR[w]
        elif len(w) <= 2:
            out = w
        else:
            out = w
            for step in (
                self._step1a,
                self._step1b,
                self._step1c,
                self._step2,
                self._step3,
                self._step4,
                self._step5a,
                self._step5b,
            ):
                out = step(out)
        if len(self._cache) < 100_000:
            self._cache[w] = out
        return out

    # -- the conditions of the paper ---------------------------------------

    def _consonants(self, word: str) -> list[bool]:
        """Per letter: consonant? (``y`` is one at the start or after a vowel)."""
        flags: list[bool] = []
        for i, ch in enumerate(word):
            if ch in self._VOWELS:
                flags.append(False)
            elif ch == "y":
                flags.append(i == 0 or not flags[i - 1])
            else:
                flags.append(True)
        return flags

    def _measure(self, stem: str) -> int:
        """m in [C](VC){m}[V]: the number of vowel-to-consonant transitions."""
        flags = self._consonants(stem)
        return sum(1 for a, b in itertools.pairwise(flags) if not a and b)

    def _has_vowel(self, stem: str) -> bool:
        return not all(self._consonants(stem))

    def _double_consonant(self, word: str) -> bool:
        return len(word) >= 2 and word[-1] == word[-2] and self._consonants(word)[-1]

    def _cvc(self, word: str) -> bool:
        """*o: ends consonant-vowel-consonant, the last not w, x or y (or is vowel-consonant)."""
        flags = self._consonants(word)
        if len(word) >= 3 and flags[-3] and not flags[-2] and flags[-1]:
            return word[-1] not in "wxy"
        return len(word) == 2 and not flags[0] and flags[1]

    # -- the steps -----------------------------------------------------------

    def _step1a(self, w: str) -> str:
        if w.endswith("ies") and len(w) == 4:
            return w[:-3] + "ie"
        if w.endswith("sses"):
            return w[:-2]
        if w.endswith("ies"):
            return w[:-2]
        if w.endswith("ss"):
            return w
        if w.endswith("s"):
            return w[:-1]
        return w

    def _step1b(self, w: str) -> str:
        if w.endswith("ied"):
            return w[:-3] + ("ie" if len(w) == 4 else "i")
        if w.endswith("eed"):
            stem = w[:-3]
            return stem + "ee" if self._measure(stem) > 0 else w
        for suffix in ("ed", "ing"):
            if w.endswith(suffix) and self._has_vowel(w[: -len(suffix)]):
                stem = w[: -len(suffix)]
                break
        else:
            return w
        for end, repl in (("at", "ate"), ("bl", "ble"), ("iz", "ize")):
            if stem.endswith(end):
                return stem[: -len(end)] + repl
        if self._double_consonant(stem):
            return stem[:-1] if stem[-1] not in "lsz" else stem
        if self._measure(stem) == 1 and self._cvc(stem):
            return stem + "e"
        return stem

    def _step1c(self, w: str) -> str:
        if w.endswith("y") and len(w) > 2 and self._consonants(w[:-1])[-1]:
            return w[:-1] + "i"
        return w

    def _step2(self, w: str) -> str:
        if w.endswith("alli") and self._measure(w[:-4]) > 0:
            return self._step2(w[:-4] + "al")
        for suffix, repl in self._STEP2:
            if w.endswith(suffix):
                stem = w[: -len(suffix)]
                # NLTK measures -logi on the stem that keeps its "l"
                probe = w[:-3] if suffix == "logi" else stem
                return stem + repl if self._measure(probe) > 0 else w
        return w

    def _step3(self, w: str) -> str:
        for suffix, repl in self._STEP3:
            if w.endswith(suffix):
                stem = w[: -len(suffix)]
                return stem + repl if self._measure(stem) > 0 else w
        return w

    def _step4(self, w: str) -> str:
        for suffix in self._STEP4:
            if w.endswith(suffix):
                stem = w[: -len(suffix)]
                ok = self._measure(stem) > 1
                if suffix == "ion":
                    ok = ok and stem[-1] in "st"
                return stem if ok else w
        return w

    def _step5a(self, w: str) -> str:
        if w.endswith("e"):
            stem = w[:-1]
            m = self._measure(stem)
            if m > 1 or (m == 1 and not self._cvc(stem)):
                return stem
        return w

    def _step5b(self, w: str) -> str:
        if w.endswith("ll") and self._measure(w[:-1]) > 1:
            return w[:-1]
        return w


_STEMMER = PorterStemmer()


def normalize_answer(text: str) -> str:
    """LoCoMo's answer normalisation (without stemming).

    Commas are dropped, the text lowercased, punctuation removed, the words
    *a*, *an*, *the* and *and* removed and whitespace collapsed.

    Args:
        text: An answer.

    Returns:
        The normalised answer.

    Examples:
        >>> normalize_answer("7 May, 2023.")
        '7 may 2023'
    """
    text = text.replace(",", "").lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def stem_tokens(text: str) -> list[str]:
    """The normalised, Porter-stemmed tokens of ``text``.

    Args:
        text: An answer.

    Returns:
        Its tokens.

    Examples:
        >>> stem_tokens("The Running dogs")
        ['run', 'dog']
    """
    return [_STEMMER.stem(w) for w in normalize_answer(text).split()]


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 over normalised, stemmed tokens (LoCoMo's ``f1_score``).

    Args:
        prediction: The model's answer.
        gold: The reference answer.

    Returns:
        F1 in [0, 1]; 0 when no token is shared (or either side is empty).

    Examples:
        >>> f1_score("She painted a sunset", "painting a sunset")
        0.8
    """
    pred, ref = stem_tokens(prediction), stem_tokens(gold)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_multi(prediction: str, gold: str) -> float:
    """Multi-answer F1 (LoCoMo's ``f1`` for category 1).

    Both sides are split on ``,``; each gold part is scored by its best
    :func:`f1_score` over the prediction parts, and the scores are averaged.

    Args:
        prediction: The model's answer.
        gold: The reference answer, parts separated by commas.

    Returns:
        The mean over gold parts, in [0, 1].

    Examples:
        >>> f1_multi("hiking, pottery", "pottery, camping, hiking")
        0.6666666666666666
    """
    preds = [p.strip() for p in prediction.split(",")]
    golds = [g.strip() for g in gold.split(",")]
    return sum(max(f1_score(p, g) for p in preds) for g in golds) / len(golds)


def bleu1(prediction: str, gold: str) -> float:
    """Sentence BLEU-1 over normalised, stemmed tokens.

    As ``nltk.translate.bleu_score.sentence_bleu([gold], prediction,
    weights=(1, 0, 0, 0))`` with any smoothing: clipped unigram precision
    times the brevity penalty ``exp(1 - r/c)`` when the prediction (c tokens)
    is shorter than the gold (r tokens).

    Args:
        prediction: The model's answer.
        gold: The reference answer.

    Returns:
        BLEU-1 in [0, 1]; 0 without any matching token.

    Examples:
        >>> bleu1("sunset", "a painting of a sunset")  # 1 of 1 matches; c=1 < r=3
        0.1353352832366127
    """
    pred, ref = stem_tokens(prediction), stem_tokens(gold)
    if not pred or not ref:
        return 0.0
    clipped = sum((Counter(pred) & Counter(ref)).values())
    if clipped == 0:
        return 0.0
    c, r = len(pred), len(ref)
    penalty = 1.0 if c > r else math.exp(1 - r / c)
    return penalty * clipped / c


def says_not_available(prediction: str) -> bool:
    """Whether an answer says the information is not there (category 5).

    Args:
        prediction: The model's answer.

    Returns:
        ``True`` when it contains *no information available* or *not
        mentioned* (case-insensitive), as in the official evaluation.

    Examples:
        >>> says_not_available("Not mentioned in the conversation")
        True
        >>> says_not_available("Unknown")
        False
    """
    low = prediction.lower()
    return any(phrase in low for phrase in _NOT_AVAILABLE)


def gold_answer(answer: object, category: int) -> str:
    """The gold answer as the official evaluation scores it.

    Args:
        answer: The ``answer`` field (a string, or a number such as a year).
        category: The question's category.

    Returns:
        ``str(answer)``; for category 3 only the part before the first ``;``.

    Examples:
        >>> gold_answer("Likely yes; she loves dogs", 3)
        'Likely yes'
        >>> gold_answer(2022, 2)
        '2022'
    """
    text = str(answer)
    return text.split(";")[0].strip() if category == 3 else text


@dataclass(frozen=True, slots=True)
class AnswerScore:
    """LoCoMo scores of one answer.

    Attributes:
        f1: Official F1 (multi-answer for category 1, abstention for 5).
        bleu1: BLEU-1 (the abstention score for category 5).
    """

    f1: float
    bleu1: float


def score_answer(prediction: str, gold: object, category: int) -> AnswerScore:
    """Score one answer as the official LoCoMo evaluation does, plus BLEU-1.

    Args:
        prediction: The model's answer.
        gold: The ``answer`` field of the question (ignored for category 5).
        category: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop,
            5 adversarial.

    Returns:
        F1 and BLEU-1.

    Raises:
        ValueError: On a category outside 1-5.

    Examples:
        >>> score_answer("Paris, Rome", "Rome, Paris, Oslo", 1).f1
        0.6666666666666666
        >>> score_answer("I don't know", None, 5)
        AnswerScore(f1=0.0, bleu1=0.0)
    """
    if category == 5:
        ok = 1.0 if says_not_available(prediction) else 0.0
        return AnswerScore(ok, ok)
    if category not in (1, 2, 3, 4):
        raise ValueError(f"LoCoMo categories are 1-5, got {category}")
    ref = gold_answer(gold, category)
    f1 = f1_multi(prediction, ref) if category == 1 else f1_score(prediction, ref)
    return AnswerScore(f1, bleu1(prediction, ref))

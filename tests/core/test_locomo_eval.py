"""LoCoMo's answer metrics against hand-computed cases (and nltk, where installed)."""

from __future__ import annotations

import doctest
import math
import random
import string
from typing import Any

import pytest

from helamem.bench import locomo_eval
from helamem.bench.locomo_eval import (
    PorterStemmer,
    bleu1,
    f1_multi,
    f1_score,
    gold_answer,
    normalize_answer,
    says_not_available,
    score_answer,
    stem_tokens,
)


def test_normalisation_drops_commas_punctuation_articles_and_and() -> None:
    assert normalize_answer("The Cat, and A dog!") == "cat dog"
    assert normalize_answer("7 May, 2023") == "7 may 2023"
    assert normalize_answer("an apple-pie") == "applepie"  # punctuation removed, not split
    assert normalize_answer("Andrew and Sandy") == "andrew sandy"  # whole words only
    assert normalize_answer("  ") == ""


def test_stemming_follows_porter_with_nltk_extensions() -> None:
    s = PorterStemmer()
    cases = {
        "caresses": "caress",
        "ponies": "poni",
        "ties": "tie",  # NLTK: -ies on four letters
        "cats": "cat",
        "agreed": "agre",
        "plastered": "plaster",
        "motoring": "motor",
        "sing": "sing",
        "conflated": "conflat",
        "hopping": "hop",
        "falling": "fall",
        "filing": "file",
        "happy": "happi",
        "enjoy": "enjoy",  # y -> i only after a consonant
        "relational": "relat",
        "generalization": "gener",
        "hopefulness": "hope",
        "adoption": "adopt",
        "controlling": "control",
        "dying": "die",  # irregular forms
        "skies": "sky",
        "is": "is",  # two letters: untouched
        "Running": "run",
        "painting": "paint",
        "painted": "paint",
        "camping": "camp",
    }
    assert {w: s.stem(w) for w in cases} == cases
    assert stem_tokens("The painted sunsets") == ["paint", "sunset"]


def test_f1_hand_computed() -> None:
    # pred [paint, sunset] vs gold [paint, sunset, lake]: P = 1, R = 2/3
    assert f1_score("Painted a sunset", "painting the sunset, lake") == pytest.approx(0.8)
    assert f1_score("a sunset", "sunset") == 1.0
    assert f1_score("nothing shared", "sunset") == 0.0
    assert f1_score("", "sunset") == 0.0
    # duplicates are counted with their multiplicity (Counter intersection)
    assert f1_score("dog dog", "dog") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_multi_answer_f1_for_category_1() -> None:
    # gold parts: pottery (1.0 via "pottery"), camping (0), painting (1.0 via "paintings")
    assert f1_multi("pottery, paintings", "pottery, camping, painting") == pytest.approx(2 / 3)
    # the prediction's parts compete per gold part: "pottery and hiking" vs "pottery" = 2/3
    assert f1_multi("pottery and hiking", "pottery") == pytest.approx(2 / 3)
    assert score_answer("pottery, paintings", "pottery, camping, painting", 1).f1 == (
        pytest.approx(2 / 3)
    )
    # categories 2-4 use plain F1, where the comma is just removed
    assert score_answer("pottery, paintings", "pottery, camping, painting", 4).f1 == (
        pytest.approx(0.8)
    )


def test_category_3_scores_against_the_gold_before_semicolon() -> None:
    assert gold_answer("Likely yes; she talks about it a lot", 3) == "Likely yes"
    assert score_answer("likely yes", "Likely yes; she talks about it a lot", 3).f1 == 1.0
    assert score_answer("likely yes", "Likely yes; she talks about it a lot", 4).f1 < 0.5


def test_category_5_scores_abstention() -> None:
    for answer in (
        "Not mentioned in the conversation",
        "No information available.",
        "NOT MENTIONED",
    ):
        assert says_not_available(answer)
        assert score_answer(answer, "pottery", 5) == locomo_eval.AnswerScore(1.0, 1.0)
    assert score_answer("pottery", "pottery", 5).f1 == 0.0  # the trap answer
    assert score_answer("I don't know", None, 5).f1 == 0.0
    with pytest.raises(ValueError, match="1-5"):
        score_answer("x", "x", 6)


def test_numbers_as_gold_answers() -> None:
    assert score_answer("In 2022", 2022, 2).f1 == pytest.approx(2 / 3)


def test_bleu1_hand_computed() -> None:
    # c = 1 < r = 3 ([paint, of, sunset]): BP = exp(1 - 3) and precision 1
    assert bleu1("sunset", "a painting of a sunset") == pytest.approx(math.exp(-2))
    # c = 4 > r = 2: no penalty; clipped matches: sunset once, lake once -> 2/4
    assert bleu1("sunset sunset lake boat", "sunset lake") == pytest.approx(0.5)
    assert bleu1("the same words", "same words") == 1.0
    assert bleu1("nothing", "sunset") == 0.0
    assert bleu1("", "sunset") == 0.0


def _nltk_or_skip() -> tuple[Any, Any, Any]:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    nltk_porter = pytest.importorskip("nltk.stem.porter")
    return nltk_bleu.sentence_bleu, nltk_bleu.SmoothingFunction, nltk_porter.PorterStemmer


@pytest.mark.filterwarnings("ignore::UserWarning")  # nltk: no 2-gram overlaps
def test_matches_nltk_where_installed() -> None:
    sentence_bleu, smoothing, porter = _nltk_or_skip()
    theirs, ours = porter(), PorterStemmer()
    rng = random.Random(0)
    words = [
        "".join(rng.choice(string.ascii_lowercase[:8] + "y") for _ in range(rng.randint(3, 11)))
        for _ in range(4000)
    ]
    words += [
        "generously",
        "sensibilities",
        "archaeology",
        "fulli",
        "analogous",
        "reliably",
        "traditionally",
        "syzygy",
        "feed",
        "agreed",
        "bled",
        "dying",
        "lying",
        "innings",
        "proceeding",
        "succeeded",
        "happily",
        "cried",
        "cries",
    ]
    assert [ours.stem(w) for w in words] == [theirs.stem(w) for w in words]
    vocab = ["sunset", "paint", "lake", "dog", "cat", "run", "may", "2023", "the"]
    for _ in range(300):
        pred = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6)))
        gold = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6)))
        p, g = stem_tokens(pred), stem_tokens(gold)
        if not p or not g:
            continue
        for smooth in (None, smoothing().method1):
            expected = sentence_bleu([g], p, weights=(1, 0, 0, 0), smoothing_function=smooth)
            assert bleu1(pred, gold) == pytest.approx(expected), (pred, gold)


def test_doctests() -> None:
    result = doctest.testmod(locomo_eval, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0

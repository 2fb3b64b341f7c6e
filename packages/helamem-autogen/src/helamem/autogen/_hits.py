"""Which hits an answer returns: at most ``k``, none under the score threshold, and
only those whose text fits the token budget."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from helamem.core import Hit, InvalidInputError, SearchResult

__all__ = ["best", "check_k", "check_threshold", "fitting"]


def best(hits: Iterable[Hit], k: int, threshold: float | None = None) -> list[Hit]:
    """At most ``k`` hits with ``score >= threshold``, highest score first.

    Episodes and facts compete on the core's relevance (``Hit.score`` in
    [0, 1]); ties keep the core's order (episodes before facts).
    """
    ranked = sorted(hits, key=lambda h: -h.score)  # stable
    return [h for h in ranked if threshold is None or h.score >= threshold][:k]


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be an int >= 1, got {k!r}; pass e.g. k=5")
    return k


def check_threshold(threshold: object) -> float | None:
    if threshold is None:
        return None
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or not 0.0 <= threshold <= 1.0
    ):
        raise InvalidInputError(
            f"score_threshold must be a relevance in [0, 1] or None, got {threshold!r}; "
            "pass e.g. score_threshold=0.5"
        )
    return float(threshold)


def fitting(query: str, hits: Sequence[Hit], max_tokens: int | None) -> list[Hit]:
    """The leading hits whose text fits in ``max_tokens`` (core ``to_text`` counting)."""
    if max_tokens is None:
        return list(hits)
    n = 0
    while n < len(hits):
        upto = SearchResult(query, tuple(hits[: n + 1]))
        if upto.to_text(max_tokens) != upto.to_text():
            break
        n += 1
    return list(hits[:n])

"""Which hits an answer returns: at most ``k``, none under the score threshold, only
those whose text fits the token budget, and (injected) none without any relevance."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from helamem.core import Hit, InvalidInputError, SearchResult

__all__ = ["SOME_RELEVANCE", "best", "check_k", "check_threshold", "fitting", "related"]


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


SOME_RELEVANCE = 0.01
"""The least score that is some relevance to the query (1 %): below it a score is the
noise of an embedding (a cosine of 1e-6 between texts sharing no word)."""


def related(hits: Sequence[Hit]) -> list[Hit]:
    """The hits with some relevance to the query: a score of at least
    :data:`SOME_RELEVANCE`, or reached by spreading from a hit of this search that has
    one (the reply of a question that
    matches: the core scores a base hit by its own text only, so in a store small enough
    for every memory to be a base candidate that reply scores 0 when it shares no word
    with the query, and the same reply as an association hit scores its question's
    relevance times the edge's weight).

    Examples:
        >>> from helamem.core import Memory
        >>> from datetime import UTC, datetime
        >>> def hit(id, score, via=()):
        ...     t = datetime(2026, 1, 1, tzinfo=UTC)
        ...     m = Memory(id, ("u",), "episodic", id, "user", t, t)
        ...     return Hit(m, score, 0.0, 0.0, 0.0, 0.0, 0.0, "base", via)
        >>> [h.id for h in related([hit("q", 0.4), hit("r", 0.0, (("q", 0.5),)),
        ...                          hit("x", 0.0, (("y", 0.6),)), hit("y", 1e-6)])]
        ['q', 'r']
    """
    relevant = {h.id for h in hits if h.score >= SOME_RELEVANCE}
    return [h for h in hits if h.id in relevant or any(s in relevant for s, _ in h.via)]

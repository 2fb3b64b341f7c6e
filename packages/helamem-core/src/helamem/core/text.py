"""Text helpers: lexical tokens, keywords, and safe FTS5 queries."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "GENERIC_ROLES",
    "STOPWORDS",
    "drop_common",
    "fts_match",
    "fts_query",
    "fts_terms",
    "keywords",
    "named",
    "safe_text",
    "tokens",
]

_WORD = re.compile(r"\w+", re.UNICODE)

STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "s",
        "t",
        "don",
        "didn",
        "doesn",
        "isn",
        "wasn",
        "i'm",
        "it's",
        "ll",
        "re",
        "ve",
        "d",
        "m",
        "o",
        "y",
        "also",
        "yeah",
        "oh",
        "hey",
        "hi",
        "really",
        "got",
        "get",
        "like",
        "lot",
    ]
)


_INVISIBLE = frozenset(("Cc", "Cf", "Zs", "Zl", "Zp"))


def is_blank(text: str) -> bool:
    r"""Whether ``text`` holds nothing visible: only whitespace, control and format
    characters (Unicode categories Cc, Cf, Zs, Zl, Zp; zero-width spaces and joiners,
    BOMs and direction marks are Cf). Lone surrogates count as content.

    Examples:
        >>> is_blank(" \u200b\u2060\ufeff\n"), is_blank("\u200bx")
        (True, False)
    """
    if text.strip() and text.isprintable():
        return False
    return all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text)


def safe_text(text: str) -> str:
    """``text`` with lone surrogates replaced, so it can be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode aware).

    Examples:
        >>> tokens("Hello, Wörld! 42")
        ['hello', 'wörld', '42']
    """
    return [t.lower() for t in _WORD.findall(text)]


GENERIC_ROLES = frozenset(["user", "assistant", "system", "tool", "function", "human", "ai"])
"""Roles that name a part in a dialogue, not a person: :func:`named` never matches
them (the learned selection's ``named`` was fitted on speakers' names; a query
saying "user" is no question about one speaker)."""


def named(role: str | None, query_words: frozenset[str]) -> bool:
    """Whether a memory's role (its speaker: ``"Sam"``) is named in a query.

    Every word of the role must be a word of the query, case-insensitively
    (``query_words``: ``frozenset(tokens(query))``). A role of
    :data:`GENERIC_ROLES` (``"user"``, ``"assistant"``...) is never named.

    Examples:
        >>> q = frozenset(tokens("What did Sam tell the user about soda?"))
        >>> named("Sam", q), named("sam", q), named("Evan", q), named(None, q)
        (True, True, False, False)
        >>> named("user", q)
        False
    """
    if not role:
        return False
    words = _role_words(role)
    return bool(words) and all(w in query_words for w in words)


@functools.lru_cache(maxsize=4096)
def _role_words(role: str) -> tuple[str, ...]:
    """A role's words (none for a generic role), cached: a search asks once per candidate."""
    return () if role.strip().lower() in GENERIC_ROLES else tuple(tokens(role))


def keywords(text: str, n: int = 8) -> list[str]:
    """The ``n`` most frequent non-stopword tokens, first occurrence breaking ties.

    Examples:
        >>> keywords("Tea, tea and more tea with Alice")
        ['tea', 'alice']
    """
    # a Counter keeps first occurrences in order, and most_common sorts stably
    counts = Counter(t for t in tokens(text) if len(t) > 1 and t not in STOPWORDS)
    return [t for t, _ in counts.most_common(n)]


def fts_terms(text: str, max_terms: int = 32) -> list[str]:
    """The query's distinct content words, in order (at most ``max_terms``).

    Examples:
        >>> fts_terms("Where did Alice go, Alice?")
        ['alice', 'go']
    """
    seen: dict[str, None] = {}
    for t in tokens(safe_text(text)):
        if t in STOPWORDS or t in seen:
            continue
        seen[t] = None
        if len(seen) >= max_terms:
            break
    return list(seen)


def fts_match(terms: Sequence[str]) -> str | None:
    """An FTS5 MATCH expression that ORs ``terms``, each quoted (``None`` if none)."""
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms)


def fts_query(text: str, max_terms: int = 32) -> str | None:
    """An FTS5 MATCH expression that ORs the query's content words.

    Every term is a quoted string, so FTS5 operators in user text (``NEAR``,
    ``OR``, ``*``, quotes, column filters) are matched as plain words and can
    never change the query's syntax. Returns ``None`` when nothing is left to
    match.

    Examples:
        >>> fts_query('Where did "Alice" go OR NEAR?')
        '"alice" OR "go" OR "near"'
    """
    return fts_match(fts_terms(text, max_terms))


def drop_common(
    terms: Sequence[str],
    df: Sequence[int],
    rows: int,
    max_df: float,
    keep: int = 2,
    max_terms: int = 0,
    max_postings: int = 0,
) -> list[str]:
    """``terms`` without those whose document frequency exceeds ``max_df · rows``.

    Document-frequency pruning: a word in a large share of the memories adds
    little to BM25 yet makes FTS5 score every row holding it. When every term
    is that common, the ``keep`` rarest stay (ties: query order), bounding the
    work. ``max_df >= 1`` (or no rows) keeps every term. ``max_terms > 0``
    then keeps only that many of the rarest left. Words in no memory
    (frequency 0) are left out first: they match nothing, so they never count
    as the rarer word that lets the common ones go.

    ``max_postings > 0`` bounds the work in absolute terms, whatever the
    store's size: the rarest terms stay while their frequencies sum to at
    most ``max_postings`` (the rarest one always stays). FTS5 scores every
    posting of every term it is given, so this caps a query's lexical cost
    where the relative ``max_df`` grows with the store (Elasticsearch's
    ``cutoff_frequency`` is the same idea). The terms it leaves out are the
    most common, which carry the least BM25 weight (idf).

    Examples:
        >>> drop_common(["tea", "alice", "week"], [900, 3, 400], 1000, 0.1)
        ['alice']
        >>> drop_common(["tea", "week", "day"], [900, 400, 500], 1000, 0.1)
        ['week', 'day']
        >>> drop_common(["x7q2", "pls"], [1, 0], 30, 0.03)
        ['x7q2']
        >>> drop_common(["tea", "week", "day"], [900, 400, 500], 1000, 0.1, max_postings=800)
        ['week']
    """
    # a word in no memory matches nothing: it is never "a rarer word that remains"
    known = [i for i, d in enumerate(df) if d > 0]
    if len(known) < len(terms):
        terms, df = [terms[i] for i in known], [df[i] for i in known]
    if max_df >= 1.0 or rows <= 0 or len(terms) <= 1:
        chosen = list(range(len(terms)))
    else:
        limit = max_df * rows
        chosen = [i for i, d in enumerate(df) if d <= limit]
        if not chosen:
            chosen = sorted(range(len(terms)), key=lambda i: (df[i], i))[:keep]
    by_rarity = sorted(chosen, key=lambda i: (df[i], i))
    if max_terms > 0:
        by_rarity = by_rarity[:max_terms]
    if max_postings > 0:
        total = 0
        kept: list[int] = []
        for i in by_rarity:
            total += df[i]
            if kept and total > max_postings:
                break
            kept.append(i)
        by_rarity = kept
    return [terms[i] for i in sorted(by_rarity)]


def rarest(terms: Sequence[str], df: Sequence[int], n: int) -> list[str]:
    """The ``n`` rarest of ``terms`` (ties: query order), in query order; all if ``n`` is 0.

    Examples:
        >>> rarest(["tea", "alice", "week"], [900, 3, 400], 2)
        ['alice', 'week']
    """
    if n <= 0 or len(terms) <= n:
        return list(terms)
    order = sorted(range(len(terms)), key=lambda i: (df[i], i))[:n]
    return [terms[i] for i in sorted(order)]

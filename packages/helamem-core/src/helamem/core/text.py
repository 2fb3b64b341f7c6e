"""Text helpers: lexical tokens, keywords, and safe FTS5 queries."""

from __future__ import annotations

import re
from collections import Counter

__all__ = ["STOPWORDS", "fts_query", "keywords", "safe_text", "tokens"]

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


def keywords(text: str, n: int = 8) -> list[str]:
    """The ``n`` most frequent non-stopword tokens, first occurrence breaking ties.

    Examples:
        >>> keywords("Tea, tea and more tea with Alice")
        ['tea', 'alice']
    """
    toks = [t for t in tokens(text) if t not in STOPWORDS and len(t) > 1]
    counts = Counter(toks)
    order = {t: i for i, t in reversed(list(enumerate(toks)))}
    return sorted(counts, key=lambda t: (-counts[t], order[t]))[:n]


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
    seen: dict[str, None] = {}
    for t in tokens(safe_text(text)):
        if t in STOPWORDS or t in seen:
            continue
        seen[t] = None
        if len(seen) >= max_terms:
            break
    if not seen:
        return None
    return " OR ".join(f'"{t}"' for t in seen)

"""Checks of what callers pass in: content, ``k``, and the query a framework adapter searches.

Pure: no I/O, no state.
"""

from __future__ import annotations

from .errors import InvalidInputError
from .text import is_blank

__all__ = ["MAX_CONTENT_CHARS", "MAX_K", "check_content", "check_k", "query_tail"]

MAX_CONTENT_CHARS = 16_000_000
"""The most characters one memory's content (or a query) may hold."""


def check_content(content: object, what: str = "content") -> str:
    if not isinstance(content, str):
        raise InvalidInputError(f"{what} must be a str, got {type(content).__name__}")
    if is_blank(content):
        raise InvalidInputError(
            f"{what} is empty or holds only whitespace, control or zero-width characters; "
            f"pass some visible text"
        )
    if len(content) > MAX_CONTENT_CHARS:
        raise InvalidInputError(
            f"{what} has {len(content)} characters, over the {MAX_CONTENT_CHARS} limit; split it"
        )
    return content


def query_tail(query: str) -> str:
    """The last ``MAX_CONTENT_CHARS`` characters of ``query`` (``search`` raises above it,
    where the frameworks' memories take any text), or ``""`` when nothing visible is left.

    Examples:
        >>> query_tail("tea" + " " * MAX_CONTENT_CHARS)
        ''
    """
    tail = query[-MAX_CONTENT_CHARS:]
    return "" if is_blank(tail) else tail


MAX_K = 2**40
"""The largest ``k`` a search passes on: more hits than any store holds (a ``k`` of
``sys.maxsize``, "no limit", overflowed SQLite's 64-bit integers)."""


def check_k(k: object) -> int:
    """``k`` checked: a positive int, at most :data:`MAX_K` (a larger one is taken as it).

    Raises:
        InvalidInputError: ``k`` is not a positive int.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise InvalidInputError(f"k must be a positive int, got {k!r}")
    return min(k, MAX_K)

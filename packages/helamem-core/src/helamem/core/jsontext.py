"""Stored JSON text read safely: its nesting depth without decoding it, and metadata
that nests deeper than :data:`MAX_JSON_DEPTH` (stored before the limit) read without
``RecursionError`` (pure, imports nothing of ``helamem``)."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "json_text_depth", "load_metadata"]

MAX_JSON_DEPTH = 100
"""Most nested objects and arrays in stored metadata: Python's JSON decoder recurses
once per level, and a value it could encode (979 levels deep) failed to decode with
``RecursionError``, so every search and read meeting that memory raised."""


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[][{},:]')
"""A JSON text's strings (skipped whole, brackets inside them included) and its
structural characters."""


def json_text_depth(text: str) -> int:
    """The nesting depth of JSON ``text``'s objects and arrays, read without decoding
    it (no recursion: any depth reads).

    Examples:
        >>> json_text_depth('{"a": [[1], "]]"]}'), json_text_depth('"x"')
        (3, 0)
    """
    if text.count("{") + text.count("[") <= 1:
        return text.count("{") + text.count("[")
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in ("{", "["):
            depth += 1
            deepest = max(deepest, depth)
        elif c in ("}", "]"):
            depth -= 1
    return deepest


def load_metadata(text: str) -> dict[str, Any]:
    """Stored metadata (the JSON text of an object) as a dict no deeper than
    :data:`MAX_JSON_DEPTH`, whatever the store holds.

    Metadata stored before the limit existed may nest deeper (Python's decoder
    raised ``RecursionError`` on it, and every search meeting it failed): each
    top-level value nesting too deep reads as its JSON text, a string, as
    :func:`dump_json` asks callers to store such values (``helamem check``
    reports those rows as ``metadata_depth``; ``helamem reindex`` stores them so).

    Examples:
        >>> load_metadata('{"a": [[["x"]]], "b": 1}')
        {'a': [[['x']]], 'b': 1}
    """
    if text == "{}":  # most memories: no parse
        return {}
    if (
        text.count("{") + text.count("[") > MAX_JSON_DEPTH
        and json_text_depth(text) > MAX_JSON_DEPTH
    ):
        return _shallow(text)
    out: dict[str, Any] = json.loads(text)
    return out


def _shallow(text: str) -> dict[str, Any]:
    """A JSON object's members, each value nesting deeper than :data:`MAX_JSON_DEPTH`
    less one (the object's own level) kept as its JSON text."""
    out: dict[str, Any] = {}
    depth, start, colon = 0, 0, 0

    def member(end: int) -> None:
        if colon > start:  # not an empty object
            value = text[colon + 1 : end].strip()
            deep = json_text_depth(value) >= MAX_JSON_DEPTH
            out[json.loads(text[start:colon])] = value if deep else json.loads(value)

    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in ("{", "["):
            depth += 1
            if depth == 1:
                start = colon = m.end()
        elif c in ("}", "]"):
            if depth == 1:
                member(m.start())
            depth -= 1
        elif depth == 1 and c == ",":
            member(m.start())
            start = colon = m.end()
        elif depth == 1 and c == ":" and colon == start:
            colon = m.start()
    return out

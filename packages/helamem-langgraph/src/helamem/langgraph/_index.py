"""What :class:`~helamem.langgraph.HelaMemStore` embeds of an item's value.

The store's fields come from ``fields=`` or from LangGraph's own index
configuration, ``index={"fields": [...]}`` (``InMemoryStore``,
``PostgresStore``) or ``index={"text_fields": [...]}`` (``SqliteStore``).
A path selects parts of the value as LangGraph's ``get_text_at_path`` does
(``"$"`` is the whole value, ``"a.b"``, ``"a[*].b"``, ...), and what it
selects is embedded as its **values**: strings as they are, numbers and
booleans as text, objects and arrays as their values in order (never their
keys or JSON syntax), so ``{"text": "Alice has a cat"}`` embeds
``Alice has a cat``, not ``{"text": "Alice has a cat"}``. Each selected part
is embedded separately (one memory each) and an item scores by its best
part, as LangGraph's stores do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from helamem.core import MAX_CONTENT_CHARS, InvalidInputError, is_blank
from langgraph.store.base import get_text_at_path

__all__ = ["index_fields", "value_texts"]

logger = logging.getLogger(__name__)


def index_fields(fields: Sequence[str] | None, index: Mapping[str, Any] | None) -> list[str]:
    """The store's default paths from ``fields=`` and/or LangGraph's ``index=`` config.

    Raises:
        InvalidInputError: If both name fields and they differ, or a path is not a string.
    """
    from_index: Any = None
    if index:
        from_index = index.get("fields") or index.get("text_fields")
        if index.get("embed") is not None:
            logger.info(
                "HelaMemStore embeds with its HelaMemory's embedder; index['embed'] is "
                "not used (pass HelaMemory(..., embedder=...) to change it)"
            )
    if fields and from_index and list(fields) != list(from_index):
        raise InvalidInputError(
            f"fields={list(fields)!r} and index fields {list(from_index)!r} differ; pass one"
        )
    chosen = list(fields or from_index or ["$"])
    if not all(isinstance(p, str) and p for p in chosen):
        raise InvalidInputError(f"index fields must be non-empty strings, got {chosen!r}")
    return chosen


def value_texts(value: Mapping[str, Any], paths: Sequence[str]) -> list[str]:
    """The texts to embed, one per selected part (as LangGraph embeds each field
    separately): ``"$"`` is one text of every value; a path selecting several
    parts (``"a[*].b"``) gives one text each. Blank texts (by the core's rule,
    :func:`helamem.core.is_blank`: whitespace, control and zero-width characters
    only) and repeated ones are left out, so a value with nothing to index is
    stored unindexed; a text over the core's :data:`~helamem.core.MAX_CONTENT_CHARS`
    is indexed as consecutive parts of at most that length."""
    out: list[str] = []
    for path in paths:
        if path == "$":
            out.append(_join(value))
            continue
        # strings marked, so that one holding JSON text ("[]", '{"a": 1}') is kept as
        # the text it is, and only a selected object or array gives its values
        for t in get_text_at_path(_marked(value), path):
            if t.startswith(_MARK):
                out.append(t[1:])
            elif t[:1] in "{[":  # an object or array (its JSON): its values
                out.append(_join(_unmarked(json.loads(t))))
            else:  # a number or a boolean
                out.append(t)
    parts = (t[i : i + MAX_CONTENT_CHARS] for t in out for i in range(0, len(t), MAX_CONTENT_CHARS))
    return list(dict.fromkeys(t for t in parts if not is_blank(t)))


_MARK = "\x00"


def _marked(obj: Any) -> Any:
    """``obj`` with every string prefixed by :data:`_MARK` (keys unchanged)."""
    if isinstance(obj, str):
        return _MARK + obj
    if isinstance(obj, Mapping):
        return {k: _marked(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_marked(v) for v in obj)
    return obj


def _unmarked(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj[1:] if obj.startswith(_MARK) else obj
    if isinstance(obj, Mapping):
        return {k: _unmarked(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unmarked(v) for v in obj]
    return obj


def _join(obj: Any) -> str:
    leaves: list[str] = []
    _leaves(obj, leaves)
    return "\n".join(t for t in leaves if not is_blank(t))


def _leaves(obj: Any, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _leaves(v, out)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _leaves(v, out)
    elif obj is not None:
        out.append(json.dumps(obj))

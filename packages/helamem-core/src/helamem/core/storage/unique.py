"""A turn's idempotency key (``add_turn``'s ``unique_on``) as both stores keep it in
``memories.unique_key`` (SQLite migration 9, PostgreSQL 5), and the key of a turn the
AutoGen adapter recorded before there were keys."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "LEGACY_TURN_KEY",
    "keep_forgotten",
    "key_digest",
    "legacy_unique_key",
    "unique_key",
]


LEGACY_TURN_KEY = "_helamem_turn"
"""The metadata key of the AutoGen adapter's turn identity (a sha256, hex), which it
looked up by metadata before turns stored their ``unique_key``."""

_LEGACY = re.compile(r'\{"_helamem_turn": "([0-9a-f]{64})"\}')


def legacy_unique_key(metadata: str) -> str | None:
    """The ``unique_key`` of a memory stored before idempotency keys existed, from its
    metadata as :func:`~helamem.core.types.dump_json` wrote it: that of
    ``{"_helamem_turn": <hex>}`` when the metadata is exactly an AutoGen turn's
    identity (64 hex digits; migration 9, and an import of an older export), else
    ``None``.

    Examples:
        >>> legacy_unique_key('{"_helamem_turn": "' + "ab" * 32 + '"}') == unique_key(
        ...     {"_helamem_turn": "ab" * 32})
        True
        >>> legacy_unique_key('{"other": "x"}') is None
        True
    """
    found = _LEGACY.fullmatch(metadata) if LEGACY_TURN_KEY in metadata else None
    return None if found is None else unique_key({LEGACY_TURN_KEY: found.group(1)})


def unique_key(fields: Mapping[str, str]) -> str:
    """The stored idempotency key of a turn's ``unique_on`` pairs (migration 9).

    Examples:
        >>> print(unique_key({"b": "2", "a": "é"}))
        {"a":"\\u00e9","b":"2"}
    """
    return json.dumps(dict(sorted(fields.items())), ensure_ascii=True, separators=(",", ":"))


def key_digest(key: str) -> str:
    """What ``forgotten_turns`` keeps of a deleted turn's :func:`unique_key`: its sha256
    (hex), not the key, whose values (a thread id, a user's request id) may be personal
    data that a delete must not leave behind.

    Examples:
        >>> len(key_digest('{"a":"1"}')), key_digest("x") == key_digest("x")
        (64, True)
    """
    return hashlib.sha256(key.encode()).hexdigest()


def keep_forgotten(db: Any, keys: Iterable[tuple[int, str]]) -> None:
    """Keep each ``(scope node, unique_key)`` as a forgotten turn's (its
    :func:`key_digest`, in ``forgotten_turns``) inside the write transaction ``db``
    (SQLite's connection or PostgreSQL's): no process stores a turn of it again."""
    got = [(int(node), key_digest(key)) for node, key in keys]
    sql = "INSERT OR IGNORE INTO forgotten_turns(scope_id, key_digest) VALUES (?, ?)"
    db.executemany(sql, got)

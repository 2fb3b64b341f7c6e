"""Checks of :class:`~helamem.core.engine.HelaMemory`'s arguments, run in the caller's
thread so that bad input raises before anything is queued or written."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidInputError

__all__ = ["check_revive", "ids_arg", "limit_arg", "metadata_fields", "unique_fields"]


def ids_arg(ids: str | Iterable[str], what: str = "ids") -> list[str]:
    if isinstance(ids, str):
        return [ids]
    out = list(ids)
    if not all(isinstance(i, str) for i in out):
        raise InvalidInputError(f"{what} must be strings")
    return out


def metadata_fields(metadata: object, what: str = "find_ids") -> dict[str, str]:
    """``find_ids``'s ``metadata`` (or, ``what``, ``unique_on``'s pairs): at least one
    plain-identifier key, each with a str."""
    if not isinstance(metadata, Mapping) or not metadata:
        raise InvalidInputError(
            f"metadata must be a non-empty dict of str keys to str values, got {metadata!r}; "
            "pass e.g. metadata={'session': 's1'}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise InvalidInputError(
                f"metadata key {key!r} is not a plain identifier (letters, digits, _); "
                f"{what} matches top-level keys such as 'session_id'"
            )
        if not isinstance(value, str):
            raise InvalidInputError(
                f"metadata[{key!r}] must be a str, got {type(value).__name__}; {what} "
                "matches string values exactly (store the value as a string)"
            )
    return dict(metadata)


def unique_fields(keys: object, metadata: Mapping[str, Any] | None) -> dict[str, str] | None:
    """``NewTurn.unique_on``'s ``key: value`` pairs of ``metadata`` (``None``: none)."""
    if isinstance(keys, str) or not isinstance(keys, Iterable):
        raise InvalidInputError(
            f"unique_on must be a tuple of metadata keys, got {keys!r}; e.g. "
            "unique_on=('request_id',) with metadata={'request_id': 'r1'}"
        )
    keys = tuple(keys)
    if not keys:
        return None
    meta = metadata or {}
    missing = [k for k in keys if k not in meta]
    if missing:
        raise InvalidInputError(
            f"unique_on key {missing[0]!r} is not in the turn's metadata; add it, e.g. "
            f"metadata={{{missing[0]!r}: 'r1'}}"
        )
    return metadata_fields({k: meta[k] for k in keys}, "unique_on")


def check_revive(revive: object) -> bool:
    """``revive`` of a turn (``add_turn``, ``NewTurn``, ``record_turn``): a bool only
    (a truthy string or 1 stored a forgotten turn unasked)."""
    if not isinstance(revive, bool):
        raise InvalidInputError(f"revive must be True or False, got {revive!r}")
    return revive


def limit_arg(limit: object) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be an int >= 1 or None, got {limit!r}")
    return limit

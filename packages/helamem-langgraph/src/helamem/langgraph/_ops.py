"""What a :class:`~helamem.langgraph.HelaMemStore` plan asks of its executor, op
validation, document items as LangGraph items, and the addresses of items and hits.

A plan (a generator) is pure translation: it yields these requests, and the
sync or async executor does the I/O and sends the answers back, so both
``batch`` and ``abatch`` run the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from helamem.core import Hit, InvalidInputError, Kind
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    SearchItem,
    SearchOp,
    validate_op_namespace,
)

from ._filters import check_filter, check_paging
from ._recorded import store_address
from ._writes import ID_FIELD, doc_meta

T = TypeVar("T")


@dataclass(frozen=True)
class Docs:
    ops: list[Op]


@dataclass(frozen=True)
class Write:
    ops: list[PutOp]


@dataclass(frozen=True)
class Search:
    query: str
    prefix: tuple[str, ...] | None  # None: every scope, one candidate pool
    k: int  # hits of this kind
    kind: Kind  # episodic: turns, documents (no facts beside them); semantic: facts


@dataclass(frozen=True)
class Forget:
    stale: list[tuple[str, tuple[str, ...], str]]  # (memory id, namespace, key)


@dataclass(frozen=True)
class Learn:
    ids: list[str]


@dataclass(frozen=True)
class Call:
    """A blocking call on the memory (run off the event loop by ``abatch``)."""

    fn: Callable[[], Any]


Req = Docs | Write | Search | Forget | Learn | Call
Plan = Generator[Req, Any, T]


def deferred(req: Req, later: list[Req]) -> bool:
    """Whether ``req`` waits (in ``later``) until a batch's reads are done: deleting the
    memories a search found stale takes the writer lock, which the reads hold shared
    (it answers nothing)."""
    if isinstance(req, Forget):
        later.append(req)
        return True
    return False


def _valid_text(text: str, what: str, error: type[ValueError] = InvalidInputError) -> None:
    """Refuse a str the document store cannot hold: one with a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{what} {text!r} holds a lone surrogate (U+D800..U+DFFF), which is not valid "
            f"Unicode text; pass a valid str (e.g. bytes decoded with errors='replace')"
        ) from exc


def _nonfinite(value: object) -> bool:
    """Whether a NaN or infinity is anywhere in ``value`` (dicts, lists, tuples)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_nonfinite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_nonfinite(v) for v in value)
    return False


def _retyped(value: object, at: str = "") -> str | None:
    """Where in ``value`` a part JSON would give back as another type (orjson writes a
    datetime, date, UUID, Enum or dataclass as a string or an object), or ``None``."""
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return None
    if isinstance(value, Mapping):
        parts: Any = ((f"{at}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        parts = ((f"{at}[{i}]", v) for i, v in enumerate(value))
    else:
        return f"{type(value).__name__} at {at or 'the top'}"
    return next((found for path, v in parts if (found := _retyped(v, path)) is not None), None)


def check_value(namespace: tuple[str, ...], key: str, value: Mapping[str, Any]) -> None:
    """Refuse, before anything is written, a value that the document store's JSON
    (orjson, as LangGraph's ``SqliteStore``) cannot hold as given.

    Raises:
        TypeError: A part JSON cannot encode (bytes, a set, an int beyond 64 bits,
            a str with a lone surrogate), as ``SqliteStore`` raises, with the part named;
            or one it would read back as another type (a datetime, date, UUID, Enum or
            dataclass: ``SqliteStore`` gives back a str or a dict).
        ValueError: A NaN or infinity (``SqliteStore`` would store ``null``).
    """
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise TypeError(
            f"the value put at {namespace!r}/{key!r} cannot be stored as JSON ({exc}); store "
            f"dicts, lists, str, int (within 64 bits), float, bool and None (bytes as "
            f"base64 text, a set as a list)"
        ) from exc
    retyped = _retyped(value)
    if retyped is not None:
        raise TypeError(
            f"the value put at {namespace!r}/{key!r} holds a {retyped}, which JSON would "
            f"read back as a str or a dict; store it as one (a datetime or date as "
            f".isoformat(), a UUID as str(), an Enum as its .value, a dataclass as asdict())"
        )
    if _nonfinite(value):
        raise ValueError(
            f"the value put at {namespace!r}/{key!r} holds a NaN or infinity, which JSON "
            f"cannot hold (it would read back as None); store None or a string instead"
        )


def check_op(op: Op, supports_ttl: bool, documents: BaseStore | None) -> None:
    if not isinstance(op, GetOp | PutOp | SearchOp | ListNamespacesOp):
        raise InvalidInputError(f"unknown store operation {type(op).__name__}")
    validate_op_namespace(op)  # labels: strings, non-empty, no "." or NUL
    labels = op.namespace_prefix if isinstance(op, SearchOp) else getattr(op, "namespace", ())
    for label in labels:
        _valid_text(label, "namespace label", InvalidNamespaceError)
    if isinstance(op, GetOp | PutOp):
        if not isinstance(op.key, str):
            raise InvalidInputError(f"key must be a str, got {type(op.key).__name__}")
        _valid_text(op.key, "key")
    if isinstance(op, SearchOp):
        check_paging(op.limit, op.offset)
        check_filter(op.filter)
    elif isinstance(op, ListNamespacesOp):
        check_paging(op.limit, op.offset, "list_namespaces")
    elif isinstance(op, PutOp):
        if not op.namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if op.value is not None and ID_FIELD in op.value:
            raise InvalidInputError(f"{ID_FIELD!r} is reserved by HelaMemStore; rename that field")
        if op.value is not None:
            check_value(tuple(op.namespace), op.key, op.value)
        if op.ttl is not None and not supports_ttl:
            raise NotImplementedError(
                f"TTL is not supported by {type(documents).__name__}; "
                "use the default SqliteStore documents or ttl=None"
            )


def _utc(when: datetime | str) -> datetime:
    """``when`` as an aware UTC datetime: ``SqliteStore`` gives naive UTC times (SQLite's
    ``CURRENT_TIMESTAMP``), recorded memories and ``InMemoryStore`` aware ones; one
    listing must compare (sorting a mix raised ``TypeError``)."""
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def public(item: Item, score: float | None = None, scored: bool = False) -> Any:
    """A document store item without the reserved field (a ``SearchItem`` if ``scored``),
    its times aware UTC datetimes."""
    value = {k: v for k, v in item.value.items() if k != ID_FIELD}
    created = _utc(doc_meta(item).get("created_at") or item.created_at)
    updated = _utc(item.updated_at)
    if scored:
        return SearchItem(item.namespace, item.key, value, created, updated, score)
    return Item(
        value=value,
        key=item.key,
        namespace=item.namespace,
        created_at=created,
        updated_at=updated,
    )


def searched(item: Item, score: float | None = None) -> SearchItem:
    return SearchItem(
        item.namespace,
        item.key,
        item.value,
        _utc(item.created_at),
        _utc(item.updated_at),
        score,
    )


def item_at(item: Item) -> tuple[tuple[str, ...], str]:
    return tuple(item.namespace), item.key


def hit_address(hit: Hit) -> tuple[tuple[str, ...], str]:
    found = store_address(hit.memory)
    assert found is not None
    return found

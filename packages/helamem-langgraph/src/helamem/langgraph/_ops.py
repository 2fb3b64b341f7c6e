"""What a :class:`~helamem.langgraph.HelaMemStore` plan asks of its executor, op
validation, document items as LangGraph items, and the addresses of items and hits.

A plan (a generator) is pure translation: it yields these requests, and the
sync or async executor does the I/O and sends the answers back, so both
``batch`` and ``abatch`` run the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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


def check_op(op: Op, supports_ttl: bool, documents: BaseStore | None) -> None:
    if not isinstance(op, GetOp | PutOp | SearchOp | ListNamespacesOp):
        raise InvalidInputError(f"unknown store operation {type(op).__name__}")
    validate_op_namespace(op)  # labels: strings, non-empty, no "." or NUL
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
        if op.ttl is not None and not supports_ttl:
            raise NotImplementedError(
                f"TTL is not supported by {type(documents).__name__}; "
                "use the default SqliteStore documents or ttl=None"
            )


def public(item: Item, score: float | None = None, scored: bool = False) -> Any:
    """A document store item without the reserved field (a ``SearchItem`` if ``scored``)."""
    value = {k: v for k, v in item.value.items() if k != ID_FIELD}
    created = doc_meta(item).get("created_at") or item.created_at
    if scored:
        return SearchItem(item.namespace, item.key, value, created, item.updated_at, score)
    return Item(
        value=value,
        key=item.key,
        namespace=item.namespace,
        created_at=created,
        updated_at=item.updated_at,
    )


def searched(item: Item, score: float | None = None) -> SearchItem:
    return SearchItem(item.namespace, item.key, item.value, item.created_at, item.updated_at, score)


def addressable(namespace: Sequence[str]) -> bool:
    """Whether LangGraph accepts ``namespace`` as an address (no label empty, none with
    "." or NUL): only there can a document be. A recorded memory's scope is any core
    scope (a ``user_id`` with "." in it)."""
    return all(label and "." not in label and "\x00" not in label for label in namespace)


def item_at(item: Item) -> tuple[tuple[str, ...], str]:
    return tuple(item.namespace), item.key


def hit_address(hit: Hit) -> tuple[tuple[str, ...], str]:
    meta = hit.memory.metadata["langgraph"]
    return tuple(meta["namespace"]), str(meta["key"])

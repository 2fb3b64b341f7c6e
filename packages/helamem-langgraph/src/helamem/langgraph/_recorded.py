"""Recorded memories as store items: turns and facts that are not store documents.

Memories written by other HeLa-Mem writers (turns recorded by
:class:`~helamem.langgraph.HelaMemCheckpointer` or a ``TurnRecorder``,
``memory.add``, distilled facts) live in a scope = namespace. With
``HelaMemStore(recorded=True)`` (the default) they are first-class items:
namespace = their scope, key = their memory id, value ``{"content", "role",
"kind", "event_time"}``, ``created_at = updated_at`` = when they were stored.
``get`` and ``delete`` address them, listings and ``list_namespaces``
include them (after the documents, newest first), and a ``put`` to their
address replaces them with a document. A *store* memory is one whose
metadata has a ``"langgraph"`` key (it indexes a document: :func:`store_address`
tells whether it is really one, of its own scope); every other
memory is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from helamem.core import HelaMemory, InvalidInputError, Memory, MemoryNotFoundError
from langgraph.store.base import Item

__all__ = [
    "addressable",
    "address_in",
    "is_store_memory",
    "store_address",
    "recorded_at",
    "recorded_items",
    "recorded_namespaces",
]


def _recorded(core: Any) -> str:
    """The SQL condition "``m`` is a recorded memory" (its metadata has no "langgraph"
    value; JSON null counts as none), in ``core``'s graph store's SQL."""
    return f"{core.store.json_field('m.metadata', 'langgraph')} IS NULL"


def is_store_memory(memory: Memory) -> bool:
    """Whether ``memory`` indexes a store document (else it is a recorded memory)."""
    return "langgraph" in memory.metadata


def addressable(namespace: Sequence[str]) -> bool:
    """Whether LangGraph accepts ``namespace`` as an address (no label empty, none with
    "." or NUL): only there can a document be. A recorded memory's scope is any core
    scope (a ``user_id`` with "." in it)."""
    return all(label and "." not in label and "\x00" not in label for label in namespace)


def address_in(meta: Any, scope: Sequence[str]) -> tuple[tuple[str, ...], str] | None:
    """The document address that ``"langgraph"`` metadata value ``meta`` of a memory in
    ``scope`` names, or ``None`` when it is not the store's own: malformed, naming a
    namespace other than the memory's scope (the store writes a document's memories in
    its namespace's scope; any writer of the core may store such metadata, so it proves
    nothing else), or one LangGraph refuses (no document can be there)."""
    if not isinstance(meta, dict):
        return None
    ns, key = meta.get("namespace"), meta.get("key")
    if not isinstance(ns, list) or not isinstance(key, str) or tuple(ns) != tuple(scope):
        return None
    return (tuple(ns), key) if addressable(ns) else None


def store_address(memory: Memory) -> tuple[tuple[str, ...], str] | None:
    """:func:`address_in` for ``memory``."""
    return address_in(memory.metadata.get("langgraph"), memory.scope)


def item_of(memory: Memory) -> Item:
    """A recorded memory as a LangGraph item."""
    value = {
        "content": memory.content,
        "role": memory.role,
        "kind": memory.kind,
        "event_time": memory.event_time.isoformat(),
    }
    return Item(
        value=value,
        key=memory.id,
        namespace=tuple(memory.scope),
        created_at=memory.created_at,
        updated_at=memory.created_at,
    )


def recorded_at(memory: HelaMemory, ns: tuple[str, ...], key: str) -> Item | None:
    """The recorded memory at ``(ns, key)``, or ``None``."""
    try:
        m = memory.get(key)
    except (MemoryNotFoundError, InvalidInputError):
        return None
    if tuple(m.scope) != tuple(ns) or is_store_memory(m):
        return None
    return item_of(m)


def _scope_ids(core: Any, prefix: Sequence[str]) -> list[int] | None:
    """Scope node ids under ``prefix`` (``None``: every scope; ``[]``: none)."""
    if not prefix:
        return None
    node = core.store.find_scope(list(prefix))
    return [] if node is None else list(core.store.descendants(node))


def recorded_items(
    memory: HelaMemory, prefix: Sequence[str], limit: int | None = None
) -> list[Item]:
    """The recorded memories under ``prefix`` (whole segments), newest first
    (at most ``limit``; ``None``: all)."""

    def rows(core: Any) -> list[tuple[Any, ...]]:
        ids = _scope_ids(core, prefix)
        if ids == []:
            return []
        sql = (
            "SELECT m.id, s.path, m.kind, m.content, m.role, m.event_time, m.created_at"
            f" FROM memories m JOIN scopes s ON s.id = m.scope_id WHERE {_recorded(core)}"
        )
        params: list[object] = []
        if ids is not None:  # any number of scopes in one statement
            among, params = core.store.ids_in("m.scope_id", ids)
            sql += f" AND {among}"
        sql += " ORDER BY m.n DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return list(core.store.db.execute(sql, params))

    out = []
    # after the turns a TurnRecorder accepted before this call under ``prefix``
    for mid, path, kind, content, role, event, created in memory._call(rows, (prefix,)):
        when = datetime.fromtimestamp(created, UTC)
        value = {
            "content": content,
            "role": role,
            "kind": kind,
            "event_time": datetime.fromtimestamp(event, UTC).isoformat(),
        }
        out.append(
            Item(
                value=value,
                key=mid,
                namespace=tuple(json.loads(path)),
                created_at=when,
                updated_at=when,
            )
        )
    return out


def recorded_namespaces(memory: HelaMemory) -> set[tuple[str, ...]]:
    """The scopes that hold recorded memories."""

    def rows(core: Any) -> list[tuple[str]]:
        return list(
            core.store.db.execute(
                "SELECT DISTINCT s.path FROM memories m JOIN scopes s ON s.id = m.scope_id"
                f" WHERE {_recorded(core)}"
            )
        )

    return {tuple(json.loads(p)) for (p,) in memory._call(rows)}

"""The live memories of each store in this process (one store object or several on one
store, keyed by :func:`helamem.core.identity.store_key`): a read waits for the turns its
peers record, and ``clear()`` cuts every context they serve in the scopes it deletes."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

from helamem.core import HelaMemory
from helamem.core.identity import store_key

__all__ = ["join", "peers"]


P = TypeVar("P")

_PEERS: dict[str, weakref.WeakSet[Any]] = {}


def join(memory: object, store: HelaMemory) -> None:
    """``memory`` reads or records on ``store``'s store (the empty sets of other stores
    dropped: one entry per store while a memory lives on it)."""
    for key in [k for k, v in _PEERS.items() if not v]:
        del _PEERS[key]
    _PEERS.setdefault(store_key(store.config), weakref.WeakSet()).add(memory)


def peers(store: HelaMemory, scope: Sequence[str], kind: type[P]) -> list[P]:
    """The live memories (of class ``kind``) on ``store``'s store whose scope is
    ``scope`` or under it."""
    n, scope = len(scope), tuple(scope)
    found = [p for p in list(_PEERS.get(store_key(store.config), ())) if isinstance(p, kind)]
    return [p for p in found if tuple(getattr(p, "scope", ()))[:n] == scope]

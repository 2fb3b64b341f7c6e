"""A second writer's commit landing just before a store object's next write transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from helamem.core import HelaMemory


def racing_tx(one: HelaMemory, race: Callable[[], object]) -> None:
    """Run ``race`` in ``one``'s next write transaction, just before it begins (the
    moment another writer's commit lands first); later transactions run as usual."""
    core = one._core
    assert core is not None
    store = core.store
    real = store.tx

    @contextmanager
    def tx() -> Iterator[Any]:
        store.tx = real  # type: ignore[method-assign]
        race()
        with real() as db:
            yield db

    store.tx = tx  # type: ignore[method-assign]

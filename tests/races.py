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


def rewrite(id_: str, text: str, reconcile: bool = False) -> Callable[[Any], None]:
    """A core call that rewrites memory ``id_``'s text and vector, as a consolidation
    updating a fact does (then, with ``reconcile``, indexes the new vector)."""
    from helamem.core._base import scope_tag

    def run(core: Any) -> None:
        row = core.store.rows_by_id([id_])[id_]
        nodes = core.store.ancestors(row.scope_id)
        with core.store.tx() as db:
            core.store.update_fact(
                db,
                row,
                content=text,
                search_text=text,
                tags=" ".join(scope_tag(s, row.kind) for s in nodes),
                keywords="[]",
                provenance="[]",
                event_time=row.event_time,
                embedding=core.embedder.embed([text])[0].tobytes(),
            )
        if reconcile:
            core.reconcile()

    return run

"""The engine's operations put together: one :class:`Core` per memory, run on the owner thread.

:class:`helamem.core.engine.HelaMemory` is the public facade; it runs every
method here on one dedicated thread (sync callers wait on a future, async
callers await it), so SQLite and Chroma have a single owner and nothing
blocks an event loop. The operations live by responsibility over the shared
storage of :class:`~helamem.core._base.CoreBase`: ingest in :mod:`._ingest`,
search in :mod:`._search`, learning and maintenance in :mod:`._learning`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._base import Stats, scope_tag
from ._ingest import IngestOps, prepare
from ._reembed import ensure_embedder, read_embedder, refuse_switched
from ._repair import heal_fts
from ._search import SearchOps
from .distill import distilled_from
from .errors import (
    InvalidInputError,
    MemoryNotFoundError,
    StorageError,
    UnknownScopeError,
)
from .storage.base import MemoryRow
from .types import (
    Memory,
    Scope,
    normalize_prefix,
    normalize_scope,
)

__all__ = ["MISSING_OK_HINT", "Core", "Stats", "known_scope", "prepare", "scope_tag"]

logger = logging.getLogger(__name__)


class Core(IngestOps, SearchOps):
    """Storage-owning implementation of every operation (one thread at a time)."""

    def _check_derived(self) -> None:
        heal_fts(self)

    def _check_embedder(self) -> None:
        """Refuse vectors of another embedder, or (``reembed``) switch to this one."""
        self.reembedded = ensure_embedder(self, self.reembed)

    def _refuse_stale(self) -> None:
        refuse_switched(self, finishing=True)  # re-indexing may finish a switch to this one

    def lexical_fold_in(self) -> float | None:
        """Seconds until the lexical index's tail is due to be folded in (<= 0: now;
        ``lexical_index_fold_s`` after the newest memory was seen), or ``None``:
        nothing to fold (no index held, no tail, fewer than
        ``lexical_index_fold_searches`` searches of it, or folding off)."""
        rc = self.config.retrieval
        lx, wait = self.lexical_index, rc.lexical_index_fold_s
        if (
            lx is None
            or wait <= 0
            or not lx.tail_rows
            or lx.tail_searches < rc.lexical_index_fold_searches
        ):
            return None
        return lx.head_changed_at + wait - time.monotonic()

    def fold_lexical(self) -> None:
        """Fold the newest memories (FTS5 serves them meanwhile) into the lexical index:
        one tantivy commit, after which searches skip FTS5's query of them. A failure
        is logged, never raised: FTS5 keeps serving them (the index is derived)."""
        if self.lexical_index is None:
            return
        try:
            self.lexical_index.fold(self.sqlite_store)
        except StorageError as exc:
            logger.warning("lexical index: the newest memories not folded in: %s", exc)

    def get(self, id: str) -> Memory:
        if not isinstance(id, str):
            raise InvalidInputError(f"id must be a str, got {type(id).__name__}")
        row = self.store.rows_by_id([id]).get(id)
        if row is None:
            raise MemoryNotFoundError(f"no memory with id {id!r}; it was deleted or never added")
        return self._memory(row)

    def delete(self, ids: Sequence[str]) -> int:
        with self.store.tx() as db:
            gone = self._delete_tx(db, ids)
        self._drop_vectors(gone)
        return len(set(ids))

    def _delete_tx(self, db: Any, ids: Sequence[str]) -> list[MemoryRow]:
        """Delete memories ``ids`` (and the facts citing a deleted episode, whose clusters
        then count as never distilled) in the caller's write transaction; returns every
        row deleted, for :meth:`_drop_vectors` after it.

        Raises:
            MemoryNotFoundError: An id is not a memory (nothing was deleted).
        """
        # read under the write lock: a row read before it may have been deleted (and
        # its caller-chosen id added again) by another writer meanwhile, and deleting
        # that row's key would delete nothing while saying it did
        rows = self.store.rows_by_id(ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise MemoryNotFoundError(f"no memory with id {missing[0]!r}; nothing was deleted")
        # facts citing a deleted episode repeat its content: they go with it
        episodes = [i for i, r in rows.items() if r.kind == "episodic"]
        cited = self.store.facts_citing({r.scope_id for r in rows.values()}, episodes)
        gone = [*rows.values(), *(f for f in cited if f.id not in rows)]
        self.store.delete_memories(db, gone)
        for f in cited:  # its clusters' other episodes rest on no fact now: distil them again
            self.store.forget_clusters(db, f.scope_id, distilled_from(f.metadata))
        return gone

    def _drop_vectors(self, gone: Sequence[MemoryRow]) -> None:
        """After the transaction that deleted ``gone``: their vectors (retried on failure)."""
        try:
            self.index.delete([(r.id, r.scope_id, r.kind) for r in gone])
            self.store.clear_tombstones([r.id for r in gone])
            self._readd_vectors([r.id for r in gone])
        except StorageError as exc:
            self._needs_reconcile = True
            logger.warning("vector delete failed, will retry on next use: %s", exc)

    # -- search ----------------------------------------------------------
    def list_scopes(self, prefix: Sequence[str] | None) -> list[Scope]:
        if prefix is None or normalize_prefix(prefix) == ():  # () is every scope, as in search
            return self.store.scopes_with_memories(None)
        node = self.store.find_scope(normalize_scope(prefix))
        if node is None:
            return []
        return self.store.scopes_with_memories(self.store.descendants(node))

    def find_ids(
        self, scope: Sequence[str], fields: Mapping[str, str], limit: int | None
    ) -> list[str]:
        nodes = self._nodes(scope)
        return [] if nodes == [] else self.store.ids_with_metadata(nodes, fields, limit)

    def stats(self, scope: Sequence[str] | None) -> Stats:
        nodes = self._nodes(scope)
        empty = nodes == []
        c = self.store.counts(nodes) if not empty else {}
        ep, se = int(c.get("episodic", 0)), int(c.get("semantic", 0))
        vectors = 0 if empty else self.index.count(nodes)  # the scope's own
        # memories marked indexed in a promoted scope whose collection is gone (deleted
        # behind this process): not in the index (count() has none of them), so unindexed
        lost: dict[tuple[int, str], int] = getattr(self.index, "lost_vectors", dict)()
        inside = None if nodes is None else set(nodes)
        gone = sum(n for (s, _), n in lost.items() if inside is None or s in inside)
        return Stats(
            memories=ep + se,
            episodic=ep,
            semantic=se,
            edges=int(c.get("edges", 0)),
            mean_edge_weight=float(c.get("mean_edge_weight", 0.0)),
            scopes=0 if empty else len(self.store.scopes_with_memories(nodes)),
            unindexed=int(c.get("unindexed", 0)) + gone,
            vectors=vectors,
            # the store's (another process may have switched it since this one opened it)
            embedder=str((read_embedder(self) or {}).get("name") or self.embedder.name),
            schema_version=self.store.schema_version(),
            known=not empty,
        )


MISSING_OK_HINT = (
    "HelaMemory.list_scopes() lists the scopes holding memories; pass missing_ok=True "
    "where the scope may not exist yet"
)


def known_scope(core: Core, prefix: Sequence[str], outcome: str, hint: str) -> int:
    """The node of scope ``prefix``, which the store holds or held (scope nodes are never
    deleted).

    Raises:
        UnknownScopeError: The store never held it nor any scope under it (a typo, read
            as "no memories"); the message says ``outcome`` (what was not done) and
            ``hint`` (how to check the spelling).
    """
    node = core.store.find_scope(tuple(prefix))
    if node is None:
        raise UnknownScopeError(
            f"no scope {tuple(prefix)!r} in this store, nor any under it; {outcome}. "
            f"Check the scope's spelling: {hint}"
        )
    return node

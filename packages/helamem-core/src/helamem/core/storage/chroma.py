"""The vector index: exact scans for small scopes, Chroma HNSW for large ones.

This module and :mod:`.chroma_connect` (connection, collections,
verification) are the only ones that import chromadb. The index is derived: SQLite
holds every memory and its embedding, and ``helamem reindex`` rebuilds it.

Layout (decided by measurement; see the README's scale section)
---------------------------------------------------------------
* A (scope node, kind) with fewer than ``ChromaConfig.exact_below`` vectors
  (default 2,000) has no Chroma collection: it is searched by an exact cosine
  scan of the embeddings in SQLite, cached per scope (``exact.py``). Measured
  on this machine (384-d, top 100): a cached scan of 2,000 vectors takes
  ~0.05 ms and a cold read ~4 ms, against ~1.2-1.6 ms for an HNSW query, and
  the cache is validated by a ~0.1 ms covering-index read. Because SQLite is
  the source of truth and is safe for several processes, these scopes are
  correct across processes by construction, and they open no files at all:
  100,000 tenants need no more file handles than one.
* A (scope node, kind) that reaches the threshold is *promoted* to its own
  HNSW collection (the set is kept in SQLite's ``meta`` table, so every
  process agrees). Chroma is opened only once a promoted scope exists, with
  its cache of loaded HNSW indexes bounded (``max_open_indexes``, at most a
  sixteenth of the open-file limit) instead of Chroma's fifth of it.
* Embedded Chroma (``mode="persistent"``) keeps HNSW in the memory of one
  process, and two processes writing one directory lose each other's vectors
  (measured: 53 of 3,623). The first process that needs it takes an
  inter-process lock (``lock.py``; shared by the stores of one process). In
  any other process, small scopes work as usual; a promoted scope cannot be
  searched (:class:`~helamem.core.storage.base.IndexLockedError`, naming
  Chroma server mode), and its new memories stay marked unindexed, which the
  holder's searches read exactly until its next reconcile copies them in.
  With a Chroma server (``mode="http"``) every process uses every tier.
* On open the index is checked against the database: a marker file records
  whose index it is (a replaced or emptied database is refused with
  :class:`~helamem.core.errors.CorruptStoreError`), and a missing, damaged or
  short collection is rebuilt from SQLite with a logged warning and progress.
  :meth:`ChromaIndex.close` releases every Chroma file.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from chromadb.api.types import Documents, EmbeddingFunction
from chromadb.errors import NotFoundError

from ..config import ChromaConfig, PostgresConfig
from ..embeddings import Embedder, MiniLMEmbedder, Vectors, check_vectors
from ..errors import StorageError
from .base import IndexLockedError
from .chroma_connect import (
    CHROMA_FAILURES,
    ChromaConnection,
    HelaMemMiniLMEmbeddingFunction,
    chroma_error,
)
from .chroma_copy import write_over
from .chroma_embedded import forget_system
from .chroma_marker import damaged

_SEARCH_FAILURES: tuple[type[Exception], ...] = (*CHROMA_FAILURES, StorageError)

BATCH_GRACE_S = 5.0
"""Seconds beyond ``ChromaConfig.upsert_delay_s`` that another process's unindexed
row may wait for its writer's batched write before a search here re-indexes it."""

__all__ = [
    "ChromaEmbedder",
    "ChromaIndex",
    "HelaMemMiniLMEmbeddingFunction",
    "discard_index",
    "make_index",
]

logger = logging.getLogger(__name__)


def _derived_name(function: object) -> str:
    """A stable name for an embedding function that does not name itself."""
    qualname = getattr(function, "__qualname__", None)  # a plain function or a class
    return qualname if isinstance(qualname, str) and qualname else type(function).__name__


class ChromaEmbedder:
    """Any Chroma embedding function used as a HeLa-Mem :class:`Embedder`.

    Any callable mapping a list of texts to vectors works: one without a
    usable ``name()`` (missing, not callable, raising, or not returning a
    non-empty string, as with a plain class or an older Chroma function)
    gets a name derived from its class (or function) name. The name is
    recorded in the store, which refuses to open with a differently named
    embedder.

    Args:
        function: A Chroma ``EmbeddingFunction``, or any such callable.
        dimension: Its vector size (probed with one call when not given).

    Examples:
        >>> class Plain:
        ...     def __call__(self, input):
        ...         return [[1.0, 0.0] for _ in input]
        >>> ChromaEmbedder(Plain()).name
        'chroma:Plain'
    """

    def __init__(
        self, function: EmbeddingFunction[Documents], dimension: int | None = None
    ) -> None:
        self._fn = function
        self._dim = dimension
        self._name: str | None = None

    @property
    def name(self) -> str:
        if self._name is None:
            named = getattr(self._fn, "name", None)
            try:
                own = named() if callable(named) else named
            except Exception:  # noqa: BLE001 (NotImplementedError, or a name() needing args)
                own = None
            base = own if isinstance(own, str) and own.strip() else _derived_name(self._fn)
            self._name = f"chroma:{base}"
        return self._name

    @property
    def dimension(self) -> int:
        if self._dim is None:  # probe once, on first use (not in the constructor)
            self._dim = len(self._fn(["dimension probe"])[0])
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        return check_vectors(self._fn(list(texts)), len(texts), self.dimension, self.name)


class ChromaIndex(ChromaConnection):
    """The tiered vector index: exact scans for small scopes, HNSW for large ones.

    A (scope node, kind) with fewer than ``config.exact_below`` vectors is
    searched exactly from SQLite (:class:`~helamem.core.storage.exact.ExactVectors`);
    one that reaches it is *promoted* to its own HNSW collection (recorded in
    SQLite, so every process agrees). Chroma is opened lazily, only when a
    promoted scope exists; in ``persistent`` mode this process must then hold
    the directory's :class:`~helamem.core.storage.lock.ProcessLock`, else
    :class:`~helamem.core.storage.base.IndexLockedError`. The constructor
    does no I/O; :meth:`open` connects.

    Args:
        config: Where Chroma lives and the tier threshold.
        path: The Chroma directory (``<data dir>/chroma``); SQLite is
            ``<data dir>/helamem.sqlite3`` beside it.
        attach_minilm: Attach HeLa-Mem's MiniLM embedding function to collections.
    """

    queries_from_any_thread = True
    """:meth:`query` may run on a search's aux thread (see
    :class:`~helamem.core.storage.base.VectorIndex`): Chroma's clients and the
    exact scan's own connection (with its lock) are not bound to a thread."""

    lost: set[tuple[int, str]]
    """Promoted scopes whose collection :meth:`count` or a search found gone (deleted
    on a server or in the directory behind this process): their memories are in no
    collection (searched exactly) until a write to the scope or a reopen rebuilds it."""

    def __init__(
        self,
        config: ChromaConfig,
        path: Path,
        attach_minilm: bool,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(config, path, attach_minilm, connect)
        self.lost = set()

    def _collection(self, key: tuple[int, str], create: bool, refill: bool = True) -> Any:
        col = super()._collection(key, create, refill)
        if col is not None:
            self.lost.discard(key)
        return col

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        scope_ids: Sequence[int],
        kinds: Sequence[str],
    ) -> None:
        """Index vectors: promoted scopes into HNSW, small ones need nothing (SQLite has them).

        A scope reaching ``exact_below`` is promoted here (its collection is
        built from SQLite) when this process can hold the index.

        Raises:
            IndexLockedError: Some vectors belong to promoted scopes and another
                process holds the embedded index (the rest were handled).
            StorageError: Chroma failed.
        """
        groups: dict[tuple[int, str], list[int]] = {}
        for i, key in enumerate(zip(scope_ids, kinds, strict=True)):
            groups.setdefault((int(key[0]), str(key[1])), []).append(i)
        self._exact.forget(list(groups), ids)
        promoted = self._exact.promoted()
        locked: IndexLockedError | None = None
        t = self._config.exact_below

        def put(key: tuple[int, str], rows: list[int]) -> None:
            col = self._collection(key, create=True)
            for start in range(0, len(rows), 4096):
                part = rows[start : start + 4096]
                # some may be there already (another process's write, a re-index): a
                # get of 64 ids costs ~1.5 ms against ~200 ms for their upsert
                write_over(col, [ids[i] for i in part], vectors[part])
                self._drop_vanished(col, [ids[i] for i in part])

        for key, rows in groups.items():
            try:
                if key in promoted:
                    self._retrying(key, partial(put, key, rows))
                elif self._exact.count_upto(key, t) >= t and not self._promote(key):
                    # promoted meanwhile by another process: its collection exists, and
                    # these rows, committed before, may or may not be in its load
                    self._retrying(key, partial(put, key, rows))
            except IndexLockedError as exc:
                locked = exc
            except CHROMA_FAILURES as exc:  # SQLite holds these rows: a rebuild takes them
                if (failed := self._mend(key, exc, "Chroma upsert failed")) is not None:
                    raise failed from exc
        if locked is not None:
            raise locked

    def _mend(self, key: tuple[int, str], exc: Exception, what: str) -> StorageError | None:
        """After a write to ``key``'s collection raised ``exc``: rebuild the collection
        from SQLite when chromadb can no longer read it (``None``: mended), else the
        typed error to raise (also when the rebuild failed)."""
        if self._config.mode != "persistent" or not damaged(exc):
            return chroma_error(exc, what, self._where)
        try:
            self._rebuild(key, exc)
        except StorageError as again:
            return again
        except CHROMA_FAILURES as again:
            return chroma_error(again, what, self._where)
        return None

    def _rebuild(self, key: tuple[int, str], exc: Exception) -> None:
        """Drop a collection chromadb can no longer read and build it again from SQLite.

        chromadb 1.5 can lose a small collection's HNSW files when its bounded cache
        evicts the index before it was written ("Error creating hnsw segment reader:
        Nothing found on disk"); every later write to it failed, so no new vector of
        any scope reached the index, and the next open failed.
        """
        logger.warning(
            "the HNSW collection of %s cannot be read (%s); rebuilding it from the database",
            self._exact.scope_name(key),
            str(exc)[:160],
        )
        self._drop_collection(self._name(*key))
        self._load(key, fresh=True)

    def deferrable(self, keys: Sequence[tuple[int, str]]) -> list[bool]:
        """Per ``(scope node, kind)``: whether its vectors go to an HNSW collection
        (a promoted scope), the write worth batching; small scopes need none."""
        promoted = self._exact.promoted()
        return [(int(s), str(k)) in promoted for s, k in keys]

    def _retrying(self, key: tuple[int, str], op: Callable[[], None]) -> None:
        """Run ``op`` on the scope's collection; once more if the cached handle went stale.

        A collection this process holds a handle to can be deleted and built
        again by another process (a promotion it raced, a rebuild on open):
        the handle then fails with ``NotFoundError``; a fresh one works.
        """
        try:
            op()
        except NotFoundError:
            self._cols.pop(self._name(*key), None)
            op()

    def _promote(self, key: tuple[int, str]) -> bool:
        """Move a scope to its own collection; False if another process already did."""
        if self._chroma(required=False) is None:
            if not self._warned_locked:
                self._warned_locked = True
                logger.warning(
                    "%s reached %d vectors, but another process holds the embedded "
                    "index in %s: it stays an exact scan here (correct, slower) until that "
                    "process promotes it",
                    self._exact.scope_name(key),
                    self._config.exact_below,
                    self._path,
                )
            return True
        # recorded first: a process that still sees the scope as small has
        # committed its rows before this, so the load below reads them; the rows
        # stay marked unindexed (searched exactly) until the load has copied them
        if not self._exact.add_promoted(key):
            return False
        n = self._load(key, fresh=True)
        logger.info(
            "%s moved to its own HNSW collection (%d vectors)", self._exact.scope_name(key), n
        )
        return True

    def delete(self, items: Sequence[tuple[str, int, str]]) -> None:
        """Delete ``(id, scope_id, kind)`` entries; unknown ones are ignored.

        A collection chromadb can no longer read is rebuilt from SQLite (which no
        longer holds the deleted rows) instead; one scope's failure leaves the
        other scopes' deletes done.

        Raises:
            IndexLockedError: Some belong to promoted scopes and another process
                holds the embedded index (their tombstones stay for it).
            StorageError: Chroma failed (raised once the other scopes are done).
        """
        groups: dict[tuple[int, str], list[str]] = {}
        for id_, scope_id, kind in items:
            groups.setdefault((int(scope_id), str(kind)), []).append(id_)
        self._exact.forget(list(groups))
        promoted = self._exact.promoted()
        error: Exception | None = None
        for key, ids in groups.items():
            if key not in promoted and self._client is None:
                continue
            if key not in promoted and self._name(*key) not in self._cols:
                continue

            def drop(key: tuple[int, str] = key, ids: list[str] = ids) -> None:
                col = self._collection(key, create=False)
                if col is not None:
                    col.delete(ids=ids)

            try:
                self._retrying(key, drop)
            except IndexLockedError as exc:
                error = error or exc
            except CHROMA_FAILURES as exc:  # not mended: its tombstones stay
                error = error or self._mend(key, exc, "Chroma delete failed")
        if error is not None:
            raise error

    def query(
        self,
        vector: npt.NDArray[np.float32],
        n: int,
        scope_ids: Sequence[int],
        kind: str,
    ) -> list[tuple[str, float]]:
        """Nearest ``n`` ``(id, cosine distance)`` among ``scope_ids`` of ``kind``.

        A promoted scope whose collection fails is searched exactly instead
        (logged): one scope's index never fails another's search.

        Raises:
            IndexLockedError: A scope is promoted and another process holds the
                embedded index.
        """
        promoted = self._exact.promoted()
        keys = [(int(s), kind) for s in scope_ids]
        small = [k for k in keys if k not in promoted]
        large = [k for k in keys if k in promoted]
        out = self._exact.search(vector, n, small) if small else []
        if large:
            emb = np.asarray(vector, dtype=np.float32).reshape(1, -1)
            fallback: list[tuple[int, str]] = []
            for key in large:
                try:
                    col = self._collection(key, create=False)
                    if col is None:
                        self.lost.add(key)
                        fallback.append(key)
                        continue
                    res = col.query(query_embeddings=emb, n_results=n, include=["distances"])
                except _SEARCH_FAILURES as exc:
                    if isinstance(exc, IndexLockedError):
                        raise
                    log = logger.debug if key in self._failed else logger.warning
                    self._failed.add(key)
                    log(
                        "HNSW search of %s failed (%s); searching it exactly "
                        "(`HelaMemory.reindex()`, or `helamem reindex` for an SQLite "
                        "store, rebuilds its collection)",
                        self._exact.scope_name(key),
                        exc,
                    )
                    self._cols.pop(self._name(*key), None)
                    fallback.append(key)
                    continue
                out.extend(
                    (str(i), float(d))
                    for i, d in zip(res["ids"][0], res["distances"][0], strict=True)
                )
            if fallback:
                self.wants_reconcile = True
                out.extend(self._exact.search(vector, n, fallback))
            tail_ids, tail, created = self._exact.unindexed(large)
            if tail_ids:  # vectors not in HNSW yet: searched exactly
                # a failed write's, or another process's that its batched write should
                # have taken by now: the owner re-indexes them (this process's
                # deferred ones, and another's younger ones, reach HNSW with their batch)
                due = time.time() - self._config.upsert_delay_s - BATCH_GRACE_S
                if any(
                    c < due
                    for i, c in zip(tail_ids, created, strict=True)
                    if i not in self.deferred
                ):
                    self.wants_reconcile = True
                q = np.asarray(vector, dtype=np.float32).reshape(-1)
                q = q / max(float(np.linalg.norm(q)), 1e-12)
                out.extend(zip(tail_ids, (1.0 - tail @ q).tolist(), strict=True))
        best: dict[str, float] = {}
        for i, d in out:
            if d < best.get(i, 3.0):
                best[i] = d
        return sorted(best.items(), key=lambda p: p[1])[:n]

    def count(self, scope_ids: Collection[int] | None = None) -> int:
        """Vectors in the index: exact-tier rows plus the promoted collections' vectors,
        of the scope nodes ``scope_ids`` only (``None``: every scope).

        A promoted scope whose collection is gone counts none (as :meth:`all_ids`
        lists none) and is recorded in :attr:`lost` (see :meth:`lost_vectors`).
        """
        inside = None if scope_ids is None else set(scope_ids)
        every = self._exact.promoted()
        counts = self._exact.counts()
        total = sum(
            c for k, c in counts.items() if k not in every and (inside is None or k[0] in inside)
        )
        promoted = {k for k in every if inside is None or k[0] in inside}
        if not promoted:
            return total
        if self._chroma(required=False) is None:  # the holder's: as SQLite records them
            indexed = self._exact.counts(indexed_only=True)
            return total + sum(indexed.get(k, 0) for k in promoted)
        try:
            # which collections exist now, by id: a cached handle can outlive its
            # collection (deleted behind this process; a server may even go on
            # counting a deleted collection's vectors through it)
            present = {str(c.name): c.id for c in self._client.list_collections()}
            for key in promoted:
                total += self._count_of(key, present)
        except CHROMA_FAILURES as exc:  # a raw chromadb error escaped stats()
            raise chroma_error(exc, "Chroma count failed", self._where) from exc
        return total

    def _count_of(self, key: tuple[int, str], present: dict[str, object]) -> int:
        """Vectors in a promoted scope's collection; 0, recorded in :attr:`lost`, when
        ``present`` (name to id) lacks it or it went after that list was read."""
        name = self._name(*key)
        cached = self._cols.get(name)
        if cached is not None and cached.id != present.get(name):
            self._cols.pop(name, None)  # a handle to a collection deleted since
        try:
            col = self._collection(key, create=False) if name in present else None
            n = None if col is None else int(col.count())
        except CHROMA_FAILURES as exc:
            if not (isinstance(exc, NotFoundError) or "does not exist" in str(exc)):
                raise
            self._cols.pop(name, None)
            n = None
        if n is None:
            self.lost.add(key)
        return n or 0

    def lost_vectors(self) -> dict[tuple[int, str], int]:
        """Per :attr:`lost` scope (as :meth:`count` or a search last found it): its
        memories marked indexed, whose vectors the index does not hold."""
        keys = self.lost & self._exact.promoted()
        if not keys:
            return {}
        indexed = self._exact.counts(indexed_only=True)
        return {k: indexed.get(k, 0) for k in sorted(keys)}

    def all_ids(self) -> list[str]:
        """Every id in the index (for integrity checks).

        Raises:
            IndexLockedError: Promoted scopes exist and another process holds the index.
        """
        promoted = self._exact.promoted()
        out = self._exact.ids(promoted)
        if promoted:
            self._chroma()
            try:
                for name in self._names():
                    col = self._client.get_collection(name, embedding_function=None)
                    out.extend(str(i) for i in col.get(include=[])["ids"])
            except CHROMA_FAILURES as exc:
                raise chroma_error(exc, "Chroma read failed", self._where) from exc
        return out

    def rebuild(self) -> int:
        """Reset, then build an HNSW collection for every scope at the threshold.

        Returns:
            Vectors copied into HNSW collections (small scopes need none).
        """
        self.reset()
        if not self._exact.counts():
            return 0
        if any(c >= self._config.exact_below for c in self._exact.counts().values()):
            self._chroma()
        return self._promote_large()


def make_index(
    config: ChromaConfig,
    data_dir: Path,
    embedder: Embedder,
    store: PostgresConfig | None = None,
) -> ChromaIndex:
    """The vector index for ``config`` (Chroma files under ``data_dir/chroma``).

    ``store``: the PostgreSQL graph store whose embeddings small scopes scan
    (default: the SQLite file ``data_dir/helamem.sqlite3``).
    """
    connect = None
    if store is not None:
        from .postgres import connect_reader

        connect = partial(connect_reader, store)
        # scope ids restart at 1 in every schema: on a shared Chroma server, two
        # schemas' collections must not meet
        config = config.model_copy(
            update={"collection": f"{config.collection}.{store.schema_name}"}
        )
    return ChromaIndex(
        config, data_dir / "chroma", isinstance(embedder, MiniLMEmbedder), connect=connect
    )


def discard_index(data_dir: Path) -> None:
    """Delete the embedded vector index of the store in ``data_dir`` (it is derived).

    For a store whose index does not match its database: after this, opening
    the store and running :meth:`~helamem.core.HelaMemory.reindex` rebuilds it.
    Do not call it while any process has the store open.
    """
    forget_system(data_dir / "chroma")
    shutil.rmtree(data_dir / "chroma", ignore_errors=True)

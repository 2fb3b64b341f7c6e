"""The engine's shared storage: the stores, their lifecycle, reconciliation and embedding.

:class:`CoreBase` owns the SQLite store and the vector index of one memory
and everything the operations share (row conversions, edge decay at the
scope's tick); the operations themselves live over it in
:mod:`._ingest`, :mod:`._search` and :mod:`._learning`, and
:class:`helamem.core._core.Core` puts them together. Only the store's owner
thread calls any of it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from . import dynamics
from .config import HelaMemConfig
from .distill import user_metadata
from .embeddings import Embedder, check_vectors, token_embedder
from .errors import ConfigError, EmbeddingError, StorageError
from .storage.base import (
    EdgeRow,
    GraphStore,
    IndexLockedError,
    MemoryRow,
    RankRow,
    VectorIndex,
)
from .storage.lexical import LexicalIndex
from .storage.sqlite import SQLiteStore, sqlite_errors
from .types import (
    Memory,
    Scope,
    normalize_prefix,
    normalize_scope,
)

__all__ = ["CoreBase", "Stats", "scope_tag"]

logger = logging.getLogger(__name__)

_KIND_CODE = {"episodic": 1, "semantic": 2}


def make_store(config: HelaMemConfig) -> GraphStore:
    """The graph store ``config`` names (no I/O): SQLite at ``<path>/helamem.sqlite3``,
    or PostgreSQL for a :class:`~helamem.core.config.PostgresConfig` ``store``."""
    if config.store is not None:
        try:
            from .storage.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                f"HelaMemConfig.store is a PostgresConfig, but PostgreSQL support is not "
                f"installed ({exc}); pip install 'helamem-core[postgres]'"
            ) from exc
        return PostgresStore(config.store)
    return SQLiteStore(
        config.path / "helamem.sqlite3", config.busy_timeout_s, config.sqlite_mmap_mb
    )


def scope_tag(node: int, kind: str) -> str:
    return f"s{node}k{_KIND_CODE[kind]}"


@dataclass(frozen=True, slots=True)
class SearchTiming:
    """Where the last search's wall time went, in seconds (for ``bench scale``).

    When the query's vectors are known (the query cache, or an embedder faster
    than ``_search.INLINE_EMBED_S``, run first on the owner thread), the ANN
    query runs on the aux thread beside the lexical leg (BM25 candidates) and
    the lexical candidates' rows, on the owner thread; the dense leg is then
    the wait for it (at 100k memories on 2 cores 0.4-0.8 ms faster than one
    after the other, once MaxSim's products stopped leaving OpenBLAS threads
    spinning). Otherwise the query embedding runs there (ONNX releases the
    GIL) and the dense leg is the wait for it plus the ANN query. ``legs_s``
    is the time until both were done. ``late_s`` is the MaxSim leg (scoring;
    the token vectors come with the candidate rows), ``rest_s`` everything
    else (candidate rows, pool, fusion, spreading, hits). In a
    :class:`~helamem.core.HelaMemory` the learning write runs after the search
    returns (``LearningOps.apply_learning``), outside these times; a bare
    engine without ``defer_learning`` writes it inline, inside ``rest_s``.
    """

    dense_s: float
    lexical_s: float
    legs_s: float
    late_s: float
    total_s: float

    @property
    def rest_s(self) -> float:
        return max(0.0, self.total_s - self.legs_s - self.late_s)


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts for the whole store or one scope prefix."""

    memories: int
    episodic: int
    semantic: int
    edges: int
    mean_edge_weight: float
    scopes: int
    unindexed: int
    vectors: int
    embedder: str
    schema_version: int
    llm_calls: int = 0
    llm_failed_calls: int = 0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    llm_cost_usd: float = 0.0
    known: bool = True
    """Whether the store holds or held the scope counted, or a scope under it (scope
    nodes are never deleted); false: zeros of a scope it never saw, as a misspelt one."""


class CoreBase:
    """Storage-owning state every operation shares (one thread at a time)."""

    def __init__(
        self,
        config: HelaMemConfig,
        embedder: Embedder,
        index: VectorIndex,
        *,
        reembed: bool = False,
    ) -> None:
        self.config = config
        self.reembed = reembed  # on open, switch a store of another embedder to this one
        self.reembedded: int | None = None
        self.embedder = embedder
        # late interaction (MaxSim) when configured and the embedder gives token vectors
        self._tokens = token_embedder(embedder) if config.retrieval.late_weight > 0 else None
        self.index = index
        self.store: GraphStore = make_store(config)
        rc = config.retrieval
        # large SQLite stores' BM25 (tantivy, derived from FTS5); None: the store's own
        self.lexical_index = (
            LexicalIndex(
                config.path / "lexical", min_rows=rc.lexical_index_min, tail=rc.lexical_index_tail
            )
            if rc.lexical_index == "auto" and config.store is None
            else None
        )
        self._scopes: dict[int, Scope] = {}
        self._needs_reconcile = False
        self._switch_checked = -math.inf  # monotonic s: the embedder record last read
        # adds may leave their vectors here for one batched index write (the
        # owner of a HelaMemory sets defer_index; see ChromaConfig.upsert_batch):
        # (n, id, scope_id, kind, vector), rows committed with indexed = 0
        self.defer_index = False
        self._pending_index: list[tuple[int, str, int, str, np.ndarray]] = []
        # a search's learning write, run after its results return (the owner of a
        # HelaMemory sets defer_learning and calls apply_learning before its next call)
        self.defer_learning = False
        self._pending_learning: list[
            tuple[list[list[int]], dict[int, RankRow], list[tuple[int, int]]]
        ] = []
        self._aux_pool: ThreadPoolExecutor | None = None
        # query text -> (pooled vector, token vectors): the last query_cache queries
        self._queries: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._late_s = 0.0  # MaxSim time of the current search
        # a query embedding's typical time (an exponential moving average, seconds):
        # below INLINE_EMBED_S a search embeds on its own thread (see SearchOps.search)
        self._embed_s = math.inf
        self.last_search_timing: SearchTiming | None = None
        # kind -> scope nodes holding it, to skip the lexical scope filter when a
        # prefix covers them all; only grows (a stale entry keeps the filter on;
        # another process's new scope only costs recall: rows are filtered anyway)
        self._holding: dict[str, set[int]] | None = None

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        self.store.open()
        try:
            self._check_embedder()
            self._check_derived()
            self.index.open(self.embedder.dimension)
            self.reconcile()
        except BaseException:
            self.store.close()
            raise

    def close(self) -> None:
        try:
            self.flush_index()  # what fails stays unindexed: re-indexed on the next open
            if self._needs_reconcile:  # a vector delete that failed: retried once more
                try:
                    self.reconcile()
                except StorageError as exc:  # its tombstones stay, for the next process
                    logger.warning("vector deletes left for the next open: %s", exc)
        finally:
            if self._aux_pool is not None:
                self._aux_pool.shutdown(wait=True)
                self._aux_pool = None
            try:
                self.index.close()
            finally:
                try:
                    if self.lexical_index is not None:
                        self.lexical_index.close()
                finally:
                    self.store.close()

    @property
    def sqlite_store(self) -> SQLiteStore:
        """The store as the SQLite store, for what reads its FTS5 (the tantivy index,
        ``helamem reindex``'s repair), which only exists beside one.

        Raises:
            StorageError: the graph store is PostgreSQL.
        """
        if self.config.store is not None or not isinstance(self.store, SQLiteStore):
            raise StorageError("this needs the SQLite graph store; the memory is in PostgreSQL")
        return self.store

    def _check_derived(self) -> None:
        """Rebuild derived SQLite tables that are gone (see :class:`Core`)."""

    def _check_embedder(self) -> None:
        """Refuse vectors of another embedder, or switch to this one (see :class:`Core`)."""
        raise NotImplementedError

    def _refuse_stale(self) -> None:
        """In a write transaction: refuse vectors of an embedder the store left (``Core``)."""

    def _readd_vectors(self, ids: Sequence[str]) -> None:
        """After deleting ``ids``' vectors: an id added again meanwhile (a caller-chosen
        id, by another writer) may have had its new vector written before the delete
        landed, so its row is marked unindexed and re-indexed: it keeps its own vector."""
        back = self.store.rows_by_id(ids)
        if back:
            self.store.mark_indexed([(r.n, r.id) for r in back.values()], 0)
            self._needs_reconcile = True

    def reconcile(self, *, expected: bool = False) -> int:
        """Bring the vector index up to date with SQLite; returns rows re-indexed.

        Rows indexed here are logged at INFO as a recovery (they had not reached
        the index); ``expected=True`` (an import indexing the rows it just
        wrote) logs them at DEBUG.

        What the index cannot take now (a large scope's HNSW collection while
        another process holds the embedded index) stays pending: those rows stay
        unindexed and the tombstones stay, for the process holding the index.
        """
        if hasattr(self.index, "wants_reconcile"):
            self.index.wants_reconcile = False
        self._set_pending([])  # indexed below with every other unindexed row
        error: StorageError | None = None  # raised once every other scope is indexed
        gone = self.store.tombstones()
        if gone:
            try:
                self.index.delete(gone)
                self.store.clear_tombstones([g[0] for g in gone])
                self._readd_vectors([g[0] for g in gone])
            except IndexLockedError as exc:
                logger.debug("vector deletes left for the index's holder: %s", exc)
            except StorageError as exc:  # the tombstones stay; the unindexed rows go on
                error = exc
        total = after = 0
        failed: set[int] = set()  # scopes whose write failed: not tried again in this pass
        while True:
            where, skip = self.store.ids_not_in("scope_id", sorted(failed))
            with sqlite_errors(self.config.path / "helamem.sqlite3", "reading unindexed failed"):
                ns = [
                    int(r[0])
                    for r in self.store.db.execute(
                        f"SELECT n FROM memories WHERE indexed = 0 AND n > ? AND {where}"
                        " ORDER BY n LIMIT 2048",
                        (after, *skip),
                    )
                ]
            if not ns:
                break
            after = ns[-1]
            rows = self.store.rows_by_n(ns)
            todo = [rows[n] for n in ns if n in rows]  # (deleted since: gone)
            before = len(failed)
            try:
                total += self._index_rows(todo, failed=failed)
            except StorageError as exc:
                if len(failed) == before:  # not a scope's index write: SQLite's, say
                    raise
                error = error or exc  # the next batches hold other scopes' rows
        if total:
            logger.log(
                logging.DEBUG if expected else logging.INFO,
                "re-indexed %d memories that had not reached the vector index",
                total,
            )
        if error is not None:
            raise error
        self._needs_reconcile = False
        return total

    @property
    def pending_index(self) -> int:
        """Vectors of adds waiting for the batched index write (see :meth:`flush_index`)."""
        return len(self._pending_index)

    def index_new(
        self,
        ns: Sequence[int],
        ids: Sequence[str],
        vecs: np.ndarray,
        scope_ids: Sequence[int],
        kinds: Sequence[str],
    ) -> None:
        """Index the vectors of rows just committed (``indexed = 0``).

        With ``defer_index`` on, the vectors the index would write to a slow
        structure (``deferrable``: a promoted scope's HNSW collection) wait for
        one batched write (:meth:`flush_index`, at ``ChromaConfig.upsert_batch``
        or called by the owner); the rest are indexed now.
        """
        rows = list(zip(ns, ids, scope_ids, kinds, vecs, strict=True))
        deferrable = getattr(self.index, "deferrable", None)
        if self.defer_index and callable(deferrable):
            later = deferrable([(s, k) for _, _, s, k, _ in rows])
            now = [r for r, d in zip(rows, later, strict=True) if not d]
            # copies: the rows wait, and an embedder may reuse its output buffer
            waiting = [
                (n, i, s, k, np.array(v, dtype=np.float32))
                for (n, i, s, k, v), d in zip(rows, later, strict=True)
                if d
            ]
            self._set_pending([*self._pending_index, *waiting])
        else:
            now = rows
        if now:  # just committed: written as the add's own step
            self._write_index(now, recheck=False)
        if len(self._pending_index) >= self.config.chroma.upsert_batch:
            self.flush_index()

    def flush_index(self) -> int:
        """Write the pending vectors into the index (one upsert) and mark their rows.

        A failed write is logged, not raised: the rows stay unindexed (searched
        exactly meanwhile) and the next search or open re-indexes them.

        Returns:
            The vectors written.
        """
        batch = self._pending_index
        if not batch:
            return 0
        self._set_pending([])
        return self._write_index(batch, recheck=True)

    def _write_index(
        self, rows: Sequence[tuple[int, str, int, str, np.ndarray]], *, recheck: bool
    ) -> int:
        """Upsert ``(n, id, scope_id, kind, vector)`` rows and mark them indexed; returns
        the vectors written (0 on a failure: logged, the rows re-indexed later).

        ``recheck`` (rows that waited for a batch): an id deleted and added again
        meanwhile (a caller-chosen id, by this or another writer) names a new row
        with its own vector, so it is skipped before the write, and unmarked after
        it when the new row came during the write (the re-index writes its own).
        """
        done = False
        try:
            if recheck:
                now = self.store.keys_of([r[1] for r in rows])
                rows = [r for r in rows if now.get(r[1]) == r[0]]
            if rows:
                ns, ids, sids, kinds, vecs = zip(*rows, strict=True)
                mat = np.stack(vecs).astype(np.float32)
                self.index.upsert(list(ids), mat, list(sids), list(kinds))
                self.store.mark_indexed(
                    list(zip(ns, ids, strict=True)), 1, [v.tobytes() for v in mat]
                )
                after = self.store.keys_of(ids) if recheck else {}
                moved = [
                    (after[i], i) for n, i in zip(ns, ids, strict=True) if after.get(i, n) != n
                ]
                if moved:
                    self.store.mark_indexed(moved, 0)
                    self._needs_reconcile = True
            done = True
        except IndexLockedError as exc:  # embedded Chroma held by another process: its job
            logger.debug("vectors left unindexed for the index's holder: %s", exc)
        except StorageError as exc:
            logger.warning("vector index update failed, will re-index on next use: %s", exc)
        except Exception:  # a custom index's own error type
            # after the rows' commit: failing here would report stored memories as not
            # stored (a retry would store them twice); they stay unindexed instead
            logger.exception("vector index update failed, will re-index on next use")
        finally:
            if not done:  # the rows stay unindexed: the next search re-indexes them
                self._needs_reconcile = True
        return len(rows) if done else 0

    def _set_pending(self, pending: list[tuple[int, str, int, str, np.ndarray]]) -> None:
        """Replace the pending vectors, and tell the index which unindexed rows it may
        meet in a search without a re-index (``deferred``, where the index has it)."""
        self._pending_index = pending
        deferred = getattr(self.index, "deferred", None)
        if isinstance(deferred, set):
            deferred.clear()
            deferred.update(p[1] for p in pending)

    def _index_rows(
        self, rows: Sequence[MemoryRow], reembed: bool = False, failed: set[int] | None = None
    ) -> int:
        """Embed rows that lack a vector, index them, mark them; returns rows indexed
        (a scope whose index another process holds is skipped, its rows stay unindexed).

        Raises :class:`StorageError` once the other scopes are written when one scope's
        write failed; its scope node is added to ``failed``, where given."""
        if not rows:
            return 0
        dim = self.embedder.dimension
        missing = [r for r in rows if reembed or r.embedding is None or len(r.embedding) != 4 * dim]
        fresh: dict[int, np.ndarray] = {}
        if missing:
            vecs = self._embed([r.content for r in missing])
            fresh = {r.n: v for r, v in zip(missing, vecs, strict=True)}
            try:  # checked under the writer lock: never an embedder the store has left
                new = [(r.n, r.content, fresh[r.n].tobytes()) for r in missing]
                self.store.set_embeddings(new, self._refuse_stale)
            except ConfigError as exc:  # another process switched: its rows wait for it
                logger.warning("vectors of %d memories not recomputed: %s", len(missing), exc)
                rows, fresh = [r for r in rows if r.n not in fresh], {}
        groups: dict[tuple[int, str], list[MemoryRow]] = defaultdict(list)
        for r in rows:
            groups[(r.scope_id, r.kind)].append(r)
        done: list[MemoryRow] = []
        written: list[bytes] = []  # the vectors the index took: a row changed since is not done
        error: StorageError | None = None  # raised once the other scopes are written
        for (scope_id, kind), part in groups.items():
            vectors = np.stack(
                [fresh[r.n] if r.n in fresh else r.vector() for r in part]  # type: ignore[misc]
            ).astype(np.float32)
            try:
                self.index.upsert(
                    [r.id for r in part], vectors, [scope_id] * len(part), [kind] * len(part)
                )
            except IndexLockedError as exc:
                logger.debug("scope %d left unindexed for the index's holder: %s", scope_id, exc)
                continue
            except StorageError as exc:  # this scope's rows stay unindexed (searched exactly)
                error = error or exc
                if failed is not None:
                    failed.add(scope_id)
                continue
            except Exception as exc:  # a custom index's own error type
                raise StorageError(f"the vector index's upsert failed: {exc!r}") from exc
            done.extend(part)
            written.extend(v.tobytes() for v in vectors)
        if done:
            self.store.mark_indexed([(r.n, r.id) for r in done], 1, written)
        if error is not None:
            raise error
        return len(done)

    def drop_lexical(self) -> None:
        """Empty the tantivy BM25 index (derived from FTS5: rebuilt when next needed); a
        failure is logged, never raised, so it cannot stop a repair."""
        if self.lexical_index is None:
            return
        try:
            self.lexical_index.drop()
        except StorageError as exc:
            logger.warning("lexical index left as it is (rebuilt when it fails): %s", exc)

    def reindex(self, reembed: bool = False) -> int:
        """Rebuild the vector index from SQLite (re-embedding when asked); returns rows.

        Raises:
            IndexLockedError: Another process holds the embedded index.
            ConfigError: Another process switched the store's embedder since this opened it.
        """
        dim = self.embedder.dimension
        with self.store.tx() as db:  # one that opened before a switch rewrites nothing
            self._refuse_stale()
            if reembed:
                info = {"name": self.embedder.name, "dimension": dim}
                self.store.set_meta(db, "embedder", json.dumps(info))
        self.drop_lexical()
        if reembed:
            for rows in self.store.all_rows():
                vecs = self._embed([r.content for r in rows]).astype(np.float32)
                # each with the text it was computed from: one another writer rewrote
                # since it was read here keeps its new text's vector
                self.store.set_embeddings(
                    [(r.n, r.content, v.tobytes()) for r, v in zip(rows, vecs, strict=True)],
                    self._refuse_stale,
                )
        rebuild = getattr(self.index, "rebuild", None)
        total = 0
        if rebuild is None:  # a custom VectorIndex: reset, then upsert everything
            self.index.reset()
            for rows in self.store.all_rows():
                self._index_rows(rows)
                total += len(rows)
            return total
        rebuild()  # small scopes need nothing; large ones are copied (and marked) from SQLite
        for rows in self.store.all_rows():
            bad = [r for r in rows if r.embedding is None or len(r.embedding) != 4 * dim]
            if bad:
                self._index_rows(bad)
            total += len(rows)
        # never marked blindly: a row another writer added or rewrote after the rebuild
        # read its scope is not in HNSW; unindexed rows are upserted, then marked
        self.reconcile(expected=True)
        return total

    # -- helpers ---------------------------------------------------------

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed_tokens(texts, tokens=False)[0]

    def _embed_tokens(
        self, texts: Sequence[str], tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Pooled vectors, and token vectors when late interaction is on (one model pass)."""
        try:
            if tokens and self._tokens is not None:
                vecs, toks = self._tokens.embed_with_tokens(texts)
                if len(toks) != len(texts) or any(t.ndim != 2 or not len(t) for t in toks):
                    raise EmbeddingError(
                        f"embedder {self.embedder.name!r} gave malformed token vectors; "
                        f"check the embedder or set RetrievalConfig(late_weight=0)"
                    )
                return check_vectors(
                    vecs, len(texts), self.embedder.dimension, self.embedder.name
                ), list(toks)
            # a custom embedder's output is checked as every other: float32 (the bytes
            # mark_indexed compares with what it stored), the shape, finite values
            vecs = self.embedder.embed(texts)
            return check_vectors(
                vecs, len(texts), self.embedder.dimension, self.embedder.name
            ), None
        except EmbeddingError:
            raise
        except Exception as exc:  # the embedder is caller code: any failure of it is its error
            raise EmbeddingError(
                f"embedder {self.embedder.name!r} failed: {type(exc).__name__}: {exc}; "
                f"check the embedder"
            ) from exc

    def _now_tick(self, stored: int) -> int:
        if self.config.dynamics.clock == "wall":
            return int(time.time() // self.config.dynamics.tick_seconds)
        return stored

    def _scope(self, scope_id: int) -> Scope:
        s = self._scopes.get(scope_id)
        if s is None:
            s = self._scopes[scope_id] = self.store.scope_of(scope_id)
        return s

    def _memory(self, r: MemoryRow) -> Memory:
        return Memory(
            id=r.id,
            scope=self._scope(r.scope_id),
            kind="semantic" if r.kind == "semantic" else "episodic",
            content=r.content,
            role=r.role,
            event_time=datetime.fromtimestamp(r.event_time, tz=UTC),
            created_at=datetime.fromtimestamp(r.created_at, tz=UTC),
            keywords=() if r.keywords == "[]" else tuple(json.loads(r.keywords)),
            access_count=r.access_count,
            last_access=(
                None if r.last_access is None else datetime.fromtimestamp(r.last_access, tz=UTC)
            ),
            metadata=user_metadata(r.metadata),  # a fact's bookkeeping stays inside
            provenance=() if r.provenance == "[]" else tuple(json.loads(r.provenance)),
        )

    def _decayed(self, e: EdgeRow, tick_now: int) -> float:
        d = self.config.dynamics
        return dynamics.decayed(e.weight, tick_now - e.tick, d.decay_rate)

    def _ticks(self, scope_ids: Sequence[int]) -> dict[int, int]:
        return {s: self._now_tick(self.store.scope_state(s)[0]) for s in set(scope_ids)}

    # -- writes ----------------------------------------------------------
    def _nodes(self, scope: Sequence[str] | None) -> list[int] | None:
        """Scope nodes under ``scope``; ``None`` (or ``()``, as in search): every scope."""
        if scope is None or normalize_prefix(scope) == ():
            return None
        node = self.store.find_scope(normalize_scope(scope))
        return [] if node is None else self.store.descendants(node)

"""Storage protocols and row types shared by the engine and the backends."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ..errors import IndexLockedError
from ..jsontext import load_metadata

__all__ = [
    "DRAWN_FROM",
    "EdgeRow",
    "IndexLockedError",
    "MemoryRow",
    "RankRow",
    "VectorIndex",
    "rests_on",
]
# IndexLockedError lives in helamem.core.errors; re-exported here for the backends

DRAWN_FROM = "_helamem_drawn"
"""A fact's metadata key: the ids of every episode shown to its distiller when it wrote
the fact (``FactDraft.seen``: an LLM's whole call; else the clusters of its sources),
cited or not. A fact rests on them as on those it cites
(:func:`rests_on`): deleting any one takes the fact along, so a fact whose distiller
used an episode without citing it never outlives that episode (helper 143 F4)."""


def rests_on(provenance: str, metadata: str) -> set[str]:
    """The episode ids a fact rests on: those it cites (``provenance``, a JSON list)
    and those it was distilled from (``metadata``'s :data:`DRAWN_FROM`; facts stored
    before it was kept have none).

    Examples:
        >>> sorted(rests_on('["a"]', '{"_helamem_drawn": ["a", "b"]}'))
        ['a', 'b']
    """
    out = {str(i) for i in json.loads(provenance)}
    if DRAWN_FROM in metadata:  # most metadata: no parse
        drawn = load_metadata(metadata).get(DRAWN_FROM)
        if isinstance(drawn, list):
            out.update(str(i) for i in drawn)
    return out


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """A memory as stored (``n`` is the integer key edges refer to)."""

    n: int
    id: str
    scope_id: int
    kind: str
    content: str
    role: str | None
    event_time: float
    created_at: float
    keywords: str
    access_count: int
    last_access: float | None
    metadata: str
    provenance: str
    embedding: bytes | None

    def vector(self) -> npt.NDArray[np.float32] | None:
        if self.embedding is None:
            return None
        return np.frombuffer(self.embedding, dtype=np.float32)


class RankRow(NamedTuple):
    """The columns ranking and spreading read (a search loads full rows only for its hits).

    A named tuple, not a frozen dataclass: a search builds one per candidate and
    per neighbour, and a tuple is built in about a third of the time (0.09 against
    0.31 ms for 150 rows).
    """

    n: int
    id: str
    scope_id: int
    kind: str
    event_time: float
    embedding: bytes | None
    chars: int = 0
    """Length of the content in characters."""
    question: bool = False
    """The content ends with "?" (trailing whitespace aside)."""
    role: str | None = None
    """The memory's role (its speaker), as stored."""
    tokens: bytes | None = None
    """Its token vectors as :func:`~helamem.core.retrieval.pack_tokens` stored them,
    when ``rank_rows(..., tokens=True)`` read them and it has some (else ``None``)."""

    def vector(self) -> npt.NDArray[np.float32] | None:
        if self.embedding is None:
            return None
        return np.frombuffer(self.embedding, dtype=np.float32)


class EdgeRow(NamedTuple):
    """An edge as stored: weight as of ``tick`` (decay is applied on read); a named
    tuple, like :class:`RankRow`, since a search reads every edge of its seeds."""

    a: int
    b: int
    scope_id: int
    weight: float
    tick: int


class VectorIndex(Protocol):
    """A derived index of embeddings keyed by memory id.

    Every method runs on the memory's owner thread, one call at a time, unless
    the index has a true attribute ``queries_from_any_thread``: a search then
    runs :meth:`query` on its second (aux) thread, beside the lexical leg, and
    nothing else calls the index until that query returned (HeLa-Mem's own
    :class:`~helamem.core.storage.chroma.ChromaIndex` says so; an index bound to
    its thread, such as one on a plain ``sqlite3`` connection, must not).

    A write (:meth:`upsert`) that fails should raise
    :class:`~helamem.core.StorageError`; it comes after the memories' commit, so
    any failure, of any type, leaves them stored and unindexed (scanned exactly,
    re-indexed by a later search), logged, never raised to the writer.
    """

    def open(self, dimension: int) -> None: ...

    def close(self) -> None: ...

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        scope_ids: Sequence[int],
        kinds: Sequence[str],
    ) -> None: ...

    def delete(self, items: Sequence[tuple[str, int, str]]) -> None:
        """Delete ``(id, scope_id, kind)`` entries; unknown ones are ignored."""
        ...

    def query(
        self,
        vector: npt.NDArray[np.float32],
        n: int,
        scope_ids: Sequence[int],
        kind: str,
    ) -> list[tuple[str, float]]:
        """Nearest ids with cosine distance, restricted to scopes and kind."""
        ...

    def count(self, scope_ids: Collection[int] | None = None) -> int:
        """Vectors the index can return (of ``scope_ids`` only; ``None``: every scope)."""
        ...

    def reset(self) -> None:
        """Drop every vector (before a full reindex)."""
        ...


@runtime_checkable
class GraphStore(Protocol):
    """The graph store the engine runs on: memories, scopes, edges, BM25, facts.

    The seam between the engine and its storage: :class:`~helamem.core.storage.sqlite.SQLiteStore`
    (one SQLite file) and :class:`~helamem.core.storage.postgres.PostgresStore`
    (a PostgreSQL schema) implement it; ``_base.make_store`` picks one by
    ``HelaMemConfig.store``. Every method runs on the memory's owner thread.
    ``tx()`` yields the handle the write methods take as ``db`` (writes inside
    one ``tx`` commit or roll back together); the others read outside it.
    Rows are :class:`MemoryRow`, :class:`RankRow` and :class:`EdgeRow`.
    """

    def all_rows(self, batch: int = 2048) -> Iterator[list[MemoryRow]]: ...

    def all_scope_ids(self) -> list[int]: ...

    def ancestors(self, scope_id: int) -> list[int]: ...

    def cited_ids(self, scope_ids: Sequence[int]) -> set[str]: ...

    def clear_token_vectors(self) -> None: ...

    def clear_tombstones(self, ids: Sequence[str]) -> None: ...

    def close(self) -> None: ...

    def cluster_known(self, scope_id: int, signature: str, newest: float) -> bool: ...

    def clusters_of(self, scope_id: int) -> list[tuple[str, str, int, float]]: ...

    def co_activate(
        self,
        db: Any,
        pairs: Sequence[tuple[int, int]],
        scope_id: int,
        tick: int,
        learning_rate: float,
        decay_rate: float,
    ) -> None: ...

    def counts(self, scope_ids: Sequence[int] | None) -> dict[str, float]: ...

    @property
    def db(self) -> Any: ...

    def delete_clusters(self, db: Any, scope_ids: Sequence[int]) -> None: ...

    def forget_clusters(self, db: Any, scope_id: int, signatures: Sequence[str]) -> None: ...

    def set_metadata(self, db: Any, n: int, metadata: str) -> None: ...

    def delete_edges(self, db: Any, keys: Iterable[tuple[int, int]]) -> None: ...

    def delete_meta(self, db: Any, keys: Sequence[str]) -> None: ...

    def set_metas(self, db: Any, items: Sequence[tuple[str, str]]) -> None: ...

    def delete_memories(self, db: Any, rows: Sequence[MemoryRow]) -> None: ...

    def descendants(self, scope_id: int) -> list[int]: ...

    def edges_among(self, ns: Sequence[int]) -> dict[tuple[int, int], EdgeRow]: ...

    def edges_in_scopes(self, scope_ids: Sequence[int]) -> list[EdgeRow]: ...

    def edges_of(self, ns: Sequence[int]) -> list[EdgeRow]: ...

    def ensure_scope(self, db: Any, scope: Sequence[str]) -> int: ...

    def existing(self, db: Any, ns: Iterable[int]) -> set[int]: ...

    def facts_citing(self, scope_ids: Iterable[int], ids: Iterable[str]) -> list[MemoryRow]: ...

    def find_scope(self, scope: Sequence[str]) -> int | None: ...

    def forget_candidates(
        self, scope_ids: Sequence[int], older_than_s: float, limit: int
    ) -> list[MemoryRow]: ...

    def fts_rows(self) -> int: ...

    def get_meta(self, key: str) -> str | None: ...

    def get_metas(self, keys: Sequence[str]) -> dict[str, str]: ...

    def has_memories_under(self, node: int) -> bool: ...

    def holding(self) -> dict[str, set[int]]: ...

    def id_of(self, n: int) -> str | None: ...

    def ids_in(self, column: str, ids: Sequence[int]) -> tuple[str, list[object]]: ...

    def ids_not_in(self, column: str, ids: Sequence[int]) -> tuple[str, list[object]]: ...

    def ids_under(self, bases: Sequence[str]) -> list[str]: ...

    def ids_with_metadata(
        self, scope_ids: Sequence[int] | None, fields: Mapping[str, str], limit: int | None
    ) -> list[str]: ...

    def ids_with_unique_key(self, scope_id: int, key: str) -> list[str]: ...

    def unique_keys(self, ns: Sequence[int]) -> dict[int, str]: ...

    def key_forgotten(self, scope_id: int, key: str) -> bool: ...

    def insert_memory(
        self,
        db: Any,
        *,
        id: str,
        scope_id: int,
        tags: str,
        kind: str,
        content: str,
        search_text: str,
        role: str | None,
        event_time: float,
        created_at: float,
        keywords: str,
        metadata: str,
        provenance: str,
        embedding: bytes,
        generated_id: bool = False,
        unique_key: str | None = None,
    ) -> int: ...

    def iter_edges_under(
        self, node: int, batch: int = 4096
    ) -> Iterator[list[tuple[str, str, float, int]]]: ...

    def iter_memories_under(self, node: int, batch: int = 1024) -> Iterator[list[MemoryRow]]: ...

    def json_field(self, column: str, key: str) -> str: ...

    def keys_of(self, ids: Iterable[str]) -> dict[str, int]: ...

    def last_episode_upto(self, scope_id: int, n: int) -> str | None: ...

    def lexical(
        self, match: str, tag: str | None, limit: int, after: int = 0
    ) -> list[tuple[int, float]]: ...

    def locate(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]: ...

    def mark_indexed(
        self, keys: Sequence[tuple[int, str]], value: int = 1, written: Sequence[bytes] = ()
    ) -> None: ...

    def newest_event(self, scope_ids: Sequence[int]) -> float | None: ...

    def nodes_holding(self, node_ids: Sequence[int], kind: str) -> list[int]: ...

    def of_kind(
        self, ns: Sequence[int], kind: str, scope_ids: Sequence[int] | None
    ) -> set[int]: ...

    def open(self) -> None: ...

    def put_cluster(
        self,
        db: Any,
        scope_id: int,
        signature: str,
        hub: str,
        facts: int,
        distilled_at: float,
    ) -> None: ...

    def put_token_vectors(self, db: Any, items: Sequence[tuple[int, bytes]]) -> None: ...

    def rank_rows(
        self, ids: Iterable[str], ns: Iterable[int], *, tokens: bool = False
    ) -> dict[int, RankRow]: ...

    def read_tx(self) -> AbstractContextManager[None]: ...

    def record_cluster(
        self, db: Any, scope_id: int, signature: str, hub: str, facts: int, newest: float
    ) -> None: ...

    def rows_by_id(self, ids: Iterable[str]) -> dict[str, MemoryRow]: ...

    def rows_by_n(self, ns: Iterable[int]) -> dict[int, MemoryRow]: ...

    def rows_in_scopes(self, scope_ids: Sequence[int]) -> list[MemoryRow]: ...

    def schema_version(self) -> int: ...

    def scope_of(self, scope_id: int) -> tuple[str, ...]: ...

    def scope_state(self, scope_id: int) -> tuple[int, int | None]: ...

    def scopes_with_memories(self, node_ids: Sequence[int] | None) -> list[tuple[str, ...]]: ...

    def set_access(self, db: Any, n: int, access_count: int, last_access: float | None) -> None: ...

    def set_embeddings(
        self, items: Sequence[tuple[int, str, bytes]], check: Callable[[], None] | None = None
    ) -> None: ...

    def set_meta(self, db: Any, key: str, value: str) -> None: ...

    def set_scope_state(
        self, db: Any, scope_id: int, tick: int, last_episode: int | None
    ) -> None: ...

    def term_stats(self, words: Sequence[str]) -> tuple[int, list[int]]: ...

    def token_vectors(self, ns: Sequence[int]) -> dict[int, bytes]: ...

    def tombstones(self, ids: Sequence[str] | None = None) -> list[tuple[str, int, str]]: ...

    def touch(self, db: Any, ns: Sequence[int], now: float) -> None: ...

    def tx(self) -> AbstractContextManager[Any]: ...

    def unindexed(self, limit: int = 10_000) -> list[MemoryRow]: ...

    def update_fact(
        self,
        db: Any,
        row: MemoryRow,
        *,
        content: str,
        search_text: str,
        tags: str,
        keywords: str,
        provenance: str,
        event_time: float,
        embedding: bytes,
        metadata: str | None = None,
    ) -> None: ...

    def upsert_edges(self, db: Any, edges: Iterable[EdgeRow]) -> None: ...

    def vectors_rewritten(self, db: Any) -> None: ...

    def vectors_of(
        self, scope_id: int, kind: str, after_n: int = 0
    ) -> tuple[list[int], list[str], list[bytes | None]]: ...

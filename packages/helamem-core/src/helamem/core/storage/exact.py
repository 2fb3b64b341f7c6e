"""Exact cosine search over the embeddings SQLite stores (the small-scope tier).

Every memory's embedding is a column of ``memories`` in ``helamem.sqlite3``,
the source of truth, which any number of processes may share. Searching a
(scope node, kind) by scanning those embeddings is therefore correct across
processes by construction: whatever another process committed is read.

The float32 matrix of each (scope node, kind) is cached (LRU, bounded in
bytes) and validated before every use by a fingerprint read from the covering
index ``memories_scope``: ``(COUNT(*), MAX(n))``. Keys ``n`` are never reused
(``AUTOINCREMENT``), so a grown maximum with a count grown by as many rows
means appends only (read just those rows); anything else (a delete) reloads
the scope. A vector rewritten in place (a distilled fact merged with a
near-duplicate, a re-embedding), which the fingerprint cannot see, changes
meta :data:`REWRITTEN_KEY` in its transaction, in any process: every search
reads it in its snapshot and, when it changed, empties the cache.

This module owns a second, read-mostly SQLite connection of its own (the
store's connection stays the store's; either may be mid-read when the other
is used).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import StorageError
from .sqlite_checkpoint import set_backstop
from .sqlite_schema import storage_error

__all__ = ["REWRITTEN_KEY", "ExactVectors"]

_PROMOTED_KEY = "vector_index.hnsw"
REWRITTEN_KEY = "vectors.rewritten"
"""Meta key changed (a new random value) by every in-place rewrite of stored vectors."""
_STORE_ID_KEY = "store_id"

Key = tuple[int, str]


def _qmarks(n: int) -> str:
    return ",".join("?" * n)


@dataclass(slots=True)
class _Entry:
    ns: list[int]
    ids: list[str]
    mat: npt.NDArray[np.float32]  # rows L2-normalised (zero rows stay zero)
    max_n: int
    count: int  # rows counted by the fingerprint (with or without a usable vector)
    known: set[str] = field(default_factory=set)

    @property
    def nbytes(self) -> int:
        return int(self.mat.nbytes) + 80 * len(self.ids)


def _normalised(blobs: Sequence[bytes], dim: int) -> npt.NDArray[np.float32]:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    mat = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    np.divide(mat, norms, out=mat, where=norms > 0)
    return mat


class ExactVectors:
    """Exact cosine top-n over SQLite's stored embeddings, with a validated LRU cache.

    Args:
        path: ``helamem.sqlite3`` (opened by the store first, so it exists).
        cache_bytes: Most bytes of cached matrices (0 caches nothing).
        busy_timeout_s: SQLite busy timeout for the few writes (index metadata).
        connect: Opens the connection instead (an object with ``sqlite3.Connection``'s
            ``execute``/``executemany``/``in_transaction``/``close``, such as
            :class:`~helamem.core.storage.pg_conn.PgConnection`).

    Thread-safe (one internal lock); the store's owner thread both writes and
    reads it.
    """

    def __init__(
        self,
        path: Path,
        cache_bytes: int,
        busy_timeout_s: float = 30.0,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self._path = path
        self._connect = connect
        self._budget = cache_bytes
        self._timeout = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._dim = 0
        self._cache: OrderedDict[Key, _Entry] = OrderedDict()
        self._bytes = 0
        self._rewritten: str | None = None  # meta REWRITTEN_KEY the cache was read under
        self._lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------

    @property
    def own_database(self) -> bool:
        """Whether it reads its own SQLite file (not another engine's connection)."""
        return self._connect is None

    def open(self, dimension: int) -> None:
        self._dim = dimension
        if self._connect is not None:  # another engine's connection (PostgreSQL)
            self._db = self._connect()
            return
        try:
            db = sqlite3.connect(
                self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            db.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            # its few commits (index metadata, a promotion's marks) are checkpointed by the
            # store's thread after the store's next commit, or by this backstop
            set_backstop(db)
        except sqlite3.Error as exc:
            raise storage_error(exc, self._path, "cannot open the store for vector search") from exc
        self._db = db

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._bytes = 0
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError("the vector index is not open")
        return self._db

    def _sql(self, what: str, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return list(self.db.execute(sql, tuple(params)).fetchall())
        except sqlite3.Error as exc:
            raise storage_error(exc, self._path, f"{what} failed") from exc

    # -- index metadata (kept in SQLite's meta table) ----------------------

    @contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``) on this connection, under its lock:
        committed, or rolled back on any error; SQLite errors raised as StorageError
        naming ``what``."""
        db = self.db
        try:
            with self._lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise storage_error(exc, self._path, f"could not {what}") from exc

    def _write_meta(self, key: str, value: str) -> None:
        with self._writing(f"record {key!r}") as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def _read_meta(self, key: str) -> str | None:
        rows = self._sql("reading index metadata", "SELECT value FROM meta WHERE key = ?", [key])
        return None if not rows else str(rows[0][0])

    def store_id(self) -> str:
        """This database's identity (created on first use): the index records whose it is."""
        with self._lock:
            found = self._read_meta(_STORE_ID_KEY)
            if found is not None:
                return found
            sid = uuid.uuid4().hex
            # first writer wins (another process may create it at the same time)
            with self._writing("record the store id") as db:
                db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (_STORE_ID_KEY, sid)
                )
            return self._read_meta(_STORE_ID_KEY) or sid

    def scope_name(self, key: Key) -> str:
        """``key`` for messages, as the caller named the scope: e.g.
        ``scope ["users", "alice"] (episodic)``; its node number when the store
        cannot say (the row gone, the store failing)."""
        try:
            with self._lock:
                row = self.db.execute("SELECT path FROM scopes WHERE id = ?", (key[0],)).fetchone()
        except (sqlite3.Error, StorageError):  # a message must not fail its caller
            row = None
        return f"scope {row[0] if row is not None else f'node {key[0]}'} ({key[1]})"

    def promoted(self) -> set[Key]:
        """The (scope node, kind) pairs served by their own HNSW collection."""
        raw = self._read_meta(_PROMOTED_KEY)
        if not raw:
            return set()
        return {(int(s), str(k)) for s, k in json.loads(raw)}

    def set_promoted(self, keys: set[Key]) -> None:
        with self._lock:
            self._write_meta(_PROMOTED_KEY, json.dumps(sorted([s, k] for s, k in keys)))

    def add_promoted(self, key: Key) -> bool:
        """Record ``key`` as promoted (read-modify-write in one transaction).

        In the same transaction the scope's memories are marked unindexed, so
        every process searches them exactly (beside the collection) until
        :meth:`mark_indexed` records them loaded: a collection being built is
        never the only place a memory is looked for.

        Returns:
            False when ``key`` was already promoted (by another process or
            store object): nothing was changed, and its collection exists.
        """
        with self._lock:
            db = self.db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    raw = db.execute(
                        "SELECT value FROM meta WHERE key = ?", (_PROMOTED_KEY,)
                    ).fetchone()
                    keys = {(int(s), str(k)) for s, k in json.loads(raw[0])} if raw else set()
                    if key in keys:
                        db.execute("ROLLBACK")
                        return False
                    keys.add(key)
                    db.execute(
                        "INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (_PROMOTED_KEY, json.dumps(sorted([s, k] for s, k in keys))),
                    )
                    db.execute(
                        "UPDATE memories SET indexed = 0 WHERE scope_id = ? AND kind = ?",
                        (key[0], key[1]),
                    )
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise storage_error(exc, self._path, "could not record a promoted scope") from exc
        return True

    def mark_indexed(self, ns: Sequence[int], ids: Sequence[str], written: Sequence[bytes]) -> None:
        """Mark the memories ``(n, id)`` indexed (one deleted meanwhile changes nothing)
        whose vector is still the one ``written`` to the collection; one another writer
        rewrote since it was read (a fact's update) is marked unindexed: re-indexed."""
        with self._writing("mark vectors indexed") as db:
            db.executemany(
                "UPDATE memories SET indexed = CASE WHEN embedding = ? THEN 1 ELSE 0 END"
                " WHERE n = ? AND id = ?",
                list(zip(written, ns, ids, strict=True)),
            )

    def unindex(self, ids: Sequence[str]) -> None:
        """Mark the memories ``ids`` unindexed: their vectors are written again."""
        with self._writing("mark vectors unindexed") as db:
            db.executemany("UPDATE memories SET indexed = 0 WHERE id = ?", [(i,) for i in ids])

    def unindex_scope(self, key: Key) -> None:
        """Mark every memory of ``key`` unindexed: searched exactly beside its collection
        until :meth:`mark_indexed` records each copied into it again."""
        with self._writing("mark vectors unindexed") as db:
            db.execute(
                "UPDATE memories SET indexed = 0 WHERE scope_id = ? AND kind = ?", (key[0], key[1])
            )

    # -- counts and rows ---------------------------------------------------

    def count_upto(self, key: Key, limit: int) -> int:
        """Memories of ``key`` with a vector, counted up to ``limit`` (bounded cost)."""
        rows = self._sql(
            "counting a scope",
            "SELECT COUNT(*) FROM (SELECT 1 FROM memories WHERE scope_id = ? AND kind = ?"
            " AND length(embedding) = ? LIMIT ?)",
            [key[0], key[1], 4 * self._dim, limit],
        )
        return int(rows[0][0])

    def newest_indexed(self, key: Key, limit: int) -> list[str]:
        """Ids of the newest ``limit`` memories of ``key`` marked indexed (newest first)."""
        rows = self._sql(
            "reading the newest indexed vectors",
            "SELECT id FROM memories WHERE scope_id = ? AND kind = ? AND indexed = 1"
            " AND length(embedding) = ? ORDER BY n DESC LIMIT ?",
            [key[0], key[1], 4 * self._dim, limit],
        )
        return [str(r[0]) for r in rows]

    def counts(self, indexed_only: bool = False) -> dict[Key, int]:
        """Vectors per (scope node, kind) (``indexed_only``: marked indexed)."""
        extra = " AND indexed = 1" if indexed_only else ""
        rows = self._sql(
            "counting vectors",
            "SELECT scope_id, kind, COUNT(*) FROM memories WHERE length(embedding) = ?"
            f"{extra} GROUP BY scope_id, kind",
            [4 * self._dim],
        )
        return {(int(s), str(k)): int(c) for s, k, c in rows}

    def ids(self, skip: set[Key]) -> list[str]:
        """Ids of every memory with a vector, except those of the ``skip`` scopes."""
        rows = self._sql(
            "listing vectors",
            "SELECT id, scope_id, kind FROM memories WHERE length(embedding) = ?",
            [4 * self._dim],
        )
        return [str(i) for i, s, k in rows if (int(s), str(k)) not in skip]

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are memories now (read from SQLite, not from a cache)."""
        out: set[str] = set()
        ids = list(ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self._sql(
                "reading memory ids",
                f"SELECT id FROM memories WHERE id IN ({_qmarks(len(chunk))})",
                chunk,
            )
            out.update(str(r[0]) for r in rows)
        return out

    def batches(
        self, key: Key, batch: int = 4096
    ) -> Iterator[tuple[list[int], list[str], npt.NDArray[np.float32]]]:
        """``(ns, ids, raw vectors)`` of a scope's memories in ``n`` order, batched."""
        last = 0
        while True:
            rows = self._sql(
                "reading vectors",
                "SELECT n, id, embedding FROM memories WHERE scope_id = ? AND kind = ?"
                " AND n > ? AND length(embedding) = ? ORDER BY n LIMIT ?",
                [key[0], key[1], last, 4 * self._dim, batch],
            )
            if not rows:
                return
            blobs = [bytes(r[2]) for r in rows]
            mat = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(rows), self._dim)
            yield [int(r[0]) for r in rows], [str(r[1]) for r in rows], mat
            last = int(rows[-1][0])

    def unindexed(
        self, keys: Sequence[Key]
    ) -> tuple[list[str], npt.NDArray[np.float32], list[float]]:
        """Memories of ``keys`` not yet marked indexed (waiting for a batched write,
        another process's, or a failed write's), as ``(ids, normalised vectors,
        created_at)``; read through the partial index."""
        if not keys:
            return [], np.zeros((0, self._dim), dtype=np.float32), []
        want = set(keys)
        rows = self._sql(
            "reading unindexed vectors",
            "SELECT id, scope_id, kind, embedding, created_at FROM memories"
            " INDEXED BY memories_unindexed WHERE indexed = 0",
        )
        keep = [
            r
            for r in rows
            if (int(r[1]), str(r[2])) in want
            and isinstance(r[3], bytes)
            and len(r[3]) == 4 * self._dim
        ]
        return (
            [str(r[0]) for r in keep],
            _normalised([bytes(r[3]) for r in keep], self._dim),
            [float(r[4]) for r in keep],
        )

    # -- search ------------------------------------------------------------

    def forget(self, keys: Sequence[Key], ids: Sequence[str] = ()) -> None:
        """Drop cached matrices of ``keys`` that hold any of ``ids`` (all, if no ids)."""
        with self._lock:
            wanted = set(ids)
            for key in set(keys):
                e = self._cache.get(key)
                if e is not None and (not wanted or not wanted.isdisjoint(e.known)):
                    self._drop(key)

    def _drop(self, key: Key) -> None:
        e = self._cache.pop(key, None)
        if e is not None:
            self._bytes -= e.nbytes

    def _fingerprints(self, keys: Sequence[Key]) -> dict[Key, tuple[int, int]]:
        out: dict[Key, tuple[int, int]] = {}
        by_kind: dict[str, list[int]] = {}
        for s, k in keys:
            by_kind.setdefault(k, []).append(s)
        for kind, sids in by_kind.items():
            for i in range(0, len(sids), 500):
                chunk = sids[i : i + 500]
                for s, c, m in self._sql(
                    "validating cached vectors",
                    "SELECT scope_id, COUNT(*), MAX(n) FROM memories WHERE kind = ? AND"
                    f" scope_id IN ({_qmarks(len(chunk))}) GROUP BY scope_id",
                    [kind, *chunk],
                ):
                    out[(int(s), kind)] = (int(c), int(m))
        return out

    def _load(self, key: Key, after: int) -> tuple[int, list[int], list[str], list[bytes]]:
        rows = self._sql(
            "reading vectors",
            "SELECT n, id, embedding FROM memories WHERE scope_id = ? AND kind = ? AND n > ?"
            " ORDER BY n",
            [key[0], key[1], after],
        )
        dim4 = 4 * self._dim
        keep = [r for r in rows if isinstance(r[2], bytes) and len(r[2]) == dim4]
        return (
            len(rows),
            [int(r[0]) for r in keep],
            [str(r[1]) for r in keep],
            [bytes(r[2]) for r in keep],
        )

    def _entry(self, key: Key, fp: tuple[int, int]) -> _Entry:
        count, max_n = fp
        e = self._cache.get(key)
        if e is not None and e.max_n == max_n and e.count == count:
            self._cache.move_to_end(key)
            return e
        if e is not None and max_n > e.max_n:  # appended since (keys are never reused)
            raw, ns, ids, blobs = self._load(key, e.max_n)
            if e.count + raw == count:
                self._drop(key)
                e = _Entry(
                    e.ns + ns,
                    e.ids + ids,
                    np.vstack([e.mat, _normalised(blobs, self._dim)]),
                    max_n,
                    count,
                    e.known | set(ids),
                )
                self._keep(key, e)
                return e
        self._drop(key)
        raw, ns, ids, blobs = self._load(key, 0)
        e = _Entry(ns, ids, _normalised(blobs, self._dim), max_n, raw, set(ids))
        self._keep(key, e)
        return e

    def _keep(self, key: Key, e: _Entry) -> None:
        if e.nbytes > self._budget:
            return
        self._cache[key] = e
        self._bytes += e.nbytes
        while self._bytes > self._budget and self._cache:
            _, dropped = self._cache.popitem(last=False)
            self._bytes -= dropped.nbytes

    def search(
        self, vector: npt.NDArray[np.float32], n: int, keys: Sequence[Key]
    ) -> list[tuple[str, float]]:
        """Top ``n`` ``(id, cosine distance)`` over ``keys``, nearest first (exact)."""
        if not keys or n <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(q))
        if norm > 0:
            q = q / norm
        with self._lock:
            try:
                self.db.execute("BEGIN")  # one snapshot for fingerprints and rows
            except sqlite3.Error as exc:
                raise storage_error(exc, self._path, "vector search: reading failed") from exc
            try:
                rewritten = self._read_meta(REWRITTEN_KEY)
                if rewritten != self._rewritten:  # vectors rewritten in place somewhere
                    self._cache.clear()
                    self._bytes = 0
                    self._rewritten = rewritten
                fps = self._fingerprints(keys)
                entries = [self._entry(key, fp) for key, fp in fps.items()]
            finally:
                if self.db.in_transaction:
                    self.db.execute("COMMIT")
        entries = [e for e in entries if e.ns]
        if not entries:
            return []
        sims = np.concatenate([e.mat @ q for e in entries])
        ids = [i for e in entries for i in e.ids] if len(entries) > 1 else entries[0].ids
        if len(sims) > n:
            # every vector tied with the n-th nearest, then the first n in stored order:
            # ties go the same way for every n, so the top n is a prefix of the top n + 1
            nth = -np.partition(-sims, n - 1)[n - 1]
            top = np.flatnonzero(sims >= nth)
            top = top[np.argsort(-sims[top], kind="stable")][:n]
        else:
            top = np.argsort(-sims, kind="stable")
        return [(ids[int(i)], float(1.0 - sims[int(i)])) for i in top]

"""Copying a scope's vectors from SQLite into its HNSW collection, and the deletes that
keep a collection to the memories that exist (for :mod:`.chroma_connect`).

Other processes write to and query a collection while one process copies into it
(a promotion; a process opening Chroma that finds a collection missing or short):
it is never dropped and built again, which lost the vectors they had just written
and marked indexed (found by no dense query until the copy reached them).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from chromadb.errors import NotFoundError

from .exact import ExactVectors


class ChromaConnection(Protocol):
    """What is used here of :class:`.chroma_connect.ChromaConnection`."""

    _cols: OrderedDict[str, Any]
    _dimension: int
    _exact: ExactVectors
    wants_reconcile: bool

    def _name(self, scope_id: int, kind: str) -> str: ...

    def _collection(self, key: tuple[int, str], create: bool, refill: bool = True) -> Any: ...

    def _chroma(self, required: bool = True, verify: bool = True) -> Any: ...


ATOL = 1e-6
"""Stored vectors Chroma returns differ from those written by float rounding (measured
up to ~5e-8 on unit vectors): within this, after normalising, a vector is unchanged."""
STALE_PASSES = 3
"""Passes over a collection's ids while its count moves during one (another process's
delete shifts the pages: an id may be skipped)."""


def copy_scope(conn: ChromaConnection, key: tuple[int, str], fresh: bool) -> int:
    """Copy a scope's vectors into its collection and mark them indexed; returns the
    vectors copied. ``fresh``: the collection may hold vectors of memories no longer in
    the database (an earlier promotion's), deleted after the copy; one of another
    dimension is dropped. Raises what chromadb raises (the caller converts it)."""
    name = conn._name(*key)
    old = None
    if fresh:
        conn._cols.pop(name, None)  # a handle cached before another process rebuilt it
        old = conn._collection(key, create=False)
        meta = getattr(old, "metadata", None) or {}
        if old is not None and meta.get("helamem:dimension", conn._dimension) != conn._dimension:
            conn._cols.pop(name, None)
            with suppress(NotFoundError, ValueError):
                conn._chroma().delete_collection(name)
            old = None
    if fresh:  # a copy cut short leaves the rows it did not copy unindexed (searched
        # exactly, re-indexed later), never marked as in a collection that lacks them
        conn._exact.unindex_scope(key)
    col = conn._collection(key, create=True, refill=False)
    done = 0
    for ns, ids, mat in conn._exact.batches(key):
        if old is not None:
            write_over(col, ids, mat)
        else:
            col.upsert(ids=ids, embeddings=mat)
        drop_vanished(conn, col, ids)
        conn._exact.mark_indexed(ns, ids, [v.tobytes() for v in mat])
        done += len(ids)
    if fresh:
        _drop_stale(conn, col)
    return done


def write_over(col: Any, ids: Sequence[str], mat: npt.NDArray[np.float32]) -> None:
    """Write vectors some of which may be in ``col`` already (every write to a collection:
    another process's write, a re-index, a copy): an unchanged one is not written again,
    a changed one is deleted, then added. An upsert over an id already there can leave
    records unreachable by queries (chroma-core/chroma#7758; measured at 20,000
    memories: a re-index upserting every row left ~2,200 of 3,006 memories sharing a
    vector with 50+ others out of any top 10, against none for delete-then-add)."""
    got = col.get(ids=list(ids), include=["embeddings"])
    rows = got.get("embeddings")
    have = dict(zip(got["ids"], [] if rows is None else rows, strict=True))

    def unit(v: Any) -> npt.NDArray[np.float64]:
        a = np.asarray(v, dtype=np.float64)
        return a / max(float(np.linalg.norm(a)), 1e-12)

    new = [
        j
        for j, i in enumerate(ids)
        if i not in have
        or len(have[i]) != len(mat[j])
        or not np.allclose(unit(have[i]), unit(mat[j]), rtol=0.0, atol=ATOL)
    ]
    changed = [ids[j] for j in new if ids[j] in have]
    if changed:
        col.delete(ids=changed)
    if new:
        col.upsert(ids=[ids[j] for j in new], embeddings=mat[new])


def drop_vanished(conn: ChromaConnection, col: Any, ids: Sequence[str]) -> None:
    """Delete the just-upserted vectors of ``ids`` whose memories are gone.

    Vectors are upserted after their rows were read (by another process or store
    object too: a reconcile, a promotion). A delete committed in between has already
    removed its vector, so the upsert would bring it back as an orphan, found by
    search. Checked after the upsert: a delete committed later removes the vector itself.
    """
    gone = set(ids) - conn._exact.existing(ids)
    if gone:
        _delete(conn, col, sorted(gone))


def _delete(conn: ChromaConnection, col: Any, ids: list[str]) -> None:
    """Delete vectors of memories found gone; an id added again meanwhile (a caller-chosen
    id, by another writer) may have had its new vector deleted with them: its row is
    marked unindexed, and the next search re-indexes it."""
    col.delete(ids=ids)
    back = conn._exact.existing(ids)
    if back:
        conn._exact.unindex(sorted(back))
        conn.wants_reconcile = True


def _drop_stale(conn: ChromaConnection, col: Any, page: int = 8192) -> None:
    """Delete the collection's vectors whose memories are not in the database."""
    for _ in range(STALE_PASSES):
        before = int(col.count())
        ids: list[str] = []
        while True:
            part = [str(i) for i in col.get(include=[], limit=page, offset=len(ids))["ids"]]
            ids += part
            if len(part) < page:
                break
        gone = sorted(set(ids) - conn._exact.existing(ids))
        if gone:
            _delete(conn, col, gone)
        if len(set(ids)) == before == int(col.count()) + len(gone):  # no page moved
            return

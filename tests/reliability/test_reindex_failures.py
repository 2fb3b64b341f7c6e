"""The re-index of unindexed rows (``reconcile``: at open, and after a failed write)
when the vector index fails for many scopes, or SQLite stays locked (review 130)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
from helamem.core.errors import StorageError


def _core(mem: HelaMemory) -> Any:
    return mem._call(lambda c: c)  # type: ignore[attr-defined]


def test_a_thousand_failing_scopes_leave_the_healthy_one_indexed(tmp_path: Path) -> None:
    """One ``scope_id <> N`` per failed scope passed SQLite's expression depth (1,000)
    with a thousand failing tenants (a Chroma server gone): the re-index raised "reading
    unindexed failed" and the healthy scope's rows after the first batch stayed
    unindexed (1,952 of 3,000)."""
    cfg = HelaMemConfig(path=tmp_path / "s")
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        mem.add_many(NewMemory(f"note of tenant {i}", ("t", f"bad{i}")) for i in range(1000))
        mem.add_many(NewMemory(f"healthy note {i}", ("t", "good")) for i in range(3000))
        core = _core(mem)
        good = mem._call(lambda c: c.store.find_scope(("t", "good")))  # type: ignore[attr-defined]
        real = core.index.upsert
        calls: list[int] = []

        def upsert(ids: Any, vectors: Any, scope_ids: Any, kinds: Any) -> None:
            calls.append(len(ids))
            if any(int(s) != good for s in scope_ids):
                raise StorageError("Chroma upsert failed: server went away")
            real(ids, vectors, scope_ids, kinds)

        mem._call(lambda c: c.store.db.execute("UPDATE memories SET indexed = 0"))  # type: ignore[attr-defined]
        core.index.upsert = upsert
        with pytest.raises(StorageError, match="server went away"):
            mem._call(lambda c: c.reconcile())  # type: ignore[attr-defined]
        core.index.upsert = real
        left = mem._call(  # type: ignore[attr-defined]
            lambda c: c.store.db.execute(
                "SELECT scope_id = ?, COUNT(*) FROM memories WHERE indexed = 0 GROUP BY 1", (good,)
            ).fetchall()
        )
        assert [tuple(r) for r in left] == [(0, 1000)]  # only the failing tenants wait
        assert len(calls) == 1000 + 2  # each failing scope tried once; good's two batches
        assert mem._call(lambda c: c.reconcile()) == 1000  # type: ignore[attr-defined]


def test_a_locked_database_stops_the_re_index_at_once(tmp_path: Path) -> None:
    """Marking rows indexed failed after ``busy_timeout_s`` (another process's long write
    transaction), and the re-index went on to the next 2,048 rows, waiting again for
    each batch (10,000 rows: 5 waits)."""
    cfg = HelaMemConfig(path=tmp_path / "s", busy_timeout_s=0.5)
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        mem.add_many(NewMemory(f"note {i}", ("t", f"u{i % 50}")) for i in range(10_000))
        other = sqlite3.connect(cfg.path / "helamem.sqlite3", isolation_level=None)
        try:
            other.execute("UPDATE memories SET indexed = 0")
            other.execute("BEGIN IMMEDIATE")  # another process's long write transaction
            marks: list[float] = []
            core = _core(mem)
            real = core.store.mark_indexed

            def mark_indexed(*args: Any) -> Any:
                marks.append(time.monotonic())
                return real(*args)

            core.store.mark_indexed = mark_indexed
            with pytest.raises(StorageError):
                mem._call(lambda c: c.reconcile())  # type: ignore[attr-defined]
            core.store.mark_indexed = real
            assert len(marks) == 1  # one wait for the lock, not one per batch
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert mem._call(lambda c: c.reconcile()) == 10_000  # type: ignore[attr-defined]


@pytest.mark.parametrize("left_out", [[], [2], [1, 3], list(range(2, 600))])
def test_ids_not_in_keeps_exactly_the_other_scopes(mem: HelaMemory, left_out: list[int]) -> None:
    """The re-index leaves failed scopes out with ``ids_not_in``: one bound list on both
    engines, never the NULL padding of ``IN`` lists (under which ``NOT IN`` keeps no
    row), whatever the number left out."""
    mem.add_many(NewMemory(f"note {i}", ("t", f"u{i}")) for i in range(4))
    store = mem._call(lambda c: c.store)  # type: ignore[attr-defined]
    ids = {mem._call(lambda c, i=i: c.store.find_scope(("t", f"u{i}"))) for i in range(4)}  # type: ignore[attr-defined]
    order = sorted(ids)
    skip = [order[i] for i in left_out if i < len(order)] + [10**6 + i for i in left_out]
    where, params = store.ids_not_in("scope_id", skip)
    got = mem._call(  # type: ignore[attr-defined]
        lambda c: {
            int(r[0])
            for r in c.store.db.execute(f"SELECT scope_id FROM memories WHERE {where}", params)
        }
    )
    assert got == ids - set(skip)

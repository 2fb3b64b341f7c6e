"""Batched vector writes: adds to a large scope return once the graph store holds them, and
their vectors reach Chroma in one write per batch (``ChromaConfig.upsert_batch``,
``upsert_delay_s``), with nothing lost or unfindable meanwhile."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from helamem.core import (
    ChromaConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
    PostgresConfig,
)
from helamem.core._check import check_store
from helamem.core._owner import KeepsPending
from helamem.core.errors import StorageError
from helamem.core.storage.chroma import make_index
from races import rewrite as rewrite_memory

DIM = 64
SCOPE = ("big",)
StoreConfig = Callable[[Path], PostgresConfig | None]


def _config(path: Path, store: StoreConfig, **chroma: Any) -> HelaMemConfig:
    # a scope of 10 vectors gets its own HNSW collection: the write worth batching
    return HelaMemConfig(
        path=path, chroma=ChromaConfig(exact_below=10, **chroma), store=store(path)
    )


def _open(path: Path, store: StoreConfig, **chroma: Any) -> HelaMemory:
    mem = HelaMemory(_config(path, store, **chroma), embedder=HashingEmbedder(DIM))
    mem.open()
    mem.add_many([NewMemory(f"seed {i} garden tea", SCOPE) for i in range(12)])  # promoted
    assert mem.flush() == 0  # a promoting add writes at once
    return mem


def _check(path: Path, store: StoreConfig, store_db: Any) -> None:
    """The closed store at ``path`` has no defect and nothing left unindexed: ``helamem
    check`` on SQLite; on PostgreSQL (which it does not read) its comparison of the
    index's ids with the memories, through the graph store's own connection."""
    cfg = _config(path, store)
    if cfg.store is None:
        report = check_store(path, cfg)
        assert report.defects == () and report.unindexed == 0, report.to_text()
        return
    index = make_index(cfg.chroma, path, HashingEmbedder(DIM), store=cfg.store)
    index.open(DIM)
    try:
        listed, count = index.all_ids(), index.count()
    finally:
        index.close()
    db = store_db(path)
    try:
        ids = {str(i) for (i,) in db.execute("SELECT id FROM memories").fetchall()}
        indexed = {
            str(i) for (i,) in db.execute("SELECT id FROM memories WHERE indexed = 1").fetchall()
        }
        tombstones = {str(i) for (i,) in db.execute("SELECT id FROM tombstones").fetchall()}
    finally:
        db.close()
    assert count == len(listed)  # vector_count
    assert indexed == ids  # unindexed == 0
    assert ids <= set(listed)  # vector_missing
    assert set(listed) <= ids | tombstones  # vector_orphan


def _pending(mem: HelaMemory) -> int:
    return mem._call(KeepsPending(lambda c: c.pending_index))


def _index_ids(mem: HelaMemory) -> set[str]:
    return set(mem._call(lambda c: c.index.all_ids()))


def _spy_upserts(mem: HelaMemory) -> list[int]:
    """Record the size of every index write from now on."""
    sizes: list[int] = []

    def install(core: Any) -> None:
        real = core.index.upsert

        def upsert(ids: Sequence[str], *args: Any) -> None:
            sizes.append(len(ids))
            real(ids, *args)

        core.index.upsert = upsert

    mem._call(KeepsPending(install))
    return sizes


def _break_upserts(mem: HelaMemory) -> Any:
    """Make every index write fail (a full disk); returns the real write to restore."""

    def broken(core: Any) -> Any:
        real = core.index.upsert

        def fail(*args: Any) -> None:
            raise StorageError("disk full (simulated)")

        core.index.upsert = fail
        return real

    return mem._call(KeepsPending(broken))


def test_turns_wait_for_one_write_and_are_found_meanwhile(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    mem = _open(tmp_path / "s", store_config, upsert_batch=6, upsert_delay_s=60)
    try:
        writes = _spy_upserts(mem)
        u, a = mem.add_turn(SCOPE, "my zebra is called Quill", "Quill is a fine name")
        assert _pending(mem) == 2 and writes == []
        # found at once, by its vector (dense only) and without a re-index in the search
        for _ in range(2):  # a re-index would start the second search
            hit = mem.search("zebra called Quill", SCOPE, k=1, learn=False, spread=False)
            assert hit.ids == [u.id]
        assert writes == [] and _pending(mem) == 2
        mem.add_turn(SCOPE, "second", "turn")
        assert writes == []
        mem.add_turn(SCOPE, "third", "turn")  # the sixth vector: one write of six
        assert writes == [6] and _pending(mem) == 0
        assert {u.id, a.id} <= _index_ids(mem)
    finally:
        mem.close()


def test_pending_vectors_are_written_after_the_delay(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    mem = _open(tmp_path / "s", store_config, upsert_batch=64, upsert_delay_s=0.05)
    try:
        u, _ = mem.add_turn(SCOPE, "the kettle whistles", "time for tea")
        deadline = time.monotonic() + 10
        while _pending(mem) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _pending(mem) == 0
        assert u.id in _index_ids(mem)
        assert mem.stats().unindexed == 0
    finally:
        mem.close()


def test_any_other_call_writes_them_first(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    """A delete of a memory whose vector still waits leaves no vector behind."""
    path = tmp_path / "s"
    mem = _open(path, store_config, upsert_delay_s=60)
    try:
        u, a = mem.add_turn(SCOPE, "delete me soon", "gone")
        assert _pending(mem) == 2
        assert mem.delete([u.id]) == 1
        assert _pending(mem) == 0
        assert a.id in _index_ids(mem) and u.id not in _index_ids(mem)
    finally:
        mem.close()
    _check(path, store_config, store_db)


def test_close_writes_them_and_one_write_per_add_is_available(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "s"
    mem = _open(path, store_config, upsert_delay_s=60)
    u, _ = mem.add_turn(SCOPE, "written at close", "yes")
    assert _pending(mem) == 2
    mem.close()
    _check(path, store_config, store_db)
    with _open(path, store_config, upsert_batch=1) as now:
        v, _ = now.add_turn(SCOPE, "written before add returns", "yes")
        assert _pending(now) == 0 and v.id in _index_ids(now) and u.id in _index_ids(now)


def test_a_failed_batch_loses_nothing(tmp_path: Path, store_config: StoreConfig) -> None:
    mem = _open(tmp_path / "s", store_config, upsert_batch=2, upsert_delay_s=60)
    try:
        real = _break_upserts(mem)
        u, _ = mem.add_turn(SCOPE, "a write that fails", "still stored")  # batch of 2: fails
        assert _pending(mem) == 0
        mem._call(KeepsPending(lambda c: setattr(c.index, "upsert", real)))
        assert mem.stats().unindexed == 2  # in SQLite, not yet in the index
        assert mem.flush() == 2  # re-indexes them
        assert mem.stats().unindexed == 0 and u.id in _index_ids(mem)
    finally:
        mem.close()


def test_a_kill_with_vectors_pending_loses_nothing(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "s"
    _open(path, store_config).close()
    pg = store_config(path)  # the child builds the same store from the DSN and schema
    store = None if pg is None else (pg.dsn.get_secret_value(), pg.schema_name)
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from helamem.core import (
            ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, PostgresConfig
        )
        from helamem.core._owner import KeepsPending
        store = {store!r}
        pg = None if store is None else PostgresConfig(dsn=store[0], schema_name=store[1])
        cfg = HelaMemConfig(path=Path({str(path)!r}), store=pg,
                            chroma=ChromaConfig(exact_below=10, upsert_delay_s=60))
        mem = HelaMemory(cfg, embedder=HashingEmbedder({DIM}))
        ids = []
        for i in range(5):
            u, a = mem.add_turn({SCOPE!r}, f"killed turn {{i}}", f"answer {{i}}")
            ids += [u.id, a.id]
        assert mem._call(KeepsPending(lambda c: c.pending_index)) == 10
        print(" ".join(ids), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the vectors never reached Chroma
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    acked = out.stdout.split()
    assert len(acked) == 10
    # the reopened store re-indexes them on open
    with HelaMemory(_config(path, store_config), embedder=HashingEmbedder(DIM)) as mem:
        assert {m.id for m in (mem.get(i) for i in acked)} == set(acked)
        assert set(acked) <= _index_ids(mem)
        assert mem.stats().unindexed == 0
    _check(path, store_config, store_db)


@pytest.mark.parametrize("batch", [0, 4097])
def test_batch_out_of_range_is_refused(batch: int) -> None:
    with pytest.raises(ValueError, match="upsert_batch"):
        ChromaConfig(upsert_batch=batch)


def test_an_add_made_on_the_owner_thread_is_written_after_the_delay(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    mem = _open(tmp_path / "s", store_config, upsert_delay_s=0.05)
    try:
        mem._call(KeepsPending(lambda c: mem.add_turn(SCOPE, "from the owner", "thread")))
        deadline = time.monotonic() + 10
        while _pending(mem) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _pending(mem) == 0
    finally:
        mem.close()


def _chroma_vector(mem: HelaMemory, id_: str) -> Any:
    def read(core: Any) -> Any:
        (sid,) = core.store.db.execute(
            "SELECT scope_id FROM memories WHERE id = ?", (id_,)
        ).fetchone()
        got = core.index._collection((sid, "episodic"), create=False).get(
            ids=[id_], include=["embeddings"]
        )
        return got["embeddings"][0]

    return mem._call(read)


def _sqlite_vector(mem: HelaMemory, id_: str) -> Any:
    import numpy as np

    (blob,) = mem._call(
        lambda c: c.store.db.execute("SELECT embedding FROM memories WHERE id = ?", (id_,))
    ).fetchone()
    return np.frombuffer(blob, dtype=np.float32)


def _same_direction(a: Any, b: Any) -> bool:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(abs(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) - 1.0) < 1e-5)


@pytest.mark.parametrize("when", ["before", "during"])
def test_an_id_reused_by_another_writer_keeps_its_own_vector(
    tmp_path: Path, when: str, store_config: StoreConfig, store_db: Any
) -> None:
    """A holds memory X's vector for its batch; B deletes X and adds a new X (a
    caller-chosen id) before or while A writes: the index keeps the new X's vector."""
    path = tmp_path / "s"
    a = _open(path, store_config, upsert_delay_s=60)
    b = HelaMemory(_config(path, store_config, upsert_batch=1), embedder=HashingEmbedder(DIM))
    try:
        a.add_many([NewMemory("my zebra is called Quill", SCOPE, id="X")])
        assert _pending(a) == 1

        def replace_x() -> None:
            assert b.delete(["X"]) == 1
            b.add_many([NewMemory("the kettle whistles at dawn", SCOPE, id="X")])

        if when == "before":
            replace_x()
        else:

            def racing(core: Any) -> None:
                real = core.index.upsert

                def upsert(ids: Sequence[str], *args: Any) -> None:
                    replace_x()  # between A's check and A's write
                    core.index.upsert = real
                    real(ids, *args)

                core.index.upsert = upsert

            a._call(KeepsPending(racing))
        a.flush()
        a.flush()  # re-indexes what the race left unmarked
        assert _same_direction(_chroma_vector(a, "X"), _sqlite_vector(a, "X"))
        hit = a.search("kettle whistles dawn", SCOPE, k=1, learn=False, spread=False)
        assert hit.ids == ["X"] and hit[0].content == "the kettle whistles at dawn"
    finally:
        b.close()
        a.close()
    _check(path, store_config, store_db)


@contextmanager
def _two_writers(path: Path, store_config: StoreConfig) -> Iterator[tuple[HelaMemory, HelaMemory]]:
    """A and B: two objects on the store at ``path``, as two processes would be."""
    cfg = _config(path, store_config)
    a = HelaMemory(cfg, embedder=HashingEmbedder(DIM)).open()
    b = HelaMemory(cfg, embedder=HashingEmbedder(DIM)).open()
    try:
        yield a, b
    finally:
        b.close()
        a.close()


def test_a_vector_read_before_another_writer_rewrote_the_memory_is_not_kept(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    """A's reconcile reads a rewritten fact's vector; B rewrites it again and indexes its
    new vector before A's write lands. A's write (the old vector) overwrote B's in HNSW
    and A marked the row indexed (by key and id only): the index kept the old text's
    vector for good and `helamem check` (ids only) said OK. Now the row is left
    unindexed, and the next reconcile writes the vector SQLite holds."""
    path = tmp_path / "s"
    with _two_writers(path, store_config) as (a, b):
        a.add_many([NewMemory(f"seed {i} garden tea", SCOPE) for i in range(12)])  # promoted
        assert a.flush() == 0  # a promoting add writes at once
        (x,) = a.add_many([NewMemory("alice adopted a cat", SCOPE)])
        rewrite = partial(rewrite_memory, x.id)
        a._call(rewrite("alice keeps a cat named miso", reconcile=False))

        def racing(core: Any) -> None:
            real = core.index.upsert

            def upsert(ids: Sequence[str], *args: Any) -> None:
                if x.id in ids:  # A read the vector; B rewrites and indexes the memory
                    core.index.upsert = real
                    b._call(rewrite("bob plays the violin on sundays", reconcile=True))
                real(ids, *args)

            core.index.upsert = upsert

        a._call(racing)
        a._call(lambda c: c.reconcile())
        a._call(lambda c: c.reconcile())  # what the race left unindexed
        assert _same_direction(_chroma_vector(a, x.id), _sqlite_vector(a, x.id))
    _check(path, store_config, store_db)


def test_a_promotion_keeps_no_vector_rewritten_while_it_loads(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    """A scope's promotion copies its vectors from the graph store into the new
    collection; B rewrites (and indexes) a memory between A's read and A's write: A's
    old vector replaced B's and A marked the row indexed, for good."""
    path = tmp_path / "s"
    with _two_writers(path, store_config) as (a, b):
        (x,) = a.add_many([NewMemory("alice adopted a cat", SCOPE)])
        a.add_many([NewMemory(f"seed {i} garden tea", SCOPE) for i in range(7)])
        rewrite = partial(rewrite_memory, x.id)

        def racing(core: Any) -> None:
            exact = core.index._exact
            real = exact.batches

            def batches(key: Any, *args: Any) -> Any:
                for ns, ids, mat in real(key, *args):
                    if x.id in ids:  # read: B rewrites and indexes it before A writes
                        exact.batches = real
                        b._call(rewrite("bob plays the violin on sundays", reconcile=True))
                    yield ns, ids, mat

            exact.batches = batches

        a._call(racing)
        a.add_many([NewMemory(f"more {i} garden tea", SCOPE) for i in range(3)])  # promotes
        a._call(lambda c: c.reconcile())  # what the race left unindexed
        assert _same_direction(_chroma_vector(a, x.id), _sqlite_vector(a, x.id))
    _check(path, store_config, store_db)


def test_a_small_scopes_cached_vectors_follow_another_writers_rewrite(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """The exact tier caches a small scope's matrix, validated by (COUNT, MAX(n)); a
    fact B rewrote in place changed neither, so A's dense leg kept ranking it by the
    text it no longer held (until the scope gained or lost a memory)."""
    path = tmp_path / "s"
    cfg = HelaMemConfig(path=path, store=store_config(path))  # exact_below 2,000
    a = HelaMemory(cfg, embedder=HashingEmbedder(DIM)).open()
    b = HelaMemory(cfg, embedder=HashingEmbedder(DIM)).open()
    try:
        notes = [NewMemory(f"note {i} on garden tea", SCOPE, linked=False) for i in range(20)]
        x = a.add_many(notes)[0]
        new = "bob plays the violin on sundays"

        def nearest(core: Any) -> list[tuple[str, float]]:
            sid = core.store.rows_by_id([x.id])[x.id].scope_id
            got: list[tuple[str, float]] = core.index.query(
                core.embedder.embed([new])[0], 1, [sid], "episodic"
            )
            return got

        assert a._call(nearest)[0][1] > 0.5  # cached: x is far from the new text
        b._call(rewrite_memory(x.id, new, reconcile=True))
        ((top, distance),) = a._call(nearest)
        assert top == x.id and distance < 1e-5
    finally:
        b.close()
        a.close()


def test_another_writers_fresh_rows_are_left_to_its_batch(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """B's searches find A's rows that wait for A's batched write, without writing
    them into the index themselves (A does, once)."""
    path = tmp_path / "s"
    a = _open(path, store_config, upsert_delay_s=60)
    b = HelaMemory(_config(path, store_config), embedder=HashingEmbedder(DIM))
    try:
        b.open()
        writes = _spy_upserts(b)
        u, _ = a.add_turn(SCOPE, "a wombat named Pip", "hello Pip")
        for _ in range(3):
            hit = b.search("wombat named Pip", SCOPE, k=1, learn=False, spread=False)
            assert hit.ids == [u.id]
        assert writes == [] and _pending(a) == 2
        assert a.flush() == 2
    finally:
        b.close()
        a.close()


def test_searches_scan_exactly_while_the_index_keeps_failing(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    mem = _open(tmp_path / "s", store_config, upsert_batch=2, upsert_delay_s=60)
    try:
        real = _break_upserts(mem)
        u, _ = mem.add_turn(SCOPE, "an okapi named Dot", "hello Dot")  # its batch fails
        for _ in range(2):  # each search's re-index fails too: the rows are scanned exactly
            hit = mem.search("okapi named Dot", SCOPE, k=1, learn=False, spread=False)
            assert hit.ids == [u.id]
        mem._call(KeepsPending(lambda c: setattr(c.index, "upsert", real)))
        assert mem.flush() == 2 and u.id in _index_ids(mem)
    finally:
        mem.close()

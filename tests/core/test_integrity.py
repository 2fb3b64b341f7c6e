"""Nothing lost, nothing wrong: read-backs, deletes during a search, full disks,
corrupt files, failing embedders, caller-chosen ids (issue 14, cases 1, 3, 6, 9, 11)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helamem.core import (
    ChromaConfig,
    CorruptStoreError,
    DiskFullError,
    EmbeddingError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    InvalidInputError,
    MemoryNotFoundError,
    NewMemory,
    StorageError,
)
from races import racing_tx

A = ("users", "a")
B = ("users", "b")


def _orphan_edges(db: Any) -> int:
    try:
        return int(
            db.execute(
                "SELECT COUNT(*) FROM edges WHERE a NOT IN (SELECT n FROM memories)"
                " OR b NOT IN (SELECT n FROM memories)"
            ).fetchone()[0]
        )
    finally:
        db.close()


# -- case 1: a new memory is read back by its own id; keys are never reused ----


def test_memory_keys_are_never_reused(
    tmp_path: Path, make_mem: Any, store_db: Any, backend: str
) -> None:
    with make_mem(tmp_path / "s") as mem:
        first = mem.add("alpha one", A)
        mem.delete(first.id)
        second = mem.add("beta two", A)
        third = mem.add("gamma three", A)
        mem.delete(third.id)
    db = store_db(tmp_path / "s")
    try:
        (n2,) = db.execute("SELECT n FROM memories WHERE id = ?", (second.id,)).fetchone()
        if backend == "sqlite":
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'memories'").fetchone()
            assert seq == (3,)
    finally:
        db.close()
    assert n2 == 2  # the deleted memory's key 1 was not handed out again
    with make_mem(tmp_path / "s") as mem:  # nor the last one's, after a reopen
        fourth = mem.add("delta four", A)
    db = store_db(tmp_path / "s")
    try:
        (n4,) = db.execute("SELECT n FROM memories WHERE id = ?", (fourth.id,)).fetchone()
    finally:
        db.close()
    assert n4 == 4


def test_add_returns_its_own_memory_when_another_writer_deletes_and_adds(
    tmp_path: Path, make_mem: Any
) -> None:
    """Between the commit and the read-back, another writer deletes the new memory
    and adds its own: ``add`` still returns what it wrote, and marks nothing else indexed."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        one.add("warm up", A)
        core = one._core
        assert core is not None
        upsert = core.index.upsert
        other: list[str] = []

        def slow_upsert(ids: Sequence[str], *args: Any) -> None:
            if not other:  # the other writer strikes between commit and index write
                two.delete(list(ids))
                other.append(two.add("beta from the other writer", B).id)
            upsert(ids, *args)

        core.index.upsert = slow_upsert  # type: ignore[method-assign]
        got = one.add("alpha from this writer", A)
        core.index.upsert = upsert  # type: ignore[method-assign]
        assert got.content == "alpha from this writer"
        assert got.scope == A
        beta = two.get(other[0])
        assert beta.content == "beta from the other writer"
        assert beta.scope == B
        assert got.id != beta.id
        # the other writer's memory is findable by its own vector, from both objects
        for m in (one, two):
            assert m.search("beta other writer", B, k=1, learn=False).ids == [beta.id]


@pytest.mark.parametrize("readd", [True, False], ids=["deleted-and-added-again", "deleted"])
def test_delete_racing_another_writers_delete_of_the_same_id(
    tmp_path: Path, make_mem: Any, readd: bool
) -> None:
    """One deletes ``doc-1`` while two deletes it (and adds ``doc-1`` again) just before
    one's transaction: one read the rows before its transaction, deleted the old key
    (nothing) and returned 1 while two's new ``doc-1`` survived. Now one deletes what
    ``doc-1`` is when it writes: the new memory (1), or nothing (not found)."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        one.add_many([NewMemory("the old text about tea", A, id="doc-1")])
        one.add("another memory", A)
        one.flush()

        def race() -> None:
            two.delete("doc-1")
            if readd:
                two.add_many([NewMemory("new words on violins", B, id="doc-1")])

        racing_tx(one, race)
        if readd:
            assert one.delete("doc-1") == 1
        else:
            with pytest.raises(MemoryNotFoundError, match="nothing was deleted"):
                one.delete("doc-1")
        for m in (one, two):
            with pytest.raises(MemoryNotFoundError):
                m.get("doc-1")
            assert m.search("violins", B, k=3, learn=False).ids == []
            assert m.stats().memories == 1
        st = one.stats()
        assert (st.vectors, st.unindexed) == (1, 0)


def test_caller_chosen_ids(mem: HelaMemory) -> None:
    (m,) = mem.add_many([NewMemory("with my id", A, id="doc-1")])
    assert m.id == "doc-1"
    assert mem.get("doc-1").content == "with my id"
    with pytest.raises(InvalidInputError, match="exists"):
        mem.add_many([NewMemory("again", A, id="doc-1")])
    with pytest.raises(InvalidInputError, match="twice"):
        mem.add_many([NewMemory("x", A, id="d2"), NewMemory("y", A, id="d2")])
    for bad in ("", " pad", "tab\there", "é", "x" * 129):
        with pytest.raises(InvalidInputError, match="id must be"):
            mem.add_many([NewMemory("x", A, id=bad)])
    assert mem.stats().memories == 1  # nothing of the refused adds was written
    # an id can be reused after a delete, and its new vector is the one searched
    mem.delete("doc-1")
    mem.add_many([NewMemory("completely different words now", B, id="doc-1")])
    assert mem.search("completely different words", B, k=1, learn=False).ids == ["doc-1"]
    assert mem.search("with my id", A, k=1, learn=False).ids == []


# -- case 3: a candidate deleted during a search is skipped --------------------


def test_candidate_deleted_during_search_is_skipped(
    tmp_path: Path, make_mem: Any, store_db: Any
) -> None:
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        ids = [one.add(f"garden note {i} about tomatoes", A).id for i in range(6)]
        core = one._core
        assert core is not None
        rows_by_n = core.store.rows_by_n
        gone: list[str] = []

        def racing(ns: Any) -> Any:
            ns = list(ns)
            if not gone:
                victim = core.store.id_of(ns[0])
                assert victim is not None
                two.delete(victim)  # another object deletes a candidate mid-search
                gone.append(victim)
            return rows_by_n(ns)

        core.store.rows_by_n = racing  # type: ignore[method-assign]
        res = one.search("garden tomatoes", A, k=4)  # learns from what it returns
        core.store.rows_by_n = rows_by_n  # type: ignore[method-assign]
        assert gone and gone[0] not in res.ids
        # ranked again without it: still k hits (a short result read as "no more")
        assert len(res.ids) == 4 and set(res.ids) <= set(ids)
    assert _orphan_edges(store_db(path)) == 0  # learning wrote no edge to the deleted memory


def test_searches_racing_deletes_never_fail(tmp_path: Path, make_mem: Any, store_db: Any) -> None:
    path = tmp_path / "s"
    errors: list[BaseException] = []
    with make_mem(path) as one, make_mem(path) as two:
        for i in range(40):
            one.add(f"shared topic note {i}", A)
        stop = time.monotonic() + 3.0
        searches = 0

        def churn() -> None:
            i = 0
            while time.monotonic() < stop:
                try:
                    m = two.add(f"shared topic churn {i}", A)
                    two.delete(m.id)
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)
                    return
                i += 1

        t = threading.Thread(target=churn)
        t.start()
        while time.monotonic() < stop:
            one.search("shared topic churn", A, k=5)
            searches += 1
        t.join()
    assert errors == []
    assert searches > 10
    assert _orphan_edges(store_db(path)) == 0


# -- case 6: a full disk raises a typed error; nothing is lost -------------------


@pytest.mark.sqlite_only  # SQLite's own file
def test_full_disk_raises_disk_full_error_and_loses_nothing(mem: HelaMemory) -> None:
    kept = [mem.add(f"before the disk filled {i}", A).id for i in range(5)]
    core = mem._core
    assert core is not None
    db = core.store.db
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite now reports SQLITE_FULL
    big = "filler text " * 4000

    def fill() -> None:
        for i in range(50):
            mem.add(f"{big} {i}", A)

    with pytest.raises(DiskFullError, match=r"disk .* is full") as info:
        fill()
    assert isinstance(info.value, StorageError)
    assert "cannot rollback" not in str(info.value)
    st = mem.stats(A)  # stats works while full
    assert st.memories >= 5
    db.execute("PRAGMA max_page_count = 1073741823")
    after = mem.add("after space was freed", A)
    for i in kept:
        assert mem.get(i).content.startswith("before the disk filled")
    assert mem.get(after.id).content == "after space was freed"
    core.store.db.execute("PRAGMA integrity_check").fetchone()


# -- case 9: a damaged database is reported as corrupt -------------------------


def _damaged(path: Path, make_mem: Any, offset: int) -> Path:
    with make_mem(path) as mem:
        for i in range(200):
            mem.add(f"memory number {i} with some words to fill pages", A)
    f = path / "helamem.sqlite3"
    data = bytearray(f.read_bytes())
    data[offset : offset + 8192] = b"\xde\xad\xbe\xef" * 2048
    f.write_bytes(bytes(data))
    return path


@pytest.mark.sqlite_only  # SQLite's own file
@pytest.mark.parametrize("offset", [0, 4096 * 3])
def test_garbage_pages_raise_corrupt_store_error(
    tmp_path: Path, make_mem: Any, offset: int
) -> None:
    path = _damaged(tmp_path / "s", make_mem, offset)

    def use() -> None:
        with make_mem(path) as mem:
            for i in range(200):
                mem.search(f"memory number {i}", A, k=3)
            mem.stats()

    with pytest.raises(CorruptStoreError, match="corrupt") as info:
        use()
    assert "helamem check" in str(info.value)
    assert "writable" not in str(info.value)


@pytest.mark.sqlite_only  # SQLite's own file
@pytest.mark.parametrize("at", [0.2, 0.5, 0.8])
def test_a_damaged_page_met_on_open_is_a_corrupt_store_error(
    tmp_path: Path, make_mem: Any, at: float
) -> None:
    """The first read after opening (the vector index counting its vectors) meets the
    damage: CorruptStoreError naming `helamem check PATH`, not a bare StorageError."""
    path = tmp_path / "s"
    with make_mem(path) as mem:
        mem.add_many(
            [NewMemory(f"memory {i} " + "pad " * 20, (*A, str(i % 3))) for i in range(900)]
        )
    f = path / "helamem.sqlite3"
    data = bytearray(f.read_bytes())
    page = 4096 * int(len(data) // 4096 * at)
    data[page : page + 4096] = b"\xff" * 4096
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="corrupt") as info, make_mem(path) as mem:
        mem.stats()
    assert f"helamem check {path}" in str(info.value)


# -- case 11: any embedder failure is an EmbeddingError -------------------------


class _Broken(HashingEmbedder):
    def __init__(self, exc: BaseException) -> None:
        super().__init__(64)
        self.exc = exc
        self.armed = False

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.armed:
            raise self.exc
        return super().embed(texts)


@pytest.mark.parametrize(
    "exc", [KeyError("vocab"), IndexError("x"), TypeError("y"), ZeroDivisionError()]
)
def test_any_embedder_failure_is_an_embedding_error(
    tmp_path: Path, exc: BaseException, store_config: Any
) -> None:
    from helamem.core import HelaMemConfig

    emb = _Broken(exc)
    cfg = HelaMemConfig(path=tmp_path / "s", store=store_config(tmp_path / "s"))
    with HelaMemory(cfg, embedder=emb) as mem:
        mem.add("fine", A)
        emb.armed = True
        with pytest.raises(EmbeddingError, match=type(exc).__name__) as info:
            mem.add("fails", A)
        assert info.value.__cause__ is exc
        with pytest.raises(EmbeddingError):
            mem.search("fails", A, k=1)
        emb.armed = False
        assert mem.stats().memories == 1


# -- case 6 on a real full filesystem (a small tmpfs; needs mount permission) ---


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Any:
    import shutil
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=True)


@pytest.mark.sqlite_only  # fills the filesystem under SQLite's file (PostgreSQL's is elsewhere)
def test_real_full_disk_is_typed_and_loses_nothing(tiny_fs: Path) -> None:
    from helamem.core import HelaMemConfig

    path = tiny_fs / "store"
    (tiny_fs / "filler.bin").write_bytes(b"\0" * 1_500_000)  # deleted later to free space
    acked: list[str] = []
    mem = HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64))
    try:
        with pytest.raises(StorageError) as info:  # noqa: PT012 - fill until it is full
            for i in range(100_000):
                acked.append(mem.add(f"note {i} " + "words " * 300, A).id)
        assert "cannot rollback" not in str(info.value)
        assert isinstance(info.value, DiskFullError)
        assert len(acked) > 10
        st = mem.stats()  # works while full, typed if not
        assert st.memories == len(acked)
        for f in tiny_fs.glob("filler*"):  # free space: the same open store writes again
            f.unlink()
        late = mem.add("written once the disk had room again", A)
        assert late.id in mem.search("disk had room again", A, k=3, learn=False).ids
        acked.append(late.id)
    finally:
        mem.close()
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as mem:
        mem.delete(acked[-5:])
        for i in acked[:-5]:
            assert mem.get(i).content.startswith("note ")
        assert mem.stats().memories == len(acked) - 5


@pytest.mark.sqlite_only  # SQLite's own file
def test_a_store_path_that_is_a_file_is_a_storage_error(tmp_path: Path, make_mem: Any) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    with pytest.raises(StorageError, match="cannot create the store directory"):
        make_mem(f).open()
    assert f.read_text() == "x"


def test_vectors_another_objects_failed_delete_left_are_dropped_by_the_next_searches(
    tmp_path: Path,
) -> None:
    """Trial: a delete whose index delete failed (server down) or was killed after its
    commit left the deleted memories' vectors in HNSW; every other open store kept them
    (a dense top 50 held 1-2 live memories) until a fresh open, and the deleting store
    closed without retrying. Meeting them in a search now clears the tombstones, and
    ``close()`` retries its own failed deletes."""
    cfg = HelaMemConfig(path=tmp_path / "s", chroma=ChromaConfig(exact_below=5))
    one = HelaMemory(cfg, embedder=HashingEmbedder(64))
    two = HelaMemory(cfg, embedder=HashingEmbedder(64))
    try:
        ids = [m.id for m in one.add_many(NewMemory(f"meadow note {i}", A) for i in range(40))]
        one.flush()

        def index_down(core: Any) -> None:
            def fail(*_: Any, **__: Any) -> None:
                raise StorageError("index down")

            core.index.delete = fail

        two._call(index_down)
        for mid in ids[:30]:
            two.delete(mid)
        assert one.stats(A).vectors == 40  # the tombstoned vectors are still in HNSW
        for _ in range(2):  # the first meets deleted ids among its candidates
            one.search("meadow note", A, k=5, learn=False)
        assert (one.stats(A).memories, one.stats(A).vectors) == (10, 10)
        assert two.stats(A).vectors == 10
    finally:
        one.close()
        two.close()

    # the deleting store's own retry, at close
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as three:
        gone = three.add("meadow note to delete", A).id
        three.flush()
        three._call(index_down)
        three.delete(gone)
        three._call(lambda core: delattr(core.index, "delete"))  # the index is back
    db = sqlite3.connect(tmp_path / "s" / "helamem.sqlite3")
    try:
        assert db.execute("SELECT COUNT(*) FROM tombstones").fetchone() == (0,)
    finally:
        db.close()
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as four:
        assert four.stats(A).vectors == four.stats(A).memories == 10
        # delete_scope with the index down: it deleted, so it says so (it raised
        # StorageError after its commit, and again when called again)
        four._call(index_down)
        assert four.delete_scope(A) == 10
        assert four.delete_scope(A) == 0
        assert four.stats(A).memories == 0


def test_vectors_without_a_memory_or_a_tombstone_do_not_reconcile_every_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: an older database restored beside a newer index leaves vectors with
    neither a memory nor a tombstone; meeting them set the reconcile flag on every
    search (a re-index each time, which cannot remove them)."""
    from helamem.core._base import CoreBase

    root = tmp_path / "m"
    cfg = HelaMemConfig(path=root, chroma=ChromaConfig(exact_below=10))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        m.add_many(NewMemory(f"apple banana note {i}", A) for i in range(30))
    shutil.copy(root / "helamem.sqlite3", tmp_path / "backup.sqlite3")
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        m.add_many(NewMemory(f"apple banana later {i}", A) for i in range(20))
    shutil.copy(tmp_path / "backup.sqlite3", root / "helamem.sqlite3")  # the backup back
    for wal in root.glob("helamem.sqlite3-*"):
        wal.unlink()
    calls = []
    real = CoreBase.reconcile
    monkeypatch.setattr(
        CoreBase, "reconcile", lambda self, **kw: calls.append(1) or real(self, **kw)
    )
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        m.open()
        calls.clear()
        for _ in range(5):
            hits = m.search("apple banana later", A, k=5, learn=False)
            assert [h.memory.content.startswith("apple banana note") for h in hits] == [True] * 5
    assert calls == []

"""The tiered vector index: exact scans for small scopes, HNSW for large ones (issue 14,
cases 7 and 13), and a lost, damaged or foreign index on open."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chromadb
import pytest
from chromadb.config import Settings

from helamem.core import (
    ChromaConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
    PostgresConfig,
)
from helamem.core.errors import CorruptStoreError
from helamem.core.storage.chroma import discard_index
from own_vectors import lost

SCOPE = ("tenants", "acme")
StoreConfig = Callable[[Path], PostgresConfig | None]


def _cfg(path: Path, store: StoreConfig, exact_below: int = 2000) -> HelaMemConfig:
    return HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=exact_below), store=store(path))


def _idx(core: Any) -> Any:
    return core.index


def _open(path: Path, store: StoreConfig, exact_below: int = 2000) -> HelaMemory:
    m = HelaMemory(_cfg(path, store, exact_below), embedder=HashingEmbedder(64))
    m.open()
    return m


def _lost(m: HelaMemory) -> list[str]:
    """Ids of memories the dense path does not return for their own stored vector
    (but for one Chroma's HNSW graph cannot reach: see ``own_vectors``)."""
    return m._call(lost)


def _fill(m: HelaMemory, n: int, scope: tuple[str, ...] = SCOPE) -> list[str]:
    return [m.add(f"note {i} about topic {i * 7919 % 1000}", scope).id for i in range(n)]


def _open_files(under: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(under)):
            out.append(target)
    return out


def test_small_scopes_need_no_chroma_files(tmp_path: Path, store_config: StoreConfig) -> None:
    with _open(tmp_path / "s", store_config) as m:
        ids = _fill(m, 30)
        assert _lost(m) == []
        assert m.stats().vectors == 30
        assert m.stats().unindexed == 0
        assert sorted(m._call(lambda c: _idx(c).all_ids())) == sorted(ids)
    assert not (tmp_path / "s" / "chroma" / "chroma.sqlite3").exists()


def test_large_scope_moves_to_hnsw_and_stays_exact_in_results(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    with _open(tmp_path / "s", store_config, exact_below=20) as m:
        big = _fill(m, 30)
        small = _fill(m, 5, ("tenants", "tiny"))
        assert _lost(m) == []
        assert m.stats().vectors == 35
        assert sorted(m._call(lambda c: _idx(c).all_ids())) == sorted(big + small)
        promoted = m._call(lambda c: _idx(c)._exact.promoted())
        assert len(promoted) == 1
        m.delete(big[:3])
        assert m.stats().vectors == 32
        assert m.search("note 5 about topic", SCOPE, k=3, learn=False).hits
    assert (tmp_path / "s" / "chroma" / "chroma.sqlite3").exists()


def test_close_releases_every_file_and_chroma_can_be_deleted(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    path = tmp_path / "s"
    m = _open(path, store_config, exact_below=5)
    _fill(m, 12)
    assert _open_files(path / "chroma")
    m.close()
    assert _open_files(path) == []
    shutil.rmtree(path / "chroma")
    with _open(path, store_config, exact_below=5) as again:  # same process: no "readonly database"
        _fill(again, 3, ("tenants", "other"))
        again.add("one more in the big scope", SCOPE)
        assert _lost(again) == []
        assert again.stats().vectors == 16


def test_deleted_index_is_rebuilt_on_open_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, store_config: StoreConfig
) -> None:
    path = tmp_path / "s"
    with _open(path, store_config, exact_below=10) as m:
        _fill(m, 40)
        _fill(m, 4, ("tenants", "tiny"))
    shutil.rmtree(path / "chroma")
    with caplog.at_level(logging.INFO, logger="helamem.core.storage.chroma"):
        m = _open(path, store_config, exact_below=10)
    with m:
        assert _lost(m) == []
        assert m.stats().vectors == 44
    text = caplog.text
    assert "rebuilding 40 vectors" in text
    assert "vector index rebuild: 40/40 vectors" in text
    # the scope as the caller named it, not its internal node number
    assert 'lacks vectors of 1 large scope(s) (scope ["tenants", "acme"] (episodic): ' in text


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_index_is_rebuilt_on_open(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture, store_config: StoreConfig
) -> None:
    path = tmp_path / "s"
    with _open(path, store_config, exact_below=10) as m:
        _fill(m, 25)
    db = path / "chroma" / "chroma.sqlite3"
    if damage == "truncate":
        with db.open("r+b") as f:
            f.truncate(4096)
    else:
        db.write_bytes(b"not a database " * 500)
    with caplog.at_level(logging.WARNING, logger="helamem.core.storage.chroma"):
        m = _open(path, store_config, exact_below=10)
    with m:
        assert _lost(m) == []
        assert m.stats().vectors == 25
        m.add("still writable", SCOPE)
    assert "is damaged" in caplog.text


def test_index_short_of_vectors_is_rebuilt(tmp_path: Path, store_config: StoreConfig) -> None:
    path = tmp_path / "s"
    with _open(path, store_config, exact_below=10) as m:
        ids = _fill(m, 25)
        name = next(iter(m._call(lambda c: _idx(c)._names())))
    client = chromadb.PersistentClient(
        path=str(path / "chroma"), settings=Settings(anonymized_telemetry=False, allow_reset=True)
    )
    client.get_collection(name).delete(ids=ids[:7])
    assert client.get_collection(name).count() == 18
    client.close()  # type: ignore[attr-defined]
    with _open(path, store_config, exact_below=10) as m:
        assert _lost(m) == []
        assert m.stats().vectors == 25


def test_an_older_copy_of_the_index_is_rebuilt(
    tmp_path: Path, store_config: StoreConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy of ``chroma/`` taken before the last writes (a backup restored, a snapshot
    that copied the index before the database) holding as many vectors as the database
    lacks the newest memories': it is rebuilt on open, not served."""
    path = tmp_path / "s"
    with _open(path, store_config, exact_below=10) as m:
        ids = _fill(m, 30)
    shutil.copytree(path / "chroma", tmp_path / "backup")
    with _open(path, store_config, exact_below=10) as m:
        m.delete(ids[:5])
        new = [m.add(f"new note {i}", SCOPE).id for i in range(5)]
        assert m.stats().vectors == 30  # as many as the copy holds
    shutil.rmtree(path / "chroma")
    shutil.copytree(tmp_path / "backup", path / "chroma")
    with caplog.at_level(logging.WARNING), _open(path, store_config, exact_below=10) as m:
        assert _lost(m) == []  # the new memories' vectors are found by their own vector
        assert m.stats().vectors == 30
        live = set(m._call(lambda c: c.store.db.execute("SELECT id FROM memories").fetchall()))
        assert {r[0] for r in live} == set(ids[5:]) | set(new)
    assert "an older copy" in caplog.text


def test_replaced_database_beside_an_old_index_is_refused(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "s"
    with _open(path, store_config, exact_below=10) as m:
        _fill(m, 20)
    pg = store_config(path)
    if pg is None:
        for suffix in ("", "-wal", "-shm"):
            f = path / f"helamem.sqlite3{suffix}"
            if f.exists():
                f.unlink()
        (path / "helamem.sqlite3").write_bytes(b"")  # a 0-byte database
    else:  # PostgreSQL's twin: the schema is dropped (open creates it again, empty)
        db = store_db(path)
        try:
            db.execute(f"DROP SCHEMA {pg.schema_name} CASCADE")
        finally:
            db.close()
    m = HelaMemory(_cfg(path, store_config, 10), embedder=HashingEmbedder(64))
    with pytest.raises(CorruptStoreError, match="looks replaced") as info:
        m.open()
    if pg is None:
        assert "helamem reindex" in str(info.value)
    else:  # no SQLite file to name, nor a CLI for it: the fix given is the index's deletion
        assert "PostgreSQL" in str(info.value) and "helamem.sqlite3" not in str(info.value)
        assert f"delete {path / 'chroma'}" in str(info.value)
    m.close()
    discard_index(path)  # what `helamem reindex` does first: the index is derived
    with _open(path, store_config, exact_below=10) as again:
        assert again.stats().memories == 0
        assert again.stats().vectors == 0


def test_two_stores_on_one_path_in_one_process_share_the_index(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    path = tmp_path / "s"
    a = _open(path, store_config, exact_below=10)
    b = _open(path, store_config, exact_below=10)
    try:
        _fill(a, 15)
        b.add("written by the second object", SCOPE)
        assert _lost(a) == [] and _lost(b) == []
        assert a.stats().vectors == b.stats().vectors == 16
    finally:
        a.close()
        b.close()


def test_a_failing_hnsw_scope_falls_back_to_exact_and_fails_no_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, store_config: StoreConfig
) -> None:
    with _open(tmp_path / "s", store_config, exact_below=5) as m:
        _fill(m, 10, ("t", "a"))
        _fill(m, 10, ("t", "b"))

        def break_one(core: Any) -> None:
            idx = core.index
            key = sorted(idx._exact.promoted())[0]
            col = idx._collection(key, create=False)

            class Broken:
                def query(self, **_: object) -> None:
                    raise ValueError("Nothing found on disk")

            idx._cols[idx._name(*key)] = Broken()
            assert col is not None

        m._call(break_one)
        with caplog.at_level(logging.WARNING, logger="helamem.core.storage.chroma"):
            assert _lost(m) == []
            assert m.search("note 3 about", ("t",), k=5, learn=False).hits
        assert "searching it exactly" in caplog.text


@pytest.mark.parametrize("first", ["stats", "search"])
def test_a_collection_deleted_behind_the_store_counts_its_memories_unindexed(
    tmp_path: Path, store_config: StoreConfig, first: str
) -> None:
    """A large scope's collection is deleted behind the open store: its searches scan
    exactly (correct), and stats said ``vectors`` without them but ``unindexed=0`` (or
    failed on the stale handle) until a write or a reopen. Now they count as unindexed,
    ``vectors`` is what the index lists (as ``helamem check`` compares them), and a
    write to the scope rebuilds the collection."""
    small = ("tenants", "tiny")
    with _open(tmp_path / "s", store_config, exact_below=10) as m:
        ids = _fill(m, 12)
        _fill(m, 3, small)
        assert (m.stats().vectors, m.stats().unindexed) == (15, 0)

        def drop(core: Any) -> None:  # as another client of the directory would
            client = _idx(core)._client
            for col in client.list_collections():
                client.delete_collection(col.name if hasattr(col, "name") else str(col))

        m._call(drop)
        if first == "search":
            assert _lost(m) == []  # searched exactly
        for _ in range(2):  # before and after a search met the missing collection
            st = m.stats()
            assert (st.memories, st.vectors, st.unindexed) == (15, 3, 12)
            assert len(m._call(lambda c: _idx(c).all_ids())) == st.vectors
            assert (m.stats(SCOPE).unindexed, m.stats(small).unindexed) == (12, 0)
            assert _lost(m) == []  # searched exactly meanwhile
        assert set(m.search("note 5 about topic", SCOPE, k=12, learn=False).ids) <= set(ids)
        m.add("one more note", SCOPE)  # the write rebuilds the scope's collection
        st = m.stats()
        assert (st.memories, st.vectors, st.unindexed) == (16, 16, 0)


@pytest.mark.parametrize("exact_below", [2000, 5])  # exact tier; HNSW collections
def test_stats_of_a_scope_counts_that_scopes_vectors(
    tmp_path: Path, store_config: StoreConfig, exact_below: int
) -> None:
    """``stats(scope).vectors`` is the scope's (and its sub-scopes'), not the store's."""
    with _open(tmp_path / "s", store_config, exact_below=exact_below) as m:
        m.add_many([NewMemory(f"alice note {i}", ("u", "alice")) for i in range(7)])
        m.add_many([NewMemory(f"bob note {i}", ("u", "bob")) for i in range(9)])
        m.add("carol note", ("v", "carol"))
        m.flush()
        got = {s: m.stats(s).vectors for s in [("u", "alice"), ("u", "bob"), ("u",), ("v",)]}
        assert got == {("u", "alice"): 7, ("u", "bob"): 9, ("u",): 16, ("v",): 1}
        assert m.stats().vectors == 17 and m.stats(("nobody",)).vectors == 0
        m.delete_scope(("u", "bob"))
        m.flush()
        assert m.stats(("u", "bob")).vectors == 0 and m.stats(("u",)).vectors == 7
        assert m.stats().vectors == 8


def test_index_messages_name_the_scope_as_the_caller_did(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, store_config: StoreConfig
) -> None:
    """Logs about a scope's collection name it by the caller's tuple and kind, never by
    the store's internal node number (which a user cannot map back)."""
    with (
        caplog.at_level(logging.INFO, logger="helamem.core.storage.chroma"),
        _open(tmp_path / "s", store_config, exact_below=10) as m,
    ):
        _fill(m, 12)
        exact = m._call(lambda c: _idx(c)._exact)
        node = sorted(m._call(lambda c: _idx(c)._exact.promoted()))[0][0]
        assert exact.scope_name((node, "semantic")) == 'scope ["tenants", "acme"] (semantic)'
        # a node the store does not hold (deleted meanwhile): its number, no error
        assert exact.scope_name((10**9, "episodic")) == f"scope node {10**9} (episodic)"
    assert 'scope ["tenants", "acme"] (episodic) moved to its own HNSW collection' in caplog.text
    assert f"scope {node} " not in caplog.text

"""`helamem check` and `helamem reindex`: each injected defect is reported, exactly, and
repaired (issue 14 cases 8 and 9)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helamem.core import (
    ChromaConfig,
    CorruptStoreError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
)
from helamem.core._check import DEFECT_KINDS, check_store
from helamem.core.cli import main

A = ("users", "alice")
B = ("users", "bob")


def _config(path: Path, hnsw: bool) -> HelaMemConfig:
    # exact_below=0: every scope in its own Chroma HNSW collection, so the index holds
    # vectors apart from SQLite; by default small scopes are scanned from SQLite itself
    return HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=0) if hnsw else ChromaConfig())


def _store(path: Path, *, hnsw: bool = False) -> list[str]:
    with HelaMemory(_config(path, hnsw), embedder=HashingEmbedder(64)) as m:
        ids = [m.add(f"note {i} about cats and tea", A).id for i in range(6)]
        ids += [m.add(f"note {i} about dogs", B).id for i in range(3)]
        m.search("cats tea", A, k=3)  # learned edges
    return ids


def _sql(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    db = sqlite3.connect(path / "helamem.sqlite3")
    with db:
        for sql, params in statements:
            db.execute(sql, params)
    db.close()


def _n(path: Path, id_: str) -> int:
    db = sqlite3.connect(path / "helamem.sqlite3")
    n = int(db.execute("SELECT n FROM memories WHERE id = ?", (id_,)).fetchone()[0])
    db.close()
    return n


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["check", str(path), "--json"])
    out = json.loads(capsys.readouterr().out)
    return code, out


def _kinds(report: dict[str, object]) -> set[str]:
    return {str(d["kind"]) for d in report["defects"]}  # type: ignore[attr-defined]


@pytest.mark.parametrize("hnsw", [False, True], ids=["exact", "hnsw"])
def test_clean_store_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str], hnsw: bool) -> None:
    path = tmp_path / "s"
    ids = _store(path, hnsw=hnsw)
    code, rep = _check(path, capsys)
    assert code == 0
    assert rep["ok"] is True and rep["defects"] == []
    assert rep["memories"] == len(ids) == rep["fts_rows"] == rep["vectors"]
    assert rep["vector_ids_checked"] is True
    assert rep["scopes"] == 2 and rep["scope_nodes"] == 3
    assert rep["embedder"] == "hashing-64 (64)"
    assert main(["check", str(path)]) == 0
    text = capsys.readouterr().out
    assert "OK: no defect found" in text and f"memories   {len(ids)}" in text


def test_deleted_fts_row_is_fts_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s"
    ids = _store(path)
    _sql(path, ("DELETE FROM memories_fts WHERE rowid = ?", (_n(path, ids[2]),)))
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {"fts_missing"}
    (d,) = rep["defects"]  # type: ignore[misc]
    assert d["count"] == 1 and d["examples"] == [ids[2]]
    assert f"helamem reindex {path}" in d["fix"]
    assert main(["check", str(path)]) == 1
    text = capsys.readouterr().out
    assert "[fts_missing]" in text and ids[2] in text and "fix: run `helamem reindex" in text


class DictIndex:
    """A VectorIndex kept in a dict (survives close/reopen within a test), with all_ids()."""

    def __init__(self) -> None:
        self.vecs: dict[str, tuple[int, str, np.ndarray]] = {}

    def open(self, dimension: int) -> None:
        self.dim = dimension

    def close(self) -> None:
        pass

    def upsert(self, ids: Any, vectors: np.ndarray, scope_ids: Any, kinds: Any) -> None:
        for i, v, s, k in zip(ids, vectors, scope_ids, kinds, strict=True):
            self.vecs[i] = (int(s), str(k), np.asarray(v))

    def delete(self, items: Any) -> None:
        for i, _, _ in items:
            self.vecs.pop(i, None)

    def query(self, vector: np.ndarray, n: int, scope_ids: Any, kind: str) -> list[Any]:
        allowed = set(scope_ids)
        hits = [
            (i, 1.0 - float(v @ vector))
            for i, (s, k, v) in self.vecs.items()
            if s in allowed and k == kind
        ]
        return sorted(hits, key=lambda h: h[1])[:n]

    def count(self, scope_ids: Any = None) -> int:
        return len(self.vecs)

    def all_ids(self) -> list[str]:
        return list(self.vecs)

    def reset(self) -> None:
        self.vecs.clear()


def _dict_store(path: Path) -> tuple[list[str], DictIndex]:
    index = DictIndex()
    cfg = HelaMemConfig(path=path)
    with HelaMemory(cfg, embedder=HashingEmbedder(64), vector_index=index) as m:
        ids = [m.add(f"note {i} about cats", A).id for i in range(6)]
    return ids, index


def test_vector_deleted_from_index_is_vector_missing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    ids, index = _dict_store(path)
    assert check_store(path, vector_index=index).ok
    del index.vecs[ids[1]]
    report = check_store(path, vector_index=index)
    assert not report.ok
    assert report.kinds == {"vector_missing"}
    (d,) = report.defects
    assert (d.count, d.examples) == (1, (ids[1],))
    assert report.vectors == len(ids) - 1
    assert "vector_missing" in report.to_text() and ids[1] in report.to_text()


def test_memory_row_deleted_leaving_its_vector_is_vector_orphan_any_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    ids, index = _dict_store(path)
    n = _n(path, ids[4])
    _sql(
        path,
        ("DELETE FROM edges WHERE a = ? OR b = ?", (n, n)),
        ("DELETE FROM memories_fts WHERE rowid = ?", (n,)),
        ("UPDATE scopes SET last_episode = NULL WHERE last_episode = ?", (n,)),
        ("DELETE FROM memories WHERE n = ?", (n,)),
    )
    report = check_store(path, vector_index=index)
    assert report.kinds == {"vector_orphan"}
    assert report.defects[0].examples == (ids[4],)


def test_index_count_disagreeing_with_its_ids_is_vector_count(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _, index = _dict_store(path)

    class Miscounting(DictIndex):
        def count(self, scope_ids: Any = None) -> int:
            return len(self.vecs) + 2

    bad = Miscounting()
    bad.vecs = index.vecs
    report = check_store(path, vector_index=bad)
    assert report.kinds == {"vector_count"}


def test_an_index_without_all_ids_is_noted_not_failed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _, index = _dict_store(path)

    class Unlisted:
        def __init__(self, inner: DictIndex) -> None:
            self.inner = inner

        def open(self, dimension: int) -> None:
            pass

        def close(self) -> None:
            pass

        def count(self, scope_ids: Any = None) -> int:
            return self.inner.count()

    report = check_store(path, vector_index=Unlisted(index))  # type: ignore[arg-type]
    assert report.ok and not report.vector_ids_checked
    assert report.notes == ("vector ids not checked: the vector index has no all_ids()",)


def test_vector_swapped_in_the_hnsw_index_is_missing_and_orphan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the real index repairs a scope's collection that holds too few vectors when it
    # opens; one vector replaced by a stranger's keeps the count, so check must see it
    path = tmp_path / "s"
    ids = _store(path, hnsw=True)
    with HelaMemory(_config(path, True), embedder=HashingEmbedder(64)) as m:

        def swap(c: Any) -> None:
            sid = c.store.locate([ids[1]])[ids[1]][1]
            vec = np.zeros((1, 64), dtype=np.float32)
            vec[0, 0] = 1.0
            c.index.delete([(ids[1], sid, "episodic")])
            # straight into the collection: the index's upsert drops vectors of no memory
            c.index._collection((sid, "episodic"), create=False).upsert(
                ids=["stranger"], embeddings=vec
            )

        m._call(swap)
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {"vector_missing", "vector_orphan"}
    by_kind = {d["kind"]: d for d in rep["defects"]}  # type: ignore[attr-defined]
    assert by_kind["vector_missing"]["examples"] == [ids[1]]
    assert by_kind["vector_orphan"]["examples"] == ["stranger"]
    assert main(["reindex", str(path)]) == 0
    capsys.readouterr()
    assert _check(path, capsys)[0] == 0


def test_orphan_edge_row_is_edge_orphan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s"
    ids = _store(path)
    n = _n(path, ids[0])
    sid = (
        sqlite3.connect(path / "helamem.sqlite3")
        .execute("SELECT scope_id FROM memories WHERE n = ?", (n,))
        .fetchone()[0]
    )
    _sql(
        path,
        (
            "INSERT INTO edges(a, b, scope_id, weight, tick) VALUES (?, ?, ?, 0.5, 1)",
            (n, 999_999, sid),
        ),
    )
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {"edge_orphan"}
    assert rep["defects"][0]["examples"] == [f"edge {n}-999999"]  # type: ignore[index]


@pytest.mark.parametrize("rests", ["cited", "drawn from"])
def test_fact_citing_a_deleted_episode_is_fact_orphan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rests: str
) -> None:
    """Review 151: a fact rests on the episodes it cites and on every one its distiller
    was shown (``_helamem_drawn``); check looked at the cited ones only."""
    path = tmp_path / "s"
    _store(path)
    with HelaMemory(_config(path, False), embedder=HashingEmbedder(64)) as m:
        fact = m.get(m.consolidate(A).fact_ids[0])  # extractive: no model
    drawn = (
        sqlite3.connect(path / "helamem.sqlite3")
        .execute("SELECT metadata FROM memories WHERE id = ?", (fact.id,))
        .fetchone()[0]
    )
    uncited = sorted(set(json.loads(drawn)["_helamem_drawn"]) - set(fact.provenance))
    assert uncited  # the cluster's other episodes
    # deleted as before deletes took its facts along
    gone = fact.provenance[0] if rests == "cited" else uncited[0]
    n = _n(path, gone)
    resting = [  # every fact resting on it (the cluster's other facts too)
        str(i)
        for i, prov, meta in sqlite3.connect(path / "helamem.sqlite3").execute(
            "SELECT id, provenance, metadata FROM memories WHERE kind = 'semantic' ORDER BY n"
        )
        if gone in json.loads(prov) or gone in json.loads(meta)["_helamem_drawn"]
    ]
    assert fact.id in resting
    _sql(
        path,
        ("DELETE FROM edges WHERE a = ? OR b = ?", (n, n)),
        ("DELETE FROM memories_fts WHERE rowid = ?", (n,)),
        ("UPDATE scopes SET last_episode = NULL WHERE last_episode = ?", (n,)),
        ("DELETE FROM memories WHERE n = ?", (n,)),
    )
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {"fact_orphan"}
    assert rep["defects"][0]["examples"] == resting  # type: ignore[index]


def test_edge_across_scopes_is_edge_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _store(path)
    a, b = sorted((_n(path, ids[0]), _n(path, ids[-1])))  # alice's and bob's
    sid = (
        sqlite3.connect(path / "helamem.sqlite3")
        .execute("SELECT scope_id FROM memories WHERE n = ?", (a,))
        .fetchone()[0]
    )
    _sql(
        path,
        ("INSERT INTO edges(a, b, scope_id, weight, tick) VALUES (?, ?, ?, 0.5, 1)", (a, b, sid)),
    )
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {"edge_scope"}


def test_memory_row_deleted_leaving_its_vector_is_vector_orphan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _store(path, hnsw=True)
    n = _n(path, ids[4])
    _sql(
        path,
        ("DELETE FROM edges WHERE a = ? OR b = ?", (n, n)),
        ("DELETE FROM memories_fts WHERE rowid = ?", (n,)),
        ("UPDATE scopes SET last_episode = NULL WHERE last_episode = ?", (n,)),
        ("DELETE FROM memories WHERE n = ?", (n,)),
    )
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {"vector_orphan"}
    assert rep["defects"][0]["examples"] == [ids[4]]  # type: ignore[index]


def test_bare_memory_row_delete_reports_each_leftover(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _store(path, hnsw=True)
    n = _n(path, ids[4])  # linked to ids[3] and ids[5] by temporal edges
    _sql(path, ("DELETE FROM memories WHERE n = ?", (n,)))
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {"vector_orphan", "fts_orphan", "edge_orphan"}


def test_pending_deletion_is_not_a_defect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _store(path, hnsw=True)
    n = _n(path, ids[4])
    sid = (
        sqlite3.connect(path / "helamem.sqlite3")
        .execute("SELECT scope_id FROM memories WHERE n = ?", (n,))
        .fetchone()[0]
    )
    # what delete() commits before the index is updated: a kill there leaves this
    _sql(
        path,
        ("DELETE FROM edges WHERE a = ? OR b = ?", (n, n)),
        ("DELETE FROM memories_fts WHERE rowid = ?", (n,)),
        ("UPDATE scopes SET last_episode = NULL WHERE last_episode = ?", (n,)),
        ("DELETE FROM memories WHERE n = ?", (n,)),
        ("INSERT INTO tombstones(id, scope_id, kind) VALUES (?, ?, 'episodic')", (ids[4], sid)),
    )
    code, rep = _check(path, capsys)
    assert code == 0, rep
    assert rep["tombstones"] == 1 and rep["vectors"] == len(ids)


def test_unindexed_memories_are_pending_not_defects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _store(path)
    _sql(path, ("UPDATE memories SET indexed = 0 WHERE id = ?", (ids[0],)))
    code, rep = _check(path, capsys)
    assert code == 0 and rep["unindexed"] == 1


def test_damaged_fts_index_is_fts_integrity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    _store(path)
    # the FTS5 index's own pages (its segments) lose their data; the content stays
    _sql(path, ("UPDATE memories_fts_data SET block = zeroblob(length(block)) WHERE id > 10", ()))
    code, rep = _check(path, capsys)
    assert code == 1
    assert "fts_integrity" in _kinds(rep)
    assert main(["reindex", str(path)]) == 0
    capsys.readouterr()
    assert _check(path, capsys)[0] == 0


def test_stale_fts_text_is_fts_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s"
    ids = _store(path)
    n = _n(path, ids[0])
    _sql(
        path,
        ("DELETE FROM memories_fts WHERE rowid = ?", (n,)),
        ("INSERT INTO memories_fts(rowid, content, tags) VALUES (?, 'other words', '')", (n,)),
    )
    code, rep = _check(path, capsys)
    assert code == 1 and _kinds(rep) == {"fts_stale"}


def test_missing_stored_vector_is_embedding_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _store(path)
    _sql(path, ("UPDATE memories SET embedding = x'00' WHERE id = ?", (ids[0],)))
    code, rep = _check(path, capsys)
    assert code == 1
    # the exact tier lists only memories with a vector: the indexed memory misses one too
    assert _kinds(rep) == {"embedding_missing", "vector_missing"}


def test_an_unindexed_memory_without_a_vector_is_pending_not_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store written by schema version 1 (its rows unindexed, with no stored vector)
    failed the check with every memory ``embedding_missing`` and the fix "reindex",
    though the next open embeds and indexes them, as it does any unindexed row."""
    path = tmp_path / "s"
    path.mkdir()
    db = sqlite3.connect(path / "helamem.sqlite3")
    db.executescript((Path(__file__).parent / "fixtures" / "store_v1.sql").read_text("utf-8"))
    db.close()
    code, rep = _check(path, capsys)
    assert (code, rep["defects"], rep["unindexed"]) == (0, [], rep["memories"])
    assert rep["schema_version"] == 1
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(256)) as mem:
        assert mem.stats().unindexed == 0
    code, rep = _check(path, capsys)
    assert (code, rep["defects"], rep["unindexed"]) == (0, [], 0)
    ids = _store(tmp_path / "t")  # an indexed row without one is still reported
    _sql(tmp_path / "t", ("UPDATE memories SET embedding = NULL WHERE id = ?", (ids[1],)))
    code, rep = _check(tmp_path / "t", capsys)
    assert "embedding_missing" in _kinds(rep)


def test_a_damaged_page_is_reported_and_what_still_reads_is_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Helper 131: one damaged page that ``PRAGMA integrity_check`` could not read past
    made ``check`` report "the SQLite file cannot be read" with 0 memories, schema and
    embedder unknown, while every memory still read (an export took them all)."""
    path = tmp_path / "s"
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        m.add_many(NewMemory(f"note {i} about cats and tea", A) for i in range(3000))
    db = sqlite3.connect(path / "helamem.sqlite3")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size, pages = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count"))
    db.close()
    with (path / "helamem.sqlite3").open("r+b") as f:
        f.seek((pages - 3) * size)  # a page of the full-text index's, past the memories
        f.write(b"\xff" * size)
    code, rep = _check(path, capsys)
    assert code == 1
    got = (rep["memories"], rep["schema_version"], rep["embedder"])
    assert got == (3000, 10, "hashing-64 (64)")
    assert "sqlite_integrity" in _kinds(rep)
    garbage = tmp_path / "g"
    garbage.mkdir()
    (garbage / "helamem.sqlite3").write_bytes(b"not sqlite at all" * 100)
    code, rep = _check(garbage, capsys)
    found = {d["kind"]: d for d in rep["defects"]}  # type: ignore[attr-defined]
    assert code == 1 and "not a SQLite database" in found["sqlite_integrity"]["message"]


def test_memory_of_a_missing_scope_node_is_scope_orphan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _store(path)
    _sql(path, ("UPDATE memories SET scope_id = 4242 WHERE id = ?", (ids[0],)))
    code, rep = _check(path, capsys)
    assert code == 1
    assert "scope_orphan" in _kinds(rep)
    assert ids[0] in next(d for d in rep["defects"] if d["kind"] == "scope_orphan")["examples"]  # type: ignore[attr-defined]
    # trial 117: reading it named `helamem reindex`, which does not mend a scope orphan
    m = HelaMemory(_config(path, False), embedder=HashingEmbedder(64))
    with m, pytest.raises(CorruptStoreError) as info:
        m.get(ids[0])
    assert "helamem check" in str(info.value) and "reindex" not in str(info.value)


def test_reindex_repairs_every_derived_defect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = _store(path, hnsw=True)
    n2, n4 = _n(path, ids[2]), _n(path, ids[4])
    db = sqlite3.connect(path / "helamem.sqlite3")
    sid = db.execute("SELECT scope_id FROM memories WHERE n = ?", (n2,)).fetchone()[0]
    db.close()
    _sql(
        path,
        ("DELETE FROM memories_fts WHERE rowid = ?", (n2,)),
        (
            "INSERT INTO edges(a, b, scope_id, weight, tick) VALUES (?, 999999, ?, 0.5, 1)",
            (n2, sid),
        ),
        ("DELETE FROM memories WHERE n = ?", (n4,)),
    )
    with HelaMemory(_config(path, True), embedder=HashingEmbedder(64)) as m:
        m._call(
            lambda c: c.index.delete([(ids[1], sid, "episodic")])  # type: ignore[attr-defined]
        )
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {
        "fts_missing",
        "fts_orphan",
        "edge_orphan",
        "vector_missing",
        "vector_orphan",
    }
    assert main(["reindex", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"reindexed {path}: {len(ids) - 1} vectors, {len(ids) - 1} full-text rows" in out
    code, rep = _check(path, capsys)
    assert code == 0, rep["defects"]
    with HelaMemory(_config(path, True), embedder=HashingEmbedder(64)) as m:
        assert ids[2] in m.search("note 2 about cats", A, k=3, learn=False).ids


def test_garbage_pages_are_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    _store(path)
    f = path / "helamem.sqlite3"
    data = bytearray(f.read_bytes())
    page = 4096
    for p in range(1, len(data) // page):
        data[p * page + 100 : p * page + 400] = b"\xa5" * 300
    f.write_bytes(bytes(data))
    for side in ("-wal", "-shm"):
        (path / f"helamem.sqlite3{side}").unlink(missing_ok=True)
    code, rep = _check(path, capsys)
    assert code == 1
    assert "sqlite_integrity" in _kinds(rep)
    d = next(d for d in rep["defects"] if d["kind"] == "sqlite_integrity")  # type: ignore[attr-defined]
    assert "restore helamem.sqlite3 from a backup" in d["fix"]


def test_empty_database_beside_vectors_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    _store(path, hnsw=True)
    (path / "helamem.sqlite3").write_bytes(b"")
    for side in ("-wal", "-shm"):
        (path / f"helamem.sqlite3{side}").unlink(missing_ok=True)
    code, rep = _check(path, capsys)
    assert code == 1
    kinds = _kinds(rep)
    assert "sqlite_schema" in kinds
    # the index knows it belongs to another database (or lists vectors of no memory)
    assert kinds & {"index_unavailable", "vector_orphan"}
    assert kinds <= set(DEFECT_KINDS)


def test_a_store_of_a_newer_helamem_core_is_not_called_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 167: a store migrated by a newer helamem-core (a rollback of the library)
    was reported "OK: no defect found", exit 0, while opening it refuses ("newer than
    this helamem-core"): its checks do not know that schema, so it must say so and
    name the upgrade."""
    from helamem.core.storage.sqlite_schema import MIGRATIONS

    path = tmp_path / "s"
    _store(path)
    newer = len(MIGRATIONS) + 1
    _sql(path, ("INSERT INTO schema_version(version, applied_at) VALUES (?, 0)", (newer,)))
    code, rep = _check(path, capsys)
    assert code == 1
    [defect] = [d for d in rep["defects"] if d["kind"] == "sqlite_schema"]  # type: ignore[attr-defined]
    assert f"schema version {newer} is newer" in defect["message"]
    assert "upgrade helamem-core" in defect["fix"]
    with pytest.raises(Exception, match="newer than this helamem-core"):  # what open says
        HelaMemory(_config(path, False), embedder=HashingEmbedder(64)).open()


def _dump(path: Path) -> list[object]:
    db = sqlite3.connect(path / "helamem.sqlite3")
    out: list[object] = []
    for table in ("memories", "memories_fts", "edges", "scopes", "tombstones"):
        out.append(sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr))
    db.close()
    return out


def test_check_repairs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    ids = _store(path)
    n = _n(path, ids[0])
    _sql(
        path,
        ("UPDATE memories SET indexed = 0 WHERE id = ?", (ids[1],)),
        ("DELETE FROM memories_fts WHERE rowid = ?", (n,)),
        ("INSERT INTO tombstones(id, scope_id, kind) VALUES ('gone', 1, 'episodic')", ()),
    )
    before = _dump(path)
    report = check_store(path)
    assert report.kinds == {"fts_missing"}
    assert (report.unindexed, report.tombstones) == (1, 1)
    assert _dump(path) == before


def test_check_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no HeLa-Mem store at" in err and "helamem.sqlite3 not found" in err
    assert not (tmp_path / "none").exists()  # nothing created
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["check", "--help"])
    assert info.value.code == 0
    assert "integrity" in capsys.readouterr().out


def test_an_unreadable_database_names_no_reindex_for_its_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 117: with helamem.sqlite3 damaged, ``check`` also listed ``index_unavailable``
    with the fix ``helamem reindex``, which fails on the same database: the index is
    rebuilt from the database once that is restored."""
    path = tmp_path / "s"
    _store(path, hnsw=True)
    db = path / "helamem.sqlite3"
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    code, rep = _check(path, capsys)
    fixes = {str(d["kind"]): str(d["fix"]) for d in rep["defects"]}  # type: ignore[attr-defined]
    assert code == 1 and "sqlite_integrity" in fixes, fixes
    assert "index_unavailable" in fixes and "reindex" not in fixes["index_unavailable"], fixes


@pytest.mark.parametrize("record", ["garbage{", None], ids=["unreadable", "missing"])
def test_an_unreadable_embedder_record_is_embedder_unknown_and_its_fix_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], record: str | None
) -> None:
    """Trial 117 #11: with the embedder record unreadable, check reported every memory as
    ``vector_missing`` and named ``helamem reindex``, which refuses such a store."""
    path = tmp_path / "s"
    ids = _store(path)
    if record is None:
        _sql(path, ("DELETE FROM meta WHERE key = 'embedder'", ()))
    else:
        _sql(path, ("UPDATE meta SET value = ? WHERE key = 'embedder'", (record,)))
    code, rep = _check(path, capsys)
    assert code == 1
    assert _kinds(rep) == {"embedder_unknown"}
    assert rep["vectors"] == rep["memories"] == len(ids)
    fix = rep["defects"][0]["fix"]  # type: ignore[index]
    assert "--dimension 64" in fix
    assert main(["stats", str(path), "--embedder", "hashing", "--dimension", "64"]) == 0
    capsys.readouterr()
    assert _check(path, capsys)[0] == 0


@pytest.mark.parametrize(
    "arg",
    [
        "postgresql://app:hunter2@db.internal:5432/agents",
        "host=db password=hunter2",
        "user=app password=hunter2 host=db",
        "port=5432 dbname=agents password=hunter2",
        "POSTGRESQL://app:hunter2@db/agents",  # trial 169: another case, a leading space
        " postgresql://app:hunter2@db/agents",
        "postgresql+psycopg://app:hunter2@db/agents",  # from_url refuses the driver part
    ],
)
def test_a_database_url_is_told_apart_from_a_missing_directory(
    arg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 167: `helamem check postgresql://...` said "no HeLa-Mem store at
    postgresql:/app:hunter2@..." (the URL folded by Path, its password echoed) and "check
    the path". The command line reads SQLite stores: say so, name the way from Python, and
    never print the password."""
    for command in ("check", "stats", "reindex"):
        assert main([command, arg]) == 2
        err = capsys.readouterr().err
        assert "hunter2" not in err
        if "+psycopg" in arg:  # the way it names works for this argument
            assert "postgresql:// URL (not postgresql+psycopg://)" in err, err
        elif "://" in arg:
            assert "database URL" in err and "HelaMemory.from_url(url)" in err, err
        else:  # from_url refuses a key=value DSN
            assert "connection string" in err and "PostgresConfig(dsn=" in err, err


def test_reindex_erases_a_deleted_scopes_words_from_the_files(tmp_path: Path) -> None:
    """Trial 169: after ``delete_scope`` the full-text index still held the deleted turns'
    words in its segments (the README documents it): ``helamem reindex`` is the way the
    README names to erase them, so no byte of them may be left in any file of the store."""
    path = tmp_path / "s"
    with HelaMemory(_config(path, False), embedder=HashingEmbedder(64)) as m:
        m.add("hello there", ("users", "dave"))
        for i in range(3):
            m.add_turn(("users", "carol"), f"my passport number is QWERTYPASS{i}", "Noted.")
        assert m.delete_scope(("users", "carol")) == 6
    assert main(["reindex", str(path)]) == 0
    left = [
        f.name for f in path.rglob("*") if f.is_file() and b"qwertypass" in f.read_bytes().lower()
    ]
    assert left == []

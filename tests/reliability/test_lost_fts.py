"""A full-text index whose tables are gone (dropped by hand, or kept only in part by a
file tool) is reported by ``helamem check`` as what it is, a derived index that
``helamem reindex`` rebuilds, and rebuilt by the next open: lexical search no longer
fails on every call, and no memory is reported lost."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
from helamem.core._repair import FTS_TABLES
from helamem.core.cli import main
from helamem.core.storage.sqlite_schema import MIGRATIONS

pytestmark = pytest.mark.xdist_group("lost_fts")

A = ("users", "alice")
SHADOWS = [f"memories_fts_{s}" for s in ("data", "idx", "content", "docsize", "config")]


def _store(path: Path) -> list[str]:
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        return [m.add(f"note {i} about cats and tea", A).id for i in range(6)]


def _drop(path: Path, table: str) -> None:
    db = sqlite3.connect(path / "helamem.sqlite3")
    with db:
        db.execute(f"DROP TABLE {table}")
    db.close()


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["check", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("table", ["memories_fts", "memories_fts_vocab", *SHADOWS])
@pytest.mark.parametrize("mend", ["open", "reindex"])
def test_a_lost_full_text_table_is_reported_as_derived_and_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, mend: str
) -> None:
    """Before: a dropped ``memories_fts`` was reported as "an empty or foreign file"
    (0 memories, restore from a backup), a lost shadow table made ``check`` raise
    FTS5's "SQL logic error", and every search of the opened store raised
    ``StorageError: no such table``."""
    path = tmp_path / "s"
    ids = _store(path)
    _drop(path, table)
    code, rep = _check(path, capsys)
    assert code == 1
    assert [d["kind"] for d in rep["defects"]] == ["fts_integrity"]  # type: ignore[attr-defined]
    assert "helamem reindex" in rep["defects"][0]["fix"]  # type: ignore[index]
    assert rep["memories"] == len(ids)
    if mend == "reindex":
        assert main(["reindex", str(path)]) == 0
        capsys.readouterr()
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        hits = m.search("note 3 about cats", A, k=3, learn=False)
        assert ids[3] in hits.ids
        lexical = m._call(lambda c: c.store.lexical('"cats"', None, 10))  # type: ignore[attr-defined]
        assert len(lexical) == len(ids)
    code, rep = _check(path, capsys)
    assert (code, rep["defects"], rep["fts_rows"]) == (0, [], len(ids))


def test_an_empty_file_is_still_reported_as_foreign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    path.mkdir()
    sqlite3.connect(path / "helamem.sqlite3").close()
    code, rep = _check(path, capsys)
    kinds = [d["kind"] for d in rep["defects"]]  # type: ignore[attr-defined]
    assert code == 1 and kinds[0] == "sqlite_schema" and "fts_integrity" not in kinds


def test_the_rebuild_creates_the_tables_the_migrations_create() -> None:
    def norm(sql: str) -> str:
        return " ".join(sql.replace("(", " ( ").replace(")", " ) ").split())

    migrations = norm(" ".join(MIGRATIONS))
    assert all(norm(sql) in migrations for sql in FTS_TABLES.values())


@pytest.mark.parametrize("version", [1, 2])
def test_a_store_from_before_the_vocab_migration_is_not_reported_as_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: int
) -> None:
    """Review 129: ``check`` of a store written before migration 3 (which creates
    ``memories_fts_vocab``) reported the table lost, so a v1 or v2 store, healthy
    before its migrating open, failed the check."""
    import time

    path = tmp_path / "s"
    path.mkdir()
    db = sqlite3.connect(path / "helamem.sqlite3")
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
    for v, sql in enumerate(MIGRATIONS[:version], 1):
        db.executescript(sql)
        db.execute("INSERT INTO schema_version VALUES (?, ?)", (v, time.time()))
    db.commit()
    db.close()
    code, rep = _check(path, capsys)
    assert (code, rep["defects"], rep["schema_version"]) == (0, [], version)
    _drop(path, "memories_fts")  # what it does have, it must still have
    code, rep = _check(path, capsys)
    assert code == 1
    assert [d["kind"] for d in rep["defects"]] == ["fts_integrity"]  # type: ignore[attr-defined]
    assert rep["defects"][0]["examples"][0] == "memories_fts"  # type: ignore[index]

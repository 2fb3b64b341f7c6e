"""A full disk under the vector index (embedded Chroma, or a Chroma server's): typed
``DiskFullError`` naming the fix, and the index is kept, not taken for damage and deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
from chromadb.errors import InternalError

from helamem.core import (
    ChromaConfig,
    DiskFullError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
)
from helamem.core.storage import chroma_connect

SCOPE = ("u",)
FULL = "error returned from database: (code: 13) database or disk is full"


def _config(path: Path) -> HelaMemConfig:
    return HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=5, upsert_batch=1))


@pytest.mark.sqlite_only  # the embedded index beside SQLite's file
def test_a_full_disk_on_open_keeps_the_index_and_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HelaMemory(_config(tmp_path), embedder=HashingEmbedder(64)) as mem:
        ids = [m.id for m in mem.add_many([NewMemory(f"note {i}", SCOPE) for i in range(12)])]
    chroma_dir = tmp_path / "chroma"
    files = sorted(p.relative_to(chroma_dir) for p in chroma_dir.rglob("*"))
    real = chroma_connect.ChromaConnection._connect

    def full(self: chroma_connect.ChromaConnection) -> object:
        raise InternalError(FULL)  # what Chroma raises opening its files on a full disk

    monkeypatch.setattr(chroma_connect.ChromaConnection, "_connect", full)
    with pytest.raises(DiskFullError, match=r"is full .* free space and retry"):
        HelaMemory(_config(tmp_path), embedder=HashingEmbedder(64)).open()
    # not taken for damage: the index was not deleted to be rebuilt
    assert sorted(p.relative_to(chroma_dir) for p in chroma_dir.rglob("*")) == files
    monkeypatch.setattr(chroma_connect.ChromaConnection, "_connect", real)
    with HelaMemory(_config(tmp_path), embedder=HashingEmbedder(64)) as mem:
        assert mem.stats().vectors == 12
        assert mem.search("note 3", SCOPE, k=1, learn=False, spread=False).ids == [ids[3]]


def test_a_full_disk_under_a_chroma_write_is_a_disk_full_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HelaMemory(_config(tmp_path), embedder=HashingEmbedder(64)) as mem:
        mem.add_many([NewMemory(f"note {i}", SCOPE) for i in range(12)])
        col = mem._call(lambda c: c.index._collection((1, "episodic"), create=False))
        assert col is not None

        def upsert(*_: object, **__: object) -> None:
            raise InternalError(FULL)

        monkeypatch.setattr(type(col), "upsert", upsert)
        mem.add("stored while the index's disk is full", SCOPE)  # kept, indexed later
        with pytest.raises(DiskFullError, match=r"vector index .* is full"):
            mem.flush()
        monkeypatch.undo()
        assert mem.flush() == 1  # the kept vector, written once there is room
        assert mem.stats().vectors == 13


def test_an_export_that_fills_the_disk_is_a_disk_full_error_leaving_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while an export streams used to be an ``InvalidInputError`` telling the
    caller to "pass a path in a writable directory": the directory was writable."""
    import errno

    from helamem.core import _portable

    real = _portable._write

    def fills(core: object, prefix: object, node: object, f: object) -> object:
        real(core, prefix, node, f)  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, "No space left on device")

    with HelaMemory(_config(tmp_path / "s"), embedder=HashingEmbedder(64)) as mem:
        mem.add("one note", SCOPE)
        monkeypatch.setattr(_portable, "_write", fills)
        target = tmp_path / "out.jsonl"
        with pytest.raises(DiskFullError, match="disk is full"):
            mem.export_scope(SCOPE, target)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
        monkeypatch.undo()
        assert mem.export_scope(SCOPE, target).memories == 1


def test_a_failing_chroma_count_is_typed_not_a_raw_chromadb_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stats()`` counted a large scope's vectors with a bare ``col.count()``: a Chroma
    failure (seen on a disk that filled again: "Failed to apply logs to the hnsw segment
    writer") escaped as ``chromadb.errors.InternalError``."""
    from helamem.core import StorageError

    with HelaMemory(_config(tmp_path), embedder=HashingEmbedder(64)) as mem:
        mem.add_many([NewMemory(f"note {i}", SCOPE) for i in range(12)])
        col = mem._call(lambda c: c.index._collection((1, "episodic"), create=False))

        def count(*_: object, **__: object) -> int:
            raise InternalError("Failed to apply logs to the hnsw segment writer")

        monkeypatch.setattr(type(col), "count", count)
        with pytest.raises(StorageError, match="Chroma count failed"):
            mem.stats()
        monkeypatch.undo()
        assert mem.stats().vectors == 12

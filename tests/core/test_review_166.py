"""Review 166: the import's vector spool on a full disk, an import into a filled scope
refused before its vectors are computed, an export never replacing a SQLite database,
and a hit's every line break joined in its prompt line."""

from __future__ import annotations

import errno
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helamem.core import (
    DiskFullError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    ImportConflictError,
    InvalidInputError,
    _portable_read,
)
from helamem.core.types import Hit, Memory, context_line

ALICE = ("users", "alice")


def _exported(tmp_path: Path, n: int = 40) -> Path:
    out = tmp_path / "a.jsonl"
    with HelaMemory(HelaMemConfig(path=tmp_path / "src"), embedder=HashingEmbedder(64)) as m:
        for i in range(n):
            m.add(f"alice fact number {i}", ALICE)
        m.export_scope(ALICE, out)
    return out


class _FullDisk(io.RawIOBase):
    """A temporary file on a full disk: every write to the OS fails (buffered, as
    ``tempfile.TemporaryFile`` is, the failure shows at a flush)."""

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, _: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def seek(self, *_: Any) -> int:
        return 0


@pytest.mark.parametrize("n", [1, 40])  # the last flush (seek) only; a write's flush too
def test_a_full_temporary_disk_raises_disk_full_even_at_a_buffered_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """The spool's file is buffered: ENOSPC shows when a buffer is flushed, at a write
    or at the final ``seek(0)``, and again at ``close``; each raised a bare OSError."""
    path = _exported(tmp_path, n)
    monkeypatch.setattr(
        _portable_read.tempfile,
        "TemporaryFile",
        lambda: io.BufferedRandom(_FullDisk(), buffer_size=4096),
    )
    with HelaMemory(HelaMemConfig(path=tmp_path / "dst"), embedder=HashingEmbedder(32)) as b:
        with pytest.raises(DiskFullError, match="TMPDIR"):
            b.import_scope(path)
        assert b.stats().memories == 0


def test_an_import_into_a_filled_scope_embeds_nothing(tmp_path: Path) -> None:
    """Another embedder's file: every vector was computed (minutes with a remote model,
    and paid for) before the import found the target scope full and refused."""
    path = _exported(tmp_path)
    calls: list[int] = []

    class Counting(HashingEmbedder):
        def embed(self, texts: Any) -> Any:
            calls.append(len(texts))
            return super().embed(texts)

    with HelaMemory(HelaMemConfig(path=tmp_path / "dst"), embedder=Counting(32)) as b:
        b.add("already here", ALICE)
        calls.clear()
        with pytest.raises(ImportConflictError, match="already holds memories"):
            b.import_scope(path)
        assert calls == []
        b.delete_scope(ALICE)
        assert b.import_scope(path).memories == 40


def test_an_export_never_replaces_another_stores_database(tmp_path: Path) -> None:
    """Only the exporting store's own files were refused: ``--out`` naming another
    store's ``helamem.sqlite3`` (or an adapter's checkpoints elsewhere) replaced it."""
    with HelaMemory(HelaMemConfig(path=tmp_path / "b"), embedder=HashingEmbedder(64)) as b:
        kept = b.add("bob likes coffee", ("bob",)).id
    other = tmp_path / "b" / "helamem.sqlite3"
    checkpoints = tmp_path / "checkpoints.sqlite"
    checkpoints.write_bytes(b"SQLite format 3\x00 an adapter's file")
    before = other.read_bytes(), checkpoints.read_bytes()
    with HelaMemory(HelaMemConfig(path=tmp_path / "a"), embedder=HashingEmbedder(64)) as a:
        a.add("alice likes tea", ALICE)
        for target in (other, checkpoints):
            with pytest.raises(InvalidInputError, match="nothing was written"):
                a.export_scope(ALICE, target)
        a.export_scope(ALICE, tmp_path / "new.jsonl")  # a new file, then an export's
        assert a.export_scope(ALICE, tmp_path / "new.jsonl").memories == 1
    assert (other.read_bytes(), checkpoints.read_bytes()) == before
    with HelaMemory(HelaMemConfig(path=tmp_path / "b"), embedder=HashingEmbedder(64)) as b:
        assert b.get(kept).content == "bob likes coffee"


@pytest.mark.parametrize("brk", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"])
def test_every_line_break_of_a_hit_is_joined(brk: str) -> None:
    """Only \\n, \\r, U+2028 and U+2029 were joined: a reply whose list was split by
    another line break (stored as given) still read as several hits."""
    day = datetime(2026, 1, 2, tzinfo=UTC)
    m = Memory("m1", ("u",), "episodic", f"Options:{brk}- tea{brk}- coffee", "assistant", day, day)
    line = context_line(Hit(m, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, "base"))
    assert line == "- [2026-01-02] assistant: Options: - tea - coffee"
    assert len(line.splitlines()) == 1

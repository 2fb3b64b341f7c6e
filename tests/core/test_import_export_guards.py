"""Import and export guards: another embedder's file embedded before the write
transaction (its spool on a full disk), an import into a filled scope refused before its
vectors are computed, a report counting what was imported, an export never replacing a
SQLite database, and a hit's every line break joined in its prompt line."""

from __future__ import annotations

import errno
import io
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_portable import _story

from helamem.core import (
    DiskFullError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    ImportConflictError,
    InvalidInputError,
    _portable_read,
)
from helamem.core._portable_read import Spool
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


class _Probing(HashingEmbedder):
    """A hashing embedder that, on each call, tries to take the store's writer lock
    (``BEGIN IMMEDIATE`` on its SQLite file, 0.2 s) and notes whether it could."""

    def __init__(self, db: Path) -> None:
        super().__init__(128)
        self.db = db
        self.free: list[bool] = []

    def embed(self, texts: Any) -> Any:
        if self.db.exists():
            con = sqlite3.connect(self.db, timeout=0.2, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
                self.free.append(True)
            except sqlite3.OperationalError:
                self.free.append(False)
            finally:
                con.close()
        return super().embed(texts)


@pytest.mark.sqlite_only  # the probe takes SQLite's writer lock
def test_another_embedders_file_is_embedded_before_the_write_transaction(
    tmp_path: Path, make_mem: Any
) -> None:
    """Helper 149: importing a file of another embedder computed every vector inside the
    import's write transaction; with a remote model (minutes) every other process's
    write waited for the writer lock and failed after ``busy_timeout``. The vectors
    are computed first now; and a file changed between that read and the import's is
    refused, nothing imported (never another line's vector)."""
    path = tmp_path / "a.jsonl"
    with make_mem(tmp_path / "s1") as a:
        _story(a)
        n = a.export_scope(ALICE, path).memories
    probe = _Probing(tmp_path / "s2" / "helamem.sqlite3")
    with HelaMemory(HelaMemConfig(path=tmp_path / "s2"), embedder=probe) as b:
        b.add("opens the store", ("other",))
        probe.free.clear()
        assert b.import_scope(path).reembedded == n
        assert probe.free and all(probe.free)  # the lock was free at every embedding call
        assert b.stats(ALICE).memories == n
        b.delete_scope(ALICE)
        real = Spool.compute

        def then_edited(*args: Any) -> Spool:
            spool = real(*args)
            path.write_text(path.read_text().replace("deploy", "redeploy", 1))
            return spool

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Spool, "compute", then_edited)
            with pytest.raises(InvalidInputError, match="changed while it was imported"):
                b.import_scope(path)
        assert b.stats(ALICE).memories == 0

        class Full(io.BytesIO):
            def write(self, _: Any) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.MonkeyPatch.context() as mp:  # the temporary directory's disk is full
            mp.setattr(_portable_read.tempfile, "TemporaryFile", Full)
            with pytest.raises(DiskFullError, match="temporary directory"):
                b.import_scope(path)
        assert b.stats(ALICE).memories == 0
        assert b.import_scope(path).memories == n  # as it is now


def test_the_report_counts_no_edge_of_a_fact_left_out(mem: HelaMemory, tmp_path: Path) -> None:
    """Helper 149: a fact left out for citing a memory that exists nowhere took its
    edges along, but ``ImportReport.edges`` still counted them."""
    mem.add_turn(ALICE, "hello there", "hi")
    path = tmp_path / "a.jsonl"
    mem.export_scope(ALICE, path)
    mem.delete_scope(ALICE)
    objs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [o["type"] for o in objs].count("edge") == 1  # the turn's pair
    fact = [o for o in objs if o["type"] == "memory"][1]
    fact.update(kind="semantic", role=None, provenance=["01HZZZZZZZZZZZZZZZZZZZZZZZ"])
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    report = mem.import_scope(path)
    assert (report.memories, report.edges, report.facts_dropped) == (1, 0, 1)
    assert (mem.stats().memories, mem.stats().edges) == (1, 0)

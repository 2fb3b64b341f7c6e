"""Memory-mapped reads of the SQLite store (``HelaMemConfig.sqlite_mmap_mb``).

Reads map the file (``PRAGMA mmap_size``) instead of a ``read()`` per page;
writes still go through ``write()``. A mapped reader must see another
process's writes as an unmapped one does, including a file that grew far past
the mapped size and one that another process shrank (``VACUUM``): a stale map
would answer old rows, and a map past the end of a shrunk file would crash
the reader (SIGBUS) instead of answering.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory

pytestmark = pytest.mark.sqlite_only

SCOPE = ("mmap",)


def _open(path: Path, mmap_mb: int = 1024) -> HelaMemory:
    m = HelaMemory(HelaMemConfig(path=path, sqlite_mmap_mb=mmap_mb), embedder=HashingEmbedder(64))
    m.open()
    return m


def _mmap_size(m: HelaMemory) -> int:
    return int(m._call(lambda c: c.store.db.execute("PRAGMA mmap_size").fetchone()[0]))


def test_reads_are_mapped_by_default_and_zero_turns_them_off(tmp_path: Path) -> None:
    with _open(tmp_path / "on") as on:
        assert HelaMemConfig().sqlite_mmap_mb == 1024
        assert _mmap_size(on) == 1024 * 1024 * 1024
    m = _open(tmp_path / "off", mmap_mb=0)
    with m:
        assert _mmap_size(m) == 0
        m.add("the kettle is on the stove", SCOPE)
        assert m.search("kettle", SCOPE, k=1).hits[0].memory.content.startswith("the kettle")


def _grow_then_shrink(path: str, keep: int, drop: int) -> None:
    """Another process: add many long memories, delete most, VACUUM the file smaller."""
    m = _open(Path(path))
    with m:
        big = m.add_many(
            NewMemory(f"filler {i} " + "lorem ipsum " * 200, SCOPE) for i in range(drop)
        )
        kept = m.add_many(NewMemory(f"kept memory number {i} walrus", SCOPE) for i in range(keep))
        m.delete([x.id for x in big])
        assert len(kept) == keep
    file = Path(path) / "helamem.sqlite3"
    db = sqlite3.connect(file, isolation_level=None)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (Path(path) / "peak").write_text(str(file.stat().st_size))
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def test_a_mapped_reader_follows_another_process_growing_and_shrinking_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    m = _open(path)
    with m:
        first = [m.add(f"original note {i} about otters", SCOPE).id for i in range(50)]
        assert len(m.search("otters", SCOPE, k=10).hits) == 10  # pages now mapped
        size_before = (path / "helamem.sqlite3").stat().st_size
        child = mp.get_context("spawn").Process(
            target=_grow_then_shrink, args=(str(path), 40, 1500)
        )
        child.start()
        child.join(120)
        assert child.exitcode == 0
        # the file grew far past the pages mapped here, then was cut back by half or more
        peak = int((path / "peak").read_text())
        assert peak > size_before + 2_000_000
        assert (path / "helamem.sqlite3").stat().st_size < peak / 2
        walrus = m.search("walrus", SCOPE, k=90)  # every memory left: no stale row among them
        assert sorted(
            h.memory.content for h in walrus.hits if "walrus" in h.memory.content
        ) == sorted(f"kept memory number {i} walrus" for i in range(40))
        assert [m.get(x).content for x in first] == [
            f"original note {i} about otters" for i in range(50)
        ]
        assert m.stats().memories == 90

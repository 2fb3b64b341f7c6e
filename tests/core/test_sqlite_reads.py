"""The SQLite store's reads: memory-mapped (``HelaMemConfig.sqlite_mmap_mb``) and
``IN (…)`` lists padded to a few lengths (``in_list``).

Reads map the file (``PRAGMA mmap_size``) instead of a ``read()`` per page;
writes still go through ``write()``. A mapped reader must see another
process's writes as an unmapped one does, including a file that grew past the
mapped size and one another process shrank (``VACUUM``) below what the reader
has mapped: a stale map would answer old rows, and a map past the end of a
shrunk file would crash the reader (SIGBUS) instead of answering.

Padding repeats a lookup's statement text so its compiled plan is reused; the
NULLs added match nothing, and a statement stays under SQLite's old cap of 999
parameters (before 3.32) even where it names one list twice.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory

pytestmark = pytest.mark.sqlite_only

SCOPE = ("mmap",)


def _open(path: Path, mmap_mb: int = 1024, tokens: bool = False) -> HelaMemory:
    m = HelaMemory(
        HelaMemConfig(path=path, sqlite_mmap_mb=mmap_mb),
        embedder=HashingEmbedder(64, token_vectors=tokens),
    )
    m.open()
    return m


def _mmap_size(m: HelaMemory) -> int | None:
    row = m._call(lambda c: c.store.db.execute("PRAGMA mmap_size").fetchone())
    return None if row is None else int(row[0])


def test_reads_are_mapped_by_default_and_zero_turns_them_off(tmp_path: Path) -> None:
    assert HelaMemConfig().sqlite_mmap_mb == 1024
    with _open(tmp_path / "on") as on:
        size = _mmap_size(on)
        if size is None:
            pytest.skip("this SQLite is built without memory-mapped I/O")
        assert size == 1024 * 1024 * 1024
    m = _open(tmp_path / "off", mmap_mb=0)
    with m:
        assert _mmap_size(m) == 0
        m.add("the kettle is on the stove", SCOPE)
        assert m.search("kettle", SCOPE, k=1).hits[0].memory.content.startswith("the kettle")


def _grow_then_shrink(path: str, grown: Any, mapped: Any, keep: int, drop: int) -> None:
    """Another process: grow the file with long memories, wait while the reader maps
    it all, then delete most of them and VACUUM the file smaller."""
    file = Path(path) / "helamem.sqlite3"
    with _open(Path(path)) as m:
        big = m.add_many(
            NewMemory(f"filler {i} " + "lorem ipsum " * 200, SCOPE) for i in range(drop)
        )
        m.add_many(NewMemory(f"kept memory number {i} walrus", SCOPE) for i in range(keep))
    db = sqlite3.connect(file, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    grown.set()
    assert mapped.wait(60)
    with _open(Path(path)) as m:
        m.delete([x.id for x in big])
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def test_a_mapped_reader_follows_another_process_growing_and_shrinking_the_file(
    tmp_path: Path,
) -> None:
    path, ctx = tmp_path / "store", mp.get_context("spawn")
    file = path / "helamem.sqlite3"
    grown, mapped = ctx.Event(), ctx.Event()
    with _open(path) as m:
        first = [m.add(f"original note {i} about otters", SCOPE).id for i in range(50)]
        child = ctx.Process(target=_grow_then_shrink, args=(str(path), grown, mapped, 40, 400))
        child.start()
        try:
            assert grown.wait(120)
            # read every page of the grown file through this connection's map
            total = m._call(
                lambda c: c.store.db.execute("SELECT SUM(LENGTH(content)) FROM memories")
            ).fetchone()[0]
            assert total > 400 * 2400
            mapped_size = file.stat().st_size
            mapped.set()
            child.join(120)
            assert child.exitcode == 0
        finally:
            if child.is_alive():
                child.kill()
        assert file.stat().st_size < mapped_size / 2  # cut below what this reader mapped
        walrus = m.search("walrus", SCOPE, k=90)  # every memory left: no stale row among them
        assert sorted(h.memory.content for h in walrus.hits if "walrus" in h.memory.content) == (
            sorted(f"kept memory number {i} walrus" for i in range(40))
        )
        assert [m.get(x).content for x in first] == [
            f"original note {i} about otters" for i in range(50)
        ]
        assert m.stats().memories == 90


def test_padded_in_lists_answer_exactly_and_stay_under_sqlites_old_cap(tmp_path: Path) -> None:
    with _open(tmp_path / "s", tokens=True) as m:
        added = m.add_many(NewMemory(f"note {i}", SCOPE) for i in range(600))

        def run(c: Any) -> None:
            st = c.store
            st.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
            ns = sorted(st.keys_of([x.id for x in added]).values())
            assert len(ns) == 600
            edges = st.db.execute("SELECT a, b FROM edges").fetchall()
            tokens = {r[0] for r in st.db.execute("SELECT n FROM token_vectors")}
            assert edges and tokens
            missing = max(ns) + 1000
            for size in (1, 9, 255, 257, 300, 400, 401, 600):  # exact, padded, past a size
                want = ns[:size]
                assert sorted(st.rows_by_n([*want, missing])) == want
                assert set(st.token_vectors([*want, missing])) == tokens & set(want)
                # one list named twice (a IN (…) UNION b IN (…)): 2 x 400 under 999
                touching = {(a, b) for a, b in edges if a in want or b in want}
                assert {(e.a, e.b) for e in st.edges_of(want)} == touching
            ids = [x.id for x in added]
            for a, b in ((257, 243), (129, 371), (0, 500), (500, 0), (3, 5)):
                got = st.rank_rows(ids[:a], ns[a : a + b])
                assert sorted(got) == ns[: a + b]

        m._call(run)

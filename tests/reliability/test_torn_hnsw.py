"""A large scope's HNSW files torn by a kill: the store opens, and its graph is rebuilt.

chromadb writes a collection's HNSW files in place: a SIGKILL while it wrote them
left ``index_metadata.pickle`` empty (the store then raised chromadb's own
``InternalError`` on open, in ``helamem check`` and in ``helamem reindex``) or a
graph that opened, counted every vector and missed the newest 14 of 710 in every
query (``helamem check``: OK; ``test_crash.py``'s HNSW trials met one missing 28
of 421, found at first and lost once Chroma loaded another collection). So after
a process held the embedded index and never closed it, every HNSW collection is
rebuilt from SQLite on open. Each case tears one file of a closed store the way a
kill does (the index marker left saying a process held it) and opens the store in
a child process (a torn file could crash chromadb's native code).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from chromadb.api.models.Collection import Collection
from chromadb.errors import InternalError

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
from helamem.core._check import check_store
from helamem.core.errors import StorageError
from helamem.core.storage import chroma, chroma_connect, chroma_copy
from kill import killed_at

N = 400
SCOPE = ("tenants", "acme")

_CHILD = textwrap.dedent(
    """
    import json, os, sys
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from pathlib import Path
    import numpy as np
    from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory
    sys.path.insert(0, sys.argv[2])
    from own_vectors import lost  # outliers HNSW never reaches excused, as everywhere

    cfg = HelaMemConfig(path=Path(sys.argv[1]), chroma=ChromaConfig(exact_below=20))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        stats = mem.stats()
        print(json.dumps({"memories": stats.memories, "vectors": stats.vectors,
                          "misses": len(mem._call(lost))}))
    """
)


def _store(path: Path) -> HelaMemConfig:
    cfg = HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=20))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        mem.add_many(
            NewMemory(f"note {i} about topic {i * 7919 % 1000} and {i % 13}", SCOPE)
            for i in range(N)
        )
    return cfg


def left_open(marker: Path) -> bool:
    return bool(json.loads(marker.read_text("utf-8")).get("open"))


def _as_a_kill_leaves_it(path: Path) -> None:
    marker = path / "chroma" / "helamem-index.json"
    data = json.loads(marker.read_text("utf-8"))
    assert data["open"] is False  # a clean close says so
    marker.write_text(json.dumps({**data, "open": True}), "utf-8")


def _reopen(path: Path) -> dict[str, int]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(Path(__file__).parents[1])],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    return got


@pytest.mark.parametrize(
    ("name", "keep"),
    [
        ("index_metadata.pickle", 0.0),  # as the kill left it: chromadb raised on open
        ("header.bin", 0.0),
        ("data_level0.bin", 0.5),  # opened, counted every vector, reached half
    ],
)
def test_a_torn_hnsw_file_is_rebuilt_on_open(tmp_path: Path, name: str, keep: float) -> None:
    path = tmp_path / "store"
    _store(path)
    files = sorted(path.glob(f"chroma/*/{name}"))
    assert files, f"no {name}: the scope has no HNSW collection"
    data = files[0].read_bytes()
    files[0].write_bytes(data[: int(len(data) * keep)])
    _as_a_kill_leaves_it(path)
    assert _reopen(path) == {"memories": N, "vectors": N, "misses": 0}
    marker = json.loads((path / "chroma" / "helamem-index.json").read_text("utf-8"))
    assert marker["open"] is False  # the child closed it cleanly


def test_a_killed_holder_leaves_the_marker_saying_so(tmp_path: Path) -> None:
    """The rebuild runs only after an unclean exit: a SIGKILL leaves ``open`` true."""
    path = tmp_path / "store"
    _store(path)
    marker = path / "chroma" / "helamem-index.json"
    assert not left_open(marker)

    def marked_open() -> None:  # while the child lives
        assert left_open(marker)

    killed_at(
        textwrap.dedent(
            """
            import os, sys, time
            os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
            from pathlib import Path
            from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory
            cfg = HelaMemConfig(path=Path(sys.argv[1]), chroma=ChromaConfig(exact_below=20))
            mem = HelaMemory(cfg, embedder=HashingEmbedder(64))
            mem.add("one more note", ("tenants", "acme"))
            mem.stats()
            print("ready", flush=True)
            time.sleep(120)
            """
        ),
        [str(path)],
        "ready",
        marked_open,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not left_open(marker):
        time.sleep(0.05)
    assert left_open(marker)
    assert _reopen(path) == {"memories": N + 1, "vectors": N + 1, "misses": 0}


def test_an_unreadable_collection_is_rebuilt_after_a_clean_close_too(tmp_path: Path) -> None:
    """A collection chromadb cannot read (its metadata file emptied behind the store) is
    dropped and rebuilt on open, though the index was closed cleanly."""
    path = tmp_path / "store"
    _store(path)
    files = sorted(path.glob("chroma/*/index_metadata.pickle"))
    files[0].write_bytes(b"")
    assert not left_open(path / "chroma" / "helamem-index.json")
    assert _reopen(path) == {"memories": N, "vectors": N, "misses": 0}


def _marker(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((path / "chroma" / "helamem-index.json").read_text())
    return data


def test_the_marker_stays_open_while_any_store_of_the_process_holds_the_index(
    tmp_path: Path,
) -> None:
    """Review 123: the first store's close marked the index closed while a second store
    of the same process still wrote it: a kill then left torn files trusted."""
    path = tmp_path / "store"
    cfg = _store(path)
    a = HelaMemory(cfg, embedder=HashingEmbedder(64))
    b = HelaMemory(cfg, embedder=HashingEmbedder(64))
    a.search("note", SCOPE, k=1)
    b.search("note", SCOPE, k=1)
    assert _marker(path)["open"] is True
    a.close()
    assert _marker(path)["open"] is True  # b still holds it
    b.add("one more", SCOPE)
    b.close()
    assert _marker(path)["open"] is False


def test_the_marker_says_open_before_a_rebuild_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 123: the marker was written after the rebuild on open, so a kill during
    it left the marker saying closed and the half-written files trusted."""
    path = tmp_path / "store"
    cfg = _store(path)
    _as_a_kill_leaves_it(path)
    seen: list[object] = []
    real = chroma_copy.copy_scope

    def copy(conn: object, key: object, fresh: bool) -> int:
        seen.append(_marker(path)["open"])
        return real(conn, key, fresh)  # type: ignore[arg-type]

    monkeypatch.setattr(chroma_connect, "copy_scope", copy)
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        assert mem.stats().vectors == N
    assert seen == [True]  # one rebuild, with the marker saying a process holds it


def test_a_collection_failing_for_want_of_files_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 123: chromadb's error for too many open files names the HNSW segment
    reader too; it was taken for damage and the collection dropped. Now the open
    fails (typed) and the collection is kept (as for a server's network error)."""
    path = tmp_path / "store"
    cfg = _store(path)
    before = sorted(p.name for p in (path / "chroma").iterdir() if p.is_dir())
    message = (
        "Error executing plan: Error sending backfill request to compactor: Error "
        "constructing hnsw segment reader: Error opening pickle file: Too many open files"
    )

    def fail(self: object, *args: object, **kwargs: object) -> object:
        raise InternalError(message)

    monkeypatch.setattr(Collection, "count", fail)
    with pytest.raises(StorageError, match="Too many open files"):
        HelaMemory(cfg, embedder=HashingEmbedder(64)).search("note", SCOPE, k=1)
    monkeypatch.undo()
    assert sorted(p.name for p in (path / "chroma").iterdir() if p.is_dir()) == before
    assert _reopen(path) == {"memories": N, "vectors": N, "misses": 0}


def test_check_after_a_kill_reports_what_its_rebuild_left_pending(tmp_path: Path) -> None:
    """New-user trial 125: ``helamem check`` on a killed store rebuilt the index (marking
    the rows indexed) and still reported them pending, counted before the rebuild."""
    path = tmp_path / "store"
    _store(path)
    _as_a_kill_leaves_it(path)
    with sqlite3.connect(path / "helamem.sqlite3") as db:  # the kill came before their write
        db.execute("UPDATE memories SET indexed = 0 WHERE n > ?", (N - 5,))
    report = check_store(path)
    assert report.ok, report.defects
    assert (report.memories, report.vectors, report.unindexed) == (N, N, 0)


def test_a_marker_that_cannot_be_written_fails_the_open_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 123: the marker's write (a read-only or full ``chroma/``) raised a raw
    ``OSError`` from the open; now a ``StorageError`` (``DiskFullError`` when full)."""
    path = tmp_path / "store"
    cfg = _store(path)

    def refuse(*args: object) -> None:
        raise PermissionError(13, "Permission denied", str(path / "chroma"))

    monkeypatch.setattr(chroma_connect, "write_marker", refuse)
    with pytest.raises(StorageError, match="Permission denied"):
        HelaMemory(cfg, embedder=HashingEmbedder(64)).search("note", SCOPE, k=1)


_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from pathlib import Path
    from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory
    cfg = HelaMemConfig(path=Path(sys.argv[1]), chroma=ChromaConfig(exact_below=20))
    mem = HelaMemory(cfg, embedder=HashingEmbedder(64))
    mem.search("note", ("tenants", "acme"), k=1)  # holds the embedded index
    print("held", flush=True)
    time.sleep(120)  # killed here
    """
)


def test_a_rebuild_that_failed_is_tried_again_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 123: the index counted as verified from the start of its check, so when
    the check ran at a later call (the index was held by another process at open, and
    that process was then killed) and its rebuild failed (a full disk), the process's
    next calls never rebuilt it: the killed holder's collection, dropped for the
    rebuild, stayed gone (0 of 400 vectors) and every search of that scope was an exact
    scan of SQLite (correct, slower) until another process opened the store."""
    path = tmp_path / "store"
    cfg = _store(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    real = chroma_copy.copy_scope
    calls: list[bool] = []

    def copy(conn: object, key: object, fresh: bool) -> int:
        calls.append(fresh)
        if len(calls) == 1:
            raise InternalError("database or disk is full")
        return real(conn, key, fresh)  # type: ignore[arg-type]

    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        assert mem.stats().memories == N  # open: the index is another process's
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        monkeypatch.setattr(chroma_connect, "copy_scope", copy)
        for _ in range(2):  # the first rebuild fails: searched exactly meanwhile
            hits = mem.search("note 7 about topic 433 and 7", SCOPE, k=3, learn=False)
            assert hits.hits and hits.hits[0].content == "note 7 about topic 433 and 7"
        assert mem.stats().vectors == N
    assert calls[:2] == [True, True]
    assert _reopen(path) == {"memories": N, "vectors": N, "misses": 0}


_UNREADABLE = (
    "Error executing plan: Internal error: Error creating hnsw segment reader: Nothing found "
    "on disk"
)


def test_a_collection_chromadb_lost_is_rebuilt_at_the_write_that_meets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Helper 128: chromadb 1.5 lost small collections' HNSW files when its bounded cache
    evicted them (40 tenants, deletes, ``max_open_indexes=32``: 6 of 6 seeds); every
    later write to one raised, so no new vector of ANY scope was indexed (966 rows
    left unindexed in 40 s) and the next process could not open the store. Now the
    collection is rebuilt from SQLite at the write that meets it."""
    cfg = HelaMemConfig(path=tmp_path / "s", chroma=ChromaConfig(exact_below=20))
    other = ("tenants", "other")
    real = chroma.write_over
    failed: list[str] = []

    def write_over(col: Collection, ids: list[str], vectors: object) -> None:
        if not failed and len(ids) < 10:  # a turn's write, not a load
            failed.append(str(col.id))
        if str(col.id) in failed:  # every write to the lost collection, until it goes
            raise InternalError(_UNREADABLE)
        real(col, ids, vectors)  # type: ignore[arg-type]

    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        for scope in (SCOPE, other):
            mem.add_many(NewMemory(f"note {i} of {scope[1]}", scope) for i in range(30))
        monkeypatch.setattr(chroma, "write_over", write_over)
        new = [mem.add_turn(s, f"late question {s[1]}", "late answer") for s in (SCOPE, other)]
        mem.flush()
        assert failed and mem.stats().vectors == mem.stats().memories == 64
        for turn, scope in zip(new, (SCOPE, other), strict=True):
            hits = mem.search(f"late question {scope[1]}", scope, k=1, learn=False)
            assert hits.ids == [turn[0].id]
    assert "rebuilding it from the database" in caplog.text
    assert _reopen_counts(cfg) == (64, 64, 0)


@pytest.mark.parametrize(
    "sizes",
    [(30, 30, 30), (1000, 1000, 1000), (2500, 30, 30)],
    ids=["small", "batches", "big-first"],
)
def test_one_scopes_failed_index_write_leaves_the_others_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: tuple[int, int, int]
) -> None:
    """Helper 128: the re-index of pending rows stopped at the first scope whose write
    failed, so the scopes after it were never indexed either. Review 129: it read the
    rows 2048 at a time and stopped at the first batch that raised, so scopes in later
    batches stayed unindexed (3 tenants x 1000 rows: the third)."""
    cfg = HelaMemConfig(path=tmp_path / "s", chroma=ChromaConfig(exact_below=20, upsert_batch=4096))
    scopes = [("tenants", str(i)) for i in range(3)]
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        for scope, size in zip(scopes, sizes, strict=True):
            mem.add_many(NewMemory(f"note {i} of {scope[1]}", scope) for i in range(size))
    with sqlite3.connect(tmp_path / "s" / "helamem.sqlite3") as db:
        db.execute("UPDATE memories SET indexed = 0")  # every row waits for its write
    real = chroma.write_over
    hit: list[str] = []

    def write_over(col: Collection, ids: list[str], vectors: object) -> None:
        if not hit:
            hit.append(col.name)
            raise InternalError("the server went away")  # no damage: not rebuilt
        real(col, ids, vectors)  # type: ignore[arg-type]

    monkeypatch.setattr(chroma, "write_over", write_over)
    mem = HelaMemory(cfg, embedder=HashingEmbedder(64))
    try:
        with pytest.raises(StorageError, match="went away"):
            mem.stats()  # the open re-indexes: one scope fails
    finally:
        mem.close()
    with sqlite3.connect(tmp_path / "s" / "helamem.sqlite3") as db:
        left = db.execute(
            "SELECT COUNT(DISTINCT scope_id), COUNT(*) FROM memories WHERE indexed = 0"
        ).fetchone()
    assert tuple(left) == (1, sizes[0])  # only the failed scope's rows wait for the next open
    monkeypatch.undo()
    assert _reopen_counts(cfg) == (sum(sizes),) * 2 + (0,)


@pytest.mark.parametrize("damage", ["unreadable", "server gone"])
def test_a_delete_meeting_a_lost_collection_neither_stops_the_others_nor_sticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """Helper 128 follow-up: a vector delete meeting a collection chromadb lost raised,
    so the other scopes' deletes in that batch were skipped and every re-index after it
    stopped at the deletes (no unindexed row was indexed). Now a lost collection is
    rebuilt from SQLite (which no longer holds the deleted rows), another failure
    leaves only that scope's tombstones, and the unindexed rows are indexed anyway."""
    cfg = HelaMemConfig(path=tmp_path / "s", chroma=ChromaConfig(exact_below=20))
    scopes = [("tenants", "a"), ("tenants", "b")]
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        ids = {
            s: [m.id for m in mem.add_many(NewMemory(f"note {i} of {s[1]}", s) for i in range(30))]
            for s in scopes
        }
        real = Collection.delete
        hit: list[str] = []

        def delete(col: Collection, *args: object, **kwargs: object) -> None:
            if not hit or hit == [col.name]:  # every delete of the first scope met
                hit[:] = [col.name]
                raise InternalError(_UNREADABLE if damage == "unreadable" else "server went away")
            real(col, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Collection, "delete", delete)
        mem.delete([ids[scopes[0]][0], ids[scopes[1]][0]])  # one call: both scopes' vectors
        late = mem.add_many(NewMemory(f"late note {i} of b", scopes[1]) for i in range(3))
        for s in scopes:
            assert ids[s][0] not in mem.search(f"note 0 of {s[1]}", s, k=5, learn=False).ids
        assert all(m.id in mem.search(m.content, scopes[1], k=3, learn=False).ids for m in late)
        st = mem.stats()
        assert (st.memories, st.unindexed) == (61, 0)
        if damage == "unreadable":
            assert st.vectors == 61
            assert "rebuilding it from the database" in caplog.text
        monkeypatch.undo()
    assert _reopen_counts(cfg) == (61, 61, 0)
    assert check_store(cfg.path).ok


def _reopen_counts(cfg: HelaMemConfig) -> tuple[int, int, int]:
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        st = mem.stats()
        return st.memories, st.vectors, st.unindexed


_SERVER_CHILD = textwrap.dedent(
    """
    import os, sys, time
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from pathlib import Path
    from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
    chroma = ChromaConfig(mode="http", host="127.0.0.1", port=int(sys.argv[2]), exact_below=5)
    mem = HelaMemory(HelaMemConfig(path=Path(sys.argv[1]), chroma=chroma),
                     embedder=HashingEmbedder(64))
    mem.add_many(NewMemory(f"meadow note {i} river{i}", ("tenants", "acme")) for i in range(40))
    mem.flush()
    assert mem.stats().vectors == 40
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_a_killed_client_of_a_chroma_server_leaves_nothing_to_rebuild(
    tmp_path: Path, chroma_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """README: "A Chroma server (`ChromaConfig(mode="http")`) keeps its files when a
    client is killed: no rebuild." A SIGKILLed client's collections are served as they
    are by the next store (same collection, no rebuild warning), every vector found."""
    import logging

    import chromadb
    from chromadb.config import Settings

    path = tmp_path / "s"
    killed_at(_SERVER_CHILD, [str(path), str(chroma_port)], "ready")
    server = chromadb.HttpClient(
        host="127.0.0.1", port=chroma_port, settings=Settings(anonymized_telemetry=False)
    )
    before = {c.name: c.id for c in server.list_collections()}
    assert before  # the large scope has its collection on the server
    chroma_cfg = ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, exact_below=5)
    with (
        caplog.at_level(logging.WARNING),
        HelaMemory(HelaMemConfig(path=path, chroma=chroma_cfg), embedder=HashingEmbedder(64)) as m,
    ):
        hits = m.search("meadow note river7", SCOPE, k=40, learn=False, spread=False)
        assert len(hits) == 40
        assert m.stats().vectors == 40
    assert "rebuild" not in caplog.text
    assert {c.name: c.id for c in server.list_collections()} == before  # not recreated

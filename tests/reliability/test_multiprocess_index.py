"""Several processes on one embedded store (issue 14, case 2).

Small scopes are searched exactly from SQLite, so a process sees what another
process added at once. A scope large enough for its own HNSW collection is
served only by the process holding the embedded index; any other process gets
:class:`IndexLockedError` naming Chroma server mode, never a silent miss.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
from helamem.core.storage.base import IndexLockedError
from own_vectors import lost

SCOPE = ("users", "alice")
BIG = ("users", "big")


def _cfg(path: str) -> HelaMemConfig:
    return HelaMemConfig(path=Path(path), chroma=ChromaConfig(exact_below=20))


def _writer(path: str, out: Any) -> None:
    with HelaMemory(_cfg(path), embedder=HashingEmbedder(64)) as m:
        out.put([x.id for x in m.add_many([NewMemory(f"child {i}", SCOPE) for i in range(51)])])


def _big_searcher(path: str, out: Any) -> None:
    with HelaMemory(_cfg(path), embedder=HashingEmbedder(64)) as m:
        small = m.search("child", SCOPE, k=3, learn=False).ids
        try:
            m.search("parent", BIG, k=3, learn=False)
            out.put((small, "no error"))
        except IndexLockedError as exc:
            out.put((small, str(exc)))


def _run(target: Any, path: Path) -> Any:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(str(path), q))
    p.start()
    try:
        return q.get(timeout=120)
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()


def _lost(m: HelaMemory, ids: list[str]) -> list[str]:
    """``ids`` the dense path does not return for their own stored vector (but for one
    Chroma's HNSW graph cannot reach: see ``own_vectors``)."""
    return m._call(lambda core: lost(core, set(ids)))


def test_a_process_sees_the_vectors_another_process_adds(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with HelaMemory(_cfg(str(path)), embedder=HashingEmbedder(64)) as m:
        m.add("parent was here", SCOPE)
        ids = _run(_writer, path)  # while this process has the store open
        assert len(ids) == 51
        assert _lost(m, ids) == []
        for i, mid in enumerate(ids[:10]):
            assert m.search(f"child {i}", SCOPE, k=1, learn=False).ids == [mid]
        assert m.stats().vectors == 52


def test_a_second_process_is_told_to_use_a_chroma_server_for_large_scopes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    with HelaMemory(_cfg(str(path)), embedder=HashingEmbedder(64)) as m:
        m.add_many([NewMemory(f"parent {i}", BIG) for i in range(25)])  # promoted: HNSW
        m.add("child 0", SCOPE)
        small, err = _run(_big_searcher, path)
        assert small  # small scopes work from every process
        assert 'ChromaConfig(mode="http"' in err and "chroma run" in err
        assert m.search("parent 3", BIG, k=1, learn=False).hits  # the holder still serves it


def _readder(path: str, out: Any) -> None:
    with HelaMemory(_cfg(path), embedder=HashingEmbedder(64)) as m:
        m.add_many([NewMemory("old pears", BIG, id="X")])
        m.delete(["X"])
        m.add_many([NewMemory("new apples", BIG, id="X")])  # the holder has the index
        out.put(m.get("X").content)


def test_a_process_without_the_index_can_add_a_deleted_id_again(tmp_path: Path) -> None:
    """Deleting and re-adding a caller-chosen id in a large scope from a process that
    does not hold the index: stored (it raised IndexLockedError), and the holder
    indexes the new vector, not the old one."""
    path = tmp_path / "s"
    with HelaMemory(_cfg(str(path)), embedder=HashingEmbedder(64)) as m:
        m.add_many([NewMemory(f"parent {i}", BIG) for i in range(25)])  # promoted: HNSW
        assert _run(_readder, path) == "new apples"
        assert m.get("X").content == "new apples"
        m.flush()
        assert m.search("new apples", BIG, k=1, learn=False).ids == ["X"]
    with HelaMemory(_cfg(str(path)), embedder=HashingEmbedder(64)) as again:
        assert _lost(again, ["X"]) == []  # found by its own vector

        def indexed_vector(core: Any) -> Any:
            row = core.store.rows_by_id(["X"])["X"]
            col = core.index._collection((row.scope_id, row.kind), create=False)
            got = col.get(ids=["X"], include=["embeddings"])["embeddings"][0]
            return np.asarray(got), np.frombuffer(row.embedding, dtype=np.float32)

        held, stored = again._call(indexed_vector)
        assert np.allclose(held, stored, atol=1e-5)  # the new text's vector, not the old one


def test_the_lock_is_released_on_close(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with HelaMemory(_cfg(str(path)), embedder=HashingEmbedder(64)) as m:
        m.add_many([NewMemory(f"parent {i}", BIG) for i in range(25)])
    _, err = _run(_big_searcher, path)  # the holder closed: this one takes the index
    assert err == "no error"


def test_the_lock_is_released_when_two_stores_close_in_either_order(tmp_path: Path) -> None:
    """Two stores on one directory share the lock: whichever closes last releases it,
    although the other store's owner thread took it."""
    for first in (0, 1):
        path = tmp_path / f"s{first}"
        a = HelaMemory(_cfg(str(path)), embedder=HashingEmbedder(64))
        b = HelaMemory(_cfg(str(path)), embedder=HashingEmbedder(64))
        a.add_many([NewMemory(f"parent {i}", BIG) for i in range(25)])  # a takes the lock
        assert b.search("parent 3", BIG, k=1, learn=False).hits  # b shares it
        for m in (a, b) if first == 0 else (b, a):
            m.close()
        _, err = _run(_big_searcher, path)  # another process can take the index now
        assert err == "no error", (first, err)

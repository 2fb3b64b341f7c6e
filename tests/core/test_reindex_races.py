"""A rebuild of the vector index (``reindex``) racing another writer: a memory added,
rewritten or deleted after the rebuild read its rows is never marked indexed
without its vector in HNSW, never keeps a stale vector, never comes back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, PostgresConfig
from helamem.core.storage.base import IndexLockedError
from own_vectors import lost
from races import rewrite

SCOPE = ("tenants", "acme")
StoreConfig = Callable[[Path], PostgresConfig | None]


def _open(path: Path, store: StoreConfig) -> HelaMemory:
    cfg = HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=5), store=store(path))
    m = HelaMemory(cfg, embedder=HashingEmbedder(64))
    m.open()
    return m


def _as_another_process(b: HelaMemory) -> None:
    """``b`` writes as a second process does while this one holds the embedded
    index: its rows commit unindexed, their vectors never reach HNSW from it."""

    def refuse(*_: Any, **__: Any) -> None:
        raise IndexLockedError("held by another process")

    b._call(lambda c: setattr(c.index, "upsert", refuse))


def _race_after_rebuild(a: HelaMemory, race: Callable[[], object]) -> None:
    """Run ``race`` once ``a``'s next rebuild has copied the rows it read into HNSW."""

    def patch(c: Any) -> None:
        real = c.index.rebuild

        def rebuild() -> int:
            n = int(real())
            race()
            return n

        c.index.rebuild = rebuild

    a._call(patch)


def _stale(m: HelaMemory) -> list[str]:
    """Memories marked indexed in a promoted scope whose collection lacks their
    stored vector (missing, or an older one): the dense path never finds them."""

    def run(c: Any) -> list[str]:
        promoted = c.index._exact.promoted()
        out = []
        for mid, sid, kind, emb in c.store.db.execute(
            "SELECT id, scope_id, kind, embedding FROM memories WHERE indexed = 1"
        ).fetchall():
            key = (int(sid), str(kind))
            if key not in promoted:
                continue
            col = c.index._client.get_collection(c.index._name(*key), embedding_function=None)
            held = col.get(ids=[str(mid)], include=["embeddings"])
            vec = np.frombuffer(emb, dtype=np.float32)
            if list(held["ids"]) != [str(mid)] or not np.allclose(
                np.asarray(held["embeddings"][0], dtype=np.float32), vec, atol=1e-6
            ):
                out.append(str(mid))
        return out

    return m._call(run)


def _unindexed(m: HelaMemory) -> set[str]:
    return m._call(
        lambda c: {
            str(r[0]) for r in c.store.db.execute("SELECT id FROM memories WHERE indexed = 0")
        }
    )


@pytest.fixture
def pair(
    tmp_path: Path, store_config: StoreConfig
) -> Iterator[tuple[HelaMemory, HelaMemory, list[str]]]:
    """Two store objects on one path (``b`` will act as another process) and the ids
    of 12 notes ``a`` added."""
    a = _open(tmp_path / "s", store_config)
    b = _open(tmp_path / "s", store_config)
    try:
        yield a, b, [a.add(f"note {i} about topic {i * 7919 % 1000}", SCOPE).id for i in range(12)]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("change", ["add", "rewrite", "delete"])
def test_a_write_during_a_rebuild_is_not_lost(
    pair: tuple[HelaMemory, HelaMemory, list[str]], change: str
) -> None:
    a, b, ids = pair
    _as_another_process(b)
    target = ids[3]
    new: list[str] = []

    def race() -> None:
        if change == "add":
            new.append(b.add("a note written during the rebuild", SCOPE).id)
        elif change == "rewrite":
            b._call(rewrite(target, "a text rewritten during the rebuild"))
        else:
            b.delete(target)

    _race_after_rebuild(a, race)
    a.reindex()
    # whatever the rebuild did not copy stays unindexed (searched exactly) or is
    # copied by the next reconcile: every memory is found by its own vector
    assert _stale(a) == []
    assert a._call(lost) == []
    a._call(lambda c: c.reconcile())
    assert _stale(a) == []
    assert a._call(lost) == []
    assert _unindexed(a) == set()
    if change == "add":
        hits = a.search("a note written during the rebuild", SCOPE, k=1, learn=False)
        assert hits and hits[0].id == new[0]
    if change == "delete":
        assert target not in set(a._call(lambda c: c.index.all_ids()))


def test_a_delete_while_a_lost_collection_is_refilled_does_not_come_back(
    pair: tuple[HelaMemory, HelaMemory, list[str]],
) -> None:
    a, b, ids = pair
    target = ids[4]
    done: list[bool] = []

    def patch(c: Any) -> None:
        # the collection deleted behind the store (a Chroma server restarted empty)
        key = next(iter(c.index._exact.promoted()))
        c.index._client.delete_collection(c.index._name(*key))
        c.index._cols.clear()
        real = c.index._exact.batches

        def batches(*args: Any, **kwargs: Any) -> Any:
            for part in real(*args, **kwargs):
                if not done:  # the second object deletes after the refill read its rows
                    done.append(True)
                    b.delete(target)
                yield part

        c.index._exact.batches = batches

    a._call(patch)
    a.add("a write to the scope refills its collection", SCOPE)
    a.flush()  # the batched write of the add: it meets the collection gone
    assert done, "the refill never ran"
    assert target not in set(a._call(lambda c: c.index.all_ids()))
    assert _stale(a) == []


def test_a_reindex_of_rows_already_in_the_index_writes_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 115: a reconcile upserted every unindexed row, also those whose vector the
    index held already (another process's write, a rewrite): an upsert over an id in a
    Chroma HNSW collection can leave records unreachable (chroma-core/chroma#7758;
    at 20,000 memories ~2,200 of 3,006 sharing a vector with 50+ others dropped out of
    any top 10). Unchanged vectors are now left alone; a changed one is replaced."""
    from chromadb.api.models.Collection import Collection

    emb = HashingEmbedder(64)
    cfg = HelaMemConfig(path=tmp_path / "s", chroma=ChromaConfig(exact_below=20))
    with HelaMemory(cfg, embedder=emb) as m:
        ids = [m.add(f"note {i} about the garden and tea {i * 7}", SCOPE).id for i in range(40)]
        m.flush()
        new_vec = np.asarray(emb.embed(["a rewritten vector about coffee"])[0], np.float32)

        def unindex_all(core: Any) -> None:
            with core.store.tx() as db:
                db.execute("UPDATE memories SET indexed = 0")
                db.execute(
                    "UPDATE memories SET embedding = ? WHERE id = ?", (new_vec.tobytes(), ids[3])
                )

        m._call(unindex_all)
        written: list[str] = []
        upsert = Collection.upsert

        def spy(self: Any, ids: Any, *args: Any, **kwargs: Any) -> Any:
            written.extend(ids)
            return upsert(self, ids, *args, **kwargs)

        monkeypatch.setattr(Collection, "upsert", spy)
        assert m._call(lambda core: core.reconcile()) == 40
        monkeypatch.undo()
        assert written == [ids[3]]  # only the changed vector
        assert m.stats().unindexed == 0
        sid = m._call(lambda core: core.store.find_scope(SCOPE))
        hits = m._call(lambda core: core.index.query(new_vec, 1, [sid], "episodic"))
        assert hits[0][0] == ids[3] and hits[0][1] < 1e-5

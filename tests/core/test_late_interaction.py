"""Late interaction (MaxSim over token vectors): ranking, storage, and its cache's life."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
    PostgresConfig,
    RetrievalConfig,
    retrieval,
)
from helamem.core.maxsim import _single_threaded_product

FILLER = " ".join(f"filler{i}" for i in range(40))
StoreConfig = Callable[[Path], PostgresConfig | None]


def _mem(
    path: Path, store: StoreConfig, *, tokens: bool = True, **retrieval_cfg: object
) -> HelaMemory:
    cfg = HelaMemConfig(
        path=path,
        retrieval=RetrievalConfig(**retrieval_cfg),  # type: ignore[arg-type]
        store=store(path),
    )
    return HelaMemory(cfg, embedder=HashingEmbedder(256, token_vectors=tokens))


def _token_rows(db: Any) -> int:
    try:
        return int(db.execute("SELECT COUNT(*) FROM token_vectors").fetchone()[0])
    finally:
        db.close()


def test_maxsim_finds_the_long_memory_that_pooled_cosine_dilutes(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    # pooled cosine: the long memory matches 2 of 3 query words among 42 (cos 0.18),
    # the short one 1 of 3 among 3 (cos 0.33); MaxSim: 2/3 against 1/3
    docs = [f"quokka wallaby {FILLER}", "island trip planned"]
    query = "quokka wallaby island"
    for late, first in ((1.0, docs[0]), (0.0, docs[1])):
        with _mem(tmp_path / str(late), store_config, keyword_weight=0.0, late_weight=late) as mem:
            mem.add_many(NewMemory(d, ("s",), linked=False) for d in docs)
            hits = mem.search(query, ("s",), k=2, learn=False, spread=False)
            order = sorted(hits, key=lambda h: -h.activation)
            assert order[0].memory.content == first


def test_token_vectors_stored_at_ingest_and_dropped_with_the_memory(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    with _mem(tmp_path / "m", store_config) as mem:
        a = mem.add("alice adopted a cat named miso", ("s",))
        mem.add("bob plays the violin on saturdays", ("s",))
        assert _token_rows(store_db(tmp_path / "m")) == 2
        mem.delete(a.id)
        assert _token_rows(store_db(tmp_path / "m")) == 1


@pytest.mark.parametrize(("tokens", "weight"), [(False, 1.0), (True, 0.0)])
def test_nothing_stored_without_token_vectors_or_with_late_weight_0(
    tmp_path: Path, tokens: bool, weight: float, store_config: StoreConfig, store_db: Any
) -> None:
    with _mem(tmp_path / "m", store_config, tokens=tokens, late_weight=weight) as mem:
        mem.add("alice adopted a cat named miso", ("s",))
        assert mem.search("cat", ("s",), k=1, learn=False)
    assert _token_rows(store_db(tmp_path / "m")) == 0


def test_memories_without_token_vectors_are_filled_lazily_by_search(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "m"
    with _mem(path, store_config, tokens=False) as mem:  # an older store: no token vectors
        for i in range(5):
            mem.add(f"memory {i} about the cat miso", ("s",))
    with _mem(path, store_config) as mem:
        before = mem.search("cat miso", ("s",), k=3, learn=False, spread=False)
        assert _token_rows(store_db(path)) == 5  # every candidate got its token vectors
        again = mem.search("cat miso", ("s",), k=3, learn=False, spread=False)
        assert [h.memory.id for h in again] == [h.memory.id for h in before]


def test_rank_rows_read_the_token_vectors_with_the_rows(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """``rank_rows(..., tokens=True)``: the same rows, each with exactly its stored
    token vectors (``None`` for a memory without), in the one statement."""
    path = tmp_path / "m"
    with _mem(path, store_config, tokens=False) as mem:  # an older memory: none stored
        old = mem.add("memory without token vectors", ("s",))
    with _mem(path, store_config) as mem:
        new = [mem.add(f"memory {i} about the cat miso", ("s",)) for i in range(3)]

        def read(core: Any) -> tuple[Any, Any, Any, dict[int, bytes]]:
            keys = core.store.keys_of([m.id for m in [old, *new]])
            ids, ns = [old.id, new[0].id], [keys[new[1].id], keys[new[2].id], keys[new[0].id]]
            plain = core.store.rank_rows(ids, ns)
            withtok = core.store.rank_rows(ids, ns, tokens=True)
            return keys, plain, withtok, core.store.token_vectors(list(keys.values()))

        keys, plain, withtok, stored = mem._call(read)
    assert set(plain) == set(withtok) == set(keys.values())  # each row once
    assert {n: r._replace(tokens=None) for n, r in withtok.items()} == plain
    assert all(r.tokens is None for r in plain.values())
    assert {n: r.tokens for n, r in withtok.items()} == {n: stored.get(n) for n in keys.values()}
    assert withtok[keys[old.id]].tokens is None
    assert all(withtok[keys[m.id]].tokens for m in new)


def test_a_text_rewritten_or_deleted_while_a_search_embeds_it_keeps_no_token_vectors(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    """A search fills missing token vectors from the texts it read; another writer
    rewrote one (a fact's update) and deleted another meanwhile: the search stored the
    old text's token vectors after the rewrite had dropped them (MaxSim then scored the
    memory by a text it no longer held, for good) and a row for the deleted memory."""
    from helamem.core._base import scope_tag

    path = tmp_path / "m"
    with _mem(path, store_config, tokens=False) as old:  # stored without token vectors
        kept = old.add("alice adopted a cat named miso", ("s",))
        gone = old.add("alice adopted a dog named rex", ("s",))
    new_text = "alice adopted a violin named miso"
    emb = HashingEmbedder(256, token_vectors=True)
    cfg = HelaMemConfig(path=path, store=store_config(path))
    with HelaMemory(cfg, embedder=emb) as mem, _mem(path, store_config) as other:

        def rewrite(core: Any) -> None:
            row = core.store.rows_by_id([kept.id])[kept.id]
            tags = " ".join(scope_tag(a, "episodic") for a in core.store.ancestors(row.scope_id))
            with core.store.tx() as db:
                core.store.update_fact(
                    db,
                    row,
                    content=new_text,
                    search_text=new_text,
                    tags=tags,
                    keywords="[]",
                    provenance="[]",
                    event_time=row.event_time,
                    embedding=emb.embed([new_text])[0].tobytes(),
                )

        embed = emb.embed_with_tokens

        def racing(texts: list[str]) -> Any:
            out = embed(texts)
            if kept.content in texts:  # the search read the texts: the other writer acts
                other._call(rewrite)
                other.delete(gone.id)
            return out

        emb.embed_with_tokens = racing  # type: ignore[method-assign]
        mem.search("alice adopted", ("s",), k=2, learn=False)
        emb.embed_with_tokens = embed  # type: ignore[method-assign]
        db = store_db(path)
        try:
            n_kept = db.execute("SELECT n FROM memories WHERE id = ?", (kept.id,)).fetchone()
            rows = dict(db.execute("SELECT n, data FROM token_vectors").fetchall())
            keys = {int(r[0]) for r in db.execute("SELECT n FROM memories").fetchall()}
        finally:
            db.close()
        assert set(rows) <= keys  # none of the deleted memory
        want = retrieval.pack_tokens(emb.embed_with_tokens([new_text])[1][0])
        assert bytes(rows.get(n_kept[0], want)) == want  # absent, or of the text it holds
        mem.search("alice adopted", ("s",), k=2, learn=False)  # refilled from the new text
        db = store_db(path)
        try:
            data = db.execute("SELECT data FROM token_vectors WHERE n = ?", n_kept).fetchone()
        finally:
            db.close()
        assert bytes(data[0]) == want


def test_reembedding_drops_the_old_token_vectors(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "m"
    with _mem(path, store_config) as mem:
        mem.add("alice adopted a cat named miso", ("s",))
        assert _token_rows(store_db(path)) == 1
        mem.reindex(reembed=True)
        assert _token_rows(store_db(path)) == 0  # refilled by the next search that meets it
        mem.search("cat", ("s",), k=1, learn=False)
        assert _token_rows(store_db(path)) == 1


def test_a_malformed_token_embedder_fails_as_an_embedding_error(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    from helamem.core import EmbeddingError

    class Broken(HashingEmbedder):
        def embed_with_tokens(self, texts):  # type: ignore[no-untyped-def]
            return self.embed(texts), []

    cfg = HelaMemConfig(path=tmp_path / "m", store=store_config(tmp_path / "m"))
    with (
        HelaMemory(cfg, embedder=Broken(64, token_vectors=True)) as mem,
        pytest.raises(EmbeddingError, match="late_weight=0"),
    ):
        mem.add("anything at all", ("s",))


unit_rows = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.just(8)),
    elements=st.floats(-1, 1, width=32),
).filter(lambda a: bool((np.linalg.norm(a, axis=1) > 0.1).all()))


def _unit(a: np.ndarray) -> np.ndarray:
    return np.asarray(a / np.linalg.norm(a, axis=1, keepdims=True), dtype=np.float32)


@settings(max_examples=60, deadline=None)
@given(unit_rows, st.lists(unit_rows, min_size=1, max_size=5))
def test_maxsim_is_bounded_and_exact_match_scores_1(q: np.ndarray, docs: list[np.ndarray]) -> None:
    q, docs = _unit(q), [_unit(d) for d in docs]
    s = retrieval.maxsim(q, docs)
    assert s.shape == (len(docs),)
    assert (s <= 1 + 1e-5).all() and (s >= -1 - 1e-5).all()
    assert retrieval.maxsim(q, [q])[0] == pytest.approx(1.0, abs=1e-5)
    # a document holding more tokens never scores lower (max over a superset)
    grown = retrieval.maxsim(q, [np.concatenate([d, q[:1]]) for d in docs])
    assert (grown >= s - 1e-6).all()
    # int8 packing keeps every score within 0.02
    packed = [retrieval.unpack_tokens(retrieval.pack_tokens(d), 8) for d in docs]
    assert np.abs(retrieval.maxsim(q, packed) - s).max() < 0.02


@settings(max_examples=60, deadline=None)
@given(unit_rows, st.lists(unit_rows, min_size=1, max_size=5))
def test_maxsim_packed_equals_maxsim_of_the_unpacked_vectors(
    q: np.ndarray, docs: list[np.ndarray]
) -> None:
    q, docs = _unit(q), [_unit(d) for d in docs]
    packed = [retrieval.pack_tokens(d) for d in docs]
    want = retrieval.maxsim(q, [retrieval.unpack_tokens(b, 8) for b in packed])
    got = retrieval.maxsim_packed(q, packed, 8)
    assert got.shape == (len(docs),)
    np.testing.assert_allclose(got, want, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(unit_rows, min_size=0, max_size=5))
def test_pack_tokens_many_equals_pack_tokens_of_each(docs: list[np.ndarray]) -> None:
    def one(x: np.ndarray) -> bytes:  # per-token symmetric int8, written out independently
        x = np.asarray(x, dtype=np.float32)
        scale = np.maximum(np.abs(x).max(axis=1), 1e-12) / 127.0
        q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
        return scale.astype(np.float32).tobytes() + q.tobytes()

    docs = [_unit(d) for d in docs]
    assert retrieval.pack_tokens_many(docs) == [one(d) for d in docs]
    assert [retrieval.pack_tokens(d) for d in docs] == [one(d) for d in docs]


def test_hashing_pooled_vector_is_the_same_with_or_without_tokens() -> None:
    e = HashingEmbedder(64, token_vectors=True)
    texts = ["tea with alice", "", "the and of", "Alice alice ALICE drinks tea"]
    pooled, toks = e.embed_with_tokens(texts)
    np.testing.assert_array_equal(pooled, e.embed(texts))
    assert [len(t) for t in toks] == [2, 1, 1, 5]


def test_maxsim_packed_edges() -> None:
    q = np.eye(2, dtype=np.float32)
    assert retrieval.maxsim_packed(q, [], 2).shape == (0,)
    # a document without tokens scores 0, and the others keep their scores
    got = retrieval.maxsim_packed(q, [b"", retrieval.pack_tokens(q), b""], 2)
    np.testing.assert_allclose(got, [0.0, 1.0, 0.0], atol=1e-6)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(retrieval.maxsim_packed(q, [b"", b""], 2), [0.0, 0.0])
    full = retrieval.maxsim_packed(q, [retrieval.pack_tokens(q), retrieval.pack_tokens(q[:1])], 2)
    assert full.dtype == np.float64  # every document with tokens: the same float64 scores
    np.testing.assert_allclose(full, [1.0, 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="whole tokens of dimension 2"):
        retrieval.maxsim_packed(q, [retrieval.pack_tokens(q) + b"x"], 2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 900), st.integers(1, 48), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_the_blocked_maxsim_product_is_one_product(
    rows_n: int, dim: int, m: int, seed: int
) -> None:
    """Blocks give one product's values up to float32 rounding (a block's height can
    change which BLAS kernel sums an element: 1 ulp or so)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(-127, 128, size=(rows_n, dim), dtype=np.int8)
    right = rng.normal(size=(dim, m)).astype(np.float32)
    got = _single_threaded_product(rows, right)
    assert got.dtype == np.float32 and got.shape == (rows_n, m)
    want = rows.astype(np.float32) @ right
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))


_SPIN_PROBE = """
import os, sys, threading, time
import numpy as np
from helamem.core import retrieval
rng = np.random.default_rng(0)
q = rng.normal(size=(int(sys.argv[1]), 384)).astype(np.float32)
docs = [retrieval.pack_tokens(rng.normal(size=(6, 384)).astype(np.float32)) for _ in range(100)]
def others():
    me, total = str(threading.get_native_id()), 0
    for t in os.listdir("/proc/self/task"):
        if t != me:
            f = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
    return total
retrieval.maxsim_packed(q, docs, 384)
before, start = others(), time.monotonic()
while time.monotonic() - start < 1.0:  # a search's MaxSim every 2 ms
    retrieval.maxsim_packed(q, docs, 384)
    time.sleep(0.002)
print((others() - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - start))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("query_tokens", [3, 120])  # a short query and a whole message
def test_maxsim_leaves_no_blas_thread_spinning(query_tokens: int) -> None:
    """A threaded BLAS product leaves OpenBLAS's workers spinning after it: searching
    every few milliseconds kept a whole core busy (1.0 of a core measured before the
    products were blocked). Measured in a fresh interpreter (no other threads)."""
    out = subprocess.run(
        [sys.executable, "-c", _SPIN_PROBE, str(query_tokens)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    busy = float(out.stdout.strip())  # CPU of the other threads, in cores
    assert busy < 0.3, f"other threads used {busy:.2f} of a core beside MaxSim"

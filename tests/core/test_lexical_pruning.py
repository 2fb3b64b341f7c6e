"""Document-frequency pruning of lexical queries, its vocab table, the overlapped dense
query and where the query embedding runs."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_hooks import DictIndex

from helamem.core import HelaMemConfig, HelaMemory, _search
from helamem.core._core import Core
from helamem.core.embeddings import HashingEmbedder
from helamem.core.storage.sqlite import SCHEMA_VERSION, SQLiteStore
from helamem.core.text import drop_common, fts_match, fts_query, fts_terms

ALICE = ("users", "alice")
FIXTURES = Path(__file__).parent / "fixtures"


def test_drop_common_keeps_rare_terms() -> None:
    assert drop_common(["week", "miso", "paint"], [50, 1, 30], 100, 0.1) == ["miso"]
    assert drop_common(["miso", "week", "tea"], [2, 50, 10], 100, 0.1) == ["miso", "tea"]
    # a word in no memory matches nothing: it never lets the known words go
    assert drop_common(["zzz", "week"], [0, 50], 100, 0.1) == ["week"]
    assert drop_common(["zzz", "qqq"], [0, 0], 100, 0.1) == []


def test_drop_common_keeps_the_rarest_when_every_term_is_common() -> None:
    assert drop_common(["a1", "b2", "c3"], [90, 20, 40], 100, 0.1) == ["b2", "c3"]
    assert drop_common(["a1", "b2"], [90, 20], 100, 0.1) == ["a1", "b2"]
    assert drop_common(["a1", "b2", "c3"], [90, 20, 40], 100, 0.1, keep=1) == ["b2"]


def test_max_postings_keeps_the_rarest_terms_within_the_budget() -> None:
    terms, df = ["a1", "b2", "c3", "d4"], [500, 20, 300, 40]
    # rarest first: b2 (20), d4 (+40 = 60), c3 (+300 = 360), a1 (+500 = 860)
    assert drop_common(terms, df, 10**6, 1.0, max_postings=360) == ["b2", "c3", "d4"]
    assert drop_common(terms, df, 10**6, 1.0, max_postings=359) == ["b2", "d4"]
    assert drop_common(terms, df, 10**6, 1.0, max_postings=860) == terms
    # the rarest term stays even when it alone is over the budget
    assert drop_common(terms, df, 10**6, 1.0, max_postings=5) == ["b2"]
    # 0: no budget; it composes with max_df (applied first)
    assert drop_common(terms, df, 10**6, 1.0, max_postings=0) == terms
    assert drop_common(terms, df, 1000, 0.1, max_postings=50) == ["b2"]


def test_drop_common_disabled() -> None:
    terms, df = ["week", "miso"], [90, 1]
    assert drop_common(terms, df, 100, 1.0) == terms  # lexical_max_df = 1 keeps all
    assert drop_common(terms, df, 0, 0.1) == terms  # empty index
    assert drop_common(["week"], [90], 100, 0.1) == ["week"]


def test_fts_query_is_fts_match_of_fts_terms() -> None:
    q = 'Where did "Alice" go OR NEAR? alice'
    assert fts_terms(q) == ["alice", "go", "near"]
    assert fts_query(q) == fts_match(fts_terms(q)) == '"alice" OR "go" OR "near"'
    assert fts_match([]) is None


def _vocab_exists(path: Path) -> bool:
    db = sqlite3.connect(path)
    try:
        r = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_fts_vocab'").fetchone()
    finally:
        db.close()
    return r is not None


@pytest.mark.sqlite_only  # SQLite's FTS5 vocabulary and migrations
def test_term_stats_counts_documents_with_fts_stemming(mem: HelaMemory, tmp_path: Path) -> None:
    for i in range(10):
        mem.add(f"note {i}: the cats were painting this week", ALICE)
    mem.add("Miso the cat sleeps", ALICE)
    mem.add("a_b underscores split", ALICE)
    mem.close()
    path = tmp_path / "store" / "helamem.sqlite3"
    assert _vocab_exists(path)
    st = SQLiteStore(path)
    st.open()
    try:
        assert st.schema_version() == SCHEMA_VERSION == 10
        rows, df = st.term_stats(["cats", "cat", "painted", "miso", "nowhere", "a_b", "week"])
        assert rows == 12
        # porter: cats/cat -> cat, painted/painting -> paint; a_b is the phrase "a b"
        assert df == [11, 11, 10, 1, 0, 1, 10]
        assert st.term_stats(["miso", "cats"]) == (12, [1, 11])  # cached stems
    finally:
        st.close()


def test_term_stats_follow_every_write_to_the_index(
    mem: HelaMemory, tmp_path: Path, make_mem: Any
) -> None:
    """Cached frequencies never go stale: own inserts and deletes, and other connections'."""
    first = mem.add("miso naps in the sun", ALICE)

    def stats() -> tuple[int, list[int]]:
        return mem._call(lambda c: c.store.term_stats(["miso", "sun"]))

    assert stats() == (1, [1, 1])
    mem.add("miso eats", ALICE)
    assert stats() == (2, [2, 1])
    mem.delete(first.id)
    assert stats() == (1, [1, 0])
    with make_mem(tmp_path / "store") as other:
        other.add("sun and miso and sun", ALICE)  # another connection to the same file
    assert stats() == (2, [2, 1])


@pytest.mark.sqlite_only  # SQLite's FTS5 vocabulary and migrations
def test_v1_store_gains_the_vocab_table(tmp_path: Path, make_mem: Any) -> None:
    path = tmp_path / "old"
    path.mkdir()
    db = sqlite3.connect(path / "helamem.sqlite3")
    db.executescript((FIXTURES / "store_v1.sql").read_text(encoding="utf-8"))
    db.close()
    assert not _vocab_exists(path / "helamem.sqlite3")
    with make_mem(path) as mem:
        assert mem.stats().schema_version == SCHEMA_VERSION
        assert (
            "miso" in mem.search("the cat named miso", ALICE, k=1, learn=False)[0].content.lower()
        )
    assert _vocab_exists(path / "helamem.sqlite3")


def _fill(mem: HelaMemory) -> None:
    for i in range(40):
        mem.add(f"entry {i}: another busy week of meetings and notes", ALICE)
    mem.add("Miso the cat chased a laser this week", ALICE)
    mem.add("We adopted Miso from the shelter", ALICE)


def test_pruned_search_still_finds_the_rare_word(tmp_path: Path, make_mem: Any) -> None:
    with make_mem(tmp_path / "a") as pruned, make_mem(tmp_path / "b", lexical_max_df=1.0) as full:
        _fill(pruned)
        _fill(full)
        for m in (pruned, full):
            top = m.search("miso week", ALICE, k=2, learn=False, spread=False)
            assert {h.content for h in top} == {
                "Miso the cat chased a laser this week",
                "We adopted Miso from the shelter",
            }
        # every word common: still searched (the rarest few)
        assert pruned.search("busy week", ALICE, k=1, learn=False)[0].content.startswith("entry")


class _Inline:
    """An executor that runs each job at once on the calling thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        f: Future[Any] = Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_overlapped_dense_query_gives_the_same_hits(
    tmp_path: Path, make_mem: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ANN query on the aux thread beside the lexical leg and the lexical
    candidates' rows (the query's vectors known: a fast embedder's, or cached) gives
    exactly the hits of the path without it (the query embedded on the aux thread,
    the ANN query after the lexical leg, one statement for every candidate's row)."""
    queries = ["miso week", "what did we adopt?", "meetings and notes", "laser"]
    where: list[str] = []
    real_dense = Core._dense

    def dense(self: Core, *args: Any) -> Any:
        where.append(threading.current_thread().name)
        return real_dense(self, *args)

    monkeypatch.setattr(Core, "_dense", dense)
    # every query embedded first on the store's thread (the hashing embedder is fast;
    # the bound only keeps a loaded machine's slow moment from sending one away)
    monkeypatch.setattr(_search, "INLINE_EMBED_S", math.inf)
    with make_mem(tmp_path / "store") as mem:
        _fill(mem)
        mem.search("warm the embedder's timing", ALICE, k=1, learn=False)  # its first: unknown
        where.clear()
        overlapped = [mem.search(q, ALICE, k=5, learn=False) for q in queries]
        assert where and all(w.startswith("helamem-embed") for w in where), where
    where.clear()
    monkeypatch.setattr(_search, "INLINE_EMBED_S", 0.0)  # no vectors known up front
    with make_mem(tmp_path / "store", query_cache=0) as mem:
        serial = [mem.search(q, ALICE, k=5, learn=False) for q in queries]
        assert where and all(w.startswith("helamem-store") for w in where), where
    assert [[(h.memory.id, h.score) for h in r] for r in overlapped] == [
        [(h.memory.id, h.score) for h in r] for r in serial
    ]
    assert all(len(r) for r in overlapped)


class _ThreadBoundIndex(DictIndex):
    """A vector index bound to the thread that made it (as one on a plain ``sqlite3``
    connection): it never says ``queries_from_any_thread``."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def query(
        self, vector: np.ndarray, n: int, scope_ids: Sequence[int], kind: str
    ) -> list[tuple[str, float]]:
        self.threads.add(threading.current_thread().name)
        return super().query(vector, n, scope_ids, kind)


def test_an_index_bound_to_its_thread_is_queried_on_the_store_thread(tmp_path: Path) -> None:
    index = _ThreadBoundIndex()
    cfg = HelaMemConfig(path=tmp_path / "store")
    with HelaMemory(cfg, embedder=HashingEmbedder(256), vector_index=index) as mem:
        mem.add("Miso the cat chased a laser", ALICE)
        for _ in range(3):  # cached after the first: the vectors are known up front
            assert mem.search("laser", ALICE, k=1, learn=False)[0].content.startswith("Miso")
    assert index.threads == {"helamem-store"}


class _Where(HashingEmbedder):
    """A hashing embedder that notes the thread of each call, optionally slowed."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(256)
        self.delay_s = delay_s
        self.threads: list[str] = []

    def embed(self, texts: Sequence[str]) -> Any:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay_s)
        return super().embed(texts)


@pytest.mark.parametrize(("delay_s", "thread"), [(0.0, "helamem-store"), (0.005, "helamem-embed")])
def test_a_fast_embedder_embeds_queries_on_the_store_thread(
    tmp_path: Path, delay_s: float, thread: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query embedding faster than INLINE_EMBED_S (on average) skips the hop to the
    aux thread; a slow one (ONNX: milliseconds) keeps overlapping the lexical leg."""
    monkeypatch.setattr(_search, "INLINE_EMBED_S", 0.004)  # between 0 and 5 ms, under load too
    embedder = _Where(delay_s)
    cfg = HelaMemConfig(path=tmp_path / "store")
    with HelaMemory(cfg, embedder=embedder) as mem:
        mem.add("Miso the cat chased a laser", ALICE)
        queries = [f"laser {i}" for i in range(6)]  # distinct: no query cache hits
        embedder.threads.clear()
        found = [mem.search(q, ALICE, k=1, learn=False) for q in queries]
    assert all(r[0].content == "Miso the cat chased a laser" for r in found)
    assert embedder.threads[0].startswith("helamem-embed")  # no timing yet: overlapped
    assert all(t.startswith(thread) for t in embedder.threads[2:]), embedder.threads


def test_an_unknown_word_never_switches_the_lexical_leg_off(tmp_path: Path, make_mem: Any) -> None:
    # 30 memories, each with its own code: a code is in 1 of 30 (3.3%, over the
    # default lexical_max_df of 3%); "pls" is in none. The code must still reach BM25.
    codes = [f"zq{i:03d}x" for i in range(30)]
    with make_mem(tmp_path / "s") as mem:
        ids = {c: mem.add(f"ticket {c} was filed about the printer", ALICE).id for c in codes}
        found = 0
        for c in codes:
            for q in (f"{c} pls", f"pls {c} thx"):
                top = mem.search(q, ALICE, k=3, learn=False, spread=False)[0]
                found += top.memory.id == ids[c] and top.lexical > 0
        assert found == 60
        # only unknown words: the lexical leg is empty, the dense leg still answers
        assert mem.search("pls thx", ALICE, k=1, learn=False)[0].lexical == 0.0


def test_lexical_budget_script_runs() -> None:
    """benchmarks/lexical_budget.py (README): no budget agrees with itself, a tiny one not."""
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "benchmarks" / "lexical_budget.py"
    args = ["--size", "400", "--queries", "12", "--budgets", "100000", "1"]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    }
    assert set(rows) == {"0", "100,000", "1"}
    # columns: queries trimmed, lexical ms, engine ms, lexical@M, hits@k
    assert rows["0"][0] == "0" and rows["0"][3:] == ["1.000", "1.000"]  # the reference
    assert rows["100,000"][0] == "0"  # a budget that never binds trims nothing ...
    assert rows["100,000"][3:] == ["1.000", "1.000"]  # ... and changes nothing
    assert int(rows["1"][0]) > 0  # one posting: only the rarest word is searched
    assert float(rows["1"][3]) < 1.0
    assert "400 memories in one scope, 12 queries" in done.stdout

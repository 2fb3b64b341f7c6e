"""HelaMemStore query search: at most ``limit`` items, highest score first, one score
scale for every namespace, pages that never repeat (issue 15: ``k`` means k)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import SearchItem

from helamem.core import HelaMemConfig, HelaMemory, PostgresConfig, RetrievalConfig
from helamem.langgraph import HelaMemStore
from pg_server import schema_for

NS = ("users", "alice")
BACKENDS = ("sqlite", "postgres")
WORDS = ["tea", "cat", "violin", "recital", "marathon", "knee", "physio", "garden", "tomato"]


@pytest.fixture
def memory(tmp_path: Path, new_memory: Any) -> Iterator[HelaMemory]:
    m = new_memory(tmp_path / "mem")
    yield m
    m.close()


@pytest.fixture
def store(memory: HelaMemory) -> Iterator[HelaMemStore]:
    s = HelaMemStore(memory)
    yield s
    s.close()


@pytest.fixture(scope="module", params=BACKENDS)
def minilm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HelaMemory]:
    """The offline default embedder, where meaning (not shared letters) decides; one store
    per module and graph store (the ``backend`` fixture is per test)."""
    path = tmp_path_factory.mktemp("minilm") / "mem"
    store = None
    if request.param == "postgres":
        dsn = request.getfixturevalue("pg_server").dsn
        store = PostgresConfig(dsn=dsn, schema_name=schema_for(path))
    m = HelaMemory(HelaMemConfig(path=path, store=store))
    yield m
    m.close()


def _scores(items: list[SearchItem]) -> list[float]:
    out = []
    for i in items:
        assert i.score is not None
        out.append(i.score)
    return out


def _check(items: list[SearchItem], limit: int) -> None:
    s = _scores(items)
    assert len(items) <= limit
    assert s == sorted(s, reverse=True)
    assert all(0.0 <= x <= 1.0 for x in s)
    assert len({(i.namespace, i.key) for i in items}) == len(items)


def test_limit_returns_the_best_matches(minilm: HelaMemory) -> None:
    """Issue case: ``query="astronomy", limit=2`` returned the two unrelated documents."""
    ns = ("astro", "alice")
    with HelaMemStore(minilm) as store:
        store.put(ns, "club", {"text": "The astronomy club looks at Jupiter through a telescope"})
        store.put(ns, "book", {"text": "I am reading an astronomy book about galaxies and stars"})
        store.put(ns, "errand", {"text": "unrelated errand"})
        store.put(ns, "milk", {"text": "buy milk and bread"})
        for _ in range(2):  # twice: learning from the first page must not change the answer
            got = store.search(ns, query="astronomy", limit=2)
            assert sorted(i.key for i in got) == ["book", "club"]
            _check(got, 2)
        every = store.search(ns, query="astronomy", limit=10)
        assert len(every) == 4
        assert {i.key for i in every[:2]} == {"book", "club"}
        _check(every, 10)


def test_prefix_search_ranks_every_namespace_on_one_scale(minilm: HelaMemory) -> None:
    """Issue case: over two top-level namespaces, "Tax forms are due in April" (1.128)
    outranked "The violin recital is on Saturday" (1.079) for a violin question."""
    with HelaMemStore(minilm) as store:
        store.put(("work", "bob"), "tax", {"text": "Tax forms are due in April"})
        store.put(("work", "bob"), "meeting", {"text": "The team meeting moved to Monday"})
        store.put(("music", "bob"), "recital", {"text": "The violin recital is on Saturday"})
        store.put(("music", "bob"), "strings", {"text": "Buy new strings at the shop"})
        question = "When is the violin recital?"
        for limit in (1, 2, 4, 10):
            got = store.search((), query=question, limit=limit)
            assert got[0].key == "recital"
            _check(got, limit)
        both = store.search((), query=question, limit=10)
        assert {i.namespace[0] for i in both} >= {"work", "music"}
        # one absolute scale: an item scores the same searched alone or with the others
        alone = store.search(("music",), query=question, limit=1)
        assert alone[0].key == "recital"
        assert alone[0].score == pytest.approx(both[0].score, abs=1e-6)
        tax = next(i for i in both if i.key == "tax")
        assert tax.score is not None and both[0].score is not None
        assert tax.score < both[0].score - 0.3


def test_facts_count_against_the_limit(store: HelaMemStore, memory: HelaMemory) -> None:
    for i in range(6):
        memory.add_turn(NS, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
    assert memory.consolidate(NS).facts_added > 0
    raw = memory.search("cat miso", NS, k=3, learn=False)
    assert len(raw) > 3  # 3 episodes and the facts beside them
    for limit in (1, 3, 5):
        got = store.search(NS, query="cat miso", limit=limit)
        assert len(got) == limit
        _check(got, limit)
    kinds = {i.value["kind"] for i in store.search(NS, query="cat miso", limit=12)}
    assert kinds == {"episodic", "semantic"}  # facts compete for the same slots


def test_offset_pages_never_repeat(tmp_path: Path, new_memory: Any) -> None:
    """Pages of any size are disjoint, sorted, and cover every item once (core top-k
    nested: no association hits); a plain slice of each call's sorted best
    ``offset + limit`` repeats items, as relevance reorders what activation chose."""
    # keyword_weight pinned: the control below needs a ranking where relevance
    # and activation disagree, which depends on the fusion weights
    retrieval = RetrievalConfig(max_flipped=0, keyword_weight=0.7)
    q = "violin knee garden"
    with (
        new_memory(tmp_path / "m", retrieval=retrieval) as mem,
        HelaMemStore(mem, fields=["text"]) as store,
    ):
        rng = random.Random(4)
        for i in range(12):
            store.put(NS, f"k{i}", {"text": " ".join(rng.choices(WORDS, k=rng.randint(2, 7)))})
        for size in (2, 3, 5):
            pages = [store.search(NS, query=q, limit=size, offset=o) for o in range(0, 12, size)]
            keys = [i.key for p in pages for i in p]
            assert len(keys) == len(set(keys)) == 12  # no repeats, every item once
            for p in pages:
                _check(p, size)
        assert store.search(NS, query=q, limit=3, offset=12) == []
        for size in (2, 3):  # slicing each call's sorted best offset + limit repeats items
            sliced = [
                h.id
                for o in range(0, 12, size)
                for h in mem.search(q, NS, k=o + size, learn=False)[o : o + size]
            ]
            assert len(set(sliced)) < 12


@pytest.mark.parametrize("seed", range(4))
def test_random_stores_queries_and_limits(tmp_path: Path, new_memory: Any, seed: int) -> None:
    """Seeded property over random stores, prefixes, limits, offsets and filters."""
    rng = random.Random(seed)
    with (
        new_memory(tmp_path / "m", dim=64) as mem,
        HelaMemStore(mem) as store,
    ):
        spaces = [(r, str(u)) for r in ("a", "b", "c")[: rng.randint(1, 3)] for u in range(2)]
        for i in range(rng.randint(3, 30)):
            ns = rng.choice(spaces)
            store.put(
                ns, f"k{i}", {"text": " ".join(rng.choices(WORDS, k=rng.randint(2, 6))), "n": i}
            )
        if rng.random() < 0.5:
            for _ in range(4):
                mem.add_turn(rng.choice(spaces), " ".join(rng.choices(WORDS, k=4)), "ok")
            mem.consolidate(spaces[0][:1])
        for _ in range(6):
            prefix = rng.choice([(), spaces[0][:1], spaces[-1]])
            limit, offset = rng.randint(1, 12), rng.choice([0, 0, 1, 3])
            flt = rng.choice([None, {"n": {"$gte": 5}}])
            q = " ".join(rng.choices(WORDS, k=rng.randint(1, 3)))
            if rng.random() < 0.5:
                got = store.search(prefix, query=q, limit=limit, offset=offset, filter=flt)
            else:
                got = asyncio.run(
                    store.asearch(prefix, query=q, limit=limit, offset=offset, filter=flt)
                )
            _check(got, limit)
            assert all(i.namespace[: len(prefix)] == prefix for i in got)
            if flt is not None:
                assert all(i.value["n"] >= 5 for i in got)


TOPICS = [
    "my cat miso chased a mouse",
    "the violin recital is on saturday",
    "my knee needs physio after the marathon",
    "tomato plants in the garden",
    "green tea every morning",
    "the tax forms are due in april",
]


def _facts_store(store: HelaMemStore, memory: HelaMemory) -> int:
    """Turns on six topics, distilled into more facts than ``semantic_k``, beside
    documents (one unindexed); returns how many facts."""
    for t in TOPICS:
        for i in range(3):
            memory.add_turn(NS, f"{t} {i}", f"noted: {t} {i}")
    facts = memory.consolidate(NS).facts_added
    assert facts > memory.config.retrieval.semantic_k
    store.put(NS, "pet", {"text": "Miso is a grey cat"})
    store.put(NS, "bike", {"text": "the bike needs new brakes"})
    store.put(NS, "raw", {"text": "cat miso, unindexed"}, index=False)
    return facts


def _at(items: list[SearchItem]) -> list[tuple[tuple[str, ...], str]]:
    return [(i.namespace, i.key) for i in items]


def test_query_search_returns_every_fact(store: HelaMemStore, memory: HelaMemory) -> None:
    """A query search returns every matching item, facts included: the core's episodic
    search brings at most ``semantic_k`` facts beside its episodes, none below
    ``semantic_min_relevance``, and none of those may go missing from the store."""
    facts = _facts_store(store, memory)
    q = "cat miso"
    beside = [h for h in memory.search(q, NS, k=100, learn=False) if h.provenance == "semantic"]
    assert len(beside) < facts  # what the core's default search would have dropped
    listed = store.search(NS, limit=1000)
    for got in (
        store.search(NS, query=q, limit=1000),
        asyncio.run(store.asearch(NS, query=q, limit=1000)),
        store.search(NS[:1], query=q, limit=1000),
    ):
        assert len(got) == len(listed)
        assert set(_at(got)) == set(_at(listed))  # every item once
        scored = [i for i in got if i.score is not None]
        assert _at(got[len(scored) :]) == [(NS, "raw")]  # ranked first, unindexed last
        _check(scored, 1000)
        mine = [i for i in scored if i.value.get("kind") == "semantic"]
        assert len(mine) == facts
        floor = memory.config.retrieval.semantic_min_relevance
        assert any(i.score is not None and i.score < floor for i in mine)  # low ones too
    # a filter means the same: the best facts, and every one of them
    ranked = [i for i in got if i.value.get("kind") == "semantic"]
    for limit in (1, 3, facts, 100):
        only = store.search(NS, query=q, limit=limit, filter={"kind": "semantic"})
        assert _at(only) == _at(ranked[:limit])
    with HelaMemStore(memory, recorded=False) as docs_only:  # facts are not items there
        got = docs_only.search(NS, query=q, limit=1000)
        assert sorted(i.key for i in got) == ["bike", "pet", "raw"]


@pytest.mark.parametrize("size", [1, 2, 5, 7])
def test_query_pages_cover_facts_once(store: HelaMemStore, memory: HelaMemory, size: int) -> None:
    """Successive query pages hold ``min(limit, matching - offset)`` items and cover
    every item (episodes, facts, documents, the unindexed one) exactly once."""
    _facts_store(store, memory)
    total = len(store.search(NS, limit=1000))
    assert total < memory.config.retrieval.candidates  # within the pool: pages are exact
    keys: list[tuple[tuple[str, ...], str]] = []
    for offset in range(0, total + size, size):
        page = store.search(NS, query="violin recital", limit=size, offset=offset)
        assert len(page) == max(0, min(size, total - offset))
        _check([i for i in page if i.score is not None], size)
        keys += _at(page)
    assert len(keys) == len(set(keys)) == total


def test_a_page_learns_per_kind(
    store: HelaMemStore, memory: HelaMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the core learns: the best ``learn_top`` facts of a page co-activate among
    themselves, the best ``learn_top`` episodes and documents among themselves."""
    _facts_store(store, memory)
    groups: list[list[str]] = []
    real = memory.reinforce

    def spy(ids: Any) -> int:
        groups.append(list(ids))
        return real(ids)

    monkeypatch.setattr(memory, "reinforce", spy)
    page = store.search(NS, query="cat miso", limit=100)
    top = memory.config.retrieval.learn_top
    facts = [i for i in page if i.value.get("kind") == "semantic"]
    assert len(facts) > top
    kinds = [{memory.get(i).kind for i in g} for g in groups]
    assert sorted(map(sorted, kinds)) == [["episodic"], ["semantic"]]
    (learned,) = [set(g) for g, k in zip(groups, kinds, strict=True) if k == {"semantic"}]
    assert len(learned) == top
    assert learned <= {i.key for i in facts}
    assert min(i.score or 0 for i in facts if i.key in learned) >= max(
        i.score or 0 for i in facts if i.key not in learned
    )


@pytest.mark.parametrize("limit", [2**62, 2**63 - 1])
def test_a_limit_meaning_no_limit_returns_everything(store: HelaMemStore, limit: int) -> None:
    """Helper 133: ``limit=sys.maxsize`` ("no limit") raised ``OverflowError`` (SQLite's
    64-bit integers) with a query, without one, and with an offset; LangGraph's stores
    return every match."""
    store.put(NS, "k1", {"text": "apple pie"})
    store.put(NS, "k2", {"text": "pear"}, index=False)
    assert sorted(i.key for i in store.search(NS, limit=limit)) == ["k1", "k2"]
    assert sorted(i.key for i in store.search(NS, query="apple", limit=limit)) == ["k1", "k2"]
    assert len(store.search(NS, offset=1, limit=limit)) == 1
    assert len(store.search(NS, query="apple", offset=1, limit=limit)) == 1


def test_a_core_search_with_k_meaning_no_limit_returns_every_hit(memory: HelaMemory) -> None:
    ids = {memory.add(t, NS).id for t in ("apple pie", "pear", "plum")}
    assert set(memory.search("apple", NS, k=2**63 - 1, semantic_k=2**63 - 1).ids) == ids


def test_a_recorded_memory_with_nul_or_surrogates_in_its_metadata_is_listed(
    store: HelaMemStore, memory: HelaMemory
) -> None:
    """Helper 132: on PostgreSQL the recorded-memory listing cast every row's metadata to
    JSON, so one memory whose metadata held a NUL or a lone surrogate made every search
    without a query (and ``list_namespaces``) over it raise."""
    store.put(NS, "doc", {"text": "a document"})
    odd = [
        memory.add(f"odd {i}", NS, metadata={"note": v}).id
        for i, v in enumerate(["a\x00b", "\udc80"])
    ]
    assert sorted(i.key for i in store.search(NS)) == sorted(["doc", *odd])
    assert store.list_namespaces() == [NS]

"""HelaMemStore: LangGraph store semantics over HeLa-Mem, sync and async."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from helamem.core import HelaMemory, InvalidInputError, NewMemory, StorageError
from helamem.core import _inputs as core_inputs
from helamem.langgraph import ID_FIELD, HelaMemStore
from helamem.langgraph._index import value_texts

NS = ("users", "alice")


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


def _count(memory: HelaMemory) -> int:
    return memory.stats().memories


def test_constructor_does_no_io(tmp_path: Path, new_memory: Any) -> None:
    m = new_memory(tmp_path / "x")
    HelaMemStore(m)
    assert not (tmp_path / "x").exists()


def test_put_get_replace_delete(store: HelaMemStore, memory: HelaMemory) -> None:
    store.put(NS, "pet", {"text": "Alice has a cat named Miso", "n": 1})
    first = store.get(NS, "pet")
    assert first is not None and first.value == {"text": "Alice has a cat named Miso", "n": 1}
    assert _count(memory) == 1
    time.sleep(1.05)  # SqliteStore timestamps have one-second resolution
    store.put(NS, "pet", {"text": "Alice has two cats", "n": 2})
    second = store.get(NS, "pet")
    assert second is not None and second.value["n"] == 2
    assert second.created_at == first.created_at and second.updated_at > first.updated_at
    assert _count(memory) == 1  # the old memory was replaced, not kept
    hits = store.search(("users",), query="cats")
    assert [(h.key, h.value) for h in hits] == [("pet", second.value)]
    assert hits[0].score is not None and hits[0].score > 0
    store.delete(NS, "pet")
    assert store.get(NS, "pet") is None
    assert store.search(("users",), query="cats") == []
    assert _count(memory) == 0


def test_index_false_and_index_fields(store: HelaMemStore, memory: HelaMemory) -> None:
    store.put(NS, "raw", {"text": "zebra crossing"}, index=False)
    assert store.get(NS, "raw") is not None
    assert [i.key for i in store.search(NS)] == ["raw"]
    # like LangGraph's stores: returned after the ranked items, with score None
    assert [(i.key, i.score) for i in store.search(NS, query="zebra crossing")] == [("raw", None)]
    assert _count(memory) == 0  # stored, not embedded
    store.put(NS, "doc", {"title": "giraffe facts", "body": "okapi"}, index=["title"])
    store.put(NS, "other", {"title": "okapi herd", "body": "giraffe"}, index=["title"])
    assert next(i.key for i in store.search(NS, query="giraffe")) == "doc"
    assert next(i.key for i in store.search(NS, query="okapi")) == "other"
    store.put(NS, "whole", {"body": "lion", "nested": {"x": "walrus"}})  # whole value: JSON
    assert next(i.key for i in store.search(NS, query="walrus")) == "whole"
    ranked = store.search(NS, query="zebra crossing", limit=10)
    assert ranked[-1].key == "raw" and ranked[-1].score is None
    assert all(i.score is not None for i in ranked[:-1])


@pytest.mark.parametrize(
    ("value", "texts"),
    [
        ({"text": "[]"}, ["[]"]),
        ({"text": "{}"}, ["{}"]),
        ({"text": '{"name": "Alice"}'}, ['{"name": "Alice"}']),
        ({"text": "[draft] notes"}, ["[draft] notes"]),
        ({"text": {"name": "Alice", "n": 3}}, ["3\nAlice"]),  # keys sorted, as LangGraph
        ({"text": ["a [b]", {"c": "{d}"}]}, ["a [b]\n{d}"]),
        ({"text": 42}, ["42"]),
    ],
)
def test_a_string_field_holding_json_text_is_indexed_as_that_text(
    value: dict[str, object], texts: list[str]
) -> None:
    """Helper 127: a string that parses as JSON was embedded as its JSON's values: "[]" and
    "{}" left the item unindexed (``InMemoryStore`` scores it) and '{"name": "Alice"}' was
    embedded as "Alice". Only an object or array selected is embedded as its values."""
    assert value_texts(value, ["text"]) == texts


def test_field_default_from_store(memory: HelaMemory) -> None:
    with HelaMemStore(memory, fields=["title"]) as s:
        s.put(NS, "d", {"title": "heron", "body": "pelican"})
        s.put(NS, "e", {"title": "pelican", "body": "heron"})
        assert [i.key for i in s.search(NS, query="heron")] == ["d", "e"]
        assert [i.key for i in s.search(NS, query="pelican")] == ["e", "d"]


@pytest.mark.parametrize(
    "namespace",
    [(), ("a.b",), ("langgraph", "x"), ("",), ("ok", 3)],
)
def test_namespace_validation(store: HelaMemStore, namespace: Any) -> None:
    with pytest.raises(InvalidNamespaceError):
        store.put(namespace, "k", {"v": 1})
    if namespace == ("langgraph", "x"):  # reserved in put/aput only, as in LangGraph
        store.batch([PutOp(namespace, "k", {"v": 1})])
        assert store.get(namespace, "k") is not None
        return
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp(namespace, "k", {"v": 1})])
    with pytest.raises(InvalidNamespaceError):
        asyncio.run(store.abatch([PutOp(namespace, "k", {"v": 1})]))


def test_dotted_labels_rejected_on_reads_and_reserved_field(store: HelaMemStore) -> None:
    with pytest.raises(InvalidNamespaceError):
        store.batch([SearchOp(("a.b",))])
    with pytest.raises(InvalidNamespaceError):
        store.batch([GetOp(("a.b",), "k")])
    with pytest.raises(InvalidInputError, match="rename that field"):
        store.put(NS, "k", {ID_FIELD: "x"})
    with pytest.raises(InvalidInputError, match="unknown store operation"):
        store.batch(["nope"])  # type: ignore[list-item]


def test_prefixes_match_whole_segments(store: HelaMemStore) -> None:
    store.put(("user", "1"), "a", {"text": "likes ravens"})
    store.put(("user", "10"), "b", {"text": "likes ravens"})
    assert [i.namespace for i in store.search(("user", "1"))] == [("user", "1")]
    assert [i.namespace for i in store.search(("user", "1"), query="ravens")] == [("user", "1")]
    assert len(store.search(("user",), query="ravens")) == 2
    assert len(store.search((), query="ravens")) == 2  # empty prefix: the whole store


def test_filters(store: HelaMemStore) -> None:
    for i in range(6):
        store.put(NS, f"k{i}", {"text": f"note about otters {i}", "n": i, "tag": {"c": i % 2}})
    cases: list[tuple[dict[str, Any], set[int]]] = [
        ({"n": 3}, {3}),
        ({"n": {"$eq": 3}}, {3}),
        ({"n": {"$ne": 3}}, {0, 1, 2, 4, 5}),
        ({"n": {"$gt": 3}}, {4, 5}),
        ({"n": {"$gte": 3}}, {3, 4, 5}),
        ({"n": {"$lt": 2}}, {0, 1}),
        ({"n": {"$lte": 2}}, {0, 1, 2}),
        ({"n": {"$gt": 1, "$lt": 4}}, {2, 3}),
        ({"tag.c": 1}, {1, 3, 5}),
        ({"tag.c": {"$ne": 1}, "n": {"$lte": 2}}, {0, 2}),
    ]
    for flt, want in cases:
        listed = {i.value["n"] for i in store.search(NS, filter=flt, limit=20)}
        found = {i.value["n"] for i in store.search(NS, query="otters", filter=flt, limit=20)}
        assert listed == want, flt
        assert found == want, flt
    nested = {i.value["n"] for i in store.search(NS, query="otters", filter={"tag": {"c": 0}})}
    assert nested == {0, 2, 4}  # nested objects match field by field, as in InMemoryStore
    with pytest.raises(InvalidInputError, match=r"\$gte"):
        store.search(NS, query="otters", filter={"n": {"$in": [1]}})


def test_pagination(store: HelaMemStore) -> None:
    for i in range(7):
        store.put(NS, f"k{i}", {"text": f"badger {i}", "n": i})
    listed = [i.key for i in store.search(NS, limit=3, offset=0)]
    listed += [i.key for i in store.search(NS, limit=3, offset=3)]
    listed += [i.key for i in store.search(NS, limit=3, offset=6)]
    assert sorted(listed) == [f"k{i}" for i in range(7)]
    odd = [i.key for i in store.search(NS, filter={"n": {"$gte": 1}}, limit=2, offset=4)]
    assert len(odd) == 2
    ranked = [i.key for i in store.search(NS, query="badger", limit=7)]
    assert sorted(ranked) == [f"k{i}" for i in range(7)]
    # Hebbian learning may reorder successive searches, so compare sizes and membership
    page = store.search(NS, query="badger", limit=2, offset=5)
    assert len(page) == 2 and {i.key for i in page} <= set(ranked)
    assert store.search(NS, query="badger", limit=3, offset=7) == []
    assert len(store.search(NS, query="badger", limit=3, filter={"n": {"$lt": 2}})) == 2
    scores = [i.score for i in store.search(NS, query="badger 3", limit=7)]
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]


def test_list_namespaces(store: HelaMemStore) -> None:
    for ns in [("a", "b", "c"), ("a", "b", "d"), ("a", "e"), ("x", "b", "c")]:
        store.put(ns, "k", {"v": 1})
    assert store.list_namespaces(prefix=("a",)) == [("a", "b", "c"), ("a", "b", "d"), ("a", "e")]
    assert store.list_namespaces(suffix=("c",)) == [("a", "b", "c"), ("x", "b", "c")]
    assert store.list_namespaces(prefix=("*", "b")) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("x", "b", "c"),
    ]
    assert store.list_namespaces(max_depth=2) == [("a", "b"), ("a", "e"), ("x", "b")]
    assert store.list_namespaces(limit=2, offset=1) == [("a", "b", "d"), ("a", "e")]


def test_batch_answers_in_order(store: HelaMemStore) -> None:
    # reads see the state before the batch, as in InMemoryStore and SqliteStore
    results = store.batch(
        [
            PutOp(NS, "k", {"text": "heron by the lake"}),
            GetOp(NS, "k"),
            SearchOp(NS, query="heron"),
            PutOp(NS, "k", None),
            GetOp(NS, "k"),
            ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("users",)),)),
            SearchOp(NS),
        ]
    )
    assert results == [None, None, [], None, None, [], []]
    assert store.get(NS, "k") is None  # the last write of the key won
    store.put(NS, "k", {"text": "heron by the lake"})
    results = store.batch(
        [
            GetOp(NS, "k"),
            PutOp(NS, "k", {"text": "egret in the reeds"}),
            GetOp(NS, "k"),
            SearchOp(NS, query="egret"),
            ListNamespacesOp(),
        ]
    )
    assert results[0].value == results[2].value == {"text": "heron by the lake"}  # type: ignore[union-attr]
    assert [i.value for i in results[3]] == [{"text": "heron by the lake"}]  # type: ignore[union-attr]
    assert results[4] == [NS]
    got = store.get(NS, "k")
    assert got is not None and got.value == {"text": "egret in the reeds"}


async def test_async_twins(store: HelaMemStore, memory: HelaMemory) -> None:
    await store.aput(NS, "a", {"text": "the lighthouse keeper", "n": 1})
    await store.aput(NS, "b", {"text": "a quiet harbour", "n": 2}, index=False)
    got = await store.aget(NS, "a")
    assert got is not None and got.value["n"] == 1
    found = await store.asearch(NS, query="lighthouse")
    assert [i.key for i in found] == ["a", "b"] and found[1].score is None
    assert {i.key for i in await store.asearch(NS, filter={"n": {"$gte": 1}})} == {"a", "b"}
    assert await store.alist_namespaces() == [NS]
    await store.adelete(NS, "a")
    assert await store.aget(NS, "a") is None
    assert await memory.astats() is not None and (await memory.astats()).memories == 0


async def test_concurrent_abatch_no_lost_write(store: HelaMemStore) -> None:
    await store.aput(NS, "seed", {"text": "kestrel seed"})

    async def put(i: int) -> None:
        await store.aput(NS, f"k{i}", {"text": f"kestrel number {i}", "i": i})

    async def search() -> list[Any]:
        return await store.asearch(NS, query="kestrel", limit=5)

    jobs = [put(i) for i in range(25)] + [search() for _ in range(25)]
    await asyncio.gather(*jobs)
    keys = {i.key for i in await store.asearch(NS, limit=100)}
    assert keys == {"seed"} | {f"k{i}" for i in range(25)}
    assert len(await store.asearch(NS, query="kestrel", limit=100)) == 26


def test_ttl(tmp_path: Path, memory: HelaMemory) -> None:
    with HelaMemStore(memory, ttl={"default_ttl": None, "refresh_on_read": True}) as s:
        assert s.supports_ttl
        s.put(NS, "brief", {"text": "parking ticket expires soon"}, ttl=0.0005)  # 30 ms
        s.put(NS, "kept", {"text": "parking spot is 4B"})
        time.sleep(1.1)  # SqliteStore compares expiry times to the second
        assert s.sweep_ttl() == 1
        assert s.get(NS, "brief") is None
        assert [i.key for i in s.search(NS, query="parking")] == ["kept"]
        assert memory.stats().memories == 1  # the expired item's memory went with the sweep
    other = HelaMemStore(memory, documents=InMemoryStore())
    assert not other.supports_ttl
    with pytest.raises(NotImplementedError, match="TTL"):
        other.put(NS, "k", {"v": 1}, ttl=5)
    with pytest.raises(NotImplementedError, match="TTL"):
        other.batch([PutOp(NS, "k", {"v": 1}, ttl=5)])
    with pytest.raises(NotImplementedError, match="sweep"):
        other.sweep_ttl()


def test_in_memory_documents(memory: HelaMemory) -> None:
    s = HelaMemStore(memory, documents=InMemoryStore())
    s.put(NS, "k", {"text": "sea otter"})
    s.put(NS, "k", {"text": "river otter"})
    assert memory.stats().memories == 1
    assert [i.value for i in s.search(NS, query="otter")] == [{"text": "river otter"}]


def test_recorded_episodes_come_back_from_query_search(
    store: HelaMemStore, memory: HelaMemory
) -> None:
    u, _ = memory.add_turn(NS, "I parked on level 4B", "Noted: level 4B.")
    hits = store.search(NS, query="where did I park")
    episode = next(h for h in hits if h.key == u.id)
    assert episode.namespace == NS and episode.value["role"] == "user"
    assert episode.value["content"] == "I parked on level 4B"


def _graph(store: HelaMemStore, runtime_node: bool) -> Any:
    def injected(state: MessagesState, store: BaseStore) -> dict[str, Any]:
        hits = store.search(NS, query=str(state["messages"][-1].content), limit=1)
        return {"messages": [AIMessage(hits[0].value["text"] if hits else "?")]}

    def via_runtime(state: MessagesState, runtime: Runtime[None]) -> dict[str, Any]:
        assert runtime.store is not None
        hits = runtime.store.search(NS, query=str(state["messages"][-1].content), limit=1)
        return {"messages": [AIMessage(hits[0].value["text"] if hits else "?")]}

    b = StateGraph(MessagesState)
    b.add_node("bot", via_runtime if runtime_node else injected)  # type: ignore[arg-type]
    b.add_edge(START, "bot")
    b.add_edge("bot", END)
    return b.compile(store=store)


@pytest.mark.parametrize("runtime_node", [False, True])
def test_inside_a_compiled_graph(store: HelaMemStore, runtime_node: bool) -> None:
    store.put(NS, "pet", {"text": "Miso is the cat"})
    store.put(NS, "car", {"text": "the car is blue"})
    graph = _graph(store, runtime_node)
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    out = graph.invoke({"messages": [HumanMessage("what is the cat called")]}, cfg)
    assert out["messages"][-1].content == "Miso is the cat"
    used = store.take_used("t1")
    assert len(used) == 1 and store.take_used("t1") == []  # attributed to the thread once
    store.search(NS, query="cat")  # outside a graph: attributed to no thread
    assert store.take_used("t1") == []


async def test_inside_a_compiled_graph_async(store: HelaMemStore) -> None:
    await store.aput(NS, "pet", {"text": "Miso is the cat"})
    graph = _graph(store, runtime_node=True)
    out = await graph.ainvoke(
        {"messages": [HumanMessage("cat name?")]}, {"configurable": {"thread_id": "t2"}}
    )
    assert out["messages"][-1].content == "Miso is the cat"
    assert len(store.take_used("t2")) == 1


def test_a_query_over_the_cores_limit_is_searched_by_its_end(
    store: HelaMemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query longer than the core's ``MAX_CONTENT_CHARS`` (16 M characters; 200 here)
    raised ``InvalidInputError`` (``InMemoryStore`` takes any): it is searched by its end."""
    monkeypatch.setattr(core_inputs, "MAX_CONTENT_CHARS", 200)
    store.put(("users", "alice"), "pet", {"text": "Alice adopted a cat named Miso"})
    store.put(("users", "alice"), "city", {"text": "Alice lives in Lyon"})
    long = "x " * 150 + "the cat named Miso"  # 318 characters
    assert [i.key for i in store.search(("users",), query=long, limit=1)] == ["pet"]


def test_a_long_query_whose_end_is_blank_finds_nothing_and_raises_nothing(
    store: HelaMemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 123: text, then more blank characters than the core's limit: the end
    searched is blank (the core refuses a blank query)."""
    monkeypatch.setattr(core_inputs, "MAX_CONTENT_CHARS", 200)
    store.put(("users", "alice"), "pet", {"text": "Alice adopted a cat named Miso"})
    assert store.search(("users",), query="cat Miso" + " " * 300) == []


def test_a_sweep_takes_the_expired_documents_memories_and_their_facts(
    memory: HelaMemory,
) -> None:
    """Helper 143 F2: ``sweep_ttl`` deleted the expired documents only; their memories
    stayed in the core until a search met them, so a consolidation after the sweep
    distilled new facts from the expired text, and facts distilled before it stayed in
    listings and search. The sweep now deletes the memories of the documents it swept,
    and with them the facts that cite them; a cleanup that failed is done by the next
    sweep, though that one sweeps nothing (review 145)."""
    ns = ("docs", "alice")
    with HelaMemStore(memory, ttl={"default_ttl": None}) as store:
        for i in range(6):
            text = f"alice dog Rex park walk morning zorblax {i}"
            store.put(ns, f"k{i}", {"text": text}, ttl=0.0005)  # 30 ms
        store.put(ns, "kept", {"text": "alice keeps a garden"})
        for _ in range(4):  # co-activation: the documents cluster
            store.search(ns, query="alice dog Rex park walk morning")
        assert memory.consolidate(ns).facts_added > 0
        time.sleep(1.1)  # SqliteStore compares expiry times to the second
        real = memory.delete

        def down(ids: Any) -> int:
            memory.delete = real  # type: ignore[method-assign]
            raise StorageError("database is locked")

        memory.delete = down  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            store.sweep_ttl()  # the documents went, their memories not yet
        assert store.get(ns, "k0") is None
        assert store.sweep_ttl() == 0  # nothing more to sweep: the cleanup is done now
        assert memory.stats(ns).memories == 1  # the kept document's; no fact, no expired one
        assert memory.consolidate(ns).facts_added == 0
        assert [i.key for i in store.search(ns)] == ["kept"]
        assert store.list_namespaces() == [ns]
        found = memory.search("zorblax", ns, k=5, semantic_k=5, learn=False)
        assert all("zorblax" not in h.content for h in found)


def test_a_sweeps_scan_does_not_hold_up_puts(
    memory: HelaMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 145: after a sweep that deleted documents, the store read every store
    memory (0.49 s at 20,000 documents) holding the writer lock, so every put of every
    thread and process on the path waited for it. The scan now runs without the lock;
    only the memories it found unnamed are read again and deleted under it."""
    from helamem.langgraph import _writes

    ns = ("docs", "alice")
    with HelaMemStore(memory, ttl={"default_ttl": None}) as store:
        store.put(ns, "old", {"text": "alice walked her dog Rex"}, ttl=0.0005)
        store.put(ns, "kept", {"text": "alice keeps a garden"})
        time.sleep(1.1)  # SqliteStore compares expiry times to the second
        scan = _writes._store_memories
        put_done: list[bool] = []

        def scanning(mem: HelaMemory) -> Any:
            # a put from another thread while the sweep scans: it must not wait
            def put() -> None:
                store.put(ns, "new", {"text": "alice bought a bike"})
                put_done.append(True)

            worker = threading.Thread(target=put)
            worker.start()
            worker.join(10)
            assert put_done == [True]  # the put went through during the scan
            return scan(mem)

        monkeypatch.setattr(_writes, "_store_memories", scanning)
        assert store.sweep_ttl() == 1
        monkeypatch.setattr(_writes, "_store_memories", scan)
        assert store.get(ns, "old") is None
        assert sorted(i.key for i in store.search(ns)) == ["kept", "new"]
        assert memory.stats(ns).memories == 2  # the expired document's memory went
        found = memory.search("walked dog Rex", ns, k=5, learn=False)
        assert all("Rex" not in h.content for h in found)


@pytest.mark.parametrize(
    ("scope", "meta"),
    [
        (NS, {"langgraph": {"namespace": ["users", "bob"], "key": "secret"}}),  # another's
        (NS, {"langgraph": "v1"}),
        (NS, {"langgraph": {}}),
        (NS, {"langgraph": {"namespace": ["users", "a.b"], "key": "k"}}),
        (("users", "a.b"), {"langgraph": {"namespace": ["users", "a.b"], "key": "k"}}),
    ],
    ids=["other-tenant", "str", "empty", "bad-namespace", "own-unaddressable"],
)
def test_langgraph_metadata_of_another_writer_reaches_no_other_tenant(
    memory: HelaMemory, scope: tuple[str, ...], meta: dict[str, Any]
) -> None:
    """Helper 144: the store took any memory whose metadata has a "langgraph" key (any
    core writer, or an AutoGen ``MemoryContent.metadata``, may store one) as a document
    memory and trusted the address in it: Alice's search returned Bob's document
    ("Bob's bank PIN is 4321"), and malformed values made every search over a shared
    prefix raise. Only metadata naming a document of the memory's own scope, one
    LangGraph accepts as a namespace, is the store's (review 145: a scope with "." named
    by its own memory still made searches, sweeps and repair raise): the rest is never
    shown nor deleted by the store."""
    sweep = meta == {"langgraph": {"namespace": ["users", "a.b"], "key": "k"}}
    with HelaMemStore(memory, ttl={"default_ttl": None}) as store:
        store.put(("users", "bob"), "secret", {"text": "Bob's bank PIN is 4321"})
        store.put(NS, "note", {"text": "Alice likes tea"})
        if sweep:
            store.put(("docs",), "brief", {"text": "expiring"}, ttl=0.0005)  # 30 ms
        memory.add("bank PIN reminder, likes tea", scope, metadata=meta)
        for prefix in (NS, ("users",)):
            got = store.search(prefix, query="bank PIN likes tea", limit=10)
            assert all(i.namespace[: len(prefix)] == prefix for i in got)
        assert {i.key for i in store.search(NS, query="bank PIN", limit=10)} == {"note"}
        assert store.get(("users", "bob"), "secret") is not None
        if sweep:
            time.sleep(1.1)  # SqliteStore compares expiry times to the second
            assert store.sweep_ttl() == 1
            assert memory.stats(("docs",)).memories == 0  # the swept document's memory went
        store.repair()
        assert memory.stats(scope).memories == 1 + (scope == NS)  # the other writer's stays


def test_a_store_search_deletes_no_other_tenants_memory(memory: HelaMemory) -> None:
    """Helper 144: a search meeting a memory with foreign "langgraph" metadata deleted it
    as a stale document memory, with every memory of any scope whose caller-chosen id
    starts with "<its id>." (Bob's "note.1" went with Carol's "note")."""
    with HelaMemStore(memory) as store:
        carol = ("users", "carol")
        memory.add_many(
            [
                NewMemory(
                    "Carol's tagged note about tea",
                    carol,
                    id="note",
                    metadata={"langgraph": {"namespace": ["imports"], "key": "tea"}},
                ),
                NewMemory("Bob's own memory about tea, part 1", ("users", "bob"), id="note.1"),
            ]
        )
        store.search(("users",), query="tea", limit=10)
        store.repair()
        assert memory.get("note").id == "note" and memory.get("note.1").id == "note.1"

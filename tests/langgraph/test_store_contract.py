"""HelaMemStore keeps LangGraph's store contract: issue 17's cases, each with its right value."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.store.base import BaseStore, GetOp, Item, PutOp, SearchOp

from helamem.core import (
    EmbeddingError,
    HelaMemory,
    InvalidInputError,
    StoreClosedError,
)
from helamem.langgraph import ID_FIELD, HelaMemStore

NS = ("users", "alice")


@pytest.fixture
def memory(tmp_path: Path, new_memory: Any) -> Iterator[HelaMemory]:
    m = new_memory(tmp_path / "mem")
    yield m
    m.close()


@pytest.fixture
def store(memory: HelaMemory) -> Iterator[HelaMemStore]:
    with HelaMemStore(memory) as s:
        yield s


def _keys(items: list[Any]) -> list[str]:
    return sorted(i.key for i in items)


# -- 1. filters mean one thing, with or without a query -------------------------


def test_filters_agree_with_and_without_a_query(store: HelaMemStore) -> None:
    people: dict[str, dict[str, Any]] = {
        "t1": {"text": "note one", "age": 30, "done": True, "meta": {"prio": 10}},
        "t2": {"text": "note two", "age": 30, "meta": {"prio": 5}},
        "t3": {"text": "note three", "age": 30, "done": False},
        "t4": {"text": "note four", "age": 31, "meta": {"prio": 10, "x": 1}},
        "t5": {"text": "note five"},
    }
    for k, v in people.items():
        store.put(NS, k, v)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"age": {"$ne": 30}}, ["t4", "t5"]),  # a missing field is not 30
        ({"done": {"$ne": True}}, ["t2", "t3", "t4", "t5"]),  # kept, as in InMemoryStore
        ({"meta": {"prio": 10}}, ["t1", "t4"]),  # nested: field by field
        ({"meta": {"prio": {"$gte": 6}}}, ["t1", "t4"]),
        ({"age": {"$gt": 30}}, ["t4"]),  # an order comparison never matches a missing field
        ({"age": 30, "done": True}, ["t1"]),
        ({1: 1}, []),  # a strange key matches nothing (trial: TypeError), as in InMemoryStore
    ]
    for flt, want in cases:
        assert _keys(store.search(NS, filter=flt, limit=20)) == want, flt
        assert _keys(store.search(NS, query="note", filter=flt, limit=20)) == want, flt
    for query in (None, "note"):
        with pytest.raises(InvalidInputError, match=r"\$in"):
            store.search(NS, query=query, filter={"age": {"$in": [30]}})
        with pytest.raises(InvalidInputError, match=r"\$bad"):
            store.search(NS, query=query, filter={"meta": {"prio": {"$bad": 1}}})


def test_order_filters_compare_strings_and_booleans_as_langgraph_stores_do(
    store: HelaMemStore,
) -> None:
    """``$gt``/``$gte``/``$lt``/``$lte`` on strings (ISO dates) compare them as strings, as
    ``SqliteStore`` (the default document store) and ``PostgresStore`` do, and booleans as
    0/1, as both ``InMemoryStore`` and ``SqliteStore`` do: they never silently match nothing."""
    events: dict[str, dict[str, Any]] = {
        "e1": {"text": "event one", "date": "2023-05-01", "ok": True},
        "e2": {"text": "event two", "date": "2024-05-01", "ok": False},
        "e3": {"text": "event three", "date": "2024-12-31"},
        "e4": {"text": "event four", "date": 20240101},  # a number is no date string
    }
    for k, v in events.items():
        store.put(NS, k, v)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"date": {"$gt": "2024-01-01"}}, ["e2", "e3"]),
        ({"date": {"$gte": "2023-05-01", "$lt": "2024-06-01"}}, ["e1", "e2"]),
        ({"date": {"$lte": "2024-05-01"}}, ["e1", "e2"]),
        ({"ok": {"$gt": 0}}, ["e1"]),
        ({"ok": {"$lte": 0}}, ["e2"]),
        ({"date": {"$gt": 1}}, ["e4"]),  # numbers still compare as numbers
    ]
    for flt, want in cases:
        assert _keys(store.search(NS, filter=flt, limit=20)) == want, flt
        assert _keys(store.search(NS, query="event", filter=flt, limit=20)) == want, flt


def test_a_rare_filter_match_is_found_past_the_overfetch(memory: HelaMemory) -> None:
    with HelaMemStore(memory, filter_overfetch=1) as s:
        for i in range(40):
            s.put(NS, f"k{i}", {"text": f"walrus colony {i}", "rare": i == 39})
        hits = s.search(NS, query="walrus colony", filter={"rare": True}, limit=2)
        assert [h.key for h in hits] == ["k39"]


# -- 2. recorded memories are first-class items (or left out) ---------------------


def test_recorded_turns_are_items(store: HelaMemStore, memory: HelaMemory) -> None:
    store.put(NS, "doc", {"text": "the garage is on level 2"})
    u, a = memory.add_turn(("users", "bob"), "I parked on level 4B", "Noted: level 4B.")
    hits = store.search(("users",), query="parked level 4B", limit=5)
    turn = next(h for h in hits if h.key == u.id)
    assert turn.namespace == ("users", "bob") and turn.value["content"] == "I parked on level 4B"
    got = store.get(("users", "bob"), u.id)
    assert got is not None and got.value == turn.value
    assert store.get(NS, u.id) is None  # addressed by its own namespace only
    assert ("users", "bob") in store.list_namespaces()  # a namespace holding only turns
    listed = store.search(("users", "bob"))
    assert _keys(listed) == sorted([u.id, a.id])
    assert next(i.key for i in store.search(("users",))) == "doc"  # documents first
    assert _keys(store.search(("users", "bob"), filter={"role": "user"})) == [u.id]
    store.delete(("users", "bob"), u.id)
    assert store.get(("users", "bob"), u.id) is None
    assert u.id not in {h.key for h in store.search(("users",), query="parked level 4B")}
    store.put(("users", "bob"), a.id, {"text": "replaced by a document"})  # a put replaces it
    got = store.get(("users", "bob"), a.id)
    assert got is not None and got.value == {"text": "replaced by a document"}
    assert memory.stats(("users", "bob")).memories == 1


async def test_recorded_turns_async(store: HelaMemStore, memory: HelaMemory) -> None:
    u, _ = await memory.aadd_turn(NS, "my locker code is 1234", "Got it.")
    got = await store.aget(NS, u.id)
    assert got is not None and got.value["role"] == "user"
    await store.adelete(NS, u.id)
    assert await store.aget(NS, u.id) is None


def test_recorded_false_leaves_them_out(memory: HelaMemory) -> None:
    u, _ = memory.add_turn(NS, "I parked on level 4B", "Noted: level 4B.")
    with HelaMemStore(memory, recorded=False) as s:
        s.put(NS, "doc", {"text": "parking rules"})
        assert [h.key for h in s.search(NS, query="parked level 4B")] == ["doc"]
        assert s.get(NS, u.id) is None
        assert [i.key for i in s.search(NS)] == ["doc"]
        assert s.list_namespaces() == [NS]


# -- 3. batch: reads see the state before the batch; writes are one transaction ----


async def test_abatch_reads_before_writes(store: HelaMemStore) -> None:
    store.put(NS, "k", {"text": "old heron"})
    res = await store.abatch(
        [
            PutOp(NS, "k", {"text": "new egret"}),
            SearchOp(NS, query="egret"),
            PutOp(NS, "k", None),
            PutOp(NS, "j", {"text": "kingfisher"}),
        ]
    )
    assert [i.value for i in res[1]] == [{"text": "old heron"}]  # type: ignore[union-attr]
    assert await store.aget(NS, "k") is None and await store.aget(NS, "j") is not None


def test_failed_batch_writes_nothing(
    store: HelaMemStore, memory: HelaMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put(NS, "a", {"text": "kept"})
    store.put(NS, "z", {"text": "also kept"})

    def fail(*_: Any, **__: Any) -> Any:
        raise EmbeddingError("embedder down")

    monkeypatch.setattr(memory, "add_many", fail)
    with pytest.raises(EmbeddingError):
        store.batch(
            [
                PutOp(NS, "a", {"text": "changed"}),
                PutOp(NS, "z", None),
                PutOp(NS, "b", {"text": "new"}),
            ]
        )
    monkeypatch.undo()
    got = store.get(NS, "a")
    assert got is not None and got.value == {"text": "kept"}
    assert store.get(NS, "z") is not None and store.get(NS, "b") is None
    assert memory.stats().memories == 2


def test_batch_reads_racing_another_writer_return_only_stored_values(
    store: HelaMemStore, memory: HelaMemory
) -> None:
    """README (Batch): "while another thread or process writes, each read of a batch sees
    the state at the moment it runs ... Every value read is one that was stored." Another
    store object rewrites one key without pause while batches get, list and query it: the
    key is never missing from a get or a listing, never listed twice, and every value read
    is one of the values written (never a recorded memory's, nor a torn one)."""
    stored = [{"text": "heron note", "v": 0}]
    store.put(NS, "k", stored[0])
    done = threading.Event()

    def rewrite() -> None:
        with HelaMemStore(memory) as other:
            deadline = time.monotonic() + 20
            for v in range(1, 151):
                if done.is_set() or time.monotonic() > deadline:
                    break
                value = {"text": "heron note", "v": v}
                stored.append(value)  # before the put: a read may see it as soon as it lands
                other.put(NS, "k", value)

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    try:
        deadline = time.monotonic() + 20
        while writer.is_alive() and reads < 300 and time.monotonic() < deadline:
            got, listing, ranked = store.batch(
                [GetOp(NS, "k"), SearchOp(NS, limit=10), SearchOp(NS, query="heron note")]
            )
            assert isinstance(got, Item) and got.value in stored
            assert isinstance(listing, list) and isinstance(ranked, list)
            assert [i.key for i in listing] == ["k"] and listing[0].value in stored
            assert all(i.key == "k" and i.value in stored for i in ranked)
            reads += 1
    finally:
        done.set()
        writer.join(timeout=30)
    assert not writer.is_alive() and reads > 0
    last = store.get(NS, "k")
    assert last is not None and last.value == stored[-1]
    assert memory.stats().memories == 1  # one memory for the one item: no orphan left


# -- 4. use after close -----------------------------------------------------------


def test_use_after_close_raises_a_typed_error(memory: HelaMemory) -> None:
    with HelaMemStore(memory) as s:
        s.put(NS, "k", {"text": "a heron"})
        b = StateGraph(MessagesState)

        def node(state: MessagesState, store: BaseStore) -> dict[str, Any]:
            hits = store.search(NS, query="heron")
            return {"messages": [AIMessage(str(len(hits)))]}

        b.add_node("bot", node)
        b.add_edge(START, "bot")
        b.add_edge("bot", END)
        graph = b.compile(store=s)
        assert graph.invoke({"messages": [HumanMessage("hi")]})["messages"][-1].content == "1"
    calls: list[Callable[[], object]] = [
        lambda: s.get(NS, "k"),
        lambda: s.search(NS, query="heron"),
        lambda: s.search(NS),
        lambda: s.put(NS, "k", {"text": "x"}),
        lambda: s.list_namespaces(),
        lambda: asyncio.run(s.aget(NS, "k")),
        lambda: graph.invoke({"messages": [HumanMessage("hi")]}),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError, match=r"HelaMemStore\(memory\)"):
            call()


# -- 5. one paging rule ------------------------------------------------------------


@pytest.mark.parametrize(("limit", "offset"), [(-1, 0), (2, -1), (-5, -5)])
def test_negative_paging_is_refused_with_and_without_a_query(
    store: HelaMemStore, limit: int, offset: int
) -> None:
    store.put(NS, "k", {"text": "otter"})
    for query in (None, "otter"):
        with pytest.raises(InvalidInputError, match="must be an int >= 0"):
            store.search(NS, query=query, limit=limit, offset=offset)
    with pytest.raises(InvalidInputError, match="must be an int >= 0"):
        store.list_namespaces(limit=limit, offset=offset)
    assert store.search(NS, limit=0) == store.search(NS, query="otter", limit=0) == []


# -- 6. configuration and defaults ----------------------------------------------


def test_langgraph_index_config(memory: HelaMemory) -> None:
    for index in ({"fields": ["title"], "dims": 256}, {"text_fields": ["title"], "dims": 256}):
        with HelaMemStore(memory, index=index) as s:
            assert s.fields == ["title"] and s.index_config == index
            s.put(NS, "d", {"title": "heron", "body": "pelican"})
            s.put(NS, "e", {"title": "pelican", "body": "heron"})
            assert [i.key for i in s.search(NS, query="heron", limit=1)] == ["d"]
            s.delete(NS, "d")
            s.delete(NS, "e")
    with pytest.raises(InvalidInputError, match="differ"):
        HelaMemStore(memory, index={"fields": ["a"]}, fields=["b"])


def test_default_embeds_values_not_json(store: HelaMemStore, memory: HelaMemory) -> None:
    store.put(NS, "k", {"text": "Alice has a cat", "n": 3, "tags": ["pets"], "x": None})
    store.put(NS, "j", {"info": {"text": "Bob rides a bike"}}, index=["info"])
    contents = sorted(h.content for h in memory.search("Alice Bob", NS, k=5, learn=False))
    assert contents == ["Alice has a cat\n3\npets", "Bob rides a bike"]


def test_per_item_index_whole_value(store: HelaMemStore) -> None:
    store.put(NS, "k", {"a": "lighthouse", "b": {"c": "keeper"}}, index=["$"])
    assert [i.key for i in store.search(NS, query="keeper")] == ["k"]


# -- 8. ranking, unindexed items, the reserved root, TTL -----------------------------


def test_puts_create_no_temporal_edges(store: HelaMemStore, memory: HelaMemory) -> None:
    for i, text in enumerate(["apple pie", "red sports car", "apple tart", "red apple"]):
        store.put(NS, f"d{i}", {"text": text, "color": "red" if "red" in text else "none"})
    assert memory.stats().edges == 0
    for _ in range(5):  # searches learn, but the exact match stays first
        hits = store.search(NS, query="red apple", limit=4)
        assert hits[0].key == "d3"
        hits = store.search(NS, query="apple", filter={"color": "red"}, limit=2)
        assert hits[0].key == "d3"


def test_unindexed_items_come_back_with_score_none(store: HelaMemStore) -> None:
    store.put(NS, "a", {"text": "zebra"})
    store.put(NS, "b", {"text": "zebra stripes"}, index=False)
    store.put(NS, "c", {"other": 1}, index=["text"])  # nothing to embed
    hits = store.search(NS, query="zebra", limit=10)
    assert next(h.key for h in hits) == "a" and hits[0].score is not None
    assert {(h.key, h.score) for h in hits[1:]} == {("b", None), ("c", None)}
    assert [h.key for h in store.search(NS, query="zebra", limit=1, offset=1)] in (["b"], ["c"])
    assert len(store.search(NS, query="zebra", limit=10, offset=2)) == 1


def test_put_with_an_empty_index_list_is_unindexed(store: HelaMemStore) -> None:
    # LangGraph's stores read index=[] as "index no path": the item is stored unindexed
    # (score None in a query search), not indexed on the store's default fields
    store.put(NS, "a", {"text": "zebra stripes"}, index=[])
    store.put(NS, "b", {"text": "zebra"})
    hits = store.search(NS, query="zebra stripes", limit=10)
    assert [(h.key, h.score is None) for h in hits] == [("b", False), ("a", True)]
    assert store.get(NS, "a").value == {"text": "zebra stripes"}  # type: ignore[union-attr]


def test_reserved_root_only_in_put(store: HelaMemStore) -> None:
    from langgraph.store.base import InvalidNamespaceError

    with pytest.raises(InvalidNamespaceError):
        store.put(("langgraph", "x"), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):
        asyncio.run(store.aput(("langgraph", "x"), "k", {"v": 1}))
    assert store.batch([PutOp(("langgraph", "x"), "k", {"v": 1})]) == [None]
    assert asyncio.run(store.abatch([PutOp(("langgraph", "y"), "k", {"v": 1})])) == [None]


def test_ttl_sweeper(memory: HelaMemory) -> None:
    ttl: Any = {"default_ttl": 1 / 60, "sweep_interval_minutes": 0.5 / 60}
    with HelaMemStore(memory, ttl=ttl) as s:
        future = s.start_ttl_sweeper()
        s.put(NS, "k", {"text": "brief note"})
        assert s.get(NS, "k") is not None
        deadline = time.monotonic() + 10
        while s.get(NS, "k", refresh_ttl=False) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert s.get(NS, "k") is None
        assert s.stop_ttl_sweeper(timeout=5)
        assert future.done()
    with HelaMemStore(memory) as s:  # no TTL config: nothing to sweep
        assert s.start_ttl_sweeper().done()


def test_a_document_shadows_a_recorded_memory_at_its_address(
    store: HelaMemStore, memory: HelaMemory
) -> None:
    # what a put replacing a recorded memory leaves when killed before it deleted it
    u, a = memory.add_turn(NS, "my bike is a blue Brompton", "Nice bike.")
    store.documents.put(NS, u.id, {"text": "a document", ID_FIELD: {"id": None}}, index=False)
    got = store.get(NS, u.id)
    assert got is not None and got.value == {"text": "a document"}
    assert sorted(i.key for i in store.search(NS, limit=10)) == sorted([u.id, a.id])
    hits = store.search(NS, query="blue Brompton bike", limit=10)
    assert [(h.key, h.score) for h in hits if h.key == u.id] == [(u.id, None)]


# -- 8. fields: each embedded separately, an item scores by its best field ---------


def test_each_field_is_embedded_separately(store: HelaMemStore, memory: HelaMemory) -> None:
    fields = ["title", "body"]
    store.put(NS, "a", {"title": "heron", "body": "boats sails harbour ropes"}, index=fields)
    store.put(NS, "b", {"title": "heron"}, index=fields)
    hits = {h.key: h.score for h in store.search(NS, query="heron", limit=5)}
    assert set(hits) == {"a", "b"} and hits["a"] == pytest.approx(hits["b"])
    assert memory.stats().memories == 3  # a: two fields, b: one
    store.put(NS, "a", {"title": "egret", "body": "x", "notes": "y"}, index=[*fields, "notes"])
    assert memory.stats().memories == 4  # a's old fields replaced by its three new ones
    store.put(
        NS, "c", {"chapters": [{"t": "owls hunt"}, {"t": "owls sleep"}]}, index=["chapters[*].t"]
    )
    assert [h.key for h in store.search(NS, query="owls sleep", limit=1)] == ["c"]
    assert memory.stats().memories == 6
    store.delete(NS, "a")
    store.delete(NS, "c")
    assert memory.stats().memories == 1


def test_repair_restores_a_partly_deleted_field_family(
    store: HelaMemStore, memory: HelaMemory
) -> None:
    store.put(NS, "a", {"title": "heron", "body": "pelican"}, index=["title", "body"])
    ids = sorted(h.id for h in memory.search("heron pelican", NS, k=5, learn=False))
    assert len(ids) == 2
    memory.delete(ids[0])  # the primary memory, behind the store's back
    report = store.repair()
    assert report.readded == 1 and report.unindexed == 0
    assert memory.stats().memories == 2
    assert [h.key for h in store.search(NS, query="pelican")] == ["a"]


def test_a_document_that_cannot_be_reindexed_keeps_its_ttl(
    store: HelaMemStore, memory: HelaMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # repair() rewrites a document whose memory is missing and cannot be re-added as
    # unindexed: it must still expire (it was rewritten without its TTL: kept forever)
    store.put(NS, "short", {"text": "a heron on the pier"}, ttl=0.5 / 60)
    store.put(NS, "kept", {"text": "a pelican on the pier"})
    for key in ("short", "kept"):
        doc = store.documents.get(NS, key)
        assert doc is not None
        memory.delete(doc.value[ID_FIELD]["id"])  # behind the store's back

    def refuse(*_: Any, **__: Any) -> None:
        raise InvalidInputError("the text no longer embeds")

    monkeypatch.setattr(memory, "add_many", refuse)
    report = store.repair()
    assert (report.readded, report.unindexed) == (0, 2)
    deadline = time.monotonic() + 10
    while store.get(NS, "short", refresh_ttl=False) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        store.sweep_ttl()
    assert store.get(NS, "short", refresh_ttl=False) is None  # expired, as put
    kept = store.get(NS, "kept", refresh_ttl=False)
    assert kept is not None and kept.value == {"text": "a pelican on the pier"}


class _Colour(Enum):
    RED = "red"


@dataclass
class _Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        ({"text": "a\ud800b"}, TypeError, "surrogates not allowed"),
        ({"\udc00": 1}, TypeError, "surrogates not allowed"),
        ({"n": 2**70}, TypeError, "64-bit"),
        ({"b": b"raw"}, TypeError, "base64"),
        ({"s": {1, 2}}, TypeError, "a set as a list"),
        ({"x": float("nan")}, ValueError, "NaN or infinity"),
        ({"deep": [1, {"x": float("-inf")}]}, ValueError, "NaN or infinity"),
        # trial: orjson writes these as text or an object, so they read back changed
        ({"when": datetime(2024, 1, 2, 3, 4, 5)}, TypeError, r"datetime at \['when'\]"),
        ({"d": [date(2024, 1, 2)]}, TypeError, r"date at \['d'\]\[0\]"),
        ({"id": uuid.UUID(int=5)}, TypeError, r"UUID at \['id'\]"),
        ({"c": _Colour.RED}, TypeError, "_Colour at"),
        ({"p": _Point(1, 2)}, TypeError, "_Point at"),
    ],
)
def test_a_value_json_cannot_hold_raises_a_named_error_and_writes_nothing(
    store: HelaMemStore, value: dict[str, Any], error: type[Exception], says: str
) -> None:
    """A value orjson cannot encode raised orjson's bare ``TypeError`` from inside the
    document write (after the memories were added and then settled away), and a NaN
    was stored as ``null`` (read back as ``None``: wrong data). Now both are refused
    before anything is written, with the put's address and the fix named; the store's
    earlier item stays."""
    store.put(NS, "k", {"text": "kept"})
    with pytest.raises(error, match=says) as err:
        store.put(NS, "k", value)
    assert "('users', 'alice')/'k'" in str(err.value)
    with pytest.raises(error, match=says):
        asyncio.run(store.abatch([PutOp(NS, "other", {"text": "fine"}), PutOp(NS, "k", value)]))
    item = store.get(NS, "k")
    assert item is not None and item.value == {"text": "kept"}
    assert store.get(NS, "other") is None  # the batch wrote nothing
    assert [h.key for h in store.search(NS, query="kept")] == ["k"]
    for index in (False, ["text"]):  # not indexed: it was stored and read back as a str
        with pytest.raises(error, match=says):
            store.put(NS, "k", {"text": "t", **value}, index=index)
    assert store.get(NS, "k").value == {"text": "kept"}  # type: ignore[union-attr]


@pytest.mark.parametrize("where", ["namespace", "key"])
def test_a_lone_surrogate_in_an_address_is_refused_by_name(store: HelaMemStore, where: str) -> None:
    """It raised ``ValueError: Error executing GET query`` with SQL text from the
    document store (``SqliteStore``), or passed a ``get`` unnoticed."""
    from langgraph.store.base import InvalidNamespaceError

    ns, key = ((*NS, "x\ud800"), "k") if where == "namespace" else (NS, "k\udfff")
    error = InvalidNamespaceError if where == "namespace" else InvalidInputError
    for call in (
        lambda: store.put(ns, key, {"text": "t"}),
        lambda: store.get(ns, key),
        lambda: asyncio.run(store.aget(ns, key)),
    ):
        with pytest.raises(error, match="lone surrogate"):
            call()
    if where == "namespace":
        with pytest.raises(InvalidNamespaceError, match="lone surrogate"):
            store.search(ns, query="t")


def test_times_are_aware_utc_so_documents_and_turns_sort_together(
    store: HelaMemStore, memory: HelaMemory
) -> None:
    """``SqliteStore``'s documents had naive times, recorded turns aware ones: sorting a
    search by ``updated_at`` raised ``TypeError`` (new-user trial). ``InMemoryStore``
    gives aware UTC times; so does every item now."""
    memory.add_turn(NS, "I like green tea", "noted")
    store.put(NS, "k", {"text": "green tea is good"})
    items = [*store.search(NS, query="green tea"), store.get(NS, "k")]
    assert len(items) == 4  # the turn's two messages, the document, its get
    for item in items:
        assert item is not None
        assert item.created_at.utcoffset() == item.updated_at.utcoffset() == timedelta(0)
    assert len(sorted(items, key=lambda i: i.updated_at)) == 4  # type: ignore[union-attr]

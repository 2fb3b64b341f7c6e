"""Cases a differential review found wrong, each asserted against what LangGraph's own
stores do (``InMemoryStore``, ``SqliteStore``, ``InMemorySaver``).

* A recorded scope that is no LangGraph namespace (the checkpointer's ``("users",
  user_id)`` for an e-mail ``user_id``) made every listing and query search over
  its prefix raise, hiding every other user's items too.
* A query search refreshed the TTL of every candidate it looked at, not only of
  the items it returned.
* Values whose indexed text is blank by the core's rule (zero-width, NUL) were
  refused, and one such put failed a whole batch.
* Under ``LANGGRAPH_STRICT_MSGPACK`` the graph's state types came back as dicts.
* Offset pages over items indexed on several fields repeated and skipped items.
* A blank query raised instead of searching.
* With ``recorded=False``, ``list_namespaces`` pages followed ``SqliteStore``'s text
  order, not the tuple order of ``InMemoryStore`` (and of ``recorded=True``).
* A search of a run that failed on a thread later deleted went with the first turn
  of the next run on its id, another user's, as a used id.
"""

from __future__ import annotations

import asyncio
import operator
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_store
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.store.base import PutOp
from langgraph.store.memory import InMemoryStore
from langgraph.types import Send

from helamem.core import HelaMemory, TurnRecorder
from helamem.langgraph import HelaMemCheckpointer, HelaMemStore

NS = ("docs",)


@pytest.fixture
def memory(tmp_path: Path, new_memory: Any) -> Iterator[HelaMemory]:
    mem = new_memory(tmp_path / "mem")
    yield mem
    mem.close()


def _bot(state: MessagesState) -> dict[str, Any]:
    return {"messages": [AIMessage("Noted!")]}


def test_a_recorded_scope_that_is_no_namespace_hides_nothing(memory: HelaMemory) -> None:
    builder = StateGraph(MessagesState).add_node(_bot).add_edge(START, "_bot")
    with HelaMemStore(memory) as store, TurnRecorder(memory) as rec:
        store.put(("users", "bob"), "pref", {"text": "bob likes tea"})
        saver = HelaMemCheckpointer(rec, InMemorySaver(), store=store)
        graph = builder.compile(store=store, checkpointer=saver)
        for uid in ("carol", "alice@example.com"):
            run = {"configurable": {"thread_id": uid, "user_id": uid}}
            graph.invoke({"messages": [("user", "I like tea")]}, run)
        rec.flush_sync()
        assert ("users", "alice@example.com") in store.list_namespaces()
        for prefix in (("users",), ()):
            listed = store.search(prefix, limit=20)
            found = store.search(prefix, query="tea", limit=20)
            for items in (listed, found):
                spaces = {tuple(i.namespace) for i in items}
                assert spaces == {
                    ("users", "bob"),
                    ("users", "carol"),
                    ("users", "alice@example.com"),
                }
                assert len(items) == 5  # bob's document and two turns of two memories
        ttl = HelaMemStore(memory, ttl={"default_ttl": 60, "refresh_on_read": True})
        assert len(ttl.search(("users",), query="tea", limit=20)) == 5  # refreshing skips them
        assert len(ttl.search(("users",), limit=20)) == 5
        ttl.close()


def test_a_query_search_refreshes_only_the_items_it_returns(memory: HelaMemory) -> None:
    with HelaMemStore(memory, ttl={"default_ttl": None, "refresh_on_read": True}) as store:
        # SqliteStore refreshes to CURRENT_TIMESTAMP (whole seconds) + ttl, so the
        # timings keep a second of margin either way.
        store.put(NS, "wanted", {"text": "tea with lemon", "keep": 1}, ttl=2 / 60)  # 2 s
        store.put(NS, "other", {"text": "tea with milk", "keep": 0}, ttl=2 / 60)
        for _ in range(4):
            time.sleep(0.75)
            got = store.search(NS, query="tea", filter={"keep": 1})
            assert [i.key for i in got] == ["wanted"]
        # 3 s on: "other" was only a candidate, so its 2 s ran out; "wanted" was
        # refreshed just now
        assert store.sweep_ttl() == 1
        assert store.get(NS, "other") is None and store.get(NS, "wanted") is not None


@pytest.mark.parametrize(
    ("value", "index"),
    [
        ({"text": "\u200b"}, None),
        ({"text": "\x00"}, None),
        ({"text": " \u2060\ufeff\n"}, None),
        ({"title": "\ufeff", "body": "real body text"}, ["title", "body"]),
    ],
)
def test_a_value_with_blank_text_is_stored_as_in_memory_store(
    memory: HelaMemory, value: dict[str, Any], index: list[str] | None
) -> None:
    theirs = InMemoryStore()
    with HelaMemStore(memory) as ours:
        for store in (ours, theirs):
            store.batch([PutOp(NS, "good", {"text": "hello"}), PutOp(NS, "odd", value, index)])
            for key in ("good", "odd"):
                item = store.get(NS, key)
                assert item is not None
            assert store.get(NS, "odd").value == value  # type: ignore[union-attr]
        indexed = memory.stats(NS).memories
        assert indexed == (2 if "body" in value else 1)  # only visible text is indexed
        assert [i.key for i in ours.search(NS, query="hello")][:1] == ["good"]


_STRICT = """
import dataclasses, enum, sys
from typing import TypedDict
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, TurnRecorder
from helamem.langgraph import HelaMemCheckpointer

class Color(enum.Enum):
    RED = "red"

@dataclasses.dataclass
class Pet:
    name: str
    color: Color

class PetState(TypedDict):
    pet: Pet

def rename(state: PetState) -> dict:
    return {"pet": Pet(state["pet"].name + "!", Color.RED)}

builder = StateGraph(PetState).add_node(rename).add_edge(START, "rename")
run = {"configurable": {"thread_id": "t"}}
mem = HelaMemory(HelaMemConfig(path=sys.argv[1]), embedder=HashingEmbedder(64))
with TurnRecorder(mem) as rec:
    for saver in (None, InMemorySaver()):
        checkpointer = HelaMemCheckpointer(rec, saver)
        graph = builder.compile(checkpointer=checkpointer)  # before the block opens it
        with checkpointer:
            graph.invoke({"pet": Pet("rex", Color.RED)}, run)
            pet = graph.get_state(run).values["pet"]
            graph.invoke({"pet": pet}, run)  # the next turn reads the restored state
            print(repr(pet), repr(graph.get_state(run).values["pet"]))
mem.close()
"""


def test_strict_msgpack_state_types_come_back_as_themselves(tmp_path: Path) -> None:
    env = {**os.environ, "LANGGRAPH_STRICT_MSGPACK": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-c", _STRICT, str(tmp_path / "mem")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    want = "Pet(name='rex!', color=<Color.RED: 'red'>) Pet(name='rex!!', color=<Color.RED: 'red'>)"
    assert done.stdout.splitlines() == [want, want]  # the default saver, then InMemorySaver


def test_offset_pages_over_several_fields_cover_each_item_once(memory: HelaMemory) -> None:
    words = ["stone", "cloud", "maple", "tiger", "ocean", "violet", "candle", "harbor"]
    rnd = random.Random(2)
    with HelaMemStore(memory, index={"fields": ["title", "parts[*].t"]}, spread=False) as s:
        for i in range(40):  # 80 memories: more than the core's candidate pool (50)
            value = {
                "title": " ".join(rnd.sample(words, 2)),
                "parts": [{"t": " ".join(rnd.sample(words, 2))}],
            }
            s.put(NS, f"k{i:02d}", value)
        for query in ("apple river", "maple ocean"):  # every score tied, and not
            pages = [s.search(NS, query=query, limit=1, offset=o) for o in range(24)]
            keys = [p[0].key for p in pages]
            assert len(set(keys)) == 24, keys  # no repeat within the candidate pool
            first = [i.key for i in s.search(NS, query=query, limit=24)]
            assert sorted(keys) == sorted(first)  # the pages are the best 24


def test_a_blank_query_lists_instead_of_raising(memory: HelaMemory) -> None:
    with HelaMemStore(memory) as store:
        store.put(NS, "a", {"text": "hello"})
        for query in (" ", "\u200b"):
            got = store.search(NS, query=query)
            assert [(i.key, i.score) for i in got] == [("a", None)]


class Fan(MessagesState):
    results: Annotated[list[int], operator.add]


def _fan_out_graph() -> Any:
    def plan(state: Fan) -> dict[str, Any]:
        return {"messages": [AIMessage("planning, wait")]}

    def final(state: Fan) -> dict[str, Any]:
        return {"messages": [AIMessage(f"final answer {sorted(state['results'])}")]}

    def workers(state: Fan) -> list[Send]:
        return [Send("worker", {"i": i}) for i in range(3)]

    g = StateGraph(Fan).add_node("plan", plan).add_node("final", final)
    g.add_node("worker", lambda s: {"results": [s["i"]]})
    g.add_edge(START, "plan").add_conditional_edges("plan", workers, ["worker"])
    return g.add_edge("worker", "final")


def _join_graph(defer: bool = False) -> Any:
    g = StateGraph(MessagesState)
    g.add_node("a", lambda s: {"messages": [AIMessage("partial from a")]})
    g.add_node("b", lambda s: {}).add_node("b2", lambda s: {})
    g.add_node("c", lambda s: {"messages": [AIMessage("joined final answer")]}, defer=defer)
    return (
        g.add_edge(START, "a").add_edge(START, "b").add_edge("b", "b2").add_edge(["a", "b2"], "c")
    )


@pytest.mark.parametrize(
    ("build", "answer"),
    [
        (_fan_out_graph, "final answer [0, 1, 2]"),
        (_join_graph, "joined final answer"),
        (lambda: _join_graph(defer=True), "joined final answer"),
    ],
    ids=["send-fan-out", "join-edge", "deferred-join"],
)
def test_a_turn_is_recorded_with_the_final_answer_not_an_interim_one(
    memory: HelaMemory, build: Any, answer: str
) -> None:
    with TurnRecorder(memory) as rec:
        graph = build().compile(checkpointer=HelaMemCheckpointer(rec, InMemorySaver()))
        run = {"configurable": {"thread_id": "t", "user_id": "u"}}
        out = graph.invoke({"messages": [("user", "the question")]}, run)
        assert out["messages"][-1].content == answer
        rec.flush_sync()
    found = memory.search("the question", ("users", "u"), k=10, learn=False)
    assert sorted(h.content for h in found) == sorted(["the question", answer])


@pytest.mark.parametrize("recorded", [True, False])
def test_namespaces_are_listed_in_one_order_whatever_recorded_says(
    memory: HelaMemory, recorded: bool
) -> None:
    """``recorded=False`` passed ``list_namespaces`` to ``SqliteStore``, which sorts the
    dotted text (``"user-1"`` before ``"user.x"``): pages held other namespaces than
    ``InMemoryStore``'s and than the same store's with ``recorded=True``."""
    spaces = [("user",), ("user", "x"), ("user-1",), ("user", "x", "y"), ("user 2", "x")]
    ref = InMemoryStore()
    with HelaMemStore(memory, recorded=recorded) as store:
        for ns in spaces:
            for s in (store, ref):
                s.put(ns, "k", {"text": "hello"})
        for kw in (
            {},
            {"limit": 2, "offset": 1},
            {"max_depth": 2, "limit": 3},
            {"prefix": ("*",), "suffix": ("x",)},
        ):
            assert store.list_namespaces(**kw) == ref.list_namespaces(**kw), kw


@pytest.mark.parametrize("run_async", [False, True])
def test_a_deleted_threads_searches_go_with_no_later_turn(
    memory: HelaMemory, monkeypatch: pytest.MonkeyPatch, run_async: bool
) -> None:
    failing = [True]

    def bot(state: MessagesState) -> dict[str, Any]:
        if failing[0]:
            get_store().search(("users", "alice"), query="secret plan")
            raise RuntimeError("the model call failed")
        return {"messages": [AIMessage("ok")]}

    used: list[list[str]] = []
    with HelaMemStore(memory) as store, TurnRecorder(memory) as rec:
        monkeypatch.setattr(rec, "record_turn_sync", lambda **kw: used.append(kw["used_ids"]))
        store.put(("users", "alice"), "plan", {"text": "alice secret plan"})
        saver = HelaMemCheckpointer(rec, InMemorySaver(), store=store)
        builder = StateGraph(MessagesState).add_node(bot).add_edge(START, "bot")
        graph = builder.compile(store=store, checkpointer=saver)
        alice = {"configurable": {"thread_id": "t", "user_id": "alice"}}
        with pytest.raises(RuntimeError):
            graph.invoke({"messages": [("user", "hi")]}, alice)
        if run_async:
            asyncio.run(saver.adelete_thread("t"))
        else:
            saver.delete_thread("t")
        failing[0] = False
        bob = {"configurable": {"thread_id": "t", "user_id": "bob"}}
        graph.invoke({"messages": [("user", "hello")]}, bob)
        assert used == [[]]  # bob's turn used none of alice's memories
        # the control: without the delete, a failed run's search goes with the thread's
        # next turn (the same conversation), so the assertion above can fail
        failing[0] = True
        with pytest.raises(RuntimeError):
            graph.invoke({"messages": [("user", "hi")]}, bob)
        failing[0] = False
        graph.invoke({"messages": [("user", "hello again")]}, bob)
    assert len(used) == 2 and len(used[1]) == 1


def test_an_opted_out_turns_searches_go_with_no_later_turn(
    memory: HelaMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn ``scope=`` opts out of is not learned from: the memories its run's searches
    returned are not recorded as used by the thread's next (recorded) turn either."""

    def bot(state: MessagesState) -> dict[str, Any]:
        question = str(state["messages"][-1].content)
        if "plan" in question:
            get_store().search(("users", "alice"), query="secret plan")
        return {"messages": [AIMessage("ok")]}

    def scope(config: Any) -> tuple[str, ...] | None:
        conf = config.get("configurable", {})
        return None if conf.get("optout") else ("users", str(conf["user_id"]))

    used: list[list[str]] = []
    with HelaMemStore(memory) as store, TurnRecorder(memory) as rec:
        monkeypatch.setattr(rec, "record_turn_sync", lambda **kw: used.append(kw["used_ids"]))
        store.put(("users", "alice"), "plan", {"text": "alice secret plan"})
        saver = HelaMemCheckpointer(rec, InMemorySaver(), store=store, scope=scope)
        builder = StateGraph(MessagesState).add_node(bot).add_edge(START, "bot")
        graph = builder.compile(store=store, checkpointer=saver)
        thread = {"thread_id": "t", "user_id": "alice"}
        graph.invoke(
            {"messages": [("user", "the plan?")]}, {"configurable": {**thread, "optout": True}}
        )
        graph.invoke({"messages": [("user", "hello")]}, {"configurable": thread})
        graph.invoke({"messages": [("user", "the plan again?")]}, {"configurable": thread})
    assert len(used) == 2
    assert used[0] == []  # "hello" searched nothing; the opted-out run's hit is not its
    assert len(used[1]) == 1  # the third turn's own search

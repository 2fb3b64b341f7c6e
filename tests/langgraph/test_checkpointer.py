"""HelaMemCheckpointer: LangGraph's checkpoint conformance suite, and turn recording."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import json
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, SystemMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import DetectedCapabilities
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages
from langgraph.store.base import BaseStore
from langgraph.types import Command, interrupt

from helamem.core import HashingEmbedder, HelaMemory, TurnRecorder
from helamem.langgraph import (
    SCOPE_KEY,
    CheckpointerNotOpenError,
    HelaMemCheckpointer,
    HelaMemStore,
    completed_turn,
    default_scope,
)


async def _conformance(
    mem: HelaMemory, tmp_path: Path, inner: type[BaseCheckpointSaver[Any]] | None
) -> None:
    rec = TurnRecorder(mem)
    counter = itertools.count()

    @checkpointer_test(name=f"HelaMemCheckpointer({inner.__name__ if inner else 'sqlite'})")
    async def factory() -> AsyncIterator[HelaMemCheckpointer]:
        if inner is None:  # the default: AsyncSqliteSaver in a data directory
            path = tmp_path / f"db{next(counter)}"
            async with HelaMemCheckpointer(rec, path=path) as cp:
                yield cp
        else:
            yield HelaMemCheckpointer(rec, inner())

    async with factory.create() as probe:  # optional capabilities: only those forwarded
        assert isinstance(probe, HelaMemCheckpointer)
        caps = {c.value for c in DetectedCapabilities.from_instance(probe.saver).detected}
    report = await validate(factory, capabilities=caps)
    failures = {name: r.failures for name, r in report.results.items() if r.passed is False}
    assert not failures, failures
    for cap in ("put", "put_writes", "get_tuple", "list", "delete_thread"):
        assert report.results[cap].passed is True, cap
    await rec.close()
    await mem.aclose()


async def test_conformance_default_sqlite_saver(tmp_path: Path, new_memory: Any) -> None:
    await _conformance(new_memory(tmp_path / "mem"), tmp_path, None)


async def test_conformance_in_memory_saver(tmp_path: Path, new_memory: Any) -> None:
    await _conformance(new_memory(tmp_path / "mem"), tmp_path, InMemorySaver)


def test_saver_needed_before_use(tmp_path: Path, new_memory: Any) -> None:
    cp = HelaMemCheckpointer(TurnRecorder(new_memory(tmp_path)))
    with pytest.raises(CheckpointerNotOpenError, match="enter the checkpointer"):
        cp.get_tuple({"configurable": {"thread_id": "t"}})
    assert not (tmp_path / "checkpoints.sqlite").exists()  # the constructor did no I/O


def test_default_scope() -> None:
    assert default_scope({"configurable": {"thread_id": "t", "user_id": "u"}}) == ("users", "u")
    assert default_scope({"configurable": {"thread_id": "t"}}) == ("threads", "t")
    assert default_scope({}) is None


def test_completed_turn_needs_a_final_answer() -> None:
    cfg: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    human = HumanMessage("hi", id="h1")
    done: Any = {"channel_values": {"messages": [human, AIMessage("hello")]}}
    assert completed_turn(cfg, done, {"source": "loop"}) == ("t", "h1", "hi", "hello")
    # an answer written with update_state (human in the loop) completes a turn too
    assert completed_turn(cfg, done, {"source": "update"}) == ("t", "h1", "hi", "hello")
    assert completed_turn(cfg, done, {"source": "fork"}) is None
    assert completed_turn(cfg, done, {"source": "input"}) is None
    # every question since the answer before: two sent at once, one never answered
    two: Any = {
        "channel_values": {
            "messages": [
                HumanMessage("old", id="h0"),
                AIMessage("old answer"),
                HumanMessage("my bike is red", id="h1"),
                AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "1"}]),
                HumanMessage("my car is blue", id="h2"),
                AIMessage("noted"),
            ]
        }
    }
    assert completed_turn(cfg, two, {"source": "loop"}) == (
        "t",
        "h2",
        "my bike is red\nmy car is blue",
        "noted",
    )
    # the same question sent again after a failed run (new message ids): asked once
    again: Any = {
        "channel_values": {
            "messages": [
                HumanMessage("what is my flight?", id="r1"),
                HumanMessage("what is my flight?", id="r2"),
                AIMessage("LH123"),
            ]
        }
    }
    assert completed_turn(cfg, again, {"source": "loop"}) == (
        "t",
        "r2",
        "what is my flight?",
        "LH123",
    )
    running: Any = {"channel_values": {"messages": [human, AIMessage("x")], "branch:to:b": None}}
    assert completed_turn(cfg, running, {"source": "loop"}) is None
    tools: Any = {
        "channel_values": {
            "messages": [human, AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "1"}])]
        }
    }
    assert completed_turn(cfg, tools, {"source": "loop"}) is None
    sub: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": "child:1"}}
    assert completed_turn(sub, done, {"source": "loop"}) is None
    dicts: Any = {
        "channel_values": {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": "b"},
            ]
        }
    }
    assert completed_turn(cfg, dicts, {"source": "loop"})[2:] == ("a", "b")  # type: ignore[index]


def _graph(store: HelaMemStore, cp: HelaMemCheckpointer) -> Any:
    def bot(state: MessagesState, store: BaseStore) -> dict[str, Any]:
        question = str(state["messages"][-1].content)
        hits = store.search(("users", "alice"), query=question, limit=3)
        facts = "; ".join(str(h.value.get("content") or h.value.get("text")) for h in hits)
        return {"messages": [AIMessage(f"answer to {question!r} using: {facts}")]}

    b = _linear(MessagesState, ("bot", bot))
    return b.compile(checkpointer=cp, store=store)


class SpyRecorder(TurnRecorder):
    """A real recorder that also remembers what it was asked to record."""

    def __init__(self, memory: HelaMemory) -> None:
        super().__init__(memory)
        self.turns: list[tuple[tuple[str, ...], str, list[str]]] = []

    def record_turn_sync(
        self, scope: Any, user: str, assistant: str, used_ids: Any = (), *a: Any, **kw: Any
    ) -> None:
        self.turns.append((tuple(scope), user, list(used_ids)))
        super().record_turn_sync(scope, user, assistant, used_ids, *a, **kw)


def test_sync_graph_records_each_turn_once_with_used_ids(tmp_path: Path, new_memory: Any) -> None:
    mem = new_memory(tmp_path / "mem")
    store = HelaMemStore(mem)
    store.put(("users", "alice"), "pet", {"text": "alice has a cat named Miso"})
    store.put(("users", "alice"), "job", {"text": "alice is a nurse at night"})
    with SpyRecorder(mem) as rec, HelaMemCheckpointer(rec, store=store) as cp:
        graph = _graph(store, cp)
        cfg: Any = {"configurable": {"thread_id": "a", "user_id": "alice"}}
        graph.invoke({"messages": [HumanMessage("what is the cat called")]}, cfg)
        graph.invoke({"messages": [HumanMessage("where does alice work")]}, cfg)
        rec.flush_sync()
        assert rec.recorded == 2
        assert [(t[0], t[1]) for t in rec.turns] == [
            (("users", "alice"), "what is the cat called"),
            (("users", "alice"), "where does alice work"),
        ]
        assert all(len(t[2]) >= 2 for t in rec.turns)  # the ids bot's search returned
        assert (tmp_path / "mem" / "checkpoints.sqlite").exists()
        assert len(graph.get_state(cfg).values["messages"]) == 4  # forwarded to SqliteSaver
        assert store.take_used("a") == []  # handed to the recorder with the turn
    hits = mem.search("what is the cat called", ("users", "alice"), k=10, learn=False)
    turns = [h.memory for h in hits if h.memory.metadata.get("thread_id") == "a"]
    assert {m.role for m in turns} == {"user", "assistant"}
    store.close()
    mem.close()


async def test_async_graph_records_turns_and_other_threads_recall_them(
    tmp_path: Path, new_memory: Any
) -> None:
    mem = new_memory(tmp_path / "mem")
    store = HelaMemStore(mem)
    async with TurnRecorder(mem) as rec, HelaMemCheckpointer(rec, store=store) as cp:
        graph = _graph(store, cp)
        a: Any = {"configurable": {"thread_id": "a", "user_id": "alice"}}
        b: Any = {"configurable": {"thread_id": "b", "user_id": "alice"}}
        await graph.ainvoke({"messages": [HumanMessage("my sister Ana lives in Lisbon")]}, a)
        await rec.flush()
        out = await graph.ainvoke({"messages": [HumanMessage("where does Ana live")]}, b)
        assert "Lisbon" in out["messages"][-1].content  # thread b recalled thread a's turn
        await rec.flush()
        assert rec.recorded == 2
        state = await graph.aget_state(b)
        assert len(state.values["messages"]) == 2
    store.close()
    await mem.aclose()


class GatedMemory(HelaMemory):
    """Stores a recorded turn only once ``gate`` is set (the owner loop stays free)."""

    gate = threading.Event()

    async def aadd_turns(self, turns: Any) -> Any:
        await asyncio.to_thread(self.gate.wait, 30)
        return await super().aadd_turns(turns)


def test_store_reads_see_the_turn_recorded_just_before_them(
    tmp_path: Path, hela_config: Any
) -> None:
    """Listing a namespace or the namespaces right after a turn was recorded shows it
    (before, those reads ran while the recorder was still storing the turn)."""
    mem = GatedMemory(hela_config(tmp_path / "mem"), embedder=HashingEmbedder(64))
    mem.gate = threading.Event()
    store = HelaMemStore(mem)
    alice, bob = ("users", "alice"), ("users", "bob")
    with TurnRecorder(mem, consolidate_every=None, search_wait_timeout=30) as rec:
        rec.record_turn_sync(alice, "my sister lives in Lisbon", "noted")
        threading.Timer(0.3, mem.gate.set).start()
        listed = store.search(alice, limit=10)
        assert "my sister lives in Lisbon" in {i.value["content"] for i in listed}
        mem.gate.clear()
        rec.record_turn_sync(bob, "bob plays chess", "noted")
        threading.Timer(0.3, mem.gate.set).start()
        assert bob in store.list_namespaces(prefix=("users",))
    store.close()
    mem.close()


@pytest.mark.parametrize("module", ["helamem.langgraph", "helamem.langgraph.checkpoint"])
def test_module_doctests(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def _linear(state: Any, *nodes: tuple[str, Any]) -> Any:
    """A graph of ``state`` running ``nodes`` (name, function) one after another."""
    g = StateGraph(state)
    for name, fn in nodes:
        g.add_node(name, fn)
    names = [START, *(name for name, _ in nodes), END]
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    return g


def _counting_graph(cp: HelaMemCheckpointer) -> Any:
    answers = itertools.count()

    def bot(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"answer {next(answers)}")]}

    g = _linear(MessagesState, ("bot", bot))
    return g.compile(checkpointer=cp)


def _turn_texts(mem: HelaMemory, scope: tuple[str, ...]) -> list[str]:
    hits = mem.search("question answer", scope, k=20, learn=False).hits
    return sorted(h.memory.content for h in hits)


def test_a_turn_replayed_from_an_earlier_checkpoint_is_not_recorded_again(
    tmp_path: Path, new_memory: Any
) -> None:
    """Time travel: ``invoke(None, config of the checkpoint before A's answer)`` answers
    question A again; its turn was recorded a second time (with the new answer), as
    the checkpointer remembered only the thread's last recorded message. Now the turn
    goes with ``unique_on`` (thread and human message id), so the store keeps the turn
    as first answered, as the README says of an answer regenerated for a message; a
    new checkpointer (another process) replaying the last turn records nothing too."""
    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    with TurnRecorder(mem) as rec:
        graph = _counting_graph(HelaMemCheckpointer(rec, saver))
        graph.invoke({"messages": [HumanMessage("question A", id="h1")]}, cfg)
        graph.invoke({"messages": [HumanMessage("question B", id="h2")]}, cfg)
        before_a = next(
            s
            for s in graph.get_state_history(cfg)
            if s.next == ("bot",) and s.values["messages"][-1].content == "question A"
        )
        graph.invoke(None, before_a.config)  # answers A again: "answer 2"
        again = _counting_graph(HelaMemCheckpointer(rec, saver))  # a fresh checkpointer
        before_b = next(
            s
            for s in again.get_state_history(cfg)
            if s.next == ("bot",) and s.values["messages"][-1].content == "question B"
        )
        again.invoke(None, before_b.config)
        rec.flush_sync()
    assert _turn_texts(mem, ("threads", "t1")) == [
        "answer 0",
        "answer 1",
        "question A",
        "question B",
    ]
    found = mem.find_ids(("threads", "t1"), metadata={"thread_id": "t1", "message_id": "h1"})
    assert len(found) == 2
    mem.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_thread_id_used_again_after_delete_thread_records_its_own_turns(
    tmp_path: Path, new_memory: Any, mode: str
) -> None:
    """Helper 133: turns went with ``unique_on=(thread_id, message_id)`` for good, so after
    ``delete_thread`` a new conversation on the same thread id whose messages had the ids
    of the first ("1", a client's per-thread ids) was silently not recorded. Now a thread's
    turns carry its epoch (the id of its first checkpoint): a new thread of that id
    records its own, and a replay within one epoch still records nothing twice."""
    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    cfg: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
    with TurnRecorder(mem) as rec:
        cp = HelaMemCheckpointer(rec, saver)
        graph = _counting_graph(cp)
        graph.invoke({"messages": [HumanMessage("my cat is Tom", id="1")]}, cfg)
        if mode == "sync":
            cp.delete_thread("t1")
        else:
            asyncio.run(cp.adelete_thread("t1"))
        graph.invoke({"messages": [HumanMessage("my dog is Rex", id="1")]}, cfg)
        first = next(s for s in graph.get_state_history(cfg) if s.next == ("bot",))
        graph.invoke(None, first.config)  # a replay within the new epoch: nothing new
        rec.flush_sync()
    assert _turn_texts(mem, ("users", "alice")) == [
        "answer 0",
        "answer 1",
        "my cat is Tom",
        "my dog is Rex",
    ]
    mem.close()


def test_a_fork_of_a_threads_first_checkpoint_keeps_its_epoch(
    tmp_path: Path, new_memory: Any
) -> None:
    """Review 134: ``update_state(first_checkpoint, None, as_node="__copy__")`` puts with
    no parent (the first checkpoint has none), which started a new epoch on a thread
    that goes on; another process replaying the first turn from that fork recorded it a
    second time. A put without a parent now starts an epoch only on a thread without
    checkpoints."""
    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    with TurnRecorder(mem) as rec:
        graph = _counting_graph(HelaMemCheckpointer(rec, saver))
        graph.invoke({"messages": [HumanMessage("question A", id="h1")]}, cfg)
        first = list(graph.get_state_history(cfg))[-1]
        fork = graph.update_state(first.config, None, as_node="__copy__")
        again = _counting_graph(HelaMemCheckpointer(rec, saver))  # another process
        again.invoke(None, fork)
        rec.flush_sync()
    assert _turn_texts(mem, ("threads", "t1")) == ["answer 0", "question A"]
    mem.close()


def test_a_thread_stamped_before_epochs_keeps_its_turn_identity(
    tmp_path: Path, new_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread whose checkpoints were stamped by a version without epochs: its turns
    were stored under ``(thread_id, message_id)``; a replay of one now (the stamps carry
    no epoch) must find it, not record it again."""
    from helamem.langgraph import checkpoint
    from helamem.langgraph._scopes import ScopeBook

    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    stamp, identity = ScopeBook.stamp, checkpoint.identity

    def old_stamp(self: Any, metadata: Any, config: Any, got: Any) -> Any:
        return stamp(self, metadata, config, dataclasses.replace(got, epoch=None))

    with TurnRecorder(mem) as rec:  # the version before epochs: no epoch stamped or stored
        monkeypatch.setattr(ScopeBook, "stamp", old_stamp)
        monkeypatch.setattr(checkpoint, "identity", lambda t, k, e=None: identity(t, k))
        old = _counting_graph(HelaMemCheckpointer(rec, saver))
        old.invoke({"messages": [HumanMessage("question A", id="h1")]}, cfg)
        rec.flush_sync()
        monkeypatch.undo()
        graph = _counting_graph(HelaMemCheckpointer(rec, saver))  # the new version
        before_a = next(s for s in graph.get_state_history(cfg) if s.next == ("bot",))
        graph.invoke(None, before_a.config)  # answers A again
        rec.flush_sync()
    assert _turn_texts(mem, ("threads", "t1")) == ["answer 0", "question A"]
    [stored] = mem.find_ids(("threads", "t1"), metadata={"thread_id": "t1", "message_id": "h1"})[:1]
    assert "thread_epoch" not in mem.get(stored).metadata
    mem.close()


@pytest.mark.parametrize("content", [7, True, None, 2.5, {"text": "x"}])
def test_a_message_whose_content_is_no_text_fails_no_put(
    tmp_path: Path, new_memory: Any, content: Any
) -> None:
    """Helper 133: a custom state's dict message with content 7 made every put raise
    ``TypeError: 'int' object is not iterable`` (the graph run with it), where the
    wrapped saver takes it. Such a message has no text: no turn is recorded from it."""
    from langgraph.checkpoint.base import empty_checkpoint

    mem = new_memory(tmp_path / "mem")
    with TurnRecorder(mem) as rec:
        cp = HelaMemCheckpointer(rec, InMemorySaver())
        state = empty_checkpoint()
        messages = [{"type": "human", "content": "2+5?"}, {"type": "ai", "content": content}]
        state["channel_values"] = {"messages": messages}
        state["channel_versions"] = {"messages": 1}
        cfg: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        saved = cp.put(cfg, state, {"source": "loop", "step": 1, "parents": {}}, {"messages": 1})
        got = cp.get_tuple(saved)
        assert got is not None and got.checkpoint["channel_values"]["messages"] == messages
        rec.flush_sync()
    assert mem.stats().memories == 0
    mem.close()


class _NoReducer(TypedDict):
    messages: list[Any]  # no add_messages: each input replaces the list
    title: str


def _no_reducer_graph() -> Any:
    """A graph whose messages channel has no reducer; its bot appends a counted answer."""
    answers = itertools.count()

    def bot(state: _NoReducer) -> dict[str, Any]:
        return {"messages": [*state["messages"], AIMessage(f"answer {next(answers)}")]}

    g = _linear(_NoReducer, ("bot", bot))
    return g


def test_human_messages_without_ids_and_without_a_reducer_are_each_a_turn(
    tmp_path: Path, new_memory: Any
) -> None:
    """Without ``add_messages`` each input replaces the list: "yes" again is at the same
    place with the same text, and its turn was dropped as stored already (review)."""

    g = _no_reducer_graph()
    mem = new_memory(tmp_path / "mem")
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    with TurnRecorder(mem) as rec:
        graph = g.compile(checkpointer=HelaMemCheckpointer(rec, InMemorySaver()))
        for text in ("yes", "no", "yes"):
            graph.invoke({"messages": [HumanMessage(text)]}, cfg)
        rec.flush_sync()
    assert mem.stats(("threads", "t1")).memories == 6
    mem.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_time_travel_with_a_history_config_keeps_the_users_scope(
    tmp_path: Path, new_memory: Any, mode: str
) -> None:
    """Configs from ``get_state_history`` hold only LangGraph's keys: a replay or fork
    from one recorded its turn under ``("threads", id)``, not the run's ``("users",
    user_id)`` (new-user trial), so the replayed turn was stored twice and the fork
    was out of the user's searches. The run keys now come from the checkpoints'
    metadata, also for a fresh checkpointer (another process)."""
    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    cfg: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}

    def run(graph: Any, value: Any, config: Any) -> None:
        if mode == "sync":
            graph.invoke(value, config)
        else:
            asyncio.run(graph.ainvoke(value, config))

    with TurnRecorder(mem) as rec:
        graph = _counting_graph(HelaMemCheckpointer(rec, saver))
        run(graph, {"messages": [HumanMessage("question A", id="h1")]}, cfg)
        run(graph, {"messages": [HumanMessage("question B", id="h2")]}, cfg)
        history = list(graph.get_state_history(cfg))
        before_a = next(
            s
            for s in history
            if s.next == ("bot",) and s.values["messages"][-1].content == "question A"
        )
        after_a = next(
            s for s in history if s.next == () and s.values["messages"][-1].content == "answer 0"
        )
        assert set(before_a.config["configurable"]) == {
            "thread_id",
            "checkpoint_ns",
            "checkpoint_id",
        }
        run(graph, None, before_a.config)  # replays A: "answer 2", not recorded
        fresh = _counting_graph(HelaMemCheckpointer(rec, saver))
        run(fresh, {"messages": [HumanMessage("question C", id="h3")]}, after_a.config)
        rec.flush_sync()
    assert _turn_texts(mem, ("users", "alice")) == [
        "answer 0",
        "answer 0",  # the fresh graph's counter: its first answer
        "answer 1",
        "question A",
        "question B",
        "question C",
    ]
    assert mem.stats(("threads", "t1")).memories == 0
    mem.close()


def test_an_answer_written_with_update_state_and_a_failed_turns_question_are_kept(
    tmp_path: Path, new_memory: Any
) -> None:
    """New-user trial: a human-in-the-loop answer written with ``update_state(...,
    as_node="bot")`` completed the thread but was never recorded (only "loop"
    checkpoints were); a question whose run failed, then another answered, kept only
    the last (the first was lost)."""
    fail = {"on": False}

    def bot(state: MessagesState) -> dict[str, Any]:
        if fail["on"]:
            fail["on"] = False
            raise RuntimeError("model down")
        return {"messages": [AIMessage(f"answer to {state['messages'][-1].content}")]}

    g = _linear(MessagesState, ("bot", bot))
    mem = new_memory(tmp_path / "mem")
    with TurnRecorder(mem) as rec:
        cp = HelaMemCheckpointer(rec, InMemorySaver())
        hitl = g.compile(checkpointer=cp, interrupt_before=["bot"])
        c1: Any = {"configurable": {"thread_id": "h", "user_id": "alice"}}
        hitl.invoke({"messages": [HumanMessage("what is my pin?", id="q1")]}, c1)
        hitl.update_state(c1, {"messages": [AIMessage("a human wrote: 1234")]}, as_node="bot")
        graph = g.compile(checkpointer=cp)
        c2: Any = {"configurable": {"thread_id": "f", "user_id": "alice"}}
        fail["on"] = True
        with pytest.raises(RuntimeError, match="model down"):
            graph.invoke({"messages": [HumanMessage("my bike is red", id="q2")]}, c2)
        graph.invoke({"messages": [HumanMessage("my car is blue", id="q3")]}, c2)
        rec.flush_sync()
    texts = _turn_texts(mem, ("users", "alice"))
    assert "what is my pin?" in texts and "a human wrote: 1234" in texts
    assert "my bike is red\nmy car is blue" in texts
    assert mem.stats(("users", "alice")).memories == 4
    mem.close()


def test_each_checkpoint_carries_its_scope_so_bare_configs_keep_it(
    tmp_path: Path, new_memory: Any
) -> None:
    """Review of the ancestor walk: continuing from ``get_state(cfg).config`` turn after
    turn, each time with a fresh checkpointer (a new process), ran out of the walk's
    depth and went to ``("threads", id)``; a config's own ``metadata`` stopped the walk
    or named another user; an anonymous first turn kept a stale per-thread cache. Now
    every put stamps its scope in the checkpoint's metadata (``SCOPE_KEY``) and a bare
    config takes its parent's."""
    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    with TurnRecorder(mem) as rec:
        anon: Any = {"configurable": {"thread_id": "t1"}}
        _counting_graph(HelaMemCheckpointer(rec, saver)).invoke(
            {"messages": [HumanMessage("q0", id="m0")]}, anon
        )  # before login: ("threads", "t1")
        login: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
        graph = _counting_graph(HelaMemCheckpointer(rec, saver))
        graph.invoke({"messages": [HumanMessage("q1", id="m1")]}, login)
        for i in range(2, 8):  # a UI that goes on from the last state, a new process each turn
            fresh = _counting_graph(HelaMemCheckpointer(rec, saver))
            bare = fresh.get_state(login).config
            assert set(bare["configurable"]) == {"thread_id", "checkpoint_ns", "checkpoint_id"}
            if i == 5:  # request metadata, even one naming another user, is no run key
                bare = {**bare, "metadata": {"request_id": "r1", "user_id": "mallory"}}
            fresh.invoke({"messages": [HumanMessage(f"q{i}", id=f"m{i}")]}, bare)
        rec.flush_sync()
    assert mem.stats(("threads", "t1")).memories == 2  # q0's turn only
    assert mem.stats(("users", "alice")).memories == 14  # q1..q7, each once
    assert mem.stats(("users", "mallory")).memories == 0
    meta = next(iter(saver.list(login))).metadata
    assert meta is not None
    stamp = json.loads(meta[SCOPE_KEY])  # type: ignore[literal-required]
    first = list(saver.list(login))[-1]  # the thread's first checkpoint: its epoch
    assert stamp == {
        "thread": "t1",
        "scope": ["users", "alice"],
        "keys": {"user_id": "alice"},
        "asker": {"scope": ["users", "alice"]},
        "epoch": first.config["configurable"]["checkpoint_id"],
    }
    mem.close()


class _FlakyParentReads(InMemorySaver):
    """A saver whose reads fail, while ``armed``, for the checkpointer's own reads of
    earlier checkpoints (a put's parent and above; the graph's own reads succeed)."""

    armed = False

    def get_tuple(self, config: Any) -> Any:
        if self.armed and sys._getframe(1).f_code.co_name == "_run_sync":
            raise ConnectionError("network down")
        return super().get_tuple(config)


def test_a_failing_parent_read_neither_fails_the_run_nor_loses_the_turn(
    tmp_path: Path, new_memory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mem = new_memory(tmp_path / "mem")
    saver = _FlakyParentReads()
    cfg: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
    with TurnRecorder(mem) as rec:
        _counting_graph(HelaMemCheckpointer(rec, saver)).invoke(
            {"messages": [HumanMessage("q1", id="m1")]}, cfg
        )
        last = InMemorySaver.get_tuple(saver, cfg)
        assert last is not None
        saver.armed = True
        with caplog.at_level("WARNING"):
            _counting_graph(HelaMemCheckpointer(rec, saver)).invoke(
                {"messages": [HumanMessage("q2", id="m2")]}, last.config
            )
        saver.armed = False  # the network is back: a bare run finds alice's scope again
        again = _counting_graph(HelaMemCheckpointer(rec, saver))
        again.invoke({"messages": [HumanMessage("q3", id="m3")]}, again.get_state(cfg).config)
        rec.flush_sync()
    assert "network down" in caplog.text
    assert mem.stats(("threads", "t1")).memories == 2  # the config's scope, recorded
    assert mem.stats(("users", "alice")).memories == 4  # q1, q3: the failure moved nothing
    mem.close()


def test_id_less_turns_repeat_and_updates_of_other_channels_record_nothing(
    tmp_path: Path, new_memory: Any
) -> None:
    """Review: "yes" then "yes" (no ids, no reducer) kept one turn; an ``update_state``
    of another channel re-recorded the last id-less turn from a fresh checkpointer."""

    g = _no_reducer_graph()
    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    with TurnRecorder(mem) as rec:
        graph = g.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        for _ in range(2):
            graph.invoke({"messages": [HumanMessage("yes")]}, cfg)
        for title in ("a", "b"):
            g.compile(checkpointer=HelaMemCheckpointer(rec, saver)).update_state(
                cfg, {"title": title}
            )
        rec.flush_sync()
    assert mem.stats(("threads", "t1")).memories == 4
    mem.close()


class _Copying(InMemorySaver):
    """An InMemorySaver with ``copy_thread`` (ids and metadata copied, as the spec says)."""

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.storage[target_thread_id] = copy.deepcopy(self.storage[source_thread_id])
        for (thread, ns, cid), writes in list(self.writes.items()):
            if thread == source_thread_id:
                self.writes[(target_thread_id, ns, cid)] = copy.deepcopy(writes)
        for (thread, ns, ch, v), blob in list(self.blobs.items()):
            if thread == source_thread_id:
                self.blobs[(target_thread_id, ns, ch, v)] = blob


def test_scopes_of_approvals_subgraphs_old_checkpoints_opt_outs_and_copies(
    tmp_path: Path, new_memory: Any
) -> None:
    """Review of the stamp (each failed on its first version): an approval written with
    ``update_state`` of another channel completed the turn but was skipped; a ``scope=``
    that needs ``user_id`` raised for a subgraph's bare put; checkpoints written before
    the stamp lost the user's scope; a ``None`` scope was not stamped, so another
    process recorded an opted-out user's turn; ``copy_thread`` carried the source
    thread's scope to the copy."""

    class State(MessagesState):
        approved: bool

    answers = itertools.count()

    def bot(state: State) -> dict[str, Any]:
        return {"messages": [AIMessage(f"answer {next(answers)}")]}

    inner = _linear(State, ("bot", bot))
    g = _linear(State, ("sub", inner.compile()), ("review", lambda s: {}))

    def by_user(config: Any) -> tuple[str, ...] | None:
        user = config["configurable"]["user_id"]  # a bare config has none: KeyError
        return None if user == "ghost" else ("users", user)

    mem = new_memory(tmp_path / "mem")
    saver = _Copying()
    alice: Any = {"configurable": {"thread_id": "a", "user_id": "alice"}}
    ghost: Any = {"configurable": {"thread_id": "g", "user_id": "ghost"}}
    with TurnRecorder(mem) as rec:

        def graph(**kw: Any) -> Any:
            cp = HelaMemCheckpointer(rec, saver, scope=by_user)
            return g.compile(checkpointer=cp, **kw)

        approving = graph(interrupt_before=["review"])
        approving.invoke({"messages": [HumanMessage("q1", id="m1")]}, alice)
        approving.update_state(alice, {"approved": True}, as_node="review")
        bare = graph().get_state(alice).config
        graph().invoke({"messages": [HumanMessage("q2", id="m2")]}, bare)  # subgraph, bare
        # an opted-out user's turn, continued from a bare config by another process
        graph().invoke({"messages": [HumanMessage("secret 1", id="s1")]}, ghost)
        graph().invoke(
            {"messages": [HumanMessage("secret 2", id="s2")]}, graph().get_state(ghost).config
        )
        # a thread written before the stamp: a run with user_id, then one from a bare config
        plain = g.compile(checkpointer=saver)
        old: Any = {"configurable": {"thread_id": "o", "user_id": "bob"}}
        plain.invoke({"messages": [HumanMessage("old 1", id="o1")]}, old)
        plain.invoke({"messages": [HumanMessage("old 2", id="o2")]}, plain.get_state(old).config)
        graph().invoke(
            {"messages": [HumanMessage("new 3", id="o3")]}, graph().get_state(old).config
        )
        # an anonymous thread (default scope) copied, the copy continued by another process
        anon = g.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        x: Any = {"configurable": {"thread_id": "x"}}
        anon.invoke({"messages": [HumanMessage("x 1", id="x1")]}, x)
        saver.copy_thread("x", "y")
        copied = g.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        y = copied.get_state({"configurable": {"thread_id": "y"}}).config
        copied.invoke({"messages": [HumanMessage("y 2", id="y2")]}, y)
        rec.flush_sync()
    assert sorted(_turn_texts(mem, ("users", "alice"))) == ["answer 0", "answer 1", "q1", "q2"]
    assert mem.stats(("users", "ghost")).memories == 0
    assert _turn_texts(mem, ("users", "bob")) == ["answer 6", "new 3"]  # 4, 5: unrecorded
    assert _turn_texts(mem, ("threads", "x")) == ["answer 7", "x 1"]
    assert _turn_texts(mem, ("threads", "y")) == ["answer 8", "y 2"]
    mem.close()


class _Scalars(InMemorySaver):
    """A saver that keeps only scalar metadata values (as some do), counting reads."""

    reads = 0

    def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        kept = {k: v for k, v in metadata.items() if isinstance(v, str | int | float | bool)}
        return super().put(config, checkpoint, kept, new_versions)

    def get_tuple(self, config: Any) -> Any:
        self.reads += 1
        return super().get_tuple(config)


def test_a_scope_error_fails_before_the_put_and_a_read_failure_moves_nothing(
    tmp_path: Path, new_memory: Any
) -> None:
    """Third review: a scope function failing on the turn's put raised after the
    checkpoint was saved, so a retry found the turn complete and it was never recorded;
    one failed parent read stamped the fallback scope, moving the thread for good; a
    config's own ``metadata`` decided a copy's scope; a saver keeping only scalar
    metadata dropped the stamp (16 reads per put)."""
    # fail from the n-th scope call from now, ``times`` calls (a put that asks a question
    # calls it; one that writes none takes its parent's stamp, or calls it without one)
    fail = {"in": 0, "times": 1}

    def scope(config: Any) -> tuple[str, ...]:
        fail["in"] -= 1
        if fail["in"] <= 0 < fail["in"] + fail["times"]:
            raise RuntimeError("directory down")
        return default_scope(config)  # type: ignore[return-value]

    mem = new_memory(tmp_path / "mem")
    saver = _Scalars()
    cfg: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
    with TurnRecorder(mem) as rec:
        graph = _counting_graph(HelaMemCheckpointer(rec, saver, scope=scope))
        graph.invoke({"messages": [HumanMessage("q1", id="m1")]}, cfg)
        fail["in"] = 1  # fails once in q2's run (no turn completes there): q2 is kept
        graph.invoke({"messages": [HumanMessage("q2", id="m2")]}, cfg)
        fail["in"], fail["times"] = 1, 100  # down for the whole run: the answer's put raises
        with pytest.raises(RuntimeError, match="directory down"):
            graph.invoke({"messages": [HumanMessage("q3", id="m3")]}, {**cfg})
        fail["times"] = 0  # up again
        graph.invoke(None, cfg)  # the retry completes and records q3
        # a fresh process going on from a bare config reads one parent, no walk
        plain = _linear(MessagesState, ("bot", lambda s: {"messages": [AIMessage("plain")]}))
        bare_graph = plain.compile(checkpointer=saver)
        other: Any = {"configurable": {"thread_id": "t2", "user_id": "bob"}}
        bare_graph.invoke({"messages": [HumanMessage("b", id="b1")]}, other)
        saver.reads = 0
        bare_graph.invoke({"messages": [HumanMessage("b2")]}, bare_graph.get_state(other).config)
        graphs_own = saver.reads
        saver.reads = 0
        fresh = _counting_graph(HelaMemCheckpointer(rec, saver))
        fresh.invoke({"messages": [HumanMessage("q4", id="m4")]}, fresh.get_state(cfg).config)
        assert saver.reads == graphs_own + 1  # and the parent's, once
        # an anonymous thread with request metadata naming a user, copied
        copying = _Copying()
        anon = _counting_graph(HelaMemCheckpointer(rec, copying))
        x: Any = {"configurable": {"thread_id": "x"}, "metadata": {"user_id": "alice"}}
        anon.invoke({"messages": [HumanMessage("x1", id="x1")]}, x)
        copying.copy_thread("x", "y")
        copy = _counting_graph(HelaMemCheckpointer(rec, copying))
        y = copy.get_state({"configurable": {"thread_id": "y"}}).config
        copy.invoke({"messages": [HumanMessage("y2", id="y2")]}, y)
        rec.flush_sync()
    texts = _turn_texts(mem, ("users", "alice"))
    assert [t for t in texts if t.startswith("q")] == ["q1", "q2", "q3", "q4"]
    assert _turn_texts(mem, ("threads", "x")) == ["answer 0", "x1"]
    assert _turn_texts(mem, ("threads", "y")) == ["answer 0", "y2"]  # not alice's
    mem.close()


def test_a_run_after_failed_parent_reads_stays_in_the_threads_epoch(
    tmp_path: Path, new_memory: Any
) -> None:
    """Review 134: checkpoints written while the parent reads failed carry no stamp, and
    the next run (with keys of its own) then stamped the thread without its epoch: its
    turns went with the identity of threads stamped before epochs, so a replay from an
    earlier checkpoint could record one again. It now takes the epoch of the nearest
    stamp above."""

    mem = new_memory(tmp_path / "mem")
    saver = _FlakyParentReads()
    cfg: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
    with TurnRecorder(mem) as rec:
        _counting_graph(HelaMemCheckpointer(rec, saver)).invoke(
            {"messages": [HumanMessage("q1", id="m1")]}, cfg
        )
        first = list(saver.list(cfg))[-1].config["configurable"]["checkpoint_id"]
        saver.armed = True
        _counting_graph(HelaMemCheckpointer(rec, saver)).invoke(
            {"messages": [HumanMessage("q2", id="m2")]}, cfg
        )
        saver.armed = False
        _counting_graph(HelaMemCheckpointer(rec, saver)).invoke(
            {"messages": [HumanMessage("q3", id="m3")]}, cfg
        )
        rec.flush_sync()
    latest = next(iter(saver.list(cfg))).metadata
    assert json.loads(latest[SCOPE_KEY])["epoch"] == first  # type: ignore[literal-required]
    [q3] = mem.find_ids(("users", "alice"), metadata={"message_id": "m3"})[:1]
    assert mem.get(q3).metadata["thread_epoch"] == first
    mem.close()


@pytest.mark.parametrize("approver", ["same checkpointer", "another process"])
def test_an_approvers_own_user_id_leaves_the_askers_turn_in_the_askers_scope(
    tmp_path: Path, new_memory: Any, approver: str
) -> None:
    """Review: alice's question, approved with ``update_state`` or resumed with
    ``Command(resume=...)`` under the approver's config (his own ``user_id``), was
    recorded in bob's scope (alice's private turn readable in his memory), and the
    stamp moved the thread: her later turns from bare configs went to bob too. A turn
    now belongs to the run that asked it; bob's own question on the thread is his."""

    class State(MessagesState):
        approved: bool

    def gate(state: State) -> dict[str, Any]:
        return {"approved": interrupt("approve?") == "yes"}

    answers = itertools.count()
    g = _linear(
        State,
        ("draft", lambda s: {"messages": [AIMessage(f"answer {next(answers)}")]}),
        ("review", lambda s: {}),
    )
    h = _linear(
        State,
        ("gate", gate),
        ("bot", lambda s: {"messages": [AIMessage(f"answer {next(answers)}")]}),
    )

    def cfg(thread: str, user: str) -> Any:
        return {"configurable": {"thread_id": thread, "user_id": user}}

    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    with TurnRecorder(mem) as rec:
        own = HelaMemCheckpointer(rec, saver)

        def cp() -> HelaMemCheckpointer:  # the approver's: this one, or a fresh one
            return own if approver == "same checkpointer" else HelaMemCheckpointer(rec, saver)

        review = g.compile(checkpointer=own, interrupt_before=["review"])
        review.invoke({"messages": [HumanMessage("a1 balance?", id="a1")]}, cfg("a", "alice"))
        approving = g.compile(checkpointer=cp(), interrupt_before=["review"])
        approving.update_state(cfg("a", "bob"), {"approved": True}, as_node="review")
        gated = h.compile(checkpointer=own)
        gated.invoke({"messages": [HumanMessage("b1 private", id="b1")]}, cfg("b", "alice"))
        asyncio.run(h.compile(checkpointer=cp()).ainvoke(Command(resume="yes"), cfg("b", "bob")))
        # alice's UI goes on from the last state (a bare config)
        gated.invoke(
            {"messages": [HumanMessage("b2 again", id="b2")]}, gated.get_state(cfg("b", "x")).config
        )
        gated.invoke(Command(resume="yes"), gated.get_state(cfg("b", "x")).config)
        # bob asks his own question on the thread: his turn
        resuming = h.compile(checkpointer=cp())
        resuming.invoke({"messages": [HumanMessage("b3 bob asks", id="b3")]}, cfg("b", "bob"))
        resuming.invoke(Command(resume="yes"), cfg("b", "bob"))
        rec.flush_sync()
        stamp = json.loads(gated.get_state(cfg("b", "x")).metadata[SCOPE_KEY])
    assert _turn_texts(mem, ("users", "alice")) == [
        "a1 balance?",
        "answer 0",
        "answer 1",
        "answer 2",
        "b1 private",
        "b2 again",
    ]
    assert _turn_texts(mem, ("users", "bob")) == ["answer 3", "b3 bob asks"]
    assert stamp["scope"] == ["users", "bob"]
    mem.close()


def test_an_approvers_edits_notes_and_nodes_keep_the_askers_turn(
    tmp_path: Path, new_memory: Any
) -> None:
    """Second review of the asker's scope (each failed on its first version): an
    approver's ``update_state`` fixing the pending question (same id) took the turn,
    even from alice's own resume; a human message written by a node of bob's resumed
    run (a critique), or merged in by ``Command(resume=..., update=...)``, sent alice's
    turn and thread to bob; a new process going on with its own config read one
    checkpoint more per run."""

    class State(MessagesState):
        approved: bool

    def gate(state: State) -> dict[str, Any]:
        return {"approved": interrupt("approve?") == "yes"}

    answers = itertools.count()

    def bot(state: State) -> dict[str, Any]:
        return {"messages": [AIMessage(f"answer {next(answers)}")]}

    def critique(state: State) -> dict[str, Any]:
        return {"messages": [HumanMessage("critique: shorter")]}

    g = _linear(State, ("gate", gate), ("bot", bot))
    r = StateGraph(State)  # reflection: a draft, a critique as a human message, a final
    r.add_node("draft", bot)
    r.add_node("gate", gate)
    r.add_node("critique", critique)
    r.add_node("final", bot)
    r.add_edge(START, "draft")
    r.add_edge("draft", "gate")
    r.add_edge("gate", "critique")
    r.add_edge("critique", "final")
    r.add_edge("final", END)

    def cfg(thread: str, user: str) -> Any:
        return {"configurable": {"thread_id": thread, "user_id": user}}

    mem = new_memory(tmp_path / "mem")
    saver = _Scalars()
    with TurnRecorder(mem) as rec:

        def fresh(graph: Any) -> Any:  # another process: a checkpointer of its own
            return graph.compile(checkpointer=HelaMemCheckpointer(rec, saver))

        fresh(g).invoke({"messages": [HumanMessage("e1 tax?", id="e1")]}, cfg("e", "alice"))
        fixed = HumanMessage("e1 tax??", id="e1")  # bob fixes the question in place
        fresh(g).update_state(cfg("e", "bob"), {"messages": [fixed]})
        fresh(g).invoke(Command(resume="yes"), cfg("e", "alice"))
        fresh(r).invoke({"messages": [HumanMessage("r1 draft it", id="r1")]}, cfg("r", "alice"))
        fresh(r).invoke(Command(resume="yes"), cfg("r", "bob"))
        fresh(g).invoke({"messages": [HumanMessage("n1 worried", id="n1")]}, cfg("n", "alice"))
        note = {"messages": [HumanMessage("approved, be kind", id="n2")]}
        fresh(g).invoke(Command(resume="yes", update=note), cfg("n", "bob"))
        # a new process per run: each run reads one checkpoint, its parent (the thread's
        # first run, whose first put has none, its latest: none, so an epoch starts)
        runs: list[Any] = [{"messages": [HumanMessage("c1", id="c1")]}, Command(resume="yes")]
        runs += [{"messages": [HumanMessage("c2", id="c2")]}, Command(resume="yes")]
        plain = _Scalars()
        for run in runs:
            g.compile(checkpointer=plain).invoke(run, cfg("c", "carol"))
        saver.reads = 0
        for run in runs:
            fresh(g).invoke(run, cfg("c", "carol"))
        ours = saver.reads
        rec.flush_sync()
    assert _turn_texts(mem, ("users", "alice")) == [
        "answer 0",
        "answer 2",  # the final answer to the critique (the draft was not an answer)
        "answer 3",
        "critique: shorter",
        "e1 tax??",
        "n1 worried\napproved, be kind",
    ]
    assert mem.stats(("users", "bob")).memories == 0
    assert ours == plain.reads + 4
    mem.close()


def _window(old: list[Any], new: Any) -> list[Any]:
    """A reducer keeping the last 4 messages (no ids given)."""
    return (list(old) + (new if isinstance(new, list) else [new]))[-4:]


class _Windowed(TypedDict):
    messages: Annotated[list[Any], _window]


def test_a_chat_through_interrupt_clears_windows_and_copies_keep_each_askers_turn(
    tmp_path: Path, new_memory: Any
) -> None:
    """Third review of the asker's scope (each failed on the version before): in a chat
    through ``interrupt()`` (a node writes the resume value as the human message) the
    resuming user's turns stayed in the scope of whoever started the thread; a
    moderator's ``update_state`` clearing the messages, or an approver's note under a
    window reducer of id-less messages, moved the thread to him; an approver's resume
    on a ``copy_thread`` copy took the asker's turn."""
    answers = itertools.count()

    def ask(state: MessagesState) -> dict[str, Any]:
        return {"messages": [HumanMessage(interrupt("your message?"))]}

    def bot(state: Any) -> dict[str, Any]:
        return {"messages": [AIMessage(f"answer {next(answers)}")]}

    chat = _linear(MessagesState, ("ask", ask), ("bot", bot))

    def gate(state: Any) -> dict[str, Any]:
        interrupt("ok?")
        return {}

    gated = _linear(_Windowed, ("gate", gate), ("bot", bot))

    def cfg(thread: str, user: str | None = None) -> Any:
        return {"configurable": {"thread_id": thread, **({"user_id": user} if user else {})}}

    mem = new_memory(tmp_path / "mem")
    saver = _Copying()
    with TurnRecorder(mem) as rec:
        talk = chat.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        talk.invoke({"messages": []}, cfg("a"))  # a session opened before login
        talk.invoke(Command(resume="alice 1"), cfg("a", "alice"))
        talk.invoke({"messages": []}, cfg("c", "carol"))
        talk.invoke(Command(resume="carol 2"), cfg("c", "carol"))
        talk.invoke({"messages": []}, cfg("c", "bob"))  # bob takes over the kiosk
        talk.invoke(Command(resume="bob 3"), cfg("c", "bob"))
        # a moderator clears alice's answered thread; she goes on from the last state
        talk.invoke({"messages": []}, cfg("m", "alice"))
        talk.invoke(Command(resume="alice 4"), cfg("m", "alice"))
        talk.update_state(cfg("m", "mod"), {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES)]})
        talk.invoke({"messages": []}, talk.get_state(cfg("m")).config)
        talk.invoke(Command(resume="alice 5"), talk.get_state(cfg("m")).config)
        # an approver's note slides a window of id-less messages, then he resumes
        review = gated.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        first = [HumanMessage("old"), AIMessage("old answer"), AIMessage("more")]
        review.invoke({"messages": [*first, HumanMessage("alice 6")]}, cfg("w", "alice"))
        review.update_state(cfg("w", "bob"), {"messages": [SystemMessage("seen by bob")]})
        review.invoke(Command(resume="yes"), cfg("w", "bob"))
        # a copy of an interrupted thread, resumed by the approver
        review.invoke({"messages": [HumanMessage("alice 7", id="a7")]}, cfg("x", "alice"))
        saver.copy_thread("x", "y")
        review.invoke(Command(resume="yes"), cfg("y", "bob"))
        rec.flush_sync()
    alice = [t for t in _turn_texts(mem, ("users", "alice")) if t.startswith("alice")]
    assert alice == ["alice 1", "alice 4", "alice 5", "alice 6", "alice 7"]
    assert [t for t in _turn_texts(mem, ("users", "bob")) if not t.startswith("answer")] == [
        "bob 3"
    ]
    assert [t for t in _turn_texts(mem, ("users", "carol")) if t.startswith("carol")] == ["carol 2"]
    assert mem.stats(("users", "mod")).memories == 0
    assert mem.stats(("threads", "a")).memories == 0
    mem.close()


class _Asked(TypedDict, total=False):
    question: str
    messages: Annotated[list[Any], add_messages]


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_a_question_written_by_the_first_node_and_exit_durability_keep_the_askers(
    tmp_path: Path, new_memory: Any, durability: str
) -> None:
    """Fourth review of the asker's scope (each failed on the version before): a graph
    whose input is a ``question`` field that its first node writes as the human
    message recorded bob's question on carol's thread in carol's scope, and an
    opted-out run's (``scope=`` gives ``None``) in alice's; under
    ``durability="exit"`` a chat through ``interrupt()`` recorded bob's resumed
    question in carol's scope (the run's resume is never handed to the checkpointer
    there: the run's own input names the asker)."""
    answers = itertools.count()

    def prep(state: Any) -> dict[str, Any]:
        return {"messages": [HumanMessage(state["question"])]} if state.get("question") else {}

    def bot(state: Any) -> dict[str, Any]:
        return {"messages": [AIMessage(f"answer {next(answers)}")]}

    asked = _linear(_Asked, ("prep", prep), ("bot", bot))
    chat = _linear(
        MessagesState,
        ("ask", lambda s: {"messages": [HumanMessage(interrupt("your message?"))]}),
        ("bot", bot),
    )

    def cfg(thread: str, user: str, **more: Any) -> Any:
        return {"configurable": {"thread_id": thread, "user_id": user, **more}}

    def scope(config: Any) -> tuple[str, ...] | None:
        return None if config["configurable"].get("incognito") else default_scope(config)

    mem = new_memory(tmp_path / "mem")
    with TurnRecorder(mem) as rec:
        cp = HelaMemCheckpointer(rec, InMemorySaver(), scope=scope)
        field, talk = asked.compile(checkpointer=cp), chat.compile(checkpointer=cp)
        opts: Any = {"durability": durability}
        field.invoke({"question": "carol 1"}, cfg("f", "carol"), **opts)
        field.invoke({"question": "bob 2"}, cfg("f", "bob"), **opts)
        field.invoke({"question": "alice 3"}, cfg("o", "alice"), **opts)
        field.invoke({"question": "alice SECRET"}, cfg("o", "alice", incognito=True), **opts)
        talk.invoke({"messages": []}, cfg("c", "carol"), **opts)
        talk.invoke(Command(resume="carol 4"), cfg("c", "carol"), **opts)
        talk.invoke({"messages": []}, cfg("c", "bob"), **opts)  # bob takes over the kiosk
        talk.invoke(Command(resume="bob 5"), cfg("c", "bob"), **opts)
        rec.flush_sync()

    def asked_by(user: str) -> list[str]:
        return [t for t in _turn_texts(mem, ("users", user)) if not t.startswith("answer")]

    assert asked_by("carol") == ["carol 1", "carol 4"]
    assert asked_by("bob") == ["bob 2", "bob 5"]
    assert asked_by("alice") == ["alice 3"]
    mem.close()


class _Flagged(TypedDict, total=False):
    messages: Annotated[list[Any], add_messages]
    approved: bool


class _Text(TypedDict):
    text: str


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_an_approvers_run_a_failed_run_and_a_subgraph_keep_the_askers(
    tmp_path: Path, new_memory: Any, durability: str
) -> None:
    """Fifth review of the asker's scope (each failed on the version before, which kept
    the run's asker in memory): an approver's own run (its input a flag) took the
    asker's pending turn and the thread; a run that failed before writing its question
    left its user as the asker of the next turn on the thread, even of a fork from an
    earlier checkpoint; a subgraph's input in a chat through ``interrupt()`` lost the
    resumer's question. The asker now travels in the stamp, from parent to child."""
    answers = itertools.count()

    def bot(state: Any) -> dict[str, Any]:
        return {"messages": [AIMessage(f"answer {next(answers)}")], "approved": False}

    flagged = StateGraph(_Flagged)  # answers once the flag is set
    flagged.add_node("bot", bot)
    flagged.add_conditional_edges(START, lambda s: "bot" if s.get("approved") else END)
    flagged.add_edge("bot", END)
    fails = {"on": False}

    def prep(state: Any) -> dict[str, Any]:
        if fails["on"]:
            raise RuntimeError("prep failed")
        return {"messages": [HumanMessage(state["question"])]}

    asked = _linear(_Asked, ("prep", prep), ("bot", bot))
    inner = _linear(_Text, ("check", lambda s: {"text": s["text"].strip()}))
    moderate = inner.compile()

    def ask(state: Any) -> dict[str, Any]:
        text = moderate.invoke({"text": interrupt("your message?")})["text"]
        return {"messages": [HumanMessage(text)]}

    chat = _linear(MessagesState, ("ask", ask), ("bot", bot))

    def cfg(thread: str, user: str) -> Any:
        return {"configurable": {"thread_id": thread, "user_id": user}}

    opts: Any = {"durability": durability}
    mem = new_memory(tmp_path / "mem")
    with TurnRecorder(mem) as rec:
        cp = HelaMemCheckpointer(rec, InMemorySaver())
        flag, field, talk = (g.compile(checkpointer=cp) for g in (flagged, asked, chat))
        flag.invoke({"messages": [HumanMessage("alice 1", id="a1")]}, cfg("f", "alice"), **opts)
        flag.invoke({"approved": True}, cfg("f", "bob"), **opts)  # the approver's own run
        bare = flag.get_state(cfg("f", "x")).config  # alice's UI goes on
        flag.invoke({"messages": [HumanMessage("alice 2", id="a2")], "approved": True}, bare)
        field.invoke({"question": "carol 3"}, cfg("u", "carol"), **opts)
        before = field.get_state(cfg("u", "x")).config
        fails["on"] = True
        with pytest.raises(RuntimeError, match="prep failed"):
            field.invoke({"question": "alice 4"}, cfg("u", "alice"), **opts)
        fails["on"] = False
        field.invoke({"question": "carol 5"}, before, **opts)  # carol forks her checkpoint
        talk.invoke({"messages": []}, cfg("c", "carol"), **opts)
        talk.invoke(Command(resume="bob 6"), cfg("c", "bob"), **opts)
        rec.flush_sync()

    def asked_by(user: str) -> list[str]:
        return [t for t in _turn_texts(mem, ("users", user)) if not t.startswith("answer")]

    # under exit the resume never reaches the checkpointer: bob's question stays carol's
    bobs = ["bob 6"] if durability == "async" else []
    assert asked_by("alice") == ["alice 1", "alice 2"]
    assert asked_by("carol") == sorted(["carol 3", "carol 5", *(["bob 6"] if not bobs else [])])
    assert asked_by("bob") == bobs
    mem.close()


@pytest.mark.parametrize("identity", ["request ids", "uuid user ids"])
def test_per_request_keys_and_uuid_user_ids_keep_the_askers(
    tmp_path: Path, new_memory: Any, identity: str
) -> None:
    """Sixth review of the asker's scope (each failed on the version before, which
    compared the asker's run keys): a key that changes per request (a request id, a
    platform's run id) made a user's own resumed run no asker, so the question it wrote
    went to the thread's previous user; user ids that are no JSON scalars (a UUID) made
    every user's keys equal, so an approver's run took the asker's turn. Seventh: an
    approver resuming a thread's first turn (no messages yet) took it, and the thread."""
    answers = itertools.count()

    def confirm(state: Any) -> dict[str, Any]:
        interrupt(f"send {state['question']!r}?")
        return {}

    def prep(state: Any) -> dict[str, Any]:
        return {"messages": [HumanMessage(state["question"])]}

    def bot(state: Any) -> dict[str, Any]:
        return {"messages": [AIMessage(f"answer {next(answers)}")]}

    g = _linear(_Asked, ("confirm", confirm), ("prep", prep), ("bot", bot))
    users = {name: uuid.uuid5(uuid.NAMESPACE_DNS, name) for name in ("carol", "bob")}

    def cfg(user: str) -> Any:
        if identity == "request ids":
            return {
                "configurable": {"thread_id": "t", "user_id": user, "request_id": uuid.uuid4().hex}
            }
        return {"configurable": {"thread_id": "t", "user_id": users[user]}}

    mem = new_memory(tmp_path / "mem")
    with TurnRecorder(mem) as rec:
        graph = g.compile(checkpointer=HelaMemCheckpointer(rec, InMemorySaver()))
        graph.invoke({"question": "carol 1"}, cfg("carol"))
        graph.invoke(Command(resume=True), cfg("carol"))  # she confirms her question
        graph.invoke({"question": "carol 2"}, cfg("carol"))
        graph.invoke(Command(resume=True), cfg("bob"))  # bob approves hers
        graph.invoke({"question": "bob 3"}, cfg("bob"))
        graph.invoke(Command(resume=True), cfg("bob"))
        # a thread's first turn (no messages yet) approved by bob, then a bare config
        first = {"configurable": {**cfg("carol")["configurable"], "thread_id": "n"}}
        graph.invoke({"question": "carol 4"}, first)
        graph.invoke(
            Command(resume=True), {"configurable": {**cfg("bob")["configurable"], "thread_id": "n"}}
        )
        bare = graph.get_state({"configurable": {"thread_id": "n"}}).config
        graph.invoke({"question": "carol 5"}, bare)
        graph.invoke(
            Command(resume=True), graph.get_state({"configurable": {"thread_id": "n"}}).config
        )
        rec.flush_sync()

    def asked_by(user: str) -> list[str]:
        name = user if identity == "request ids" else str(users[user])
        return [t for t in _turn_texts(mem, ("users", name)) if not t.startswith("answer")]

    assert asked_by("carol") == ["carol 1", "carol 2", "carol 4", "carol 5"]
    assert asked_by("bob") == ["bob 3"]
    mem.close()


def test_a_fork_of_the_first_checkpoint_under_an_unstamped_latest_keeps_the_epoch(
    tmp_path: Path, new_memory: Any
) -> None:
    """Review 142: a put without a parent took its epoch from the thread's latest
    checkpoint's own stamp only; when failed reads had left the latest unstamped, a fork
    of the first checkpoint went with no epoch (the identity of threads stamped before
    epochs), and replaying the first turn from it recorded that turn a second time. It
    now takes the epoch of the nearest stamp at or above the latest, as a put with a
    parent does."""
    mem = new_memory(tmp_path / "mem")
    saver = _FlakyParentReads()
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    with TurnRecorder(mem) as rec:
        graph = _counting_graph(HelaMemCheckpointer(rec, saver))
        graph.invoke({"messages": [HumanMessage("question A", id="h1")]}, cfg)
        first = list(graph.get_state_history(cfg))[-1]
        epoch = first.config["configurable"]["checkpoint_id"]
        saver.armed = True  # another process's parent reads fail: its puts unstamped
        second = _counting_graph(HelaMemCheckpointer(rec, saver))
        second.invoke({"messages": [HumanMessage("question B", id="h2")]}, cfg)
        saver.armed = False
        latest = next(iter(saver.list(cfg))).metadata
        assert SCOPE_KEY not in latest  # the case: the latest carries no stamp
        forking = _counting_graph(HelaMemCheckpointer(rec, saver))  # a third process
        fork = forking.update_state(first.config, None, as_node="__copy__")
        stamp = json.loads(InMemorySaver.get_tuple(saver, fork).metadata[SCOPE_KEY])
        epochs = stamp.get("epoch")
        again = _counting_graph(HelaMemCheckpointer(rec, saver))  # another process
        again.invoke(None, fork)
        rec.flush_sync()
    texts = _turn_texts(mem, ("threads", "t1"))
    # each run's graph answers "answer 0"; the replay of the first turn adds nothing
    assert sorted(texts) == ["answer 0", "answer 0", "question A", "question B"]
    assert epochs == epoch
    mem.close()


class _Noted(MessagesState):
    note: str


@pytest.mark.parametrize(
    ("mode", "later"),
    [
        ("sync", "update_state"),
        ("async", "update_state"),
        ("sync", "run"),
        ("async", "run"),
        ("sync", "empty messages"),
        ("async", "empty messages"),
    ],
)
def test_a_forgotten_turn_is_not_recorded_again_by_a_put_that_leaves_the_messages(
    tmp_path: Path, new_memory: Any, mode: str, later: str
) -> None:
    """Helper 143 F1: a turn forgotten with ``delete_scope`` (as the README advises)
    came back when a fresh checkpointer (a restart, another process) saved a checkpoint
    of the thread changing other channels only (``update_state(cfg, {"note": ...})``;
    review 145: or a new run whose nodes write no message, whose put's parent is the
    run's input): the turn was recognised again only by its ``unique_on`` key, deleted
    with it. A put records nothing when a checkpoint since the messages last changed
    completed the same turn; a run whose last node writes no message still records its
    turn (no checkpoint before had completed it)."""
    mem = new_memory(tmp_path / "mem")
    saver = InMemorySaver()
    cfg: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}

    def graph(cp: HelaMemCheckpointer) -> Any:
        def bot(state: _Noted) -> dict[str, Any]:
            return {"messages": [AIMessage("Noted, your PIN is 4711")]}

        def noter(state: _Noted) -> dict[str, Any]:
            return {"note": "reviewed"}  # writes no message

        def route(state: _Noted) -> str:  # a new question to the bot, then the noter
            return "bot" if state["messages"][-1].type == "human" else "noter"

        g = StateGraph(_Noted)
        g.add_node("bot", bot)
        g.add_node("noter", noter)
        g.add_conditional_edges(START, route, ["bot", "noter"])
        g.add_edge("bot", "noter")
        g.add_edge("noter", END)
        return g.compile(checkpointer=cp)

    async def again(rec: TurnRecorder) -> None:
        fresh = graph(HelaMemCheckpointer(rec, saver))  # a fresh checkpointer, same saver
        note: dict[str, Any] = {"note": "a moderator's note"}
        if later == "empty messages":  # trial 146: the channel written, nothing changed
            note, later_ = {"messages": []}, "update_state"
        else:
            later_ = later
        if mode == "sync" and later_ == "update_state":
            await asyncio.to_thread(fresh.update_state, cfg, note)
        elif mode == "sync":
            await asyncio.to_thread(fresh.invoke, note, cfg)
        elif later_ == "update_state":
            await fresh.aupdate_state(cfg, note)
        else:
            await fresh.ainvoke(note, cfg)
        await rec.flush()

    with TurnRecorder(mem) as rec:
        graph(HelaMemCheckpointer(rec, saver)).invoke(
            {"messages": [HumanMessage("my bank PIN is 4711", id="h1")]}, cfg
        )
        rec.flush_sync()
    stored = mem.find_ids(("users", "alice"), metadata={"message_id": "h1"})
    assert len(stored) == 2  # the turn, once: its question and its answer
    mem.delete_scope(("users", "alice"))
    with TurnRecorder(mem) as rec:
        asyncio.run(again(rec))
    assert mem.search("PIN 4711", ("users", "alice"), k=5, learn=False).hits == ()
    mem.close()

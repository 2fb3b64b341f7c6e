"""HelaMemCheckpointer: a turn forgotten with ``delete_scope`` stays forgotten, a turn is
recorded once, and none is lost, whatever later puts do to the thread's messages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from lg_graphs import one_node
from test_checkpointer import _Copying

from helamem.core import HelaMemory, TurnRecorder
from helamem.langgraph import HelaMemCheckpointer


class _Chat(MessagesState, total=False):
    note: str
    ticks: int


def _graph(cp: HelaMemCheckpointer) -> Any:
    """A bot answering a new question; else, by the run's ``note``, a node removing all
    but the last two messages ("trim") or one looping 20 steps writing no message."""

    def bot(state: _Chat) -> dict[str, Any]:
        q = state["messages"][-1]
        return {"messages": [AIMessage(f"re: {q.content}", id=f"a-{q.id}")]}

    def trim(state: _Chat) -> dict[str, Any]:
        return {"messages": [RemoveMessage(id=str(m.id)) for m in state["messages"][:-2]]}

    def tick(state: _Chat) -> dict[str, Any]:
        return {"ticks": state.get("ticks", 0) + 1}

    def route(state: _Chat) -> str:
        if state["messages"][-1].type == "human":
            return "bot"
        return {"trim": "trim", "loop": "tick"}.get(state.get("note", ""), END)

    g = StateGraph(_Chat)
    g.add_node("bot", bot)
    g.add_node("trim", trim)
    g.add_node("tick", tick)
    g.add_conditional_edges(START, route, ["bot", "trim", "tick", END])
    g.add_edge("bot", END)
    g.add_edge("trim", END)
    g.add_conditional_edges("tick", lambda s: "tick" if s["ticks"] % 20 else END, ["tick", END])
    return g.compile(checkpointer=cp)


@contextmanager
def _saver(kind: str, path: Path) -> Iterator[BaseCheckpointSaver[Any]]:
    if kind == "memory":
        yield InMemorySaver()
    else:
        with SqliteSaver.from_conn_string(str(path / "checkpoints.sqlite")) as saver:
            yield saver


_LATER = ["remove an old message", "rewrite the answer", "trim run", "long run"]


@pytest.mark.parametrize(
    ("saver_kind", "later"),
    # SqliteSaver has no async methods: the async case on the in-memory saver only
    [(k, later) for k in ("memory", "sqlite") for later in _LATER] + [("memory", "async")],
)
def test_a_forgotten_turn_stays_forgotten_when_a_later_put_changes_the_messages(
    tmp_path: Path, new_memory: Any, saver_kind: str, later: str
) -> None:
    """Helper 148, case 1: the carried-turn rule compared messages only, and at most 16
    checkpoints back. A fresh checkpointer (a restart) recorded a forgotten turn again
    when a later put changed the messages without a new question (an old message
    removed with ``update_state``, the answer rewritten as the bot, a run whose node
    trims the window), or after a run of more than 16 checkpoints writing no message."""
    mem: HelaMemory = new_memory(tmp_path / "mem")
    cfg: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
    with _saver(saver_kind, tmp_path) as saver:
        with TurnRecorder(mem) as rec:
            graph = _graph(HelaMemCheckpointer(rec, saver))
            graph.invoke({"messages": [HumanMessage("hello", id="h0")]}, cfg)
            graph.invoke({"messages": [HumanMessage("my bank PIN is 4711", id="h1")]}, cfg)
            rec.flush_sync()
        assert len(mem.find_ids(("users", "alice"), metadata={"message_id": "h1"})) == 2
        mem.delete_scope(("users", "alice"))
        with TurnRecorder(mem) as rec:
            fresh = _graph(HelaMemCheckpointer(rec, saver))  # a restart: nothing in memory
            if later == "remove an old message":
                fresh.update_state(cfg, {"messages": [RemoveMessage(id="h0")]})
            elif later == "rewrite the answer":
                edited = AIMessage("re: my bank PIN is 4711 (edited)", id="a-h1")
                fresh.update_state(cfg, {"messages": [edited]}, as_node="bot")
            elif later == "trim run":
                fresh.invoke({"note": "trim"}, cfg)
            elif later == "long run":
                fresh.invoke({"note": "loop"}, cfg)
            else:  # the same through aupdate_state on an async-capable saver
                asyncio.run(fresh.aupdate_state(cfg, {"messages": [RemoveMessage(id="h0")]}))
            rec.flush_sync()
        assert fresh.get_state(cfg).values["messages"][-1].id == "a-h1"  # still its turn
    assert mem.search("PIN 4711", ("users", "alice"), k=5, learn=False).hits == ()
    mem.close()


class _NoReducer(TypedDict):
    messages: list[Any]


def test_an_id_less_turn_is_recorded_once_when_a_later_put_windows_the_messages(
    tmp_path: Path, new_memory: Any
) -> None:
    """Helper 148, case 2: without ``add_messages`` a human message has no id and its turn
    no ``unique_on``; an ``update_state`` keeping the last two messages moved the
    answered turn's place, so its key changed and it was recorded a second time."""

    def bot(state: _NoReducer) -> dict[str, Any]:
        q = state["messages"][-1]
        return {"messages": [*state["messages"], AIMessage(f"re: {q.content}")]}

    g = one_node(_NoReducer, bot)
    mem: HelaMemory = new_memory(tmp_path / "mem")
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    saver = InMemorySaver()
    with TurnRecorder(mem) as rec:
        graph = g.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        state = graph.invoke({"messages": [HumanMessage("q1")]}, cfg)
        state = graph.invoke({"messages": [*state["messages"], HumanMessage("q2")]}, cfg)
        graph.update_state(cfg, {"messages": state["messages"][-2:]})  # a window
        fresh = g.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        fresh.update_state(cfg, {"messages": state["messages"][-2:]})  # again, restarted
        graph.invoke({"messages": [*state["messages"][-2:], HumanMessage("q1")]}, cfg)
        rec.flush_sync()
    texts = sorted(h.memory.content for h in mem.search("q1 q2", ("threads", "t1"), k=20).hits)
    assert texts == ["q1", "q1", "q2", "re: q1", "re: q1", "re: q2"]  # q1 asked twice
    mem.close()


def test_a_thread_deleted_through_another_checkpointer_records_its_new_turns(
    tmp_path: Path, new_memory: Any
) -> None:
    """Helper 148, case 3: the checkpointer's last recorded turn of a thread (its id) was
    kept after another checkpointer on the saver (another worker) deleted the thread,
    so the new thread's first turn, whose client gave its message the same id, was
    dropped, though it has a new epoch and so a new identity."""

    def bot(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"re: {state['messages'][-1].content}")]}

    g = one_node(MessagesState, bot)
    mem: HelaMemory = new_memory(tmp_path / "mem")
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    saver = InMemorySaver()
    with TurnRecorder(mem) as rec:
        worker = g.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        worker.invoke({"messages": [HumanMessage("first life", id="m1")]}, cfg)
        HelaMemCheckpointer(rec, saver).delete_thread("t1")  # another worker
        worker.invoke({"messages": [HumanMessage("second life", id="m1")]}, cfg)
        rec.flush_sync()
    hits = mem.search("life", ("threads", "t1"), k=10, learn=False).hits
    assert sorted(h.memory.content for h in hits) == [
        "first life",
        "re: first life",
        "re: second life",
        "second life",
    ]
    mem.close()


def test_a_copy_of_a_thread_carries_its_source_turns_when_a_put_trims_it(
    tmp_path: Path, new_memory: Any
) -> None:
    """Helper 148, case 4: a ``copy_thread`` copy whose first put trims the window (its
    latest turn still the source's) recorded that turn again, in the copy's identity:
    twice in the user's memory, and back after it was forgotten."""
    mem: HelaMemory = new_memory(tmp_path / "mem")
    saver = _Copying()
    cfg: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
    with TurnRecorder(mem) as rec:
        graph = _graph(HelaMemCheckpointer(rec, saver))
        graph.invoke({"messages": [HumanMessage("hello", id="h0")]}, cfg)
        graph.invoke({"messages": [HumanMessage("my bank PIN is 4711", id="h1")]}, cfg)
        saver.copy_thread("t1", "t2")
        copied: Any = {"configurable": {"thread_id": "t2", "user_id": "alice"}}
        _graph(HelaMemCheckpointer(rec, saver)).invoke({"note": "trim"}, copied)
        rec.flush_sync()
    assert len(mem.find_ids(("users", "alice"), metadata={"message_id": "h1"})) == 2
    mem.close()


@pytest.mark.parametrize("client", ["last answer and the question", "another worker"])
def test_an_id_less_question_asked_again_after_its_answer_is_a_new_turn(
    tmp_path: Path, new_memory: Any, client: str
) -> None:
    """Review 150: an id-less turn's mark (its question and answer, and the number of human
    messages) passed from parent to child through the run's input, so "thanks" asked
    again and answered as before was taken for the turn carried along: dropped when the
    client sends the last answer with the new question (the place moved, each was
    recorded before the mark), and when another worker (a fresh checkpointer) took it."""

    def bot(state: _NoReducer) -> dict[str, Any]:
        q = state["messages"][-1].content
        answer = "You're welcome!" if q == "thanks" else f"re: {q}"
        return {"messages": [*state["messages"], AIMessage(answer)]}

    g = one_node(_NoReducer, bot)
    mem: HelaMemory = new_memory(tmp_path / "mem")
    cfg: Any = {"configurable": {"thread_id": "t1"}}
    saver = InMemorySaver()
    with TurnRecorder(mem) as rec:
        graph = g.compile(checkpointer=HelaMemCheckpointer(rec, saver))
        state = graph.invoke({"messages": [HumanMessage("thanks")]}, cfg)
        if client == "another worker":
            worker = g.compile(checkpointer=HelaMemCheckpointer(rec, saver))
            worker.invoke({"messages": [HumanMessage("thanks")]}, cfg)
        else:
            graph.invoke({"messages": [state["messages"][-1], HumanMessage("thanks")]}, cfg)
        graph.update_state(cfg, {"messages": graph.get_state(cfg).values["messages"][-2:]})
        rec.flush_sync()
    texts = sorted(h.memory.content for h in mem.search("thanks", ("threads", "t1"), k=20).hits)
    assert texts == ["You're welcome!", "You're welcome!", "thanks", "thanks"]
    mem.close()

"""HelaMemCheckpointer: a turn forgotten in the memory stays forgotten when a graph is
replayed from a checkpoint before its answer by another checkpointer object or another
process (the core keeps the forgotten turn keys), while the same words said again in a
new turn are recorded."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import MessagesState
from lg_graphs import one_node

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, TurnRecorder
from helamem.langgraph import HelaMemCheckpointer

ALICE = ("users", "alice")
CFG: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
SECRET = "my bank PIN is 4711"


def _bot(state: MessagesState) -> dict[str, Any]:
    q = state["messages"][-1]
    return {"messages": [AIMessage(f"noted: {q.content}", id=f"a-{q.id}")]}


def _before_answer(graph: Any, message_id: str) -> Any:
    """The config of the checkpoint whose messages end in ``message_id``, unanswered."""
    for snap in graph.get_state_history(CFG):
        msgs = snap.values.get("messages", [])
        if snap.next == ("bot",) and msgs and msgs[-1].id == message_id:
            return snap.config
    raise AssertionError(f"no checkpoint before the answer to {message_id}")


def _replay(mem: HelaMemory, checkpoints: Path) -> None:
    """A fresh recorder and checkpointer (another worker) replay the thread from the
    checkpoint before the secret's answer."""
    with SqliteSaver.from_conn_string(str(checkpoints)) as saver, TurnRecorder(mem) as rec:
        graph = one_node(MessagesState, _bot).compile(checkpointer=HelaMemCheckpointer(rec, saver))
        replayed = graph.invoke(None, _before_answer(graph, "h1"))
        assert replayed["messages"][-1].content == f"noted: {SECRET}"
        rec.flush_sync()


def _replay_in_child(path: str, checkpoints: str, pg: Any) -> None:
    mem = HelaMemory(HelaMemConfig(path=Path(path), store=pg), embedder=HashingEmbedder(256))
    try:
        _replay(mem, Path(checkpoints))
    finally:
        mem.close()


def _forget(mem: HelaMemory, how: str) -> None:
    if how == "delete_scope":
        mem.delete_scope(ALICE)
    else:  # the turn's two memories, by id
        mem.delete(mem.find_ids(ALICE, metadata={"message_id": "h1"}))


@pytest.mark.parametrize("how", ["delete_scope", "delete"])
@pytest.mark.parametrize("worker", ["another checkpointer", "another process"])
def test_a_forgotten_turn_replayed_elsewhere_is_not_recorded_again(
    tmp_path: Path, new_memory: Callable[..., HelaMemory], worker: str, how: str
) -> None:
    """Helper 164: a replay from the checkpoint before a forgotten turn's answer, by a
    checkpointer that did not record the turn (another object on the same saver, or
    another process), recorded the turn again: its forgotten text was searchable."""
    mem = new_memory(tmp_path / "mem")
    checkpoints = tmp_path / "checkpoints.sqlite"
    with SqliteSaver.from_conn_string(str(checkpoints)) as saver, TurnRecorder(mem) as rec:
        graph = one_node(MessagesState, _bot).compile(checkpointer=HelaMemCheckpointer(rec, saver))
        graph.invoke({"messages": [HumanMessage("hello there", id="h0")]}, CFG)
        graph.invoke({"messages": [HumanMessage(SECRET, id="h1")]}, CFG)
        rec.flush_sync()
    assert len(mem.find_ids(ALICE, metadata={"message_id": "h1"})) == 2
    _forget(mem, how)
    if worker == "another checkpointer":
        _replay(mem, checkpoints)
    else:
        pg = mem.config.store
        mem.close()
        child = mp.get_context("spawn").Process(
            target=_replay_in_child, args=(str(tmp_path / "mem"), str(checkpoints), pg)
        )
        child.start()
        child.join(120)
        assert child.exitcode == 0
        mem = new_memory(tmp_path / "mem")
    hits = mem.search("bank PIN 4711", ALICE, k=5, learn=False).hits
    kept = [] if how == "delete_scope" else ["hello there", "noted: hello there"]
    assert sorted(h.memory.content for h in hits) == kept
    assert mem.find_ids(ALICE, metadata={"message_id": "h1"}) == []
    mem.close()


def test_the_same_words_in_a_new_turn_after_forgetting_are_recorded(
    tmp_path: Path, new_memory: Callable[..., HelaMemory]
) -> None:
    """The forgotten key is the turn's (thread, epoch, message id), not its text: the
    user saying the secret again, as a new message, is a new turn, recorded (also by a
    worker that replayed the forgotten one first)."""
    mem = new_memory(tmp_path / "mem")
    checkpoints = tmp_path / "checkpoints.sqlite"
    with SqliteSaver.from_conn_string(str(checkpoints)) as saver, TurnRecorder(mem) as rec:
        graph = one_node(MessagesState, _bot).compile(checkpointer=HelaMemCheckpointer(rec, saver))
        graph.invoke({"messages": [HumanMessage(SECRET, id="h1")]}, CFG)
        rec.flush_sync()
        mem.delete_scope(ALICE)
        _replay(mem, checkpoints)  # the forgotten turn: not recorded
        graph.invoke({"messages": [HumanMessage(SECRET, id="h2")]}, CFG)
        rec.flush_sync()
    hits = mem.search("bank PIN 4711", ALICE, k=5, learn=False).hits
    assert sorted((h.memory.content, h.memory.metadata["message_id"]) for h in hits) == [
        (SECRET, "h2"),
        (f"noted: {SECRET}", "h2"),
    ]
    mem.close()

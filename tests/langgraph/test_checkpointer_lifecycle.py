"""HelaMemCheckpointer after its block ends, and async calls on the sync default saver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import MessagesState
from lg_graphs import one_node

from helamem.core import HelaMemError, HelaMemory, TurnRecorder
from helamem.langgraph import (
    CheckpointerClosedError,
    CheckpointerModeError,
    HelaMemCheckpointer,
)

CFG: Any = {"configurable": {"thread_id": "t1", "user_id": "alice"}}


def _graph(cp: HelaMemCheckpointer) -> Any:
    def bot(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"echo {state['messages'][-1].content}")]}

    return one_node(MessagesState, bot).compile(checkpointer=cp)


@pytest.fixture
def memory(tmp_path: Path, new_memory: Any) -> Any:
    mem = new_memory(tmp_path / "mem", dim=64)
    yield mem
    mem.close()


def test_use_after_the_with_block_names_the_fix(memory: HelaMemory) -> None:
    with TurnRecorder(memory) as rec:
        cp = HelaMemCheckpointer(rec)
        with cp:
            graph = _graph(cp)
            graph.invoke({"messages": [HumanMessage("hi")]}, CFG)
        for call in (
            lambda: graph.invoke({"messages": [HumanMessage("again")]}, CFG),
            lambda: cp.get_tuple(CFG),
            lambda: list(cp.list(CFG)),
        ):
            with pytest.raises(CheckpointerClosedError, match="with` block ended") as err:
                call()
            assert isinstance(err.value, HelaMemError)
        with cp:  # entering again opens the same file again: nothing lost
            tup = cp.get_tuple(CFG)
            assert tup is not None
            assert [m.content for m in tup.checkpoint["channel_values"]["messages"]] == [
                "hi",
                "echo hi",
            ]


async def test_async_use_after_the_async_with_block_names_the_fix(memory: HelaMemory) -> None:
    async with TurnRecorder(memory) as rec:
        cp = HelaMemCheckpointer(rec)
        async with cp:
            graph = _graph(cp)
            await graph.ainvoke({"messages": [HumanMessage("hi")]}, CFG)
        with pytest.raises(CheckpointerClosedError):
            await graph.ainvoke({"messages": [HumanMessage("again")]}, CFG)
        with pytest.raises(CheckpointerClosedError):
            await cp.aget_tuple(CFG)


async def test_ainvoke_on_the_sync_default_saver_names_async_with(memory: HelaMemory) -> None:
    async with TurnRecorder(memory) as rec:
        with HelaMemCheckpointer(rec) as cp:
            graph = _graph(cp)
            with pytest.raises(CheckpointerModeError, match="async with HelaMemCheckpointer"):
                await graph.ainvoke({"messages": [HumanMessage("hi")]}, CFG)
            # the sync path still works on the same checkpointer
            out = await _in_thread(graph)
            assert out["messages"][-1].content == "echo hi"


async def _in_thread(graph: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(graph.invoke, {"messages": [HumanMessage("hi")]}, CFG)


def test_a_saver_passed_in_is_never_closed_or_refused(memory: HelaMemory) -> None:
    saver = InMemorySaver()
    with TurnRecorder(memory) as rec:
        with HelaMemCheckpointer(rec, saver) as cp:
            graph = _graph(cp)
            graph.invoke({"messages": [HumanMessage("hi")]}, CFG)
        assert cp.get_tuple(CFG) is not None  # the caller owns it: still usable

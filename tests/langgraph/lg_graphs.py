"""Graphs the checkpointer tests share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.graph import END, START, StateGraph


def one_node(state: Any, bot: Callable[[Any], dict[str, Any]]) -> Any:
    """A graph builder of ``state`` running ``bot`` once per input (START → bot → END)."""
    g = StateGraph(state)
    g.add_node("bot", bot)
    g.add_edge(START, "bot")
    g.add_edge("bot", END)
    return g

"""HeLa-Mem in LangGraph: a chatbot whose threads share one Hebbian long-term memory.

A StateGraph with two nodes, ``recall`` (searches the HelaMemStore through
the injected ``store``) and ``respond`` (a fake, offline chat model that
answers from what was recalled), compiled with HelaMemStore and
HelaMemCheckpointer. Thread A teaches the bot a few things; thread B, a
fresh conversation of the same user, recalls them. The checkpointer records
every completed turn with the memories its nodes retrieved, so those
memories co-activate; results that spreading activation added (absent from a
no-spreading search) are marked ``association``.

    python examples/langgraph_agent.py [--path ./helamem-langgraph-data]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.store.base import BaseStore, SearchItem

from helamem.core import HelaMemory, TurnRecorder
from helamem.langgraph import HelaMemCheckpointer, HelaMemStore


class State(MessagesState):
    recalled: list[dict[str, Any]]


def _text(item: SearchItem) -> str:
    return str(item.value.get("content") or item.value.get("text") or item.value)


def recall(state: State, config: RunnableConfig, store: BaseStore) -> dict[str, Any]:
    user = config["configurable"]["user_id"]
    question = str(state["messages"][-1].content)
    # the user's statements and documents; the bot's own replies are left out
    hits = store.search(
        ("users", user), query=question, filter={"role": {"$ne": "assistant"}}, limit=3
    )
    return {"recalled": [{"text": _text(h), "key": h.key, "score": h.score} for h in hits]}


def respond(state: State) -> dict[str, Any]:
    """A fake chat model: acknowledges statements, answers questions from memory."""
    question = str(state["messages"][-1].content)
    if not question.rstrip().endswith("?"):
        return {"messages": [AIMessage("Got it, I'll remember that.")]}
    recalled = [r["text"] for r in state.get("recalled", []) if not r["text"].endswith("?")]
    if not recalled:
        return {"messages": [AIMessage("I don't know yet.")]}
    return {"messages": [AIMessage("From what you told me: " + " | ".join(recalled[:2]))]}


def build(store: HelaMemStore, saver: HelaMemCheckpointer) -> Any:
    graph = StateGraph(State)
    graph.add_node("recall", recall)
    graph.add_node("respond", respond)
    graph.add_edge(START, "recall")
    graph.add_edge("recall", "respond")
    graph.add_edge("respond", END)
    return graph.compile(checkpointer=saver, store=store)


TEACH = [
    "My sister Ana moved to Lisbon last spring.",
    "Ana works as a marine biologist at the aquarium.",
    "She keeps talking about diving with sea turtles.",
]
ASK = [
    "Where does my sister live?",
    "What does Ana do for work?",
    "What should I get Ana for her birthday?",
    "What hobby does my sister have?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path("./helamem-langgraph-data"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    memory = HelaMemory.from_path(args.path)  # the offline MiniLM embedder
    scope = ("users", "alice")
    with (
        memory,
        HelaMemStore(memory) as store,
        TurnRecorder(memory) as recorder,
        HelaMemCheckpointer(recorder, store=store) as saver,
    ):
        graph = build(store, saver)
        store.put(
            scope, "profile", {"text": "Alice prefers gifts that are experiences."}, index=["text"]
        )

        print("== thread A teaches ==")
        a = {"configurable": {"thread_id": "thread-a", "user_id": "alice"}}
        for line in TEACH:
            out = graph.invoke({"messages": [HumanMessage(line)]}, a)
            print(f"  user: {line}\n  bot:  {out['messages'][-1].content}")
        recorder.flush_sync()  # the turns are stored in the background

        print("\n== thread B (a new conversation) recalls ==")
        b = {"configurable": {"thread_id": "thread-b", "user_id": "alice"}}
        for question in ASK:
            # what similarity alone would rank first (no spreading, read-only)
            plain = memory.search(question, scope, k=12, spread=False, learn=False)
            baseline = [h.content for h in plain if h.memory.role != "assistant"][:3]
            out = graph.invoke({"messages": [HumanMessage(question)]}, b)
            print(f"  user: {question}\n  bot:  {out['messages'][-1].content}")
            for r in out["recalled"]:
                how = "similarity" if r["text"] in baseline else "association"
                print(f"        recalled {r['score']:.2f} [{how}] {r['text']}")
        recorder.flush_sync()

        stats = memory.stats(scope)
        print(
            f"\n{recorder.recorded} turns recorded; memory: {stats.memories} memories, "
            f"{stats.edges} learned edges (mean weight {stats.mean_edge_weight:.2f}); "
            f"thread B kept {len(graph.get_state(b).values['messages'])} messages"
        )


if __name__ == "__main__":
    main()

"""HeLa-Mem in LlamaIndex: an agent and a chat engine that remember earlier sessions.

Runs offline: the embedder is the bundled MiniLM and the "LLM" is LlamaIndex's
``MockFunctionCallingLLM`` with a tiny rule that answers a question from the
best memory it was given (a real LLM drops in unchanged).

1. A ``FunctionAgent`` with :class:`~helamem.llamaindex.HelaMemChatMemory`
   (the ``ChatMemoryBuffer`` drop-in): session 1 tells it a few things,
   session 2 (a fresh window, same user scope) asks about them.
2. A ``SimpleChatEngine`` whose ``Memory`` holds a
   :class:`~helamem.llamaindex.HelaMemMemoryBlock`: the block's retrieval
   appears in the LLM input as ``<helamem>`` in the system message.

    python examples/llamaindex_agent.py [--path ./helamem-data]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.memory import Memory

from helamem.core import HelaMemory
from helamem.llamaindex import HelaMemChatMemory, HelaMemMemoryBlock

USER = ("users", "dana")

SESSION_1 = [
    "My daughter Emma just started violin lessons with Mr. Okafor.",
    "I'm training for the Berlin marathon in September.",
    "My left knee has been sore after long runs.",
]
QUESTION_2 = "Which instrument is my daughter learning?"
QUESTION_3 = "What race am I training for?"


def offline_llm(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    """Answer a question with the best user memory in the system message, else acknowledge."""
    question = messages[-1].content or ""
    memories = [
        line
        for m in messages
        if m.role == "system"
        for line in (m.content or "").splitlines()
        if line.startswith("- [") and "] user: " in line
    ]
    if question.rstrip().endswith("?") and memories:
        return ChatMessage(
            role="assistant", content=f"You told me: {memories[0].split('user: ', 1)[1]}"
        )
    return ChatMessage(role="assistant", content="Noted, thanks!")


def memory_lines(messages: Sequence[ChatMessage]) -> list[str]:
    return [
        line
        for m in messages
        if m.role == "system"
        for line in (m.content or "").splitlines()
        if line.startswith("- [")
    ]


async def agent_sessions(store: HelaMemory) -> None:
    seen: list[Sequence[ChatMessage]] = []

    def llm_fn(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        seen.append(list(messages))
        return offline_llm(messages, **kwargs)

    agent = FunctionAgent(llm=MockFunctionCallingLLM(response_generator=llm_fn), tools=[])

    print("== FunctionAgent + HelaMemChatMemory ==")
    first = HelaMemChatMemory.from_defaults(memory=store, session_id="session-1", scope=USER)
    for text in SESSION_1:
        reply = await agent.run(user_msg=text, memory=first)
        print(f"[session 1] user: {text}\n[session 1] agent: {reply}")
    await first.aclose()  # waits until every turn is stored

    second = HelaMemChatMemory.from_defaults(memory=store, session_id="session-2", scope=USER)
    reply = await agent.run(user_msg=QUESTION_2, memory=second)
    print(f"[session 2] window: {len(second.get_all())} messages (this turn only)")
    print(f"[session 2] injected memories: {memory_lines(seen[-1])[:3]}")
    print(f"[session 2] user: {QUESTION_2}\n[session 2] agent: {reply}")
    await second.aclose()


async def chat_engine_session(store: HelaMemory) -> None:
    seen: list[Sequence[ChatMessage]] = []

    def llm_fn(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        seen.append(list(messages))
        return offline_llm(messages, **kwargs)

    print("\n== SimpleChatEngine + Memory(memory_blocks=[HelaMemMemoryBlock]) ==")
    block = HelaMemMemoryBlock.from_memory(store, scope=USER, k=3)
    memory = Memory.from_defaults(session_id="session-3", memory_blocks=[block])
    engine = SimpleChatEngine.from_defaults(
        llm=MockFunctionCallingLLM(response_generator=llm_fn), memory=memory
    )
    reply = await engine.achat(QUESTION_3)
    system = next(m.content or "" for m in seen[-1] if m.role == "system")
    print(f"[session 3] system message has <helamem>: {'<helamem>' in system}")
    print(f"[session 3] user: {QUESTION_3}\n[session 3] engine: {reply}")
    await block.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path("./helamem-data"), help="data directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    async with HelaMemory.from_path(args.path) as store:
        await agent_sessions(store)
        await chat_engine_session(store)
        stats = await store.astats(USER)
        print(f"\nstored for {USER}: {stats.episodic} episodes, {stats.edges} edges")


if __name__ == "__main__":
    asyncio.run(main())

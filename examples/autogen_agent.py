"""HeLa-Mem in AutoGen AgentChat: two agents, one store, two scopes, offline.

Each ``AssistantAgent`` gets a :class:`~helamem.autogen.HelaMemMemory`. Before
every model call the memory injects one system message with what it
recalls for the user's message, and records the previous turn (with the
memories it injected for it, so they wire together). The model is a replay
client with canned answers, so no API key or network is needed; the
embedder is the bundled offline MiniLM.

    python examples/autogen_agent.py [--path ./helamem-data] [--embedder hashing]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Literal

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import MemoryQueryEvent
from autogen_core.memory import MemoryContent, MemoryMimeType
from autogen_ext.models.replay import ReplayChatCompletionClient

from helamem.autogen import HelaMemMemory, HelaMemMemoryConfig
from helamem.core import HelaMemory

ALICE_TURNS = [
    ("I just adopted a cat named Miso.", "Congratulations on Miso!"),
    ("I'm also training for the Berlin marathon.", "Good luck with the training!"),
    ("What is my cat called again?", "Your cat is called Miso."),
]
BOB_TURNS = [
    ("I play the cello in an orchestra.", "How wonderful!"),
    ("Do I have any pets?", "I don't know of any pets of yours."),
]


async def chat(agent: AssistantAgent, memory: HelaMemMemory, turns: list[tuple[str, str]]) -> None:
    print(f"\n== {agent.name} (scope {'/'.join(memory.scope)})")
    for user, _ in turns:
        result = await agent.run(task=user)
        recalled = [
            str(c.content)
            for m in result.messages
            if isinstance(m, MemoryQueryEvent)
            for c in m.content
        ]
        print(f"user: {user}")
        for text in recalled[:3]:
            print(f"   recalled: {text}")
        print(f"{agent.name}: {result.messages[-1].to_text()}")
    await memory.record_last_turn(agent.model_context)  # the final turn


async def main(path: str, embedder: Literal["minilm", "hashing"]) -> None:
    alice_cfg = HelaMemMemoryConfig(scope=("users", "alice"), path=path, embedder=embedder, k=3)
    bob_cfg = alice_cfg.model_copy(update={"scope": ("users", "bob")})
    # one store shared by both agents; each memory reads and writes its own scope
    store = HelaMemory(alice_cfg.to_helamem_config())
    alice_mem = HelaMemMemory(alice_cfg, memory=store)
    bob_mem = HelaMemMemory(bob_cfg, memory=store)
    profile = MemoryContent(content={"city": "Lyon"}, mime_type=MemoryMimeType.JSON)
    await alice_mem.add(profile)

    alice = AssistantAgent(
        "alice_assistant",
        model_client=ReplayChatCompletionClient([a for _, a in ALICE_TURNS]),
        memory=[alice_mem],
    )
    bob = AssistantAgent(
        "bob_assistant",
        model_client=ReplayChatCompletionClient([a for _, a in BOB_TURNS]),
        memory=[bob_mem],
    )
    await chat(alice, alice_mem, ALICE_TURNS)
    await chat(bob, bob_mem, BOB_TURNS)
    await alice_mem.close()  # drains the turn recorder; the shared store stays open
    await bob_mem.close()

    print("\n== stored")
    for scope in await store.alist_scopes(("users",)):
        stats = await store.astats(scope)
        print(f"{'/'.join(scope)}: {stats.episodic} episodes")
    await store.aclose()

    # the agent's config round-trips; the reloaded memory opens the same store
    dumped = alice.dump_component()
    reloaded = HelaMemMemory.load_component(dumped.config["memory"][0])
    hits = (await reloaded.query("pet cat name")).results
    print(f"\n== reloaded from dump_component(): {reloaded.name}")
    for hit in hits:
        meta = hit.metadata or {}
        print(f"  {meta.get('score', 0):.2f} {meta.get('provenance')}: {hit.content!s}")
    await reloaded.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="./helamem-data", help="data directory")
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.path, args.embedder))

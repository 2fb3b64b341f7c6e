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
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal, Self

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import MemoryQueryEvent
from autogen_core import CancellationToken, Component
from autogen_core.memory import MemoryContent, MemoryMimeType
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from helamem.autogen import HelaMemMemory, HelaMemMemoryConfig
from helamem.core import HelaMemory


class ReplayConfig(BaseModel):
    chat_completions: list[str]


class ReplayChatCompletionClient(ChatCompletionClient, Component[ReplayConfig]):
    """Canned replies in order: the interface of autogen-ext's client of the same name.

    (autogen-ext is not a dependency of HeLa-Mem; with it installed, use
    ``autogen_ext.models.replay.ReplayChatCompletionClient`` or a real client.)
    """

    component_type = "model"
    component_config_schema = ReplayConfig

    def __init__(self, chat_completions: Sequence[str]) -> None:
        self.chat_completions = list(chat_completions)
        self.calls = 0

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        reply = self.chat_completions[self.calls]
        self.calls += 1
        return CreateResult(
            finish_reason="stop", content=reply, usage=RequestUsage(0, 0), cached=False
        )

    async def create_stream(
        self, messages: Sequence[LLMMessage], **kwargs: Any
    ) -> AsyncGenerator[str | CreateResult, None]:
        yield await self.create(messages)

    async def close(self) -> None:
        return None

    def actual_usage(self) -> RequestUsage:
        return RequestUsage(0, 0)

    def total_usage(self) -> RequestUsage:
        return RequestUsage(0, 0)

    def count_tokens(self, messages: Sequence[LLMMessage], **kwargs: Any) -> int:
        return 0

    def remaining_tokens(self, messages: Sequence[LLMMessage], **kwargs: Any) -> int:
        return 100_000

    @property
    def capabilities(self) -> ModelCapabilities:
        return self.model_info

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False,
            function_calling=False,
            json_output=False,
            family=ModelFamily.UNKNOWN,
            structured_output=False,
        )

    def _to_config(self) -> ReplayConfig:
        return ReplayConfig(chat_completions=self.chat_completions)

    @classmethod
    def _from_config(cls, config: ReplayConfig) -> Self:
        return cls(config.chat_completions)


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

"""Wrong data in the agent's context, each case against what it should be.

* With the default ``score_threshold=None``, ``update_context`` injected memories of
  no relevance at all (score 0.0: nothing shared with the question), and the turn
  recorded them as used.
* After ``clear()``, the cut-off that keeps a question said before it out of the next
  recorded turn told a reset context by its message count: a context cleared and
  refilled to the same count or more before the next read lost its first turn.
* ``clear()`` cut only the contexts its own instance served: a context another memory
  of the scope served (same store, another agent or store object) had its question
  said before ``clear()`` recorded after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import MemoryQueryEvent, TextMessage
from autogen_core import CancellationToken, FunctionCall
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import CreateResult, RequestUsage
from autogen_replay_client import ReplayChatCompletionClient
from test_autogen_memory import ALICE, SpyMemory, config, memory_messages, text
from test_autogen_teams import INFO

from helamem.autogen import HelaMemMemory
from helamem.core import HashingEmbedder, HelaMemory


@pytest.fixture
async def store(tmp_path: Path, hela_config: Any) -> AsyncIterator[SpyMemory]:
    mem = SpyMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    yield mem
    await mem.aclose()


def _calls_tool(name: str) -> CreateResult:
    return CreateResult(
        finish_reason="function_calls",
        content=[FunctionCall(id="1", name=name, arguments="{}")],
        usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
        cached=False,
    )


# -- 1. no relevance, no injection ---------------------------------------------------


async def test_memories_without_relevance_are_not_injected(
    store: SpyMemory, tmp_path: Path, store_db: Any
) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    for fact in ("Alice's cat is called Miso", "Alice plays the cello", "Bob sails"):
        await memory.add(text(fact))
    client = ReplayChatCompletionClient(["Lyon."])
    agent = AssistantAgent("a", model_client=client, memory=[memory])

    result = await agent.run(task="Where do I live?")

    assert not [m for m in result.messages if isinstance(m, MemoryQueryEvent)]
    assert memory_messages(client.calls[0]) == []
    await memory.flush()
    await store.astats()  # a call: the owner has written the search's deferred learning
    # the search learned as a search does (deferred): its hits count as accessed, so
    # forget() does not take them as never used (review 168: reinforce counted none)
    db = store_db(tmp_path / "store")
    try:
        accessed = db.execute("SELECT COUNT(*) FROM memories WHERE access_count > 0")
        top = store.config.retrieval.learn_top  # the hits a search learns from
        assert accessed.fetchone()[0] == min(3, top or 3)
    finally:
        db.close()
    # query() keeps AutoGen's contract: every hit, those of score 0.0 too
    found = await memory.query("Where do I live?")
    assert len(found.results) == 3
    assert {r.metadata["score"] for r in found.results if r.metadata} == {0.0}
    await memory.close()  # records the turn
    assert store.turns == [("Where do I live?", "Lyon.", ())]  # used none of them


async def test_the_reply_of_a_matching_question_comes_with_it_an_unrelated_turn_does_not(
    store: SpyMemory, tmp_path: Path
) -> None:
    """The hashing embedder gives "Congratulations on Miso!" no relevance to "What is my
    cat called?" (no shared word), and in a store this small it is a base candidate,
    which keeps its own score (0.0); spreading reached it from its question, which
    matches: it is related. The cello turn (a scope of its own under Alice's, so no edge
    of her chat's chain links it to the cat) is not."""
    await store.aadd_turn(ALICE, "I adopted a cat named Miso", "Congratulations on Miso!")
    await store.aadd_turn((*ALICE, "music"), "I play the cello", "Lovely instrument!")
    memory = HelaMemMemory(config(tmp_path, learn=False), memory=store)
    client = ReplayChatCompletionClient(["Miso."])
    agent = AssistantAgent("a", model_client=client, memory=[memory])

    result = await agent.run(task="What is my cat called?")

    events = [m for m in result.messages if isinstance(m, MemoryQueryEvent)]
    assert len(events) == 1
    assert sorted(str(c.content) for c in events[0].content) == [
        "Congratulations on Miso!",
        "I adopted a cat named Miso",
    ]
    await memory.close()


# -- 2. a reset context is told by its messages, not their count --------------------


async def test_a_context_reset_and_refilled_past_its_length_keeps_its_first_turn(
    store: SpyMemory, tmp_path: Path
) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    client = ReplayChatCompletionClient(["Noted, 4321.", "Sunny.", "Rainy."])
    agent = AssistantAgent("a", model_client=client, memory=[memory])
    await agent.run(task="my bank PIN is 4321")
    await memory.clear()
    await agent.on_reset(CancellationToken())  # a new conversation, three messages at once
    ask = ["what is the weather?", "in Lyon", "this afternoon"]
    await agent.run(task=[TextMessage(content=t, source="user") for t in ask])
    await agent.run(task="and tomorrow?")
    await memory.close()
    assert [(u, a) for u, a, _ in store.turns] == [
        ("\n".join(ask), "Sunny."),
        ("and tomorrow?", "Rainy."),
    ]


class _Sealed(UnboundedChatCompletionContext):
    """A context whose methods a memory cannot wrap (it tells a reset by reading it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("clear", "load_state"):
            raise AttributeError(name)
        super().__setattr__(name, value)


async def test_a_reset_the_memory_did_not_see_is_told_by_the_messages(
    store: SpyMemory, tmp_path: Path
) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    client = ReplayChatCompletionClient(["Noted, 4321.", "Sunny.", "Rainy."])
    agent = AssistantAgent("a", model_client=client, memory=[memory], model_context=_Sealed())
    await agent.run(task="my bank PIN is 4321")
    await memory.clear()
    await agent.model_context.clear()
    await agent.run(task=[TextMessage(content=t, source="user") for t in ("hi", "weather?")])
    await agent.run(task="and tomorrow?")
    await memory.close()
    assert [(u, a) for u, a, _ in store.turns] == [
        ("hi\nweather?", "Sunny."),
        ("and tomorrow?", "Rainy."),
    ]


# -- 3. clear() cuts every context of its scope in this process ---------------------


async def test_clear_cuts_the_turn_another_memory_of_the_scope_has_not_recorded(
    store: SpyMemory, tmp_path: Path, hela_config: Any
) -> None:
    """Another agent's memory of the scope completed "my bank PIN is 4321" (recorded at
    its next model call); ``clear()`` on a memory of the scope on another store object
    of the same store must forget it."""
    theirs = HelaMemMemory(config(tmp_path), memory=store)
    agent = AssistantAgent(
        "b", model_client=ReplayChatCompletionClient(["Noted.", "Sunny."]), memory=[theirs]
    )
    await agent.run(task="my bank PIN is 4321")
    other = HelaMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    try:
        await HelaMemMemory(config(tmp_path), memory=other).clear()
        await agent.run(task="what is the weather?")
        await theirs.close()
        assert [(u, a) for u, a, _ in store.turns] == [("what is the weather?", "Sunny.")]
        assert (await store.astats(ALICE)).memories == 2  # the weather turn only
        found = await HelaMemMemory(config(tmp_path), memory=store).query("bank PIN 4321")
        assert [r.content for r in found.results if "4321" in str(r.content)] == []
    finally:
        await other.aclose()


async def test_clear_through_another_memory_cuts_the_question_being_answered(
    store: SpyMemory, tmp_path: Path
) -> None:
    """A tool clears the user's memories through a memory of the scope the agent does not
    hold, on its first question: that question is in no turn afterwards."""
    admin = HelaMemMemory(config(tmp_path), memory=store)
    mine = HelaMemMemory(config(tmp_path), memory=store)

    async def forget_me() -> str:
        """Forget everything about the user."""
        await admin.clear()
        return "forgotten"

    agent = AssistantAgent(
        "a",
        model_client=ReplayChatCompletionClient(
            [_calls_tool("forget_me"), "Done: I forgot it all.", "Sunny."], model_info=INFO
        ),
        memory=[mine],
        tools=[forget_me],
        reflect_on_tool_use=True,
    )
    await agent.run(task="my bank PIN is 4321; now forget everything about me")
    await agent.run(task="what is the weather?")
    await mine.close()
    assert [(u, a) for u, a, _ in store.turns] == [("what is the weather?", "Sunny.")]


async def test_clear_cuts_the_contexts_of_the_scopes_under_it(
    store: SpyMemory, tmp_path: Path
) -> None:
    """A planner's memory on ("users", "alice", "planner"): clearing ("users", "alice")
    deletes that scope too, so its pending turn must not come back into it."""
    planner = HelaMemMemory(config(tmp_path, scope=(*ALICE, "planner")), memory=store)
    agent = AssistantAgent(
        "p", model_client=ReplayChatCompletionClient(["Noted.", "Sunny."]), memory=[planner]
    )
    await agent.run(task="my bank PIN is 4321")
    await HelaMemMemory(config(tmp_path), memory=store).clear()
    await agent.run(task="what is the weather?")
    await planner.close()
    assert [(u, a) for u, a, _ in store.turns] == [("what is the weather?", "Sunny.")]


async def test_a_neighbour_of_a_noise_level_hit_is_not_injected(
    store: SpyMemory, tmp_path: Path
) -> None:
    """Trial 169: "Alice lives in Lyon" scores 1.5e-06 against "Where do I live?" under the
    hashing embedder (no shared word: an embedding's noise), which passed "score above 0"
    as relevant, and "Alice's cat is called Miso", added next (linked to it), came in as
    reached from it: the README's own example of what is not injected was injected."""
    memory = HelaMemMemory(config(tmp_path), memory=store)
    await memory.add(text("Alice lives in Lyon"))
    await memory.add(text("Alice's cat is called Miso"))
    found = await memory.query("Where do I live?")
    assert all(0.0 <= (r.metadata or {})["score"] < 0.01 for r in found.results), found
    context = UnboundedChatCompletionContext()
    await context.add_message(
        TextMessage(content="Where do I live?", source="user").to_model_message()
    )
    got = await memory.update_context(context)
    assert got.memories.results == []
    await memory.close()

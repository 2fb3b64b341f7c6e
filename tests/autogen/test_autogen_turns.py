"""Turns and metadata that used to be lost or overwritten, each against what it should be.

* A windowed model context (``BufferedChatCompletionContext``,
  ``HeadAndTailChatCompletionContext``) showed only part of the history, so a
  turn whose user message had left the view was never recorded, and
  HeadAndTail's "Skipped n messages." placeholder was stored as the user's words.
* A turn equal to the one before it ("yes" / "Done." twice) was taken for the
  same turn and dropped.
* Metadata keys the caller added (``id``, ``score``, ``mime_type``...) came back
  overwritten; ``ListMemory`` returns them as added.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_core.memory import ListMemory, MemoryContent, MemoryMimeType
from autogen_core.model_context import (
    BufferedChatCompletionContext,
    ChatCompletionContext,
    HeadAndTailChatCompletionContext,
    TokenLimitedChatCompletionContext,
    UnboundedChatCompletionContext,
)
from autogen_core.models import AssistantMessage, LLMMessage, UserMessage
from autogen_replay_client import ReplayChatCompletionClient
from test_autogen_memory import SpyMemory, config

from helamem.autogen import HelaMemMemory
from helamem.core import EmbeddingError, HashingEmbedder, HelaMemory

TASKS = ["My cat is called Miso", "My dog is called Rex", "I live in Lyon"]
REPLIES = ["Noted, Miso.", "Noted, Rex.", "Noted, Lyon."]


@pytest.fixture
async def store(tmp_path: Path, hela_config: Any) -> AsyncIterator[SpyMemory]:
    mem = SpyMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    yield mem
    await mem.aclose()


def _contexts() -> list[ChatCompletionContext]:
    return [
        UnboundedChatCompletionContext(),
        BufferedChatCompletionContext(buffer_size=3),
        HeadAndTailChatCompletionContext(head_size=1, tail_size=2),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["unbounded", "buffered-3", "head-and-tail"])
async def test_every_turn_is_recorded_whatever_the_context_window(
    store: SpyMemory, tmp_path: Path, which: int
) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    agent = AssistantAgent(
        "a",
        model_client=ReplayChatCompletionClient(REPLIES),
        memory=[memory],
        model_context=_contexts()[which],
    )
    for task in TASKS:
        await agent.run(task=task)
    await memory.close()  # records the final turn
    assert [(u, a) for u, a, _ in store.turns] == list(zip(TASKS, REPLIES, strict=True))


async def test_a_token_limited_context_records_from_its_whole_history(
    store: SpyMemory, tmp_path: Path
) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    client = ReplayChatCompletionClient(["unused"])
    context = TokenLimitedChatCompletionContext(client, token_limit=12)
    for user, reply in zip(TASKS, REPLIES, strict=True):
        await context.add_message(UserMessage(content=user, source="user"))
        await memory.update_context(context)
        await context.add_message(AssistantMessage(content=reply, source="a"))
    await memory.close()
    assert [(u, a) for u, a, _ in store.turns] == list(zip(TASKS, REPLIES, strict=True))


async def test_a_turn_equal_to_the_one_before_is_recorded_again(
    store: SpyMemory, tmp_path: Path
) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    agent = AssistantAgent(
        "a", model_client=ReplayChatCompletionClient(["Done."] * 3), memory=[memory]
    )
    for _ in range(3):
        await agent.run(task="yes")
    await memory.record_last_turn(agent.model_context)
    await memory.record_last_turn(agent.model_context)  # seen again: not recorded twice
    await memory.close()
    assert [(u, a) for u, a, _ in store.turns] == [("yes", "Done.")] * 3
    assert store.stats(memory.scope).episodic == 6


async def test_metadata_comes_back_as_added_like_list_memory(
    store: SpyMemory, tmp_path: Path
) -> None:
    given = {
        "id": "doc-42",
        "score": 5,
        "scope": "team-a",
        "role": "admin",
        "mime_type": "text/csv",
        "event_time": "1999-01-01",
        "tags": ["a", 1],
    }
    ours = HelaMemMemory(config(tmp_path), memory=store)
    theirs = ListMemory()
    for mem in (ours, theirs):
        await mem.add(
            MemoryContent(content="quarterly report", mime_type=MemoryMimeType.TEXT, metadata=given)
        )
    got = (await ours.query("quarterly report")).results[0]
    want = (await theirs.query("quarterly report")).results[0]
    assert got.mime_type == want.mime_type == MemoryMimeType.TEXT
    assert got.metadata is not None and want.metadata is not None
    assert {k: got.metadata[k] for k in given} == want.metadata == given
    helamem = got.metadata["helamem"]  # HeLa-Mem's own fields, whatever the caller's keys
    assert helamem["scope"] == list(ours.scope) and 0.0 <= helamem["score"] <= 1.0
    await ours.add(MemoryContent(content={"k": 1}, mime_type=MemoryMimeType.JSON))
    plain = (await ours.query("k")).results
    doc = next(r for r in plain if r.mime_type == MemoryMimeType.JSON)
    assert doc.content == {"k": 1}
    assert doc.metadata is not None and doc.metadata["scope"] == list(ours.scope)  # free keys
    assert "_helamem_mime_type" not in doc.metadata and "mime_type" not in doc.metadata
    await ours.close()


class _LastFour(ChatCompletionContext):
    """A custom windowed context whose saved state holds no message list."""

    async def get_messages(self) -> list[LLMMessage]:
        return self._messages[-4:]

    async def save_state(self) -> Mapping[str, Any]:
        return {"n": len(self._messages)}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        return None


async def _converse(
    memory: HelaMemMemory, context: ChatCompletionContext, turns: list[tuple[str, str]]
) -> None:
    for user, reply in turns:
        await context.add_message(UserMessage(content=user, source="user"))
        await memory.update_context(context)
        await context.add_message(AssistantMessage(content=reply, source="a"))
        await memory.record_last_turn(context)  # an app recording each reply as it comes


async def test_a_context_without_a_saved_history_records_each_turn_once(
    store: SpyMemory, tmp_path: Path
) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    turns = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    await _converse(memory, _LastFour(), turns)
    await memory.close()
    assert [(u, a) for u, a, _ in store.turns] == turns


async def test_a_cleared_context_records_its_turns_again(store: SpyMemory, tmp_path: Path) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    context = UnboundedChatCompletionContext()
    await _converse(memory, context, [("hi", "Hello!")])
    await context.clear()  # agent.on_reset()
    await _converse(memory, context, [("hi", "Hello!")])
    await memory.close()
    assert [(u, a) for u, a, _ in store.turns] == [("hi", "Hello!")] * 2


@pytest.mark.parametrize("which", [0, 1, 2], ids=["unbounded", "buffered-3", "head-and-tail"])
async def test_clear_forgets_the_turn_not_recorded_yet(
    store: SpyMemory, tmp_path: Path, which: int
) -> None:
    """``clear()`` ("forget everything") deleted the stored memories, but the agent's
    last turn, recorded only at its next model call, was stored after it: "my bank PIN
    is 4321" came back. Now the turns completed before ``clear()`` are never stored."""
    memory = HelaMemMemory(config(tmp_path), memory=store)
    agent = AssistantAgent(
        "a",
        model_client=ReplayChatCompletionClient(["Noted, 4321.", "Sunny.", "Rainy."]),
        memory=[memory],
        model_context=_contexts()[which],
    )
    await agent.run(task="my bank PIN is 4321")
    await memory.clear()
    await agent.run(task="what is the weather?")
    await agent.run(task="and tomorrow?")
    await memory.close()  # records the final turn
    assert [(u, a) for u, a, _ in store.turns] == [
        ("what is the weather?", "Sunny."),
        ("and tomorrow?", "Rainy."),
    ]
    found = await HelaMemMemory(config(tmp_path), memory=store).query("bank PIN 4321", k=10)
    assert [r.content for r in found.results if "4321" in str(r.content)] == []


@pytest.mark.parametrize("which", [0, 1, 2], ids=["unbounded", "buffered-3", "head-and-tail"])
async def test_a_question_asked_before_clear_is_in_no_turn_after_it(
    store: SpyMemory, tmp_path: Path, which: int
) -> None:
    """A tool of the agent calls ``clear()`` ("forget everything about me") while the
    question that asked for it is being answered: the question ("my bank PIN is 4321")
    was said before ``clear()``, yet the turn its reply completed after it was stored."""
    from autogen_core import FunctionCall
    from autogen_core.models import CreateResult, RequestUsage
    from test_autogen_teams import INFO

    memory = HelaMemMemory(config(tmp_path), memory=store)

    async def forget_me() -> str:
        """Forget everything about the user."""
        await memory.clear()
        return "forgotten"

    call = CreateResult(
        finish_reason="function_calls",
        content=[FunctionCall(id="1", name="forget_me", arguments="{}")],
        usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
        cached=False,
    )
    replies: list[Any] = [call, "Done: I forgot it all.", "Sunny."]
    agent = AssistantAgent(
        "a",
        model_client=ReplayChatCompletionClient(replies, model_info=INFO),
        memory=[memory],
        tools=[forget_me],
        reflect_on_tool_use=True,
        model_context=_contexts()[which],
    )
    await agent.run(task="my bank PIN is 4321; now forget everything about me")
    await agent.run(task="what is the weather?")
    await memory.close()  # records the final turn
    assert [(u, a) for u, a, _ in store.turns] == [("what is the weather?", "Sunny.")]
    found = await HelaMemMemory(config(tmp_path), memory=store).query("bank PIN 4321", k=10)
    assert [r.content for r in found.results if "4321" in str(r.content)] == []


async def test_a_query_result_added_elsewhere_keeps_none_of_the_old_memorys_fields(
    store: SpyMemory, tmp_path: Path
) -> None:
    first = HelaMemMemory(config(tmp_path, scope=("a",)), memory=store)
    second = HelaMemMemory(config(tmp_path, scope=("b",)), memory=store)
    await first.add(
        MemoryContent(content="the kiln is hot", mime_type=MemoryMimeType.TEXT, metadata={"t": 1})
    )
    result = (await first.query("the kiln is hot")).results[0]
    await second.add(result)
    copied = (await second.query("the kiln is hot")).results[0]
    assert copied.metadata is not None and result.metadata is not None
    assert copied.metadata["t"] == 1  # the caller's own key travels
    for meta in (copied.metadata, copied.metadata["helamem"]):
        assert meta["scope"] == ["b"] and meta["id"] != result.metadata["id"]
    await first.close()
    await second.close()


async def test_resetting_an_agent_records_its_final_turn_first(
    store: SpyMemory, tmp_path: Path
) -> None:
    """agent.on_reset() (a team's reset() calls it for every agent) clears the context:
    its final turn is recorded before, never lost."""
    from autogen_core import CancellationToken

    memory = HelaMemMemory(config(tmp_path), memory=store)
    agent = AssistantAgent(
        "a", model_client=ReplayChatCompletionClient(["r1", "r2"]), memory=[memory]
    )
    await agent.run(task="q1")
    await agent.on_reset(CancellationToken())
    await agent.run(task="q2")
    await memory.close()
    assert [(u, a) for u, a, _ in store.turns] == [("q1", "r1"), ("q2", "r2")]


async def test_a_team_reset_between_runs_loses_no_turn(store: SpyMemory, tmp_path: Path) -> None:
    from autogen_agentchat.conditions import MaxMessageTermination
    from autogen_agentchat.teams import RoundRobinGroupChat

    memories = [HelaMemMemory(config(tmp_path, scope=(n,)), memory=store) for n in ("A", "B")]
    agents = [
        AssistantAgent(
            n,
            model_client=ReplayChatCompletionClient([f"{n} says {i}" for i in range(4)]),
            memory=[m],
        )
        for n, m in zip(("A", "B"), memories, strict=True)
    ]
    team = RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(3))
    await team.run(task="start")
    await team.reset()
    await team.run(task="again")
    for m in memories:
        await m.close()
    answers = sorted(a for _, a, _ in store.turns)
    assert answers == ["A says 0", "A says 1", "B says 0", "B says 1"]  # each once


@pytest.mark.parametrize("blank", ["\u200b", "\x00", "\ufeff", " \u200c\t"])
async def test_an_invisible_user_message_is_no_query_and_no_turn(
    store: SpyMemory, tmp_path: Path, blank: str
) -> None:
    """A user message of only zero-width, control or BOM characters made the agent's run
    raise ``InvalidInputError`` (the core refuses it as a query); ``ListMemory`` takes
    it. Now it is no query and starts no turn; the turns around it are recorded."""
    memory = HelaMemMemory(config(tmp_path), memory=store)
    agent = AssistantAgent(
        "a",
        model_client=ReplayChatCompletionClient(["Noted, Miso.", "Hello?", "Rex it is."]),
        memory=[memory],
    )
    await agent.run(task="My cat is called Miso")
    result = await agent.run(task=blank)
    assert result.messages[-1].content == "Hello?"
    await agent.run(task="My dog is called Rex")
    await memory.close()
    # the reply to the blank message is no turn: not paired with the older question
    assert [(u, a) for u, a, _ in store.turns] == [
        ("My cat is called Miso", "Noted, Miso."),
        ("My dog is called Rex", "Rex it is."),
    ]


async def test_a_lone_surrogate_in_a_message_does_not_break_the_conversation(
    store: SpyMemory, tmp_path: Path
) -> None:
    """A lone surrogate ("\\ud800") in a user message made every later call and close()
    raise ``UnicodeEncodeError`` (the turn's identity hashed the history with strict
    UTF-8): nothing was stored again (new-user trial). The core keeps it as given."""
    memory = HelaMemMemory(config(tmp_path), memory=store)
    agent = AssistantAgent(
        "a",
        model_client=ReplayChatCompletionClient(["Odd.", "Rex it is."]),
        memory=[memory],
    )
    await agent.run(task="U1 \ud800 weird")
    await agent.run(task="My dog is called Rex")
    await memory.close()
    assert [(u, a) for u, a, _ in store.turns] == [
        ("U1 \ud800 weird", "Odd."),
        ("My dog is called Rex", "Rex it is."),
    ]


class _FailsOnBoom(HashingEmbedder):
    """An embedding outage for texts holding "BOOM"."""

    def embed(self, texts: Any) -> Any:
        if any("BOOM" in t for t in texts):
            raise EmbeddingError("transient embedding outage")
        return super().embed(texts)

    def embed_with_tokens(self, texts: Any) -> Any:
        if any("BOOM" in t for t in texts):
            raise EmbeddingError("transient embedding outage")
        return super().embed_with_tokens(texts)


async def test_clear_after_a_failed_turn_still_forgets_the_scope(
    tmp_path: Path, hela_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Helper 143 F3: ``clear()`` raised the earlier turn's ``TurnRecordingError`` from
    its flush before deleting anything, so "my passport number is zorblax-42" stayed
    (a second clear() deleted it). A turn that failed is forgotten with the rest: the
    failure is logged, the scope deleted."""
    store = HelaMemory(hela_config(tmp_path / "store"), embedder=_FailsOnBoom(256))
    memory = HelaMemMemory(config(tmp_path), memory=store)
    secret = MemoryContent(content="my passport number is zorblax-42", mime_type="text/plain")
    await memory.add(secret)
    context = UnboundedChatCompletionContext()
    await context.add_message(UserMessage(content="BOOM question", source="user"))
    await context.add_message(AssistantMessage(content="an answer", source="a"))
    await context.add_message(UserMessage(content="next question", source="user"))
    await memory.update_context(context)  # records the BOOM turn: it fails in the background
    with caplog.at_level("WARNING", logger="helamem.autogen.memory"):
        await memory.clear()
    assert "whose recording failed are forgotten" in caplog.text
    found = await memory.query("passport number zorblax", k=10)
    assert [r.content for r in found.results if "zorblax" in str(r.content)] == []
    await memory.close()  # nothing left to raise
    await store.aclose()


async def test_two_memories_whose_scopes_join_alike_keep_both_injected_messages(
    tmp_path: Path, hela_config: Any
) -> None:
    """Helper 144: the injected message's header joined the scope with "/", so scopes
    ("team", "kb") and ("team/kb",) shared it, and the second memory's update_context
    removed the first one's message: the model never saw its hits ("tulip42")."""
    from autogen_core.models import SystemMessage

    from helamem.autogen import HelaMemMemoryConfig

    core = HelaMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    scopes = [("team", "kb"), ("team/kb",)]
    mems = [
        HelaMemMemory(
            HelaMemMemoryConfig(scope=s, path=tmp_path / "store", embedder="hashing", record=False),
            memory=core,
        )
        for s in scopes
    ]
    await core.aadd("The wifi password is tulip42", scopes[0])
    await core.aadd("The office wifi is on floor 3", scopes[1])
    context = UnboundedChatCompletionContext()
    await context.add_message(UserMessage(content="what is the wifi password?", source="user"))
    for m in mems:
        await m.update_context(context)
    system = [m.content for m in await context.get_messages() if isinstance(m, SystemMessage)]
    assert len(system) == 2 and any("tulip42" in s for s in system)
    assert mems[0].name != mems[1].name  # their default names differ too
    for m in mems:
        await m.close()
    await core.aclose()


async def test_two_memories_of_one_scope_on_one_agent_keep_both_injected_messages(
    tmp_path: Path, hela_config: Any
) -> None:
    """Two memories of one scope on two stores (a knowledge base and the chat memory of
    ("users", "alice")) on one agent share a header: the second's update_context removed
    the first's message, which the model never saw though update_context reported it."""
    from autogen_core.models import SystemMessage

    from helamem.autogen import HelaMemMemoryConfig

    cores, mems, facts = [], [], ["Alice's cat is called Miso", "Alice's cat likes tuna"]
    for name, fact in zip(("kb", "chat"), facts, strict=True):
        core = HelaMemory(hela_config(tmp_path / name), embedder=HashingEmbedder(256))
        await core.aadd(fact, ("users", "alice"))
        cores.append(core)
        config = HelaMemMemoryConfig(scope=("users", "alice"), path=tmp_path / name, name=name)
        mems.append(HelaMemMemory(config, memory=core))
    context = UnboundedChatCompletionContext()
    for question in ("what about my cat?", "tell me about my cat"):
        await context.add_message(UserMessage(content=question, source="user"))
        said = [(await m.update_context(context)).memories.results for m in mems]
        assert [[r.content for r in results] for results in said] == [[f] for f in facts]
        system = [m.content for m in await context.get_messages() if isinstance(m, SystemMessage)]
        assert len(system) == 2 and all(any(f in s for s in system) for f in facts), system
    for m, core in zip(mems, cores, strict=True):
        await m.close()
        await core.aclose()


@pytest.mark.parametrize("end", ["close", "record_last_turn"])
async def test_a_memory_that_only_injects_records_no_turn_by_any_path(
    tmp_path: Path, hela_config: Any, end: str
) -> None:
    """New user's trial 146: ``record=False`` (a knowledge base several users' agents
    read) kept update_context from recording, but ``close()`` and ``record_last_turn``
    still stored the conversation's final turn ("and my SSN is 999-11-2222") in the
    shared scope. No path records a turn now."""
    from autogen_core.memory import MemoryContent

    from helamem.autogen import HelaMemMemoryConfig

    core = HelaMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    kb = HelaMemMemory(
        HelaMemMemoryConfig(
            scope=("kb",), path=tmp_path / "store", embedder="hashing", record=False
        ),
        memory=core,
    )
    await kb.add(MemoryContent(content="Office opens at 9", mime_type="text/plain"))
    agent = AssistantAgent(
        "a",
        model_client=ReplayChatCompletionClient(["A1 secret-answer", "A2 secret-answer"]),
        memory=[kb],
    )
    await agent.run(task="my salary is 123k, when does the office open?")
    await agent.run(task="and my SSN is 999-11-2222, anything else?")
    if end == "record_last_turn":
        await kb.record_last_turn(agent.model_context)
    await kb.close()
    held = [h.content for h in core.search("salary SSN secret office", ("kb",), k=20, learn=False)]
    assert held == ["Office opens at 9"]
    await core.aclose()

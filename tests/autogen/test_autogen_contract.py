"""HelaMemMemory keeps AutoGen's memory contract (issue 17, cases 13 and 14).

Read your own writes across runs of a real ``AssistantAgent``; ``close()``
stores what is still queued; the contracts AutoGen's own ``ListMemory`` and
``ChromaDBVectorMemory`` tests check (our own tests, not copies of theirs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import MemoryQueryEvent
from autogen_core.memory import Memory, MemoryContent, MemoryMimeType
from autogen_core.model_context import BufferedChatCompletionContext, UnboundedChatCompletionContext
from autogen_core.models import AssistantMessage, SystemMessage, UserMessage
from autogen_replay_client import ReplayChatCompletionClient
from pydantic import ValidationError

from helamem.autogen import HelaMemMemory, HelaMemMemoryConfig
from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    InvalidInputError,
    NewTurn,
    TurnRecordingError,
)

ALICE = ("users", "alice")
BOB = ("users", "bob")


class SlowStore(HelaMemory):
    """A real HelaMemory whose turn writes take ``delay`` seconds (per scope), or fail."""

    def __init__(
        self, config: HelaMemConfig, delay: dict[tuple[str, ...], float], fail: bool = False
    ):
        super().__init__(config, embedder=HashingEmbedder(256))
        self.delay = delay
        self.fail = fail
        self.writing: set[tuple[str, ...]] = set()  # scopes whose write is under way

    async def aadd_turns(self, turns: Iterable[NewTurn]) -> Any:
        batch = list(turns)
        scopes = {tuple(t.scope) for t in batch}
        self.writing |= scopes
        try:
            await asyncio.sleep(max(self.delay.get(s, 0.0) for s in scopes))
            if self.fail:
                raise RuntimeError("disk on fire")
            return await super().aadd_turns(batch)
        finally:
            self.writing -= scopes


def config(path: Path, scope: tuple[str, ...] = ALICE, **kw: Any) -> HelaMemMemoryConfig:
    return HelaMemMemoryConfig(scope=scope, path=str(path), embedder="hashing", **kw)


def text(value: str, **metadata: Any) -> MemoryContent:
    return MemoryContent(content=value, mime_type=MemoryMimeType.TEXT, metadata=metadata or None)


def contents(results: Sequence[MemoryContent]) -> list[object]:
    return [r.content for r in results]


@pytest.fixture
async def slow(tmp_path: Path, hela_config: Any) -> AsyncIterator[SlowStore]:
    store = SlowStore(hela_config(tmp_path / "store"), {ALICE: 0.5, BOB: 0.5})
    yield store
    await store.aclose()


# -- 13: read your own writes ------------------------------------------------------


async def test_the_next_run_finds_the_turn_the_previous_run_recorded(slow: SlowStore) -> None:
    memory = HelaMemMemory(config(Path("unused")), memory=slow)
    client = ReplayChatCompletionClient(["Congratulations on Miso!", "Your cat is called Miso."])
    agent = AssistantAgent("assistant", model_client=client, memory=[memory])

    first = await agent.run(task="I adopted a cat named Miso")
    assert not [m for m in first.messages if isinstance(m, MemoryQueryEvent)]  # nothing yet
    second = await agent.run(task="What is my cat called?")

    events = [m for m in second.messages if isinstance(m, MemoryQueryEvent)]
    assert len(events) == 1
    found = contents(events[0].content)
    assert "I adopted a cat named Miso" in found  # stored before run 2 searched
    assert "Congratulations on Miso!" in found
    prompt = "\n".join(str(m.content) for m in client.calls[1])
    assert "I adopted a cat named Miso" in prompt  # and the model saw it
    await memory.close()
    assert (await slow.astats(ALICE)).episodic == 4  # close() stored the final turn too


async def test_query_sees_a_turn_recorded_just_before(slow: SlowStore) -> None:
    memory = HelaMemMemory(config(Path("unused")), memory=slow)
    context = UnboundedChatCompletionContext(
        [
            UserMessage(content="my locker code is 4711", source="user"),
            AssistantMessage(content="Noted.", source="assistant"),
        ]
    )
    await memory.record_last_turn(context)  # queued; storing it takes 0.5 s
    found = contents((await memory.query("locker code")).results)
    assert found[0] == "my locker code is 4711"
    await memory.close()


async def test_reads_wait_for_peers_in_the_same_scope_or_under_it_only(
    slow: SlowStore,
) -> None:
    slow.delay = {ALICE: 0.3, (*ALICE, "phone"): 0.3, BOB: 3.0}
    reader = HelaMemMemory(config(Path("unused")), memory=slow)
    same = HelaMemMemory(config(Path("unused")), memory=slow)
    under = HelaMemMemory(config(Path("unused"), (*ALICE, "phone")), memory=slow)
    other = HelaMemMemory(config(Path("unused"), BOB), memory=slow)
    for writer, fact in ((same, "alice owns a red kayak"), (under, "alice's phone is blue")):
        await writer.record_last_turn(
            UnboundedChatCompletionContext(
                [UserMessage(content=fact, source="u"), AssistantMessage(content="ok", source="a")]
            )
        )
    await other.record_last_turn(
        UnboundedChatCompletionContext(
            [
                UserMessage(content="bob owns a kayak", source="u"),
                AssistantMessage(content="ok", source="a"),
            ]
        )
    )
    found = contents((await reader.query("kayak phone", k=10)).results)
    assert BOB in slow.writing  # the read never waited for bob's 3 s write
    assert {"alice owns a red kayak", "alice's phone is blue"} <= set(found)
    assert "bob owns a kayak" not in found
    for memory in (reader, same, under, other):
        await memory.close()


async def test_reads_wait_for_a_peer_on_the_same_store_through_another_store_object(
    slow: SlowStore, tmp_path: Path, hela_config: Any
) -> None:
    """Two agents' memories on one store, each with a store object of its own (built from
    one config, or loaded with load_component): the second's read did not wait for the
    turn the first had just recorded, and missed it."""
    slow.delay = {ALICE: 1.0}
    other = HelaMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    writer = HelaMemMemory(config(tmp_path / "store"), memory=slow)
    reader = HelaMemMemory(config(tmp_path / "store"), memory=other)
    await reader.query("warm up")  # its store is open: the read below starts at once
    await writer.record_last_turn(
        UnboundedChatCompletionContext(
            [
                UserMessage(content="alice owns a red kayak", source="u"),
                AssistantMessage(content="ok", source="a"),
            ]
        )
    )
    assert "alice owns a red kayak" in contents((await reader.query("kayak")).results)
    for memory in (writer, reader):
        await memory.close()
    await other.aclose()


async def test_the_wait_is_bounded(slow: SlowStore, caplog: pytest.LogCaptureFixture) -> None:
    slow.delay = {ALICE: 2.0}
    memory = HelaMemMemory(config(Path("unused"), wait_recorded_s=0.2), memory=slow)
    await memory.record_last_turn(
        UnboundedChatCompletionContext(
            [
                UserMessage(content="the wifi password is tulip", source="u"),
                AssistantMessage(content="ok", source="a"),
            ]
        )
    )
    with caplog.at_level(logging.WARNING, logger="helamem.autogen.memory"):
        found = contents((await memory.query("wifi password")).results)
    # read without the turn still being stored (2 s): it gave up waiting (no timing
    # assertion: the result and the warning show it)
    assert found == []
    assert ALICE in slow.writing
    assert "wait_recorded_s=0.2" in caplog.text
    await memory.flush()
    assert contents((await memory.query("wifi password")).results)[0] == (
        "the wifi password is tulip"
    )
    await memory.close()


async def test_close_stores_the_final_turn_of_every_context_it_served(
    tmp_path: Path, own_store: str, hela_config: Any
) -> None:
    memory = HelaMemMemory(config(tmp_path / "data"))
    agents = [
        AssistantAgent(f"a{i}", model_client=ReplayChatCompletionClient([reply]), memory=[memory])
        for i, reply in enumerate(["Lyon is lovely!", "Tea it is."])
    ]
    await agents[0].run(task="I moved to Lyon")
    await agents[1].run(task="I prefer tea")
    await memory.close()  # no record_last_turn: close records both final turns

    with HelaMemory(hela_config(tmp_path / "data"), embedder=HashingEmbedder(384)) as m:
        assert m.stats(ALICE).episodic == 4
        got = {h.content for h in m.search("Lyon tea", ALICE, k=10, learn=False)}
    assert got == {"I moved to Lyon", "Lyon is lovely!", "I prefer tea", "Tea it is."}


async def test_close_with_an_already_closed_shared_store_records_nothing(
    tmp_path: Path, hela_config: Any
) -> None:
    store = SlowStore(hela_config(tmp_path / "s"), {})
    memory = HelaMemMemory(config(tmp_path), memory=store)
    context = UnboundedChatCompletionContext([UserMessage(content="hi", source="u")])
    await memory.update_context(context)
    await context.add_message(AssistantMessage(content="hello", source="a"))
    await store.aclose()
    await memory.close()  # nothing to store it in: no error


async def test_failures_while_waiting_are_raised_at_close_not_swallowed(
    tmp_path: Path, hela_config: Any
) -> None:
    store = SlowStore(hela_config(tmp_path / "s"), {}, fail=True)
    memory = HelaMemMemory(config(tmp_path), memory=store)
    context = UnboundedChatCompletionContext(
        [
            UserMessage(content="remember this", source="u"),
            AssistantMessage(content="ok", source="a"),
        ]
    )
    await memory.record_last_turn(context)
    await context.add_message(UserMessage(content="and now?", source="u"))
    await memory.update_context(context)  # the failed turn does not fail the agent's run
    with pytest.raises(TurnRecordingError, match="1 turn"):
        await memory.close()
    await store.aclose()


# -- 14: update_context without a user message ---------------------------------------


async def test_without_a_user_message_the_newest_text_is_the_query(
    tmp_path: Path, own_store: str
) -> None:
    memory = HelaMemMemory(config(tmp_path, k=1))
    await memory.add(text("Alice's cat is called Miso"))
    await memory.add(text("Alice's bike is green"))
    context = UnboundedChatCompletionContext(
        [SystemMessage(content="You help Alice look after her cat.")]
    )
    result = await memory.update_context(context)
    assert contents(result.memories.results) == ["Alice's cat is called Miso"]
    messages = await context.get_messages()
    assert len(messages) == 2 and "Miso" in str(messages[1].content)

    await context.add_message(AssistantMessage(content="Shall I check the bike?", source="a"))
    result = await memory.update_context(context)  # its own memory message is not the query
    assert contents(result.memories.results) == ["Alice's bike is green"]
    assert len(await context.get_messages()) == 3  # replaced, not added
    await memory.close()


async def test_an_empty_context_gets_nothing(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path))
    await memory.add(text("Alice's cat is called Miso"))
    context = BufferedChatCompletionContext(buffer_size=3)
    result = await memory.update_context(context)
    assert result.memories.results == []
    assert await context.get_messages() == []
    await memory.close()


# -- 14: any Chroma embedding function -------------------------------------------------


class PlainEmbeddingFunction:
    """A Chroma-style embedding function without ``name()`` (AutoGen's test has one)."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(64)

    def __call__(self, input: list[str]) -> list[Any]:
        return list(self.inner.embed(list(input)))


async def test_an_embedding_function_without_name_works(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path), embedder=PlainEmbeddingFunction())
    await memory.add(text("Custom embedding function test content"))
    found = contents((await memory.query("custom embedding test")).results)
    assert found == ["Custom embedding function test content"]
    assert (await memory.helamem.astats()).embedder == "chroma:PlainEmbeddingFunction"
    await memory.close()

    again = HelaMemMemory(config(tmp_path), embedder=PlainEmbeddingFunction())  # same name
    assert contents((await again.query("custom embedding")).results) == found
    await again.close()


def test_embedder_and_a_shared_store_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not both"):
        HelaMemMemory(
            config(tmp_path),
            memory=HelaMemory(HelaMemConfig(path=tmp_path)),
            embedder=PlainEmbeddingFunction(),
        )


# -- 14: ChromaDBVectorMemoryConfig's names -------------------------------------------------


def test_chroma_names_are_accepted_and_dumped_as_ours(tmp_path: Path) -> None:
    cfg = HelaMemMemoryConfig.model_validate(
        {
            "scope": ["u"],
            "collection_name": "notes",
            "persistence_path": str(tmp_path),
            "host": "chroma.local",
            "port": 8010,
            "ssl": True,
            "k": 3,
            "score_threshold": 0.5,
        }
    )
    assert (cfg.collection, cfg.path, cfg.chroma_host, cfg.chroma_port, cfg.chroma_ssl) == (
        "notes",
        str(tmp_path),
        "chroma.local",
        8010,
        True,
    )
    dumped = HelaMemMemory(cfg).dump_component().config
    assert dumped["collection"] == "notes" and "collection_name" not in dumped
    assert HelaMemMemory(cfg).collection_name == "notes"
    same = HelaMemMemoryConfig(scope=("u",), collection="notes", collection_name="notes")
    assert same.collection == "notes"


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"collection": "abc", "collection_name": "xyz"}, "pass only collection"),
        ({"allow_reset": True}, "clear\\(\\) deletes this scope"),
        ({"distance_metric": "l2"}, "cosine"),
        ({"client_type": "http"}, "chroma_host"),
        ({"tenant": "t"}, "scope per tenant"),
        ({"embedding_function_config": {"function_type": "default"}}, "embedder=fn"),
        ({"colection": "typo"}, "Extra inputs"),
    ],
)
def test_chroma_settings_without_an_equivalent_name_the_fix(
    given: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        HelaMemMemoryConfig.model_validate({"scope": ["u"], **given})


# -- 14: content validation, as Chroma's -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("[1, 2]", "a JSON array"),
        ("42", "a JSON number"),
        ("null", "JSON null"),
        ('"text"', "a JSON string"),
        ("true", "a JSON boolean"),
        ("not a dict", "does not parse"),
    ],
)
async def test_json_that_is_not_an_object_is_rejected(
    tmp_path: Path, value: str, kind: str, own_store: str
) -> None:
    memory = HelaMemMemory(config(tmp_path))
    with pytest.raises(ValueError, match=f"JSON content must be a dict.*{kind}"):
        await memory.add(MemoryContent(content=value, mime_type=MemoryMimeType.JSON))
    with pytest.raises(ValueError, match="JSON content must be a dict"):
        await memory.query(MemoryContent(content=value, mime_type=MemoryMimeType.JSON))
    assert (await memory.helamem.astats(ALICE)).episodic == 0
    await memory.add(MemoryContent(content='{"items": [1, 2]}', mime_type=MemoryMimeType.JSON))
    assert contents((await memory.query("items")).results) == [{"items": [1, 2]}]
    await memory.close()


async def test_binary_is_an_unsupported_content_type(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path))
    with pytest.raises(ValueError, match="Unsupported content type"):
        await memory.add(MemoryContent(content=b"binary", mime_type=MemoryMimeType.BINARY))
    await memory.close()


# -- the contracts AutoGen's ListMemory / ChromaDBVectorMemory tests check ---------------------


async def test_name_and_protocol(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path, name="test_memory"))
    assert memory.name == "test_memory" and isinstance(memory, Memory)
    await memory.close()


async def test_an_empty_memory_injects_and_finds_nothing(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path))
    context = BufferedChatCompletionContext(buffer_size=3)
    await context.add_message(UserMessage(content="hello", source="user"))
    assert (await memory.update_context(context)).memories.results == []
    assert len(await context.get_messages()) == 1
    assert (await memory.query(text("test"))).results == []
    await memory.close()


async def test_k_memories_come_back_when_there_are_k(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path, k=5))
    for i in range(7):
        await memory.add(text(f"test{i}"))
    assert len((await memory.query(text("query"))).results) == 5
    await memory.close()


async def test_metadata_keeps_its_types_and_score_is_a_float(
    tmp_path: Path, own_store: str
) -> None:
    memory = HelaMemMemory(config(tmp_path))
    meta = {"category": "test", "priority": 1, "weight": 0.5, "verified": True}
    await memory.add(text("Test content with specific metadata", **meta))
    found = (await memory.query("Test content with specific metadata")).results[0]
    assert found.metadata is not None
    assert {k: found.metadata[k] for k in meta} == meta
    assert isinstance(found.metadata["priority"], int)
    assert isinstance(found.metadata["weight"], float)
    assert isinstance(found.metadata["score"], float)
    await memory.close()


async def test_a_strict_threshold_keeps_an_exact_match_and_drops_the_unrelated(
    tmp_path: Path, own_store: str
) -> None:
    memory = HelaMemMemory(config(tmp_path, k=3, score_threshold=0.8))
    await memory.add(text("Specific technical details about quantum computing"))
    await memory.add(text("Paris is known for the Eiffel Tower"))  # so that words carry idf
    await memory.add(text("Jupiter is the largest planet"))
    exact = (await memory.query("quantum computing details")).results
    assert len(exact) == 1 and exact[0].metadata is not None
    assert exact[0].metadata["score"] >= 0.8
    assert (await memory.query("recipe for cake")).results == []
    await memory.close()


async def test_a_json_dict_is_found_by_its_values(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path, score_threshold=0.0))
    await memory.add(text("Simple text content for testing"))
    await memory.add(
        MemoryContent(content={"key": "value", "number": 42}, mime_type="application/json")
    )
    assert {"key": "value", "number": 42} in contents((await memory.query("value")).results)
    await memory.close()


@pytest.mark.parametrize("blank", ["", " \t\n", "\u200b", "\x00", "\ufeff\u2060"])
async def test_a_blank_query_returns_no_results_as_a_blank_context_injects_none(
    tmp_path: Path, blank: str
) -> None:
    """A query of only whitespace, control or zero-width characters raised
    ``InvalidInputError``: AutoGen's memories answer every query (``ListMemory`` with
    all it holds). There is nothing to rank by, so no result (as ``update_context``
    of a blank context injects nothing); a bad ``k`` still raises."""
    memory = HelaMemMemory(config(tmp_path))
    try:
        await memory.add(MemoryContent(content="hello there", mime_type=MemoryMimeType.TEXT))
        assert (await memory.query(blank)).results == []
        assert (
            await memory.query(MemoryContent(content=blank, mime_type="text/plain"))
        ).results == []
        assert len((await memory.query("hello")).results) == 1
        with pytest.raises(InvalidInputError, match="k"):
            await memory.query(blank, k=0)
    finally:
        await memory.close()

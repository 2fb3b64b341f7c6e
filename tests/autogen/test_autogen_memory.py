"""HelaMemMemory: the AutoGen Memory contract, turn recording, component round-trip."""

from __future__ import annotations

import doctest
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import MemoryQueryEvent, TextMessage
from autogen_core import CancellationToken, ComponentModel, FunctionCall
from autogen_core.memory import Memory, MemoryContent, MemoryMimeType
from autogen_core.model_context import BufferedChatCompletionContext, UnboundedChatCompletionContext
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    SystemMessage,
    UserMessage,
)
from autogen_replay_client import ReplayChatCompletionClient
from pydantic import ValidationError

import helamem.autogen
from helamem.autogen import HelaMemMemory, HelaMemMemoryConfig
from helamem.autogen import _convert as convert_module
from helamem.autogen import config as config_module
from helamem.autogen import memory as memory_module
from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    InvalidInputError,
    NewTurn,
    StoreClosedError,
)
from helamem.core import _inputs as core_inputs

ALICE = ("users", "alice")
BOB = ("users", "bob")


class SpyMemory(HelaMemory):
    """A real HelaMemory that also keeps the turns it was asked to store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turns: list[tuple[str, str, tuple[str, ...]]] = []

    async def aadd_turn(
        self, scope: Any, user: str, assistant: str, *, used_ids: Iterable[str] = (), **kw: Any
    ) -> Any:
        self.turns.append((user, assistant, tuple(used_ids)))
        return await super().aadd_turn(scope, user, assistant, used_ids=used_ids, **kw)

    async def aadd_turns(self, turns: Iterable[NewTurn]) -> Any:  # the recorder batches
        batch = list(turns)
        self.turns.extend((t.user, t.assistant, tuple(t.used_ids)) for t in batch)
        return await super().aadd_turns(batch)


def config(path: Path, scope: tuple[str, ...] = ALICE, **kw: Any) -> HelaMemMemoryConfig:
    return HelaMemMemoryConfig(scope=scope, path=str(path), embedder="hashing", **kw)


@pytest.fixture
async def store(tmp_path: Path, hela_config: Any) -> AsyncIterator[SpyMemory]:
    mem = SpyMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    yield mem
    await mem.aclose()


@pytest.fixture
async def alice(store: SpyMemory, tmp_path: Path) -> AsyncIterator[HelaMemMemory]:
    memory = HelaMemMemory(config(tmp_path, k=3), memory=store)
    yield memory
    await memory.close()


def text(value: str, **metadata: Any) -> MemoryContent:
    return MemoryContent(content=value, mime_type=MemoryMimeType.TEXT, metadata=metadata or None)


def memory_messages(messages: Iterable[LLMMessage]) -> list[SystemMessage]:
    return [
        m
        for m in messages
        if isinstance(m, SystemMessage) and m.content.startswith("[helamem:users/alice]")
    ]


# -- construction and config ---------------------------------------------------


def test_constructor_and_dump_do_no_io(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path / "data"))
    dumped = memory.dump_component()
    assert dumped.provider == "helamem.autogen.HelaMemMemory"
    assert dumped.component_type == "memory"
    assert memory.name == "helamem:users/alice"
    assert not (tmp_path / "data").exists()


async def test_a_dump_names_the_store_absolutely_and_add_refuses_a_bare_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 152: ``dump_component`` kept a relative ``path`` ("s1"), so a memory loaded
    in another working directory opened a new, empty store there and recorded into it;
    and ``add("text")`` failed with a bare ``AttributeError``."""
    monkeypatch.chdir(tmp_path)
    memory = HelaMemMemory(config(Path("s1")))
    try:
        await memory.add(text("my cat is called Miso"))
        with pytest.raises(TypeError, match="MemoryContent"):
            await memory.add("my dog is called Rex")  # type: ignore[arg-type]
        dumped = memory.dump_component()
    finally:
        await memory.close()
    assert Path(dumped.config["path"]) == tmp_path / "s1"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = HelaMemMemory.load_component(dumped)
    try:
        got = await loaded.query("cat")
        assert [r.content for r in got.results] == ["my cat is called Miso"]
    finally:
        await loaded.close()
    assert not (tmp_path / "elsewhere" / "s1").exists()


@pytest.mark.parametrize("module", [helamem.autogen, config_module, memory_module, convert_module])
def test_module_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.failed == 0
    assert result.attempted > 0


def test_config_rejects_bad_values_early() -> None:
    with pytest.raises(ValidationError, match="empty segment"):
        HelaMemMemoryConfig(scope=("users", ""))
    with pytest.raises(ValidationError):
        HelaMemMemoryConfig(scope=())
    with pytest.raises(ValidationError, match="needs model="):
        HelaMemMemoryConfig(scope=ALICE, embedder="litellm")


def test_config_maps_onto_the_core_config() -> None:
    cfg = HelaMemMemoryConfig(
        scope=ALICE,
        chroma_host="chroma.internal",
        chroma_port=9000,
        llm_model="ollama/llama3",
        consolidate_every=7,
        dynamics={"learning_rate": 0.05},
    )
    core = cfg.to_helamem_config()
    assert (core.chroma.mode, core.chroma.host, core.chroma.port) == (
        "http",
        "chroma.internal",
        9000,
    )
    assert core.llm.model == "ollama/llama3"
    assert core.consolidation.every_turns == 7
    assert core.dynamics.learning_rate == 0.05


# -- add / query / clear / close -------------------------------------------------


async def test_add_and_query_text_markdown_and_json(alice: HelaMemMemory) -> None:
    await alice.add(text("Alice adopted a cat named Miso", source="chat"))
    await alice.add(MemoryContent(content="# Diet\nAlice is vegetarian", mime_type="text/markdown"))
    await alice.add(
        MemoryContent(content={"city": "Lyon", "pet": "cat"}, mime_type="application/json")
    )

    result = await alice.query("adopted named Miso", cancellation_token=CancellationToken())
    top = result.results[0]
    assert top.content == "Alice adopted a cat named Miso"
    assert top.mime_type == MemoryMimeType.TEXT
    assert top.metadata is not None
    assert top.metadata["source"] == "chat"
    assert top.metadata["score"] > 0
    assert top.metadata["scope"] == ["users", "alice"]
    assert {"id", "base", "boost", "provenance", "event_time"} <= set(top.metadata)

    md = (await alice.query("vegetarian diet")).results[0]
    assert (md.content, md.mime_type) == ("# Diet\nAlice is vegetarian", MemoryMimeType.MARKDOWN)

    query = MemoryContent(content={"city": "Lyon"}, mime_type=MemoryMimeType.JSON)
    hits = (await alice.query(query)).results
    js = next(h for h in hits if h.mime_type == MemoryMimeType.JSON)
    assert js.content == {"city": "Lyon", "pet": "cat"}


async def test_add_accepts_a_json_string(alice: HelaMemMemory) -> None:
    await alice.add(
        MemoryContent(content=json.dumps({"tea": "green"}), mime_type="application/json")
    )
    assert (await alice.query("tea green")).results[0].content == {"tea": "green"}


@pytest.mark.parametrize(
    "content",
    [
        MemoryContent(content=b"\x89PNG", mime_type=MemoryMimeType.IMAGE),
        MemoryContent(content=b"\x00\x01", mime_type=MemoryMimeType.BINARY),
        MemoryContent(content="hello", mime_type="text/csv"),
        MemoryContent(content={"a": 1}, mime_type=MemoryMimeType.TEXT),
        MemoryContent(content="{not json", mime_type=MemoryMimeType.JSON),
    ],
    ids=["image", "binary", "unknown", "text-with-dict", "bad-json"],
)
async def test_add_rejects_what_it_cannot_store(
    alice: HelaMemMemory, store: SpyMemory, content: MemoryContent
) -> None:
    with pytest.raises(ValueError, match=r"TEXT or MARKDOWN|pass a dict"):
        await alice.add(content)
    assert (await store.astats(ALICE)).episodic == 0


@pytest.mark.parametrize("key", ["_helamem_mime_type", "_helamem_turn"])
async def test_add_refuses_helamems_bookkeeping_keys_it_would_drop(
    alice: HelaMemMemory, store: SpyMemory, key: str
) -> None:
    """Helper 127: your own ``_helamem_mime_type`` or ``_helamem_turn`` was stored and then
    silently missing from every query result (``ListMemory`` returns it)."""
    content = MemoryContent(content="tea", mime_type=MemoryMimeType.TEXT, metadata={key: "v"})
    with pytest.raises(InvalidInputError, match="another key"):
        await alice.add(content)
    assert (await store.astats(ALICE)).episodic == 0


@pytest.mark.parametrize("blank", ["", "   ", "\u200b"])
async def test_add_of_blank_text_raises_a_value_error(
    alice: HelaMemMemory, store: SpyMemory, blank: str
) -> None:
    """README: blank text is refused (``ListMemory`` stores it; it could never be found)."""
    with pytest.raises(ValueError, match="visible text"):
        await alice.add(MemoryContent(content=blank, mime_type=MemoryMimeType.TEXT))
    assert (await store.astats(ALICE)).episodic == 0


async def test_query_rejects_unknown_options(alice: HelaMemMemory) -> None:
    with pytest.raises(TypeError, match="score_threshold="):
        await alice.query("x", top_k=3)


async def test_score_threshold(store: SpyMemory, tmp_path: Path) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    for fact in ("Alice plays the cello", "Alice runs marathons", "Alice grows tomatoes"):
        await memory.add(text(fact))
    scores = [r.metadata["score"] for r in (await memory.query("cello")).results]  # type: ignore[index]
    assert len(scores) == 3
    cut = (sorted(scores)[-1] + sorted(scores)[-2]) / 2  # between the best two
    kept = (await memory.query("cello", score_threshold=cut)).results
    assert [r.metadata["score"] >= cut for r in kept] == [True] * len(kept)  # type: ignore[index]
    assert 0 < len(kept) < 3
    assert all(0.0 <= s <= 1.0 for s in scores)  # relevance: one absolute scale
    assert max(scores) < 0.995  # "cello" is not the whole of any memory
    strict = HelaMemMemory(config(tmp_path, score_threshold=0.995), memory=store)
    assert (await strict.query("cello")).results == []


async def test_two_memories_on_one_store_are_isolated(store: SpyMemory, tmp_path: Path) -> None:
    alice = HelaMemMemory(config(tmp_path, ALICE), memory=store)
    bob = HelaMemMemory(config(tmp_path, BOB), memory=store)
    await alice.add(text("my favourite colour is green"))
    await bob.add(text("my favourite colour is red"))

    assert [r.content for r in (await alice.query("favourite colour")).results] == [
        "my favourite colour is green"
    ]
    assert [r.content for r in (await bob.query("favourite colour")).results] == [
        "my favourite colour is red"
    ]
    await alice.clear()
    assert (await alice.query("favourite colour")).results == []
    assert len((await bob.query("favourite colour")).results) == 1
    await alice.close()
    await bob.close()
    assert not store.closed  # a shared store stays open


async def test_close_drains_turns_and_closes_its_own_store(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path))
    context = UnboundedChatCompletionContext()
    for msg in (
        UserMessage(content="I moved to Lyon", source="user"),
        AssistantMessage(content="Lyon is lovely!", source="assistant"),
    ):
        await context.add_message(msg)
    await memory.record_last_turn(context)
    await memory.close()
    await memory.close()  # idempotent
    with pytest.raises(StoreClosedError, match="create a new one"):
        await memory.query("Lyon")
    await context.add_message(UserMessage(content="and my cat?", source="user"))
    await context.add_message(AssistantMessage(content="Miso.", source="assistant"))
    for use in (memory.record_last_turn, memory.update_context):  # not RecorderClosedError
        with pytest.raises(StoreClosedError, match="create a new one"):
            await use(context)

    reopened = HelaMemMemory.load_component(memory.dump_component())
    contents = [r.content for r in (await reopened.query("Lyon")).results]
    assert set(contents) == {"I moved to Lyon", "Lyon is lovely!"}
    await reopened.close()


# -- update_context --------------------------------------------------------------


async def test_update_context_injects_exactly_one_memory_message_per_turn(
    alice: HelaMemMemory, store: SpyMemory
) -> None:
    await alice.add(text("Alice's cat is called Miso"))
    await alice.add(text("Alice lives in Lyon"))
    context = UnboundedChatCompletionContext()
    turns = [("What's my cat called?", "Miso."), ("Where do I live?", "Lyon."), ("Cat?", "Miso.")]
    for i, (question, answer) in enumerate(turns):
        await context.add_message(UserMessage(content=question, source="user"))
        result = await alice.update_context(context)
        messages = await context.get_messages()
        injected = memory_messages(messages)
        assert len(injected) == 1
        assert messages[-1] is injected[0]  # right after the new user message
        assert result.memories.results
        assert all(str(r.content) in injected[0].content for r in result.memories.results)
        await context.add_message(AssistantMessage(content=answer, source="assistant"))
        # user + assistant per turn, plus one memory message in all
        assert len(await context.get_messages()) == 2 * (i + 1) + 1

    await alice.flush()
    # each completed turn was recorded once, with the ids injected for it
    assert [(u, a) for u, a, _ in store.turns] == turns[:2]
    assert all(used for _, _, used in store.turns)


async def test_used_ids_are_the_ones_injected_for_that_turn(
    alice: HelaMemMemory, store: SpyMemory
) -> None:
    await alice.add(text("Alice's cat is called Miso"))
    context = UnboundedChatCompletionContext()
    await context.add_message(UserMessage(content="cat name?", source="user"))
    first = await alice.update_context(context)
    injected = tuple(r.metadata["id"] for r in first.memories.results)  # type: ignore[index]
    await context.add_message(AssistantMessage(content="Miso", source="assistant"))
    await context.add_message(UserMessage(content="thanks", source="user"))
    await alice.update_context(context)
    await alice.update_context(context)  # called again: no second recording
    await alice.flush()
    assert store.turns == [("cat name?", "Miso", injected)]


async def test_update_context_without_a_user_message_searches_with_the_newest_text(
    alice: HelaMemMemory,
) -> None:
    await alice.add(text("Alice's cat is called Miso"))
    context = UnboundedChatCompletionContext([SystemMessage(content="Be brief about the cat.")])
    result = await alice.update_context(context)  # as ListMemory, it injects without one
    assert [r.content for r in result.memories.results] == ["Alice's cat is called Miso"]
    messages = await context.get_messages()
    assert messages[0] == SystemMessage(content="Be brief about the cat.")
    assert len(memory_messages(messages)) == 1


async def test_update_context_replaces_its_message_outside_a_buffered_view(
    alice: HelaMemMemory,
) -> None:
    await alice.add(text("Alice's cat is called Miso"))
    context = BufferedChatCompletionContext(buffer_size=2)
    for question in ("cat?", "cat again?", "and the cat?"):
        await context.add_message(UserMessage(content=question, source="user"))
        await alice.update_context(context)
        await context.add_message(AssistantMessage(content="Miso", source="assistant"))
    state = await context.save_state()
    kinds = [m["type"] for m in state["messages"]]
    assert kinds.count("SystemMessage") == 1  # in the whole history, not only the view


async def test_another_memory_message_is_left_alone(store: SpyMemory, tmp_path: Path) -> None:
    alice = HelaMemMemory(config(tmp_path, ALICE), memory=store)
    bob = HelaMemMemory(config(tmp_path, BOB), memory=store)
    await alice.add(text("Alice likes jazz music"))
    await bob.add(text("Bob likes jazz music"))
    context = UnboundedChatCompletionContext()
    for _ in range(2):
        await context.add_message(UserMessage(content="music?", source="user"))
        await alice.update_context(context)
        await bob.update_context(context)
        await context.add_message(AssistantMessage(content="jazz", source="assistant"))
    system = [m for m in await context.get_messages() if isinstance(m, SystemMessage)]
    assert len(system) == 2
    assert {m.content.split("]")[0] for m in system} == {
        "[helamem:users/alice",
        "[helamem:users/bob",
    }
    await alice.close()
    await bob.close()


# -- through a real AssistantAgent ---------------------------------------------------


async def test_turns_are_recorded_through_assistant_agent_run(
    alice: HelaMemMemory, store: SpyMemory
) -> None:
    await alice.add(text("Alice's cat is called Miso"))
    client = ReplayChatCompletionClient(["Miso!", "You live in Lyon.", "Miso, still."])
    agent = AssistantAgent("assistant", model_client=client, memory=[alice])

    await agent.run(task="What is my cat called?")
    await agent.run(task="I live in Lyon. Where do I live?")
    result = await agent.run(task="Remind me of my cat's name")
    assert result.messages[-1].to_text() == "Miso, still."

    # one memory message for each question about the cat; none for "Where do I live?":
    # nothing stored then shares any relevance with it (every hit scored 0.0)
    assert [len(memory_messages(prompt)) for prompt in client.calls] == [1, 0, 1]
    assert "Miso" in memory_messages(client.calls[0])[0].content

    await alice.record_last_turn(agent.model_context)  # the final turn
    await alice.flush()
    assert [(u, a) for u, a, _ in store.turns] == [
        ("What is my cat called?", "Miso!"),
        ("I live in Lyon. Where do I live?", "You live in Lyon."),
        ("Remind me of my cat's name", "Miso, still."),
    ]
    assert [bool(used) for _, _, used in store.turns] == [True, False, True]
    hits = (await alice.query("where do I live")).results
    assert any("Lyon" in str(h.content) for h in hits)


async def test_agent_dump_and_load_component_round_trip(tmp_path: Path, own_store: str) -> None:
    memory = HelaMemMemory(config(tmp_path / "data", k=4, score_threshold=0.0, learn=False))
    await memory.add(text("Alice's cat is called Miso"))
    agent = AssistantAgent(
        "assistant", model_client=ReplayChatCompletionClient(["Miso"]), memory=[memory]
    )
    dumped = json.loads(agent.dump_component().model_dump_json())
    await memory.close()

    entry = dumped["config"]["memory"][0]
    assert entry["provider"] == "helamem.autogen.HelaMemMemory"
    assert entry["config"]["scope"] == ["users", "alice"]
    assert entry["config"]["k"] == 4

    loaded = AssistantAgent.load_component(ComponentModel.model_validate(dumped))
    result = await loaded.run(task="What is my cat called?")
    assert result.messages[-1].to_text() == "Miso"
    events = [m for m in result.messages if isinstance(m, MemoryQueryEvent)]
    assert "Miso" in events[0].to_text()
    for loaded_memory in loaded._memory or []:  # AssistantAgent does not close its memory
        await loaded_memory.close()

    reloaded = Memory.load_component(entry)
    assert isinstance(reloaded, HelaMemMemory)
    assert reloaded.config == memory.config
    assert reloaded.dump_component().config == memory.dump_component().config
    found = [r.content for r in (await reloaded.query("cat")).results]
    # close() stored the loaded agent's final turn beside the memory added before
    assert {"Alice's cat is called Miso", "What is my cat called?", "Miso"} <= set(found)
    await reloaded.close()


# -- PostgreSQL from the component config -----------------------------------------


async def test_a_postgres_config_round_trips_and_shares_the_memory(
    tmp_path: Path, pg_server: Any
) -> None:
    """postgres_dsn (no password) survives dump/load; two components share one graph."""
    cfg = HelaMemMemoryConfig(
        scope=("users", "alice"),
        path=str(tmp_path / "a"),
        embedder="hashing",
        postgres_dsn=pg_server.dsn,
        postgres_schema="autogen_pg",
    )
    writer = HelaMemMemory(cfg)
    await writer.add(text("Alice's cat is called Miso"))
    dumped = writer.dump_component()
    assert dumped.config["postgres_dsn"] == pg_server.dsn
    await writer.close()
    # another process's copy: its own local directory, the same PostgreSQL schema
    other = dumped.model_copy(update={"config": {**dumped.config, "path": str(tmp_path / "b")}})
    reader = HelaMemMemory.load_component(other)
    found = await reader.query("cat Miso")
    assert [r.content for r in found.results] == ["Alice's cat is called Miso"]
    assert not (tmp_path / "b" / "helamem.sqlite3").exists()
    await reader.close()


def test_a_postgres_password_is_refused_in_the_serialized_config() -> None:
    with pytest.raises(ValidationError, match="PGPASSWORD"):
        HelaMemMemoryConfig(scope=("u",), postgres_dsn="postgresql://app:secret@db/agents")


async def test_several_user_messages_a_tool_only_turn_and_a_read_only_memory(
    alice: HelaMemMemory, store: SpyMemory, tmp_path: Path
) -> None:
    """New-user trial: two user messages in one request kept only the last ("my passport
    number is X123" was lost); a turn answered only by a tool call (``AssistantAgent``'s
    default ``reflect_on_tool_use=False``) was never recorded; a knowledge base attached
    to every user's agent recorded each user's turns where the others read
    (``record=False`` now makes it read-only)."""
    kb = HelaMemMemory(config(tmp_path, scope=("kb",), record=False), memory=store)
    await kb.add(text("Office wifi rotates monthly"))
    client = ReplayChatCompletionClient(["Noted both.", "You're welcome."])
    agent = AssistantAgent("assistant", model_client=client, memory=[alice, kb])
    await agent.run(
        task=[
            TextMessage(content="My passport is X123", source="user"),
            TextMessage(content="and my flight is on May 3", source="user"),
        ]
    )
    context = agent.model_context  # a turn answered by a tool call only, then "thanks"
    await context.add_message(UserMessage(content="I am allergic to peanuts", source="user"))
    call = FunctionCall(id="c1", name="save_note", arguments="{}")
    await context.add_message(AssistantMessage(content=[call], source="assistant"))
    await context.add_message(
        FunctionExecutionResultMessage(
            content=[FunctionExecutionResult(content="saved", call_id="c1", name="save_note")]
        )
    )
    await agent.run(task="thanks")
    await alice.record_last_turn(agent.model_context)
    await alice.flush()
    assert [(u, a) for u, a, _ in store.turns] == [
        ("My passport is X123\nand my flight is on May 3", "Noted both."),
        ("I am allergic to peanuts\nthanks", "You're welcome."),
    ]
    assert store.stats(("kb",)).memories == 1  # its own document only
    await kb.close()


async def test_a_text_over_the_cores_limit_is_searched_by_its_end(
    alice: HelaMemMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query or last message longer than the core's ``MAX_CONTENT_CHARS`` (16 M
    characters; 200 here) made ``query``/``update_context`` raise ``InvalidInputError``
    (ListMemory takes any text): it is searched by its end."""
    monkeypatch.setattr(core_inputs, "MAX_CONTENT_CHARS", 200)
    await alice.add(text("Alice adopted a cat named Miso"))
    long = "x " * 150 + "the cat named Miso"  # 318 characters
    assert (await alice.query(long)).results[0].content == "Alice adopted a cat named Miso"
    context = UnboundedChatCompletionContext()
    await context.add_message(UserMessage(content=long, source="user"))
    found = await alice.update_context(context)
    assert [m.content for m in found.memories.results] == ["Alice adopted a cat named Miso"]


async def test_a_long_query_whose_end_is_blank_finds_nothing_and_raises_nothing(
    alice: HelaMemMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 123: text, then more blank characters than the core's limit: the end
    searched is blank (the core refuses a blank query)."""
    monkeypatch.setattr(core_inputs, "MAX_CONTENT_CHARS", 200)
    await alice.add(text("Alice adopted a cat named Miso"))
    assert (await alice.query("cat Miso" + " " * 300)).results == []


async def test_the_hashing_embedders_dimension_is_configurable(tmp_path: Path) -> None:
    """Trial 155: ``HelaMemMemoryConfig`` had no dimension (``dimension=64`` raised, and
    ``embedder="hashing"`` was always 384), so a store made with ``--embedder hashing
    --dimension 64`` could not be opened from a config, nor by ``load_component``."""
    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(64)) as m:
        m.add("grandma grows apples", ALICE)
    for key in ("embedding_dimension", "dimension"):
        cfg = config(tmp_path / "s", **{key: 64})
        assert cfg.to_helamem_config().embedder.dimension == 64
        memory = HelaMemMemory.load_component(HelaMemMemory(cfg).dump_component())
        try:
            got = await memory.query("apples")
            assert [r.content for r in got.results] == ["grandma grows apples"]
        finally:
            await memory.close()

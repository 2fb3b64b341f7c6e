"""Turns of a history loaded from a saved state (``agent.load_state``), each stored once.

An agent ran two tasks, saved its state and closed its memory (``close()``
records the context's last turn). A new memory and agent on the same store
loaded that state and ran one more task: the loaded history's last turn,
which the first memory had recorded at close, was stored a second time (the
new memory had never seen the context, so it took that turn for a new one).
A recorded turn now carries its identity (a hash of the conversation up to
it) and a memory asks the store for it the first time it reads a context.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_core import CancellationToken
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import AssistantMessage, UserMessage
from autogen_replay_client import ReplayChatCompletionClient
from test_autogen_memory import ALICE, SpyMemory, config

from helamem.autogen import HelaMemMemory
from helamem.autogen._convert import TURN_KEY
from helamem.core import HashingEmbedder, HelaMemory


@pytest.fixture
async def store(tmp_path: Path, hela_config: Any) -> AsyncIterator[SpyMemory]:
    mem = SpyMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    yield mem
    await mem.aclose()


def _episodes(store_db: Any, path: Path) -> list[str]:
    """The episodes stored at ``path``, in the order they were stored."""
    db = store_db(path)
    try:
        rows = db.execute("SELECT content FROM memories WHERE kind = 'episodic' ORDER BY n")
        return [str(r[0]) for r in rows.fetchall()]
    finally:
        db.close()


async def _first_process(
    path: Path, tasks: list[str], replies: list[str], *, reset_after: int | None = None
) -> Mapping[str, Any]:
    memory = HelaMemMemory(config(path))
    agent = AssistantAgent("a", model_client=ReplayChatCompletionClient(replies), memory=[memory])
    for i, task in enumerate(tasks):
        await agent.run(task=task)
        if i == reset_after:
            await agent.on_reset(CancellationToken())
    state = await agent.save_state()
    await memory.close()  # records the context's last turn
    return state


async def _second_process(
    path: Path, state: Mapping[str, Any], tasks: list[str], replies: list[str]
) -> ReplayChatCompletionClient:
    memory = HelaMemMemory(config(path))
    client = ReplayChatCompletionClient(replies)
    agent = AssistantAgent("a", model_client=client, memory=[memory])
    await agent.load_state(state)
    for task in tasks:
        await agent.run(task=task)
    await memory.close()
    return client


async def test_a_reloaded_agent_stores_each_turn_once(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    path = tmp_path / "data"
    state = await _first_process(path, ["question 0", "question 1"], ["answer 0", "answer 1"])
    assert _episodes(store_db, path) == ["question 0", "answer 0", "question 1", "answer 1"]

    client = await _second_process(path, state, ["question 2"], ["answer 2"])

    assert _episodes(store_db, path) == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",  # once: the first memory recorded it at close
        "question 2",
        "answer 2",
    ]
    # the reloaded history reached the model, and the earlier turns were found as memories
    prompt = client.calls[-1]
    assert [m.content for m in prompt if isinstance(m, UserMessage)] == [
        "question 0",
        "question 1",
        "question 2",
    ]
    memories = "\n".join(str(m.content) for m in prompt if type(m).__name__ == "SystemMessage")
    assert "answer 1" in memories


async def test_a_turn_never_recorded_is_recorded_after_the_reload(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """The first process stopped before recording its last turn (a crash: here its store
    closed under it, so its close() records nothing more); the reload records that turn."""
    path = tmp_path / "data"
    cfg = config(path)
    store = HelaMemory(cfg.to_helamem_config())
    memory = HelaMemMemory(cfg, memory=store)
    agent = AssistantAgent(
        "a", model_client=ReplayChatCompletionClient(["answer 0", "answer 1"]), memory=[memory]
    )
    await agent.run(task="question 0")
    await agent.run(task="question 1")
    state = await agent.save_state()
    await memory.flush()  # the first turn is stored
    await store.aclose()  # "crash": the last turn is never recorded
    await memory.close()
    assert _episodes(store_db, path) == ["question 0", "answer 0"]

    await _second_process(path, state, ["question 2"], ["answer 2"])

    assert _episodes(store_db, path) == [
        "question 0",
        "answer 0",
        "question 1",  # recorded by the second process: nobody had
        "answer 1",
        "question 2",
        "answer 2",
    ]


async def test_a_conversation_repeated_word_for_word_after_on_reset_is_stored_once(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """A turn's identity is its conversation up to it: after ``on_reset`` the same
    first exchange has the same identity, so the store keeps its first copy (every
    recorded turn is checked, so a turn the saving process records after another
    process loaded its state is stored once too). A different exchange is new."""
    path = tmp_path / "data"
    state = await _first_process(
        path, ["hi", "hi", "and you?"], ["Hello!", "Hello!", "Fine."], reset_after=0
    )
    assert _episodes(store_db, path) == ["hi", "Hello!", "and you?", "Fine."]

    await _second_process(path, state, ["bye"], ["Bye!"])

    assert _episodes(store_db, path) == ["hi", "Hello!", "and you?", "Fine.", "bye", "Bye!"]


async def test_the_saving_process_recording_the_turn_after_another_loaded_it_stores_it_once(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """Process A saves its state without closing; B loads it and runs a turn; then A
    closes (which records its last turn). A's turn carried no ``unique_on`` before, so
    it was stored a second time (review; new-user trial: with a fork, a reset, or a
    second memory in one process as well)."""
    path = tmp_path / "data"
    cfg = config(path)
    async with HelaMemory(cfg.to_helamem_config()) as store_a:
        memory_a = HelaMemMemory(cfg, memory=store_a)
        agent = AssistantAgent(
            "a",
            model_client=ReplayChatCompletionClient(["answer 0", "answer 1"]),
            memory=[memory_a],
        )
        await agent.run(task="question 0")
        state = await agent.save_state()  # A stays alive: turn 0 not recorded yet

        async with HelaMemory(cfg.to_helamem_config()) as store_b:
            memory_b = HelaMemMemory(cfg, memory=store_b)
            other = AssistantAgent(
                "a", model_client=ReplayChatCompletionClient(["answer B"]), memory=[memory_b]
            )
            await other.load_state(state)
            await other.run(task="question B")
            await memory_b.close()

        await agent.run(task="question 1")  # A goes on: records turn 0 now
        await memory_a.close()
    episodes = _episodes(store_db, path)
    assert episodes.count("question 0") == 1 and episodes.count("answer 0") == 1
    assert sorted(episodes) == sorted(
        ["question 0", "answer 0", "question B", "answer B", "question 1", "answer 1"]
    )


async def test_a_repeated_exchange_is_a_new_turn_across_a_reload(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    path = tmp_path / "data"
    state = await _first_process(path, ["yes", "yes"], ["Done.", "Done."])

    await _second_process(path, state, ["yes"], ["Done."])

    assert _episodes(store_db, path) == ["yes", "Done."] * 3


async def test_a_second_memory_on_a_shared_store_sees_the_turn_the_first_queued(
    store: SpyMemory, tmp_path: Path
) -> None:
    """The first memory queued the turn (not yet stored, not closed); a second memory of
    the same store reading the loaded history queues it too, with ``unique_on``: the
    store keeps the first copy only."""
    first = HelaMemMemory(config(tmp_path), memory=store)
    context = UnboundedChatCompletionContext()
    await context.add_message(UserMessage(content="I adopted a cat", source="user"))
    await first.update_context(context)
    await context.add_message(AssistantMessage(content="Congratulations!", source="a"))
    await first.record_last_turn(context)  # queued

    second = HelaMemMemory(config(tmp_path), memory=store)
    loaded = UnboundedChatCompletionContext()
    await loaded.load_state(await context.save_state())
    await second.update_context(loaded)  # reads the loaded history
    await loaded.add_message(UserMessage(content="Her name is Miso", source="user"))
    await second.update_context(loaded)
    await loaded.add_message(AssistantMessage(content="Hello Miso!", source="a"))
    await second.close()
    await first.close()

    assert store.stats(ALICE).episodic == 4  # each turn once
    first_turn = store.find_ids(ALICE, metadata={TURN_KEY: _key_of(store, "Congratulations!")})
    assert len(first_turn) == 2
    stored = store.find_ids(ALICE, metadata={TURN_KEY: _key_of(store, "Hello Miso!")})
    assert len(stored) == 2  # the turn's two messages carry its identity
    reader = HelaMemMemory(config(tmp_path), memory=store)
    results = (await reader.query("Miso")).results
    assert results and all(TURN_KEY not in (r.metadata or {}) for r in results)  # internal
    await reader.close()


def _key_of(store: SpyMemory, content: str) -> str:
    """The turn identity stored with the episode ``content``."""
    hits = store.search(content, ALICE, k=10, learn=False)
    hit = next(h for h in hits if h.memory.content == content)
    return str(hit.memory.metadata[TURN_KEY])


async def test_a_state_loaded_into_a_context_already_served_stores_each_turn_once(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """The agent goes back to a state it saved (``agent.load_state``) after two more turns:
    the memory, which had served that context, took the loaded history for one cleared and
    stored its last turn (recorded before) again, and the replaced history's final turn,
    not yet recorded, was never stored. Now that turn is recorded before the load, and the
    loaded history's last turn is looked up in the store, as on a first read."""
    path = tmp_path / "data"
    memory = HelaMemMemory(config(path))
    replies = [f"answer {i}" for i in range(5)]
    agent = AssistantAgent("a", model_client=ReplayChatCompletionClient(replies), memory=[memory])
    await agent.run(task="question 0")
    await agent.run(task="question 1")
    state = await agent.save_state()
    await agent.run(task="question 2")  # records turn 1
    await agent.run(task="question 3")  # records turn 2; turn 3 is not recorded yet
    await agent.load_state(state)  # back to turns 0 and 1
    await agent.run(task="question 4")
    await memory.close()

    assert _episodes(store_db, path) == [
        text for i in range(5) for text in (f"question {i}", f"answer {i}")
    ]


async def test_a_state_of_unrecorded_turns_loaded_into_a_served_context_is_recorded(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """A state whose last turn no memory recorded (another agent's, unstored) loaded into
    a context this memory served: that turn is stored (once), the context's own final
    turn too."""
    other = UnboundedChatCompletionContext()
    await other.add_message(UserMessage(content="where is the key", source="user"))
    await other.add_message(AssistantMessage(content="under the mat", source="a"))
    path = tmp_path / "data"
    memory = HelaMemMemory(config(path))
    client = ReplayChatCompletionClient(["answer 0", "answer 1", "answer 2"])
    agent = AssistantAgent("a", model_client=client, memory=[memory])
    await agent.run(task="question 0")
    await agent.run(task="question 1")
    await agent.load_state({"llm_context": await other.save_state()})
    await agent.run(task="question 2")
    await memory.close()

    assert _episodes(store_db, path) == [
        "question 0",
        "answer 0",
        "question 1",  # recorded before the load replaced it
        "answer 1",
        "where is the key",
        "under the mat",
        "question 2",
        "answer 2",
    ]


async def _run_loaded(
    cfg: Any, state: Mapping[str, Any], task: str, reply: str, store: HelaMemory | None
) -> None:
    """An agent loads ``state`` and runs ``task``; its memory uses ``store`` (``None``: a
    store object of its own on the same store, as another process has)."""
    async with contextlib.AsyncExitStack() as stack:
        own = store or await stack.enter_async_context(HelaMemory(cfg.to_helamem_config()))
        memory = HelaMemMemory(cfg, memory=own)
        agent = AssistantAgent(
            "a", model_client=ReplayChatCompletionClient([reply]), memory=[memory]
        )
        await agent.load_state(state)
        await agent.run(task=task)
        await memory.close()


@pytest.mark.parametrize("processes", [1, 2])
async def test_agents_loading_one_state_at_once_store_its_turn_once(
    tmp_path: Path, own_store: str, store_db: Any, processes: int
) -> None:
    """Two agents load the same saved state (its last turn never recorded) and run at
    once: each looked for the turn before the other's copy was stored, and both
    recorded it (new-user trial); with a store object each (two processes) no
    per-process lock could order them. Now each turn is recorded with its identity as
    ``unique_on``, checked by the store in its write transaction."""
    path = tmp_path / "data"
    cfg = config(path)
    async with HelaMemory(cfg.to_helamem_config()) as store:
        first = HelaMemMemory(cfg, memory=store)
        agent = AssistantAgent(
            "a", model_client=ReplayChatCompletionClient(["answer 0"]), memory=[first]
        )
        await agent.run(task="question 0")
        state = await agent.save_state()  # no close: turn 0 is not recorded
        shared = store if processes == 1 else None
        await asyncio.gather(
            *(_run_loaded(cfg, state, f"question {t}", f"answer {t}", shared) for t in "AB")
        )
    episodes = _episodes(store_db, path)
    assert episodes.count("question 0") == 1 and episodes.count("answer 0") == 1
    assert sorted(episodes) == sorted(
        ["question 0", "answer 0", "question A", "answer A", "question B", "answer B"]
    )


async def test_a_request_answered_again_is_stored_once_a_new_answer_is_new(
    tmp_path: Path, own_store: str, store_db: Any
) -> None:
    """Two workers load one saved state and run the same task: with the same reply the
    turn is stored once. A turn's identity holds its reply: an identity without it
    (tried: the conversation before the reply) dropped real turns (review: a recurring
    task after ``on_reset`` answered otherwise, two agents answering one question), so
    a retry answered otherwise is stored as another turn (README)."""
    path = tmp_path / "data"
    cfg = config(path)
    async with HelaMemory(cfg.to_helamem_config()) as store:
        first = HelaMemMemory(cfg, memory=store)
        agent = AssistantAgent(
            "a", model_client=ReplayChatCompletionClient(["hi!"]), memory=[first]
        )
        await agent.run(task="hello")
        state = await agent.save_state()
        await first.close()

    for _ in range(2):
        await _run_loaded(
            cfg, state, "Book me the 9am flight to Oslo", "Booked flight LH123.", None
        )
    assert _episodes(store_db, path) == [
        "hello",
        "hi!",
        "Book me the 9am flight to Oslo",
        "Booked flight LH123.",
    ]
    await _first_process(path, ["Summarize the news"], ["Markets up."])
    await _first_process(path, ["Summarize the news"], ["Markets down."])  # a new conversation
    assert _episodes(store_db, path)[-4:] == [
        "Summarize the news",
        "Markets up.",
        "Summarize the news",
        "Markets down.",
    ]

"""HelaMemMemoryBlock inside LlamaIndex's Memory: flush, injection, truncation, scopes."""

from __future__ import annotations

import pytest
from li_fakes import SpyRecorder
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.mock import MockLLMWithChatMemoryOfLastCall
from llama_index.core.memory import Memory

from helamem.core import HelaMemory, InvalidScopeError
from helamem.llamaindex import HelaMemMemoryBlock

CAT = ("My cat is called Miso", "Miso is a lovely name for a cat!")


def _texts(messages: list[ChatMessage]) -> str:
    return "\n".join(m.content or "" for m in messages)


async def test_flush_on_token_limit_records_turns_with_the_ids_injected_for_them(
    store: HelaMemory, spy: SpyRecorder
) -> None:
    scope = ("llamaindex", "b1")
    seeded = await store.aadd_turn(scope, *CAT)
    block = HelaMemMemoryBlock.from_memory(store, recorder=spy, priority=0)
    memory = Memory.from_defaults(
        session_id="b1",
        token_limit=40,
        chat_history_token_ratio=0.5,
        token_flush_size=5,
        memory_blocks=[block],
    )
    turns = [
        ("Tell me about my cat Miso", "Miso is your cat."),
        ("I like hiking in the Alps", "The Alps are great."),
        ("What about pizza tonight", "Pizza sounds good."),
        ("And what should we do tomorrow", "Maybe a walk."),
    ]
    injected: dict[str, str] = {}
    for user, assistant in turns:
        await memory.aput(ChatMessage(role="user", content=user))
        injected[user] = _texts(await memory.aget())
        await memory.aput(ChatMessage(role="assistant", content=assistant))
    await block.aflush()

    assert spy.turns, "the FIFO queue overflowed, so Memory must have flushed turns to the block"
    first_scope, first_user, first_reply, used = spy.turns[0]
    assert (first_scope, first_user, first_reply) == (scope, *turns[0])
    assert "Miso" in injected[turns[0][0]]
    assert set(used) == {m.id for m in seeded}  # exactly what was injected for that turn
    recorded = [(u, a) for _, u, a, _ in spy.turns]
    assert recorded == turns[: len(recorded)]  # whole turns, in order, no tool noise
    assert (await store.astats(scope)).episodic == 2 + 2 * len(spy.turns)


async def test_rendered_memory_reaches_the_llm_input(store: HelaMemory) -> None:
    await store.aadd_turn(("users", "alice"), *CAT)
    block = HelaMemMemoryBlock.from_memory(store, scope=("users", "alice"))
    llm = MockLLMWithChatMemoryOfLastCall(max_tokens=4)
    engine = SimpleChatEngine.from_defaults(
        llm=llm, memory=Memory.from_defaults(session_id="x", memory_blocks=[block])
    )
    await engine.achat("What is my cat called?")
    sent = list(llm.last_chat_messages or [])
    assert sent[0].role == "system"
    assert "<helamem>" in (sent[0].content or "") and "Miso" in (sent[0].content or "")
    await block.aclose()


def test_sync_chat_engine_with_block(store: HelaMemory) -> None:
    store.add_turn(("llamaindex", "sync"), *CAT)
    block = HelaMemMemoryBlock.from_memory(store)
    llm = MockLLMWithChatMemoryOfLastCall(max_tokens=4)
    memory = Memory.from_defaults(session_id="sync", memory_blocks=[block])
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)
    engine.chat("Remind me of my cat's name")
    assert "Miso" in _texts(list(llm.last_chat_messages or []))


async def test_priority_truncation_drops_lowest_ranked_lines_first(store: HelaMemory) -> None:
    scope = ("users", "bob")
    for i in range(8):
        await store.aadd_turn(
            scope, f"cat fact number {i} about Miso the cat", f"noted cat fact {i}"
        )
    keep = HelaMemMemoryBlock.from_memory(store, name="never", scope=scope, priority=0, k=8)
    trim = HelaMemMemoryBlock.from_memory(store, name="trimmed", scope=scope, priority=1, k=8)
    question = [ChatMessage(role="user", content="what cat facts do you know about Miso")]
    full = await trim.aget(question)
    roomy = Memory.from_defaults(session_id="r", token_limit=10_000, memory_blocks=[keep, trim])
    tight = Memory.from_defaults(
        session_id="t", token_limit=len(full) // 3, memory_blocks=[keep, trim]
    )
    await roomy.aput(question[0])
    await tight.aput(question[0])

    roomy_text = _texts(await roomy.aget())
    tight_text = _texts(await tight.aget())
    assert roomy_text.count(full) == 2  # both blocks, untruncated
    never = tight_text.split("<never>")[1].split("</never>")[0].strip()
    assert never == full  # priority 0 is never truncated
    trimmed_lines = (
        tight_text.split("<trimmed>")[1].split("</trimmed>")[0].strip().splitlines()
        if "<trimmed>" in tight_text
        else []
    )
    assert trimmed_lines == full.splitlines()[: len(trimmed_lines)]  # the best lines stay
    assert len(trimmed_lines) < len(full.splitlines())


async def test_atruncate_returns_none_when_everything_goes(store: HelaMemory) -> None:
    block = HelaMemMemoryBlock.from_memory(store, scope=("u",))
    assert await block.atruncate("- a\n- b", 10_000) is None
    assert await block.atruncate("- a line\n- b line", 1) == "- a line"


async def test_sessions_are_isolated_and_a_fixed_scope_is_shared(store: HelaMemory) -> None:
    await store.aadd_turn(("llamaindex", "s1"), *CAT)
    per_session = HelaMemMemoryBlock.from_memory(store)
    question = [ChatMessage(role="user", content="What is my cat called, Miso?")]
    assert "Miso" in await per_session.aget(question, session_id="s1")
    assert await per_session.aget(question, session_id="s2") == ""
    shared = HelaMemMemoryBlock.from_memory(store, scope=("llamaindex", "s1"))
    assert "Miso" in await shared.aget(question, session_id="s2")


async def test_no_scope_and_no_session_is_a_typed_error(store: HelaMemory) -> None:
    block = HelaMemMemoryBlock.from_memory(store)
    with pytest.raises(InvalidScopeError, match="scope="):
        await block.aget([ChatMessage(role="user", content="hi")])
    assert await block.aget([]) == ""  # nothing to ask: no search, no error


async def test_block_round_trips_without_its_connection(store: HelaMemory) -> None:
    block = HelaMemMemoryBlock.from_memory(store, scope=("users", "alice"), priority=2)
    data = block.model_dump(mode="json")
    assert data["config"]["embedder"]["provider"] == "hashing"
    again = HelaMemMemoryBlock.model_validate(data)
    assert (again.scope, again.priority) == (("users", "alice"), 2)
    assert again.memory is store  # the live connection for that path is reused


async def test_sessions_sharing_a_block_and_a_question_keep_their_own_used_ids(
    store: HelaMemory, spy: SpyRecorder
) -> None:
    """Two sessions of one block ask the same question: each turn is recorded with the ids
    shown to that session (one session's were given to the other, which got none)."""
    cats = {
        s: await store.aadd_turn(("llamaindex", s), f"My cat is called {n}", "Nice")
        for s, n in (("a", "Miso"), ("b", "Tom"))
    }
    block = HelaMemMemoryBlock.from_memory(store, recorder=spy, priority=0)
    question = "What is my cat called"
    await _sessions_ask(block, list(cats), question)
    used = {scope[-1]: set(ids) for scope, user, _, ids in spy.turns if user == question}
    for s, seeded in cats.items():  # each session was shown its own cat, and only that
        assert used[s] and used[s] <= {m.id for m in seeded}, used


async def test_truncating_one_sessions_memories_while_another_gets_drops_them_from_its_turn(
    store: HelaMemory, spy: SpyRecorder
) -> None:
    """Two sessions sharing a block get their memories at once (an async server): Memory
    truncates session a's content after b's get ran, so a's lines were not found and
    the memories truncated away were still recorded as used with a's turn."""
    for s, name in (("a", "Miso"), ("b", "Tom")):
        await store.aadd_turn(("llamaindex", s), f"My cat is called {name}", "Nice")
    block = HelaMemMemoryBlock.from_memory(store, recorder=spy)
    question = ChatMessage(role="user", content="What is my cat called")
    got = {s: await block.aget([question], session_id=s) for s in ("a", "b")}
    assert "Miso" in got["a"] and "Tom" in got["b"]
    assert await block.atruncate(got["a"], 10_000) is None  # none of a's reached the prompt
    for s in ("a", "b"):
        await block.aput([question, ChatMessage(role="assistant", content="Tom.")], session_id=s)
    await block.aflush()
    used = {scope[-1]: ids for scope, _, _, ids in spy.turns}
    assert used["a"] == [] and used["b"], used


async def test_sessions_sharing_a_block_of_one_fixed_scope_keep_their_own_used_ids(
    store: HelaMemory, spy: SpyRecorder
) -> None:
    """With a fixed ``scope`` both sessions' turns land in one scope: the ids shown for
    the same question were still one entry (review 162), so the first turn recorded
    took them and the second none; each session's turn keeps the ids it was shown."""
    alice = ("users", "alice")
    seeded = await store.aadd_turn(alice, "My cat is called Miso", "Nice")
    block = HelaMemMemoryBlock.from_memory(store, recorder=spy, priority=0, scope=alice)
    question = "What is my cat called"
    await _sessions_ask(block, ["a", "b"], question)
    used = {answer: set(ids) for _, user, answer, ids in spy.turns if user == question}
    assert len(used) == 2, used
    for ids in used.values():  # each session was shown the cat
        assert ids and ids <= {m.id for m in seeded}, used


async def _sessions_ask(block: HelaMemMemoryBlock, sessions: list[str], question: str) -> None:
    """Each session (a ``Memory`` over ``block``) asks ``question``, then each gets its
    answer ("It is your cat (<session>).") and chats until the turn is flushed to the
    block, whose recorded turns are then stored."""
    memories = {
        s: Memory.from_defaults(
            session_id=s,
            token_limit=40,
            chat_history_token_ratio=0.5,
            token_flush_size=5,
            memory_blocks=[block],
        )
        for s in sessions
    }
    for memory in memories.values():
        await memory.aput(ChatMessage(role="user", content=question))
        await memory.aget()
    for s, memory in memories.items():
        await memory.aput(ChatMessage(role="assistant", content=f"It is your cat ({s})."))
        for user in ("I like hiking in the Alps", "Pizza tonight please", "A walk tomorrow"):
            await memory.aput(ChatMessage(role="user", content=user))
            await memory.aput(ChatMessage(role="assistant", content="ok sure thing"))
    await block.aflush()

"""HelaMemChatMemory as a ChatMemoryBuffer drop-in: chat engine, agent, Context round trip."""

from __future__ import annotations

import doctest
import importlib
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from li_fakes import SpyRecorder
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.mock import (
    MockFunctionCallingLLMWithChatMemoryOfLastCall,
    MockLLMWithChatMemoryOfLastCall,
)
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context
from pydantic import SecretStr
from workflows.context.serializers import JsonSerializer

from helamem.core import EmbedderConfig, HelaMemConfig, HelaMemory, InvalidInputError
from helamem.llamaindex import HelaMemChatMemory, register_memory

# inspect.getmembers() on pydantic models (workflows' step discovery, doctest) touches
# deprecated pydantic attributes: framework noise, not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")

CAT = ("My cat is called Miso", "Miso is a lovely name for a cat!")


def _system(messages: list[ChatMessage]) -> str:
    return "\n".join(m.content or "" for m in messages if m.role == "system")


def test_simple_chat_engine_sync_injects_memory_and_records_the_turn(
    store: HelaMemory, spy: SpyRecorder
) -> None:
    seeded = store.add_turn(("llamaindex", "s1"), *CAT)
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="s1", recorder=spy)
    llm = MockLLMWithChatMemoryOfLastCall(max_tokens=4)
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory, system_prompt="Be brief.")
    reply = engine.chat("What is my cat called?")  # passes initial_token_count
    sent = list(llm.last_chat_messages or [])
    assert sent[0].content == "Be brief."
    assert "Miso" in _system(sent[1:])
    assert [m.content for m in memory.get_all()] == ["What is my cat called?", str(reply)]
    assert spy.turns == [
        (("llamaindex", "s1"), "What is my cat called?", str(reply), [m.id for m in seeded])
    ]
    memory.flush()
    assert store.stats(("llamaindex", "s1")).episodic == 4


async def test_simple_chat_engine_async(store: HelaMemory, spy: SpyRecorder) -> None:
    await store.aadd_turn(("users", "alice"), *CAT)
    memory = HelaMemChatMemory.from_defaults(
        memory=store, session_id="a", scope=("users", "alice"), recorder=spy
    )
    llm = MockLLMWithChatMemoryOfLastCall(max_tokens=4)
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)
    await engine.achat("Do you remember my cat?")
    assert "Miso" in _system(list(llm.last_chat_messages or []))
    await memory.aflush()
    assert (await store.astats(("users", "alice"))).episodic == 4
    assert [t[1] for t in spy.turns] == ["Do you remember my cat?"]


def test_get_keeps_a_window_within_the_token_limit(store: HelaMemory) -> None:
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="w", token_limit=30)
    history = []
    for i in range(6):
        history += [
            ChatMessage(role="user", content=f"question number {i} about the weather"),
            ChatMessage(role="assistant", content=f"answer number {i}: sunny"),
        ]
    memory.set(history)
    window = memory.get(initial_token_count=5, some_engine_kwarg=True)
    assert window[0].role == "user"  # never opens with a reply
    assert window == history[-len(window) :] and 0 < len(window) < len(history)
    assert memory.get_all() == history
    with pytest.raises(InvalidInputError, match="token_limit"):
        memory.get(initial_token_count=31)


async def test_function_agent_records_only_the_final_reply(
    store: HelaMemory, spy: SpyRecorder
) -> None:
    await store.aadd_turn(("llamaindex", "agent"), *CAT)

    def lookup_weather() -> str:
        """Look up today's weather."""
        return "sunny"

    llm = MockFunctionCallingLLMWithChatMemoryOfLastCall()
    agent = FunctionAgent(llm=llm, tools=[FunctionTool.from_defaults(lookup_weather)])
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="agent", recorder=spy)
    result = await agent.run(user_msg="Weather for walking my cat Miso?", memory=memory)
    assert str(result) == "Tool calls complete."
    assert "Miso" in _system(list(llm.last_chat_messages or []))
    assert [m.role.value for m in memory.get_all()] == ["user", "assistant", "tool", "assistant"]
    assert [(u, a) for _, u, a, _ in spy.turns] == [
        ("Weather for walking my cat Miso?", "Tool calls complete.")
    ]
    assert spy.turns[0][3]  # the injected memories are the turn's used ids


async def test_round_trip_through_a_reused_context(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]
) -> None:
    seen: list[str] = []

    def answer(messages: list[ChatMessage], **kwargs: object) -> ChatMessage:
        seen.append(_system(messages))
        return ChatMessage(role="assistant", content=f"ok: {messages[-1].content}")

    store = HelaMemory(config_at(tmp_path / "store"))
    agent = FunctionAgent(
        llm=MockFunctionCallingLLMWithChatMemoryOfLastCall(response_generator=answer), tools=[]
    )
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="ctx")
    ctx = Context(agent)
    await agent.run(user_msg="My cat is called Miso", memory=memory, ctx=ctx)
    await memory.aflush()

    data = ctx.to_dict(serializer=JsonSerializer())
    restored = Context.from_dict(agent, data, serializer=JsonSerializer())
    await agent.run(user_msg="What is my cat called?", ctx=restored)
    again = await restored.store.get("memory")

    assert isinstance(again, HelaMemChatMemory) and again is not memory
    assert again.memory is store  # connection rebuilt from the live registry, not serialized
    assert [m.content for m in again.get_all()][:2] == [
        "My cat is called Miso",
        "ok: My cat is called Miso",
    ]
    assert seen[-1] == ""  # the window holds the Miso turn: the memory leaves it out
    await again.areset()  # the window goes, the long-term memory stays
    assert "Miso" in _system(await again.aget("What is my cat called?"))
    await again.aclose()
    assert (await store.astats(("llamaindex", "ctx"))).episodic == 4
    await store.aclose()


def test_serialized_state_has_no_connection_and_no_secrets(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]
) -> None:
    cfg = config_at(tmp_path / "s").model_copy(
        update={
            "embedder": EmbedderConfig(provider="hashing", dimension=256, api_key=SecretStr("k"))
        }
    )
    memory = HelaMemChatMemory.from_defaults(config=cfg, session_id="s", scope=("users", "x"))
    memory.put(ChatMessage(role="user", content="hello there"))
    data = memory.to_dict()
    assert {"memory", "recorder", "tokenizer_fn"}.isdisjoint(data)
    assert data["config"]["embedder"]["api_key"] is None
    assert data["class_name"] == "HelaMemChatMemory"
    text = memory.to_json()
    live = None
    if cfg.store is not None:  # the PostgreSQL DSN is a secret too: never serialized, so
        assert cfg.store.dsn.get_secret_value() not in text  # the loader registers a memory
        register_memory(live := HelaMemory(cfg))  # built with it (register_memory's docs)
    loaded = HelaMemChatMemory.from_json(text)
    assert loaded.get_all() == memory.get_all() and loaded.pending_user == "hello there"
    assert loaded.memory_scope == ("users", "x")
    loaded.put(ChatMessage(role="assistant", content="hi!"))  # completes the pending turn
    if live is not None:
        assert loaded.memory is live
    loaded.close()  # SQLite: it opened the store itself, so it closes it
    if live is not None:
        live.close()
    with HelaMemory(config_at(tmp_path / "s")) as check:
        assert check.stats(("users", "x")).episodic == 2


async def test_sessions_are_isolated_unless_they_share_a_scope(store: HelaMemory) -> None:
    one = HelaMemChatMemory.from_defaults(memory=store, session_id="one")
    await one.aput_messages(
        [ChatMessage(role="user", content=CAT[0]), ChatMessage(role="assistant", content=CAT[1])]
    )
    await one.aflush()
    two = HelaMemChatMemory.from_defaults(memory=store, session_id="two")
    assert _system(await two.aget("What is my cat called, Miso?")) == ""
    shared = HelaMemChatMemory.from_defaults(
        memory=store, session_id="three", scope=("llamaindex", "one")
    )
    assert "Miso" in _system(await shared.aget("What is my cat called, Miso?"))
    await one.areset()
    assert await one.aget_all() == []
    assert "Miso" in _system(await one.aget("Miso?"))  # reset clears the window, not the memory
    for m in (one, two, shared):
        await m.aclose()


def test_from_defaults_rejects_memory_and_config_together(store: HelaMemory) -> None:
    with pytest.raises(InvalidInputError, match="either memory="):
        HelaMemChatMemory.from_defaults(memory=store, path="elsewhere")


@pytest.mark.parametrize(
    "name",
    [
        "helamem.llamaindex",
        "helamem.llamaindex._shared",
        "helamem.llamaindex.block",
        "helamem.llamaindex.chat_memory",
    ],
)
def test_module_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


async def test_a_memory_deleted_within_the_turn_is_not_shown_again(store: HelaMemory) -> None:
    """Retrieval was cached per user message: after a tool deleted a memory ("forget my
    address"), the turn's next model call was still shown it (new-user trial). Now the
    same question is searched again within the turn (without learning twice)."""
    from llama_index.core.memory import Memory

    from helamem.llamaindex import HelaMemMemoryBlock

    scope = ("users", "alice")
    address = store.add("my home address is 12 Elm Street", scope).id
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="s1", scope=scope)
    memory.put(ChatMessage(role="user", content="please forget my home address"))
    assert "12 Elm Street" in _system(memory.get())
    store.delete([address])  # the agent's tool
    memory.put(ChatMessage(role="tool", content="forgotten"))
    assert "12 Elm Street" not in _system(memory.get())
    assert "12 Elm Street" not in _system(await memory.aget())

    phone = store.add("my phone number is 555-0100", scope).id
    block = HelaMemMemoryBlock.from_memory(store, scope=scope, priority=1)
    chat = Memory.from_defaults(session_id="s2", memory_blocks=[block], token_limit=4000)
    await chat.aput(ChatMessage(role="user", content="please forget my phone number"))
    assert "555-0100" in _system(await chat.aget())
    store.delete([phone])
    await chat.aput(ChatMessage(role="tool", content="forgotten"))
    assert "555-0100" not in _system(await chat.aget())
    memory.close()


@pytest.mark.parametrize("blank", ["\u200b", "\x00", "\ufeff", " \u200c\t"])
async def test_an_invisible_user_message_is_no_query(store: HelaMemory, blank: str) -> None:
    """A user message of only zero-width, control or BOM characters made ``get`` raise
    ``InvalidInputError``; ``ChatMemoryBuffer`` takes it. Now it is no query (the
    latest visible user message is), in every read path."""
    from llama_index.core.memory import Memory

    from helamem.llamaindex import HelaMemMemoryBlock

    scope = ("users", "alice")
    store.add("my cat is called Miso", scope)
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="s", scope=scope)
    memory.put(ChatMessage(role="user", content="what is my cat called?"))
    memory.put(ChatMessage(role="assistant", content="Miso."))
    memory.put(ChatMessage(role="user", content=blank))
    assert "Miso" in _system(memory.get())
    assert "Miso" in _system(await memory.aget())
    assert "Miso" in _system(memory.get(input=blank))
    block = HelaMemMemoryBlock.from_memory(store, scope=scope)
    chat = Memory.from_defaults(session_id="b", memory_blocks=[block])
    await chat.aput(ChatMessage(role="user", content=blank))
    await chat.aget()  # nothing to search with: no error
    # the reply to it joins no turn (it was appended to the previous answer)
    await block.aput(
        [
            ChatMessage(role="user", content="my dog is Rex"),
            ChatMessage(role="assistant", content="Noted, Rex."),
            ChatMessage(role="user", content=blank),
            ChatMessage(role="assistant", content="Did you mean to send something?"),
        ]
    )
    await block.aflush()
    hits = store.search("did you mean to send something Rex", scope, k=20, learn=False)
    stored = {h.memory.content for h in hits}
    assert {"my dog is Rex", "Noted, Rex."} <= stored
    assert not [t for t in stored if "Did you mean" in t]
    memory.close()


async def test_a_turn_put_again_from_a_restored_state_is_stored_once(store: HelaMemory) -> None:
    """New-user trial: a memory saved (``to_dict``) after the question, restored by a
    second worker that puts the reply too (the same or another), stored the turn twice;
    a question sent again after a failed model call was stored as "X\\nX"."""
    one = HelaMemChatMemory.from_defaults(memory=store, session_id="s", scope=("users", "u"))
    await one.aput(ChatMessage(role="user", content="Book the 9am flight to Oslo"))
    saved = one.to_dict()
    await one.aput(ChatMessage(role="assistant", content="Booked LH123."))
    for reply in ("Booked LH123.", "Done - LH123 is booked!"):
        other = HelaMemChatMemory.from_dict(saved)
        await other.aput(ChatMessage(role="assistant", content=reply))
        await other.aflush()
    retry = HelaMemChatMemory.from_defaults(memory=store, session_id="s2", scope=("users", "u"))
    for _ in range(2):  # the first model call failed: the agent puts the question again
        await retry.aput(ChatMessage(role="user", content="What is my flight?"))
    await retry.aput(ChatMessage(role="assistant", content="LH123."))
    await retry.aflush()
    await one.aflush()
    contents = [
        h.memory.content
        for h in (await store.asearch("flight Oslo LH123", ("users", "u"), k=20, learn=False))
    ]
    assert sorted(contents) == sorted(
        ["Book the 9am flight to Oslo", "Booked LH123.", "What is my flight?", "LH123."]
    )


async def test_another_conversation_alike_is_new_however_it_begins(store: HelaMemory) -> None:
    """Review: an identity of the session and the window before the reply dropped real
    turns: a stateless server's fresh memory per request (same ``session_id``, the same
    question, another answer) and a conversation after ``reset`` beginning as before.
    The identity holds the conversation's own id (new at ``reset`` and for a new memory,
    kept by ``to_dict``)."""
    for answer in ("Dentist at 9.", "Board meeting at 3."):
        request = HelaMemChatMemory.from_defaults(
            memory=store, session_id="alice", scope=("users", "v")
        )
        await request.aput(ChatMessage(role="user", content="What is on my calendar today?"))
        await request.aput(ChatMessage(role="assistant", content=answer))
        await request.aflush()
    engine_memory = HelaMemChatMemory.from_defaults(
        memory=store, session_id="s", scope=("users", "w")
    )
    for reply in ("Sunny.", "Rain."):
        await engine_memory.aput(ChatMessage(role="user", content="Weather?"))
        await engine_memory.aput(ChatMessage(role="assistant", content=reply))
        await engine_memory.areset()
    await engine_memory.aflush()
    assert (await store.astats(("users", "v"))).episodic == 4
    assert (await store.astats(("users", "w"))).episodic == 4


async def test_set_starts_another_conversation_unless_it_goes_on_and_ids_can_be_given(
    store: HelaMemory,
) -> None:
    """Review: ``set`` with a non-empty window kept the conversation's id, so a memory
    reused for another conversation (``FunctionAgent.run(chat_history=...)``) dropped a
    new answer to the same question; ``from_defaults(chat_history=[],
    conversation_id=X)`` threw ``X`` away, and servers rebuilding a memory from the
    client's history per request had no way to make a retry the same conversation."""
    reused = HelaMemChatMemory.from_defaults(memory=store, session_id="s", scope=("users", "r"))
    for answer in ("9:00", "17:30"):
        await reused.aset([ChatMessage(role="system", content="be brief")])
        await reused.aput(ChatMessage(role="user", content="What time is it?"))
        await reused.aput(ChatMessage(role="assistant", content=answer))
    # a window that goes on from the current one is the same conversation
    await reused.aset([*reused.get_all(), ChatMessage(role="user", content="Thanks")])
    same = reused.conversation_id
    await reused.aput(ChatMessage(role="assistant", content="You are welcome."))
    assert reused.conversation_id == same
    history = [ChatMessage(role="user", content="What is my flight?")]
    for _ in range(2):  # a client's retry, rebuilt from its history with its id
        request = HelaMemChatMemory.from_defaults(
            memory=store,
            session_id="s",
            scope=("users", "q"),
            chat_history=history,
            conversation_id="req-42",
        )
        assert request.conversation_id == "req-42"
        await request.aput(ChatMessage(role="assistant", content="LH123."))
        await request.aflush()
    await reused.aflush()
    assert (await store.astats(("users", "r"))).episodic == 6
    assert (await store.astats(("users", "q"))).episodic == 2


async def test_a_given_id_survives_set_and_a_rewritten_window_keeps_its_identity(
    store: HelaMemory,
) -> None:
    """Review of d80d78b: ``from_defaults(conversation_id=X)`` then ``aset(history)`` (as
    ``FunctionAgent.run(chat_history=...)`` does) replaced X, so a retry was stored
    twice; a window message rewritten in place (``FunctionAgent`` with
    ``initial_state``) changed the identity a restored copy computed."""
    history = [ChatMessage(role="user", content="What is my flight?")]
    for _ in range(2):
        request = HelaMemChatMemory.from_defaults(
            memory=store, session_id="s", scope=("users", "p"), conversation_id="req-7"
        )
        await request.aset(history)
        assert request.conversation_id == "req-7"
        await request.aput(ChatMessage(role="assistant", content="LH123."))
        await request.aflush()
    live = HelaMemChatMemory.from_defaults(memory=store, session_id="s", scope=("users", "z"))
    await live.aput(ChatMessage(role="user", content="hello"))
    await live.aput(ChatMessage(role="assistant", content="hi"))
    await live.aput(ChatMessage(role="user", content="Book it"))
    live.chat_history[-1].content = "Current state: {} Current message: Book it"  # in place
    copy = HelaMemChatMemory.from_json(live.to_json())
    for memory in (live, copy):
        await memory.aput(ChatMessage(role="assistant", content="Booked."))
        await memory.aflush()
    # restored copies (to_dict, pickle) keep the caller's id through a set() too
    await request.aset([*history, ChatMessage(role="assistant", content="LH123.")])
    for restored in (
        HelaMemChatMemory.from_dict(request.to_dict()),
        pickle.loads(pickle.dumps(request)),
    ):
        await restored.aset(history)  # shorter than its window: the given id decides
        assert restored.conversation_id == "req-7"
        await restored.aput(ChatMessage(role="assistant", content="LH123, seat 4A."))
        await restored.aflush()
    await request.aset([])  # reset: a new conversation, not the given id
    assert request.conversation_id != "req-7"
    assert (await store.astats(("users", "p"))).episodic == 2
    assert (await store.astats(("users", "z"))).episodic == 4


async def test_a_second_reply_and_a_retry_without_a_session_id_are_kept_once(
    store: HelaMemory,
) -> None:
    """New-user trial: a second reply to the same question (two agents, or two calls at
    once on one memory) was neither joined nor stored, put one by one or in one batch;
    a server rebuilding the memory per request with ``conversation_id`` but no
    ``session_id`` (a new random one each time) stored a retried request twice."""
    one = HelaMemChatMemory.from_defaults(memory=store, session_id="s", scope=("users", "t"))
    messages = [
        ChatMessage(role="user", content="Plan my trip to Rome"),
        ChatMessage(role="assistant", content="Day 1: Colosseum"),
        ChatMessage(role="assistant", content="Day 2: Vatican"),
    ]
    for message in messages:
        await one.aput(message)
    batch = HelaMemChatMemory.from_defaults(memory=store, session_id="b", scope=("users", "b"))
    await batch.aput_messages(messages)
    history = [ChatMessage(role="user", content="I moved to Lyon")]
    for _ in range(2):  # the client retries; the server rebuilds the memory
        request = HelaMemChatMemory.from_defaults(
            memory=store, scope=("users", "l"), chat_history=history, conversation_id="c-9"
        )
        await request.aput(ChatMessage(role="assistant", content="Noted: Lyon."))
        await request.aflush()
    await one.aflush()
    await batch.aflush()
    for scope in (("users", "t"), ("users", "b")):
        found = store.find_ids(scope, metadata={"source": "llamaindex"})
        said = sorted(store.get(i).content for i in found)
        assert said == [
            "Day 1: Colosseum",
            "Day 2: Vatican",
            "Plan my trip to Rome",
            "Plan my trip to Rome",
        ]
    assert (await store.astats(("users", "l"))).episodic == 2


def test_an_adapter_given_other_settings_for_an_open_store_says_they_do_not_apply(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig], caplog: pytest.LogCaptureFixture
) -> None:
    """Adapters on one store share its live memory, whose settings apply: one given a
    config with other settings (a retrieval one here) is told so, not ignored silently;
    the same settings (a secret left out, as a loaded dump's) say nothing."""
    cfg = config_at(tmp_path / "s")
    first = HelaMemChatMemory.from_defaults(config=cfg, session_id="a", scope=("users", "a"))
    live = first.memory  # the store opens for the first adapter
    secret = cfg.embedder.model_copy(update={"api_key": SecretStr("sk-other")})
    same = HelaMemChatMemory.from_defaults(  # another API key only: as a loaded dump's
        config=cfg.model_copy(update={"embedder": secret}), session_id="b", scope=("users", "b")
    )
    assert same.memory is live
    assert "other settings" not in caplog.text
    other = cfg.model_copy(update={"retrieval": cfg.retrieval.model_copy(update={"candidates": 7})})
    third = HelaMemChatMemory.from_defaults(config=other, session_id="c", scope=("users", "c"))
    assert third.memory is live
    assert live.config.retrieval.candidates == cfg.retrieval.candidates
    warned = [r for r in caplog.records if "other settings" in r.getMessage()]
    assert len(warned) == 1 and "retrieval.candidates 50 (given 7)" in warned[0].getMessage()
    assert warned[0].levelname == "WARNING"
    for m in (third, same, first):
        m.close()

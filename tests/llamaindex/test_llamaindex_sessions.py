"""Several adapters on one store path, and history handed in by the framework: nothing lost.

Each case is a turn that used to be lost: one session's ``close()`` closed the
store shared by the others (the other's later turns failed with
``StoreClosedError``), and ``FunctionAgent.run(chat_history=[..., question])``
never recorded its question with the reply.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ImageBlock
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.mock import MockFunctionCallingLLMWithChatMemoryOfLastCall
from llama_index.core.storage.chat_store import SimpleChatStore

from helamem.core import HelaMemConfig, HelaMemory, InvalidInputError
from helamem.llamaindex import HelaMemChatMemory, HelaMemMemoryBlock

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")


def _turn(user: str, reply: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=reply)]


def _contents(memory: HelaMemory, scope: tuple[str, ...]) -> list[str]:
    """Every episode in ``scope`` (a small store: the dense leg returns them all)."""
    res = memory.search("x", scope, k=50, learn=False, spread=False, semantic_k=0)
    assert len(res) == memory.stats(scope).episodic
    return sorted(h.content for h in res)


def _stored(config: HelaMemConfig, scope: tuple[str, ...]) -> list[str]:
    with HelaMemory(config) as check:
        return _contents(check, scope)


async def test_closing_one_chat_memory_leaves_the_shared_store_to_the_others(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]
) -> None:
    config = config_at(tmp_path / "s")
    a = HelaMemChatMemory.from_defaults(config=config, session_id="a")
    b = HelaMemChatMemory.from_defaults(config=config, session_id="b")
    a.put_messages(_turn("hi", "hello"))
    b.put_messages(_turn("warmup", "ok"))  # still in b's recorder when a closes
    shared = a.memory
    assert shared is b.memory  # one connection per path in a process
    a.close()  # session a ends; b goes on
    assert not shared.closed
    b.put_messages(_turn("bob likes cake", "noted: cake"))
    b.flush()
    assert b.memory is shared
    b.close()
    assert shared.closed  # the last session closes what the adapters opened
    assert _stored(config, ("llamaindex", "b")) == ["bob likes cake", "noted: cake", "ok", "warmup"]
    assert _stored(config, ("llamaindex", "a")) == ["hello", "hi"]


async def test_closing_one_block_leaves_the_shared_store_to_the_others(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]
) -> None:
    config = config_at(tmp_path / "s")
    one = HelaMemMemoryBlock(config=config, scope=("a",))
    two = HelaMemMemoryBlock(config=config, scope=("b",))
    await one._aput(_turn("a q", "a r"))
    await two._aput(_turn("b q", "b r"))
    shared = one.memory
    await one.aclose()
    assert not shared.closed
    await two._aput(_turn("bob likes cake", "noted cake"))
    await two.aflush()
    await two.aclose()
    assert _stored(config, ("b",)) == ["b q", "b r", "bob likes cake", "noted cake"]


async def test_a_callers_memory_is_never_closed_by_an_adapter(store: HelaMemory) -> None:
    chat = HelaMemChatMemory.from_defaults(memory=store, session_id="x")
    block = HelaMemMemoryBlock.from_memory(store, scope=("x",))
    again = HelaMemChatMemory.from_defaults(config=store.config, session_id="y")
    assert again.memory is store  # the registered memory is found, not leased
    for adapter in (chat, again):
        await adapter.aclose()
    await block.aclose()
    assert not store.closed


@pytest.mark.parametrize("closed", ["the memory under it", "the adapter"])
async def test_a_closed_store_reopens_with_a_fresh_recorder_and_stores(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig], closed: str
) -> None:
    """Closed by hand or by another owner (the memory), or the adapter's own close():
    the next turn reopens the connection, goes through a fresh recorder, is stored."""
    config = config_at(tmp_path / "s")
    chat = HelaMemChatMemory.from_defaults(config=config, session_id="a")
    chat.put_messages(_turn("before close", "ok"))
    chat.flush()
    first = chat.memory
    first.close() if closed == "the memory under it" else chat.close()
    assert first.closed  # the adapter's only lease
    chat.put_messages(_turn("after close", "still stored"))
    chat.flush()
    assert chat.memory is not first and not chat.memory.closed
    chat.close()
    assert _stored(config, ("llamaindex", "a")) == [
        "after close",
        "before close",
        "ok",
        "still stored",
    ]


async def test_a_question_in_chat_history_is_recorded_with_its_reply(store: HelaMemory) -> None:
    agent = FunctionAgent(llm=MockFunctionCallingLLMWithChatMemoryOfLastCall(), tools=[])
    memory = HelaMemChatMemory.from_defaults(memory=store, session_id="a")
    history = [
        *_turn("earlier question", "earlier answer"),
        ChatMessage(role="user", content="Rex"),
    ]
    await agent.run(chat_history=history, memory=memory)
    await memory.aflush()
    # the completed turn was history (not recorded again); the open question is this turn
    assert _contents(store, ("llamaindex", "a")) == ["Rex", "Rex"]
    seeded = HelaMemChatMemory.from_defaults(memory=store, session_id="b", chat_history=history)
    seeded.put(ChatMessage(role="assistant", content="a dog's name"))
    seeded.flush()
    assert _contents(store, ("llamaindex", "b")) == ["Rex", "a dog's name"]


def test_chat_store_key_names_the_conversation_and_other_options_are_checked(
    store: HelaMemory,
) -> None:
    memory = HelaMemChatMemory.from_defaults(memory=store, chat_store_key="alice")
    assert memory.session_id == "alice"
    assert memory.memory_scope == ("llamaindex", "alice")
    with pytest.raises(InvalidInputError, match="token_limt"):
        HelaMemChatMemory.from_defaults(memory=store, token_limt=50)
    with pytest.raises(InvalidInputError, match="chat_store"):
        HelaMemChatMemory.from_defaults(memory=store, chat_store=SimpleChatStore())
    with pytest.raises(InvalidInputError, match="differ"):
        HelaMemChatMemory.from_defaults(memory=store, chat_store_key="a", session_id="b")
    with pytest.raises(ValueError, match="token_limt"):  # the constructor checks too
        HelaMemChatMemory(token_limt=50)  # type: ignore[call-arg]


async def test_a_copy_of_an_adapter_holds_no_lease_of_the_original(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]
) -> None:
    import copy

    config = config_at(tmp_path / "s")
    original = HelaMemChatMemory.from_defaults(config=config, session_id="a")
    block = HelaMemMemoryBlock(config=config, scope=("b",))
    shared = original.memory
    assert block.memory is shared
    for made in (original.model_copy(), copy.copy(original), copy.deepcopy(original)):
        assert made.session_id == "a" and made.memory is shared  # found again, not leased
        made.put_messages(_turn("from a copy", "noted"))
        made.close()
        assert not shared.closed
    for made_block in (block.model_copy(), copy.deepcopy(block)):
        assert made_block.memory is shared
        await made_block.aclose()
        assert not shared.closed
    original.put_messages(_turn("from the original", "noted too"))
    original.close()
    assert not shared.closed  # the block still holds its lease
    await block.aclose()
    assert shared.closed
    assert "from the original" in _stored(config, ("llamaindex", "a"))


async def test_a_leased_memory_registered_by_the_caller_is_the_callers(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]
) -> None:
    config = config_at(tmp_path / "s")
    first = HelaMemChatMemory.from_defaults(config=config, session_id="a")
    mine = first.memory
    second = HelaMemChatMemory.from_defaults(memory=mine, session_id="c")  # now the caller's
    first.close()
    second.close()
    assert not mine.closed
    mine.close()


def test_an_unknown_option_names_the_nearest(store: HelaMemory) -> None:
    with pytest.raises(InvalidInputError) as err:
        HelaMemChatMemory.from_defaults(memory=store, token_limt=50)
    text = str(err.value)
    assert "did you mean token_limit?" in text and "recorder" in text
    assert "pending_user" not in text


_PAD = " pad" * 30


async def _through_memory(
    block: HelaMemMemoryBlock, steps: list[tuple[str, list[ChatMessage] | str]]
) -> None:
    """Messages through LlamaIndex ``Memory`` with a small queue: it flushes the oldest
    to the block, splitting a turn when its question alone fills a flush."""
    from llama_index.core.memory import Memory

    memories: dict[str, Memory] = {}
    for session, messages in steps:
        memory = memories.setdefault(
            session,
            Memory.from_defaults(
                session_id=session,
                token_limit=60,
                chat_history_token_ratio=0.5,
                token_flush_size=20,
                memory_blocks=[block],
            ),
        )
        if messages == "reset":
            await memory.areset()
            continue
        for m in messages:
            await memory.aput(m)


def _u(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def _a(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


async def test_a_question_whose_reply_never_comes_is_stored_alone(store: HelaMemory) -> None:
    block = HelaMemMemoryBlock.from_memory(store)
    await _through_memory(
        block,
        [
            ("s1", [_u("alpha question" + _PAD), _u("alpha follow-up"), _a("alpha answer")]),
            ("s1", "reset"),  # the queue (follow-up and answer) is gone
            ("s1", [_u("beta question" + _PAD), _a("beta answer" + _PAD[:60]), _u("g"), _a("h")]),
        ],
    )
    await block.aclose()
    stored = _contents(store, ("llamaindex", "s1"))
    assert "alpha question" + _PAD in stored  # not lost
    assert "beta question" + _PAD in stored  # and not joined to it
    assert not any(c.startswith("alpha question") and "beta" in c for c in stored)


async def test_sessions_sharing_a_block_and_a_scope_do_not_mix(store: HelaMemory) -> None:
    block = HelaMemMemoryBlock.from_memory(store, scope=("users", "alice"))
    await _through_memory(
        block,
        [
            ("s1", [_u("s1 question" + _PAD), _u("s1 follow-up"), _a("s1 answer")]),
            ("s2", [_u("s2 question" + _PAD), _a("s2 answer" + _PAD[:60]), _u("n"), _a("m")]),
        ],
    )
    await block.aflush()
    stored = _contents(store, ("users", "alice"))
    assert "s1 question" + _PAD in stored  # split from its turn by a flush: on its own
    assert "s2 question" + _PAD in stored and "s2 answer" + _PAD[:60] in stored
    assert not any("s1" in c and "s2" in c for c in stored)  # never joined across sessions
    await block.aclose()


async def test_a_reply_split_from_its_question_is_stored_and_the_block_holds_nothing(
    store: HelaMemory,
) -> None:
    import copy
    import pickle

    block = HelaMemMemoryBlock.from_memory(store, scope=("u",))
    await block._aput([_u("q1"), _a("a1"), _u("q2 waits")])  # q2's reply: a later flush
    await block._aput([_a("a2 comes later"), _u("q3"), _a("a3")])
    again = pickle.loads(pickle.dumps(block))
    twin = copy.copy(block)
    for made in (again, twin):
        await made.aclose()  # nothing held: a copy stores nothing twice
    await block.aclose()
    assert _contents(store, ("u",)) == sorted(
        ["q1", "a1", "q2 waits", "a2 comes later", "q3", "a3"]
    )


async def test_a_second_reply_to_one_question_joins_its_answer(store: HelaMemory) -> None:
    block = HelaMemMemoryBlock.from_memory(store, scope=("u",))
    await block._aput([_u("q"), _a("agent1 says"), _a("agent2 final answer")])
    await block.aclose()
    assert _contents(store, ("u",)) == ["agent1 says\nagent2 final answer", "q"]


async def test_replies_to_a_message_without_text_join_no_earlier_turn(store: HelaMemory) -> None:
    """Helper 127: after a user message without text (an image), its first reply was
    dropped but the second was added to the turn before it: "You live in Paris." then
    "A tabby cat, says the second agent." stored as the answer to "where do I live"."""
    image = ChatMessage(role="user", blocks=[ImageBlock(url="http://x.test/cat.png")])
    messages = [_u("where do I live"), _a("You live in Paris."), image]
    messages += [_a("That is a cat."), _a("A tabby cat, says the second agent.")]
    block = HelaMemMemoryBlock.from_memory(store, scope=("b",))
    await block._aput(messages)
    await block.aclose()
    chat = HelaMemChatMemory.from_defaults(memory=store, scope=("c",))
    await chat.aput_messages(messages)
    await chat.aclose()
    for scope in (("b",), ("c",)):
        assert _contents(store, scope) == ["You live in Paris.", "where do I live"]


@pytest.mark.parametrize("copy", ["to_dict", "pickle", "deepcopy"])
async def test_a_second_reply_after_the_state_is_saved_is_a_turn_too(
    store: HelaMemory, copy: str
) -> None:
    """Helper 127: the question the last reply answered was not serialized, so a second
    reply (another agent) put after ``to_dict``/``from_dict``, a pickle or a deepcopy
    was never recorded; without the copy it is a turn of the same question."""
    first = HelaMemChatMemory.from_defaults(memory=store, session_id="s", scope=("u",))
    await first.aput_messages([_u("where do I live"), _a("Paris, says agent one.")])
    await first.aflush()
    if copy == "to_dict":
        again = HelaMemChatMemory.from_dict(first.to_dict())
    elif copy == "pickle":
        again = pickle.loads(pickle.dumps(first))
    else:
        again = deepcopy(first)
    await again.aput(_a("Lyon, says agent two."))
    await again.aclose()
    await first.aclose()
    assert _contents(store, ("u",)) == sorted(
        ["where do I live", "Paris, says agent one.", "where do I live", "Lyon, says agent two."]
    )


async def test_a_retried_last_message_of_a_question_is_taken_once(store: HelaMemory) -> None:
    """Helper 127: a retry was taken once only for a one-message question; after "I moved
    to Lyon." it was joined again ("...\\nwhat is my cat called\\nwhat is my cat called")."""
    messages = [_u("I moved to Lyon."), _u("what is my cat called")]
    messages += [_u("what is my cat called"), _a("Miso.")]
    block = HelaMemMemoryBlock.from_memory(store, scope=("b",))
    await block._aput(messages)
    await block.aclose()
    chat = HelaMemChatMemory.from_defaults(memory=store, scope=("c",))
    await chat.aput_messages(messages)
    await chat.aclose()
    for scope in (("b",), ("c",)):
        assert _contents(store, scope) == ["I moved to Lyon.\nwhat is my cat called", "Miso."]


async def test_a_message_equal_to_the_last_line_of_the_one_before_is_kept(
    store: HelaMemory,
) -> None:
    """Review 129: a user message equal to the last line of the previous (multi-line)
    message was taken for a retry of it and dropped ("my list:\\nmilk", "milk")."""
    messages = [_u("my list:\nmilk"), _u("milk"), _a("Noted.")]
    block = HelaMemMemoryBlock.from_memory(store, scope=("b",))
    await block._aput(messages)
    await block.aclose()
    assert _contents(store, ("b",)) == ["Noted.", "my list:\nmilk\nmilk"]


@pytest.mark.parametrize("apart_by", ["schema", "database"])
def test_tenants_kept_apart_by_postgres_schema_on_one_path_stay_apart(
    tmp_path: Path, pg_server: Any, apart_by: str
) -> None:
    """Helper 144: the adapters shared one connection per path, so two chat memories on
    one path whose configs name different PostgreSQL schemas (tenants kept apart by
    schema; the path then holds only lock files) ran on the first one's schema: with
    the same session id, tenant B's context held tenant A's "My password is hunter2".
    Review 145: the same with different databases and one schema name; trial 146: a
    loaded adapter (its DSN is never serialized) took the one live memory on its path
    and schema, another database's. A connection is now shared per path, schema and
    database (a digest of the DSN without its password, which a dump keeps in place of
    the DSN): a loaded adapter finds its own database's memory, and one whose memory
    is not live is refused with the fix (register_memory)."""
    import psycopg
    from li_fakes import hashing_config

    from helamem.core import ConfigError, PostgresConfig
    from pg_server import schema_for

    path = tmp_path / "shared-path"
    head = pg_server.dsn.rpartition("/")[0]

    def cfg(tenant: str) -> HelaMemConfig:
        if apart_by == "schema":
            pg = PostgresConfig(dsn=pg_server.dsn, schema_name=schema_for(tmp_path / tenant))
        else:
            db = schema_for(tmp_path / tenant)
            with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {db}")
            pg = PostgresConfig(dsn=f"{head}/{db}")
        return hashing_config(path, pg)

    a = HelaMemChatMemory.from_defaults(config=cfg("a"), session_id="s1")
    a.put(ChatMessage(role="user", content="My password is hunter2"))
    a.put(ChatMessage(role="assistant", content="Noted."))
    a.flush()
    loaded = HelaMemChatMemory.from_dict(a.to_dict())  # only a's memory is live: a's
    assert loaded.memory is a.memory
    loaded.close()
    b = HelaMemChatMemory.from_defaults(config=cfg("b"), session_id="s1")
    try:
        got = b.get("what is my password?")
        assert all("hunter2" not in str(m.content) for m in got)
        assert b.memory is not a.memory
        for mine in (a, b):  # both live: each dump finds its own database's memory
            loaded = HelaMemChatMemory.from_dict(mine.to_dict())
            assert loaded.memory is mine.memory
            loaded.close()
        dump = b.to_dict()
    finally:
        b.close()
        a.close()
    # only a live: b's dump is refused with the fix, never given a's memory
    a = HelaMemChatMemory.from_defaults(config=a.config, session_id="s1")
    try:
        a.get("warm up")  # a's memory is live
        with pytest.raises(ConfigError, match="register_memory"):
            HelaMemChatMemory.from_dict(dump).get("what is my password?")
    finally:
        a.close()


@pytest.mark.parametrize(
    "spelling",
    [
        "postgresql://app:other@db.internal/helamem?sslmode=require&application_name=w",
        "host=db.internal port=5432 dbname=helamem user=app connect_timeout=3",
    ],
)
def test_a_dump_finds_the_memory_registered_with_another_spelling_of_its_dsn(
    tmp_path: Path, spelling: str
) -> None:
    """Review 147: a dump named its database by a digest of every DSN setting but the
    password, so a process registering the same database with a default port left out,
    ``sslmode`` or ``application_name`` was refused. Only host, port, database and user
    name it now (nothing secret); another database is still refused. No I/O: an
    adapter's memory opens on first use."""
    from li_fakes import hashing_config

    from helamem.core import ConfigError, PostgresConfig
    from helamem.llamaindex import register_memory

    def cfg(dsn: str) -> HelaMemConfig:
        return hashing_config(tmp_path / "s", PostgresConfig(dsn=dsn))

    made = HelaMemChatMemory.from_defaults(
        config=cfg("postgresql://app:s3cret@db.internal:5432/helamem"), session_id="s1"
    )
    dump = made.to_dict()
    assert "s3cret" not in str(dump)
    mine = HelaMemory(cfg(spelling))
    register_memory(mine)
    assert HelaMemChatMemory.from_dict(dump).memory is mine
    other = HelaMemory(cfg("postgresql://app@db.internal/another"))
    register_memory(other)  # another database on the path: mine is no longer live
    mine.close()
    with pytest.raises(ConfigError, match="same host, port, database and user"):
        HelaMemChatMemory.from_dict(dump).memory  # noqa: B018
    other.close()


def test_a_string_scope_and_an_unknown_block_option_are_refused(store: HelaMemory) -> None:
    """Trial 152: ``from_defaults(scope="alice")`` made the scope ``('a','l','i','c','e')``,
    and user "al"'s ``('a','l')`` is a prefix of it: al was shown alice's memories.
    ``HelaMemMemoryBlock(path=...)`` (or ``kk=3``) was accepted and ignored: the block
    wrote to ``./helamem-data``."""
    from helamem.core import InvalidScopeError

    with pytest.raises(InvalidScopeError, match=r"scope=\('alice',\)"):
        HelaMemChatMemory.from_defaults(memory=store, scope="alice")
    for option, hint in (("path", "from_path"), ("kk", "did you mean k?")):
        with pytest.raises(ValueError, match="unknown option") as err:
            HelaMemMemoryBlock(**{option: "./elsewhere"})
        assert hint in str(err.value)
    with pytest.raises(ValueError, match="did you mean max_tokens"):
        HelaMemMemoryBlock.from_path(store.config.path, max_token=50)


def test_a_state_loaded_in_another_directory_opens_the_same_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 152: the dump kept a relative ``config.path`` ("s1"), so a state loaded in
    another working directory opened a new, empty store there and recorded into it."""
    from li_fakes import hashing_config

    monkeypatch.chdir(tmp_path)
    chat = HelaMemChatMemory.from_defaults(config=hashing_config(Path("s1")), scope=("u",))
    chat.put(ChatMessage(role="user", content="my cat is called Miso"))
    chat.put(ChatMessage(role="assistant", content="Miso is a lovely name"))
    chat.close()
    dumped = chat.to_dict()
    block = HelaMemMemoryBlock(config=hashing_config(Path("s1")), scope=("u",))
    block_dump = block.model_dump(mode="json")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for path in (dumped["config"]["path"], block_dump["config"]["path"]):
        assert Path(path) == tmp_path / "s1"
    again = HelaMemChatMemory.from_dict(dumped)
    try:
        assert again.memory.config.path == tmp_path / "s1"
        hits = again.memory.search("cat Miso", ("u",), k=5, learn=False)
        assert "my cat is called Miso" in [h.memory.content for h in hits]
    finally:
        again.close()
    assert not (tmp_path / "elsewhere" / "s1").exists()

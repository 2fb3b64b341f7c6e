"""Differential: HelaMemChatMemory against LlamaIndex's ChatMemoryBuffer, driven side by side
by seeded random sequences of BaseMemory operations; after each, the observable results agree
except for the intended differences the README lists, each encoded below (``README:``)."""

from __future__ import annotations

import collections
import inspect
import json
import os
import random
import time
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from llama_index.core.base.llms.types import ImageBlock, TextBlock, ToolCallBlock
from llama_index.core.bridge.pydantic import Field, WrapSerializer
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.storage.chat_store import SimpleChatStore
from llama_index.core.storage.chat_store.simple_chat_store import chat_message_serialization

from helamem.core import HelaMemory, TurnRecorder, TurnRecordingError
from helamem.core import _inputs as core_inputs
from helamem.llamaindex import HelaMemChatMemory

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ChatMemoryBuffer.json()

SEEN: collections.Counter[str] = collections.Counter()  # what the runs exercised
HEADER = HelaMemChatMemory.model_fields["memory_header"].default
WORDS = ["cat", "miso", "garden", "mouse", "weather", "sunny", "rain", "paris", "coffee"]
WORDS += ["book", "train", "blue"]
ROLES = ["user"] * 4 + ["assistant"] * 4 + ["system", "tool", "developer", "chatbot", "model"]
ROLES += ["function"]


def words(text: str) -> list[str]:
    return text.split()


def readme_tokens(message: ChatMessage, count: Callable[[str], list[Any]]) -> int:
    """README (Limit): "message text, tool calls with their arguments and other
    `additional_kwargs` (as JSON), counted per message with `tokenizer_fn` ... Images and
    audio are not counted, as in `ChatMemoryBuffer`." (ChatMemoryBuffer counts
    ``" ".join(str(m.content))`` over the list: no tool calls, "None" for a message
    without text.)"""
    parts = [b.text for b in message.blocks if isinstance(b, TextBlock)]
    parts += [
        json.dumps({"name": b.tool_name, "arguments": b.tool_kwargs})
        for b in message.blocks
        if isinstance(b, ToolCallBlock)
    ]
    if message.additional_kwargs:
        parts.append(json.dumps(message.additional_kwargs))
    text = "\n".join(p for p in parts if p)
    return len(count(text)) if text else 0


def plain(message: ChatMessage) -> bool:
    """A message both counts agree on (with a word tokenizer): text only, no kwargs."""
    return (
        message.content is not None
        and not message.additional_kwargs
        and not any(isinstance(b, ToolCallBlock) for b in message.blocks)
    )


def _serialize(message: ChatMessage, handler: Any, info: Any) -> dict[str, Any]:
    """llama-index-core 0.14.25's ``chat_message_serialization`` calls ``handler(message,
    info)``, which the installed pydantic refuses ("'index_key' is expected to be an integer
    or a string"), so no ``ChatMemoryBuffer`` holding a message serializes: the same,
    calling the handler as pydantic expects."""
    return chat_message_serialization(message, lambda value, _info: handler(value), info)


class FixedStore(SimpleChatStore):
    store: dict[str, list[Annotated[ChatMessage, WrapSerializer(_serialize)]]] = Field(
        default_factory=dict
    )


class Reference(ChatMemoryBuffer):
    """ChatMemoryBuffer (its window algorithm untouched) counting as the README says, on
    a :class:`FixedStore`. The only other intended differences (README): the memory message
    before the window and the longer error text (:func:`check_get`)."""

    chat_store: Any = Field(default_factory=FixedStore)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Reference:
        """ChatMemoryBuffer.from_dict, loading the store as a FixedStore."""
        data = dict(data)
        store = {k: v for k, v in data.pop("chat_store").items() if k != "class_name"}
        data.pop("class_name", None)
        return cls(chat_store=FixedStore(**store), **data)

    def _token_count_for_messages(self, messages: list[ChatMessage]) -> int:
        ours = sum(readme_tokens(m, self.tokenizer_fn) for m in messages)
        if self.tokenizer_fn is words and all(plain(m) for m in messages):
            # the override changes only what the README lists
            assert ours == super()._token_count_for_messages(messages)
        return ours


def make_message(rng: random.Random) -> ChatMessage:
    some = " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))
    role = rng.choice(ROLES)
    kind = rng.choice(
        ["text"] * 6
        + [
            "empty",
            "none",
            "blank",
            "unicode",
            "long",
            "call",
            "legacy",
            "result",
            "image",
            "multi",
        ]
    )
    if kind == "empty":
        return ChatMessage(role=role, content="")
    if kind == "none":
        return ChatMessage(role=role, content=None)
    if kind == "blank":
        return ChatMessage(role=role, content=rng.choice([" ", "\n\t ", "\u200b", "\x00"]))
    if kind == "unicode":
        extra = rng.choice(["café 日本語 😀", "a\x00b", "Ωμέγα \u200b", "e\u0301 \ud83d\ude00"])
        return ChatMessage(role=role, content=f"{some} {extra}")
    if kind == "long":
        return ChatMessage(role=role, content=" ".join(rng.choices(WORDS, k=rng.randint(80, 700))))
    if kind == "call":  # an agent's tool call (with or without text beside it)
        blocks: list[Any] = [TextBlock(text=some)] if rng.random() < 0.3 else []
        args = {"query": " ".join(rng.choices(WORDS, k=rng.randint(1, 40)))}
        blocks.append(ToolCallBlock(tool_call_id="c1", tool_name="search", tool_kwargs=args))
        return ChatMessage(role="assistant", blocks=blocks)
    if kind == "legacy":  # OpenAI-style tool calls in additional_kwargs
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        return ChatMessage(role="assistant", content=None, additional_kwargs={"tool_calls": [call]})
    if kind == "result":
        return ChatMessage(role="tool", content=some, additional_kwargs={"tool_call_id": "c1"})
    if kind == "image":
        return ChatMessage(
            role="user", blocks=[TextBlock(text=some), ImageBlock(url="http://x.test/a.png")]
        )
    if kind == "multi":
        return ChatMessage(role=role, blocks=[TextBlock(text=some), TextBlock(text="and more")])
    return ChatMessage(role=role, content=some)


def make_messages(rng: random.Random, n: int) -> list[ChatMessage]:
    msgs = [make_message(rng) for _ in range(n)]
    if msgs and rng.random() < 0.5:  # a turn: a question, its reply
        msgs[: min(2, n)] = [
            ChatMessage(role="user", content=" ".join(rng.choices(WORDS, k=4))),
            ChatMessage(role="assistant", content=" ".join(rng.choices(WORDS, k=5))),
        ][: min(2, n)]
    return msgs


async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """("ok", what ``fn(*args, **kwargs)`` returns, awaited) or ("err", the exception)."""
    try:
        out = fn(*args, **kwargs)
        if inspect.isawaitable(out):
            out = await out
        return "ok", out
    except Exception as exc:  # noqa: BLE001 - what each raises is compared
        return "err", exc


def is_memory_message(message: ChatMessage) -> bool:
    return message.role == MessageRole.SYSTEM and (message.content or "").startswith(HEADER)


async def check_get(
    ref: Reference, ours: HelaMemChatMemory, use_async: bool, kwargs: dict[str, Any], where: str
) -> None:
    want = await run(ref.aget if use_async else ref.get, **kwargs)
    got = await run(ours.aget if use_async else ours.get, **kwargs)
    SEEN[f"get {want[0]}"] += 1
    if want[0] == "err":
        # README: "an `initial_token_count` over the limit raises `InvalidInputError` (a
        # `ValueError`)"; README table: "The error is a `ValueError` that begins with
        # `ChatMemoryBuffer`'s text, ... and then names the fix"
        assert got[0] == "err", f"{where}: ChatMemoryBuffer raised {want[1]!r}, ours {got[1]!r}"
        assert isinstance(got[1], type(want[1])), where
        assert str(got[1]).startswith(str(want[1])), where
        return
    assert got[0] == "ok", f"{where}: ours raised {got[1]!r}, ChatMemoryBuffer returned"
    got_list, want_list = got[1], want[1]
    if got_list and is_memory_message(got_list[0]):
        # README (Limit): get "return[s] one system message built from retrieval, then the
        # recent window"; (Order of claims) "The current turn ... first; then the memory
        # message; then older messages": the window is ChatMemoryBuffer's for a budget less
        # the memory message, and there is none when the current turn does not fit.
        head, rest = got_list[0], got_list[1:]
        SEEN["memory message"] += 1
        assert not any(is_memory_message(m) for m in rest), where
        initial = kwargs.get("initial_token_count", 0)
        spent = readme_tokens(head, ours.tokenizer_fn)
        assert rest == ref.get(initial_token_count=initial + spent), where
        history = ref.get_all()
        users = [i for i, m in enumerate(history) if m.role == MessageRole.USER]
        turn = history[users[-1] :] if users else history[-1:]
        assert rest[len(rest) - len(turn) :] == turn, f"{where}: the turn was displaced"
        # README (Memory message): at most `k` hits ... Left out: memories whose text the
        # returned window already holds word for word, as whole messages (or lines)
        assert 1 <= len(ours._shown) <= ours.k, where
        held = {ln.strip() for m in rest for ln in (m.content or "").splitlines()}
        assert not any(line.content.strip() in held for line in ours._shown), where
    else:
        SEEN[
            "fallback: newest alone"
            if want_list
            and ref._token_count_for_messages(want_list)
            > ref.token_limit - kwargs.get("initial_token_count", 0)
            else "no memory message"
        ] += 1
        shape = [(m.role.value, readme_tokens(m, ref.tokenizer_fn)) for m in ref.get_all()]
        assert got_list == want_list, (
            f"{where}\nget({kwargs}) limit {ref.token_limit}, history (role, tokens) {shape}"
            f"\nours: {got_list}\nbuffer: {want_list}"
        )


async def same(ref: Reference, ours: HelaMemChatMemory, name: str, *args: Any, where: str) -> None:
    """Call ``name`` on both with the same (copied) arguments; same outcome."""
    copy = lambda a: list(a) if isinstance(a, list) else a  # noqa: E731 - the buffer aliases lists
    want = await run(getattr(ref, name), *map(copy, args))
    got = await run(getattr(ours, name), *map(copy, args))
    assert want[0] == got[0], f"{where}: buffer {want[1]!r}, ours {got[1]!r}"
    if want[0] == "ok":
        assert got[1] == want[1], where


def roundtrip(memory: Any, by_dict: bool) -> Any:
    """``memory`` saved and loaded by its own ``to_dict``/``from_dict`` or ``to_string``/
    ``from_string``."""
    if by_dict:
        return type(memory).from_dict(memory.to_dict())
    return type(memory).from_string(memory.to_string())


SEEDS = range(int(os.environ.get("DIFF_SEEDS", "20")))  # more: DIFF_SEEDS=500
OPS = 30


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_operations_match_chat_memory_buffer(store: HelaMemory, seed: int) -> None:
    rng = random.Random(seed)
    tokenizer = words if seed % 2 == 0 else None  # None: LlamaIndex's default (tiktoken)
    limit = rng.choice([5, 20, 60, 200, 3000])
    start = make_messages(rng, rng.randint(0, 4))
    kw: dict[str, Any] = {"token_limit": limit, "chat_history": list(start)}
    if tokenizer is not None:
        kw["tokenizer_fn"] = tokenizer
    ref = Reference.from_defaults(chat_store=FixedStore(), **{**kw, "chat_history": list(start)})
    ours = HelaMemChatMemory.from_defaults(memory=store, scope=("diff", str(seed)), **kw)
    trace: list[str] = [f"limit={limit} tokenizer={'words' if tokenizer else 'default'}"]
    try:
        for step in range(OPS):
            op = rng.choice(
                ["put"] * 5
                + ["put_messages"] * 2
                + ["set", "reset", "roundtrip"]
                + ["get"] * 4
                + ["get_all"]
            )
            aio = rng.random() < 0.4
            where = f"seed {seed} step {step}: " + "; ".join(trace[-8:])
            if op == "put":
                msg = make_message(rng)
                trace.append(f"{'a' * aio}put({msg!r})")
                await same(ref, ours, "aput" if aio else "put", msg, where=where)
            elif op == "put_messages":
                msgs = make_messages(rng, rng.randint(0, 4))
                trace.append(f"{'a' * aio}put_messages({msgs!r})")
                await same(ref, ours, "aput_messages" if aio else "put_messages", msgs, where=where)
            elif op == "set":
                # half the time the window goes on (as an agent's chat_history does)
                base = ref.get_all() if rng.random() < 0.5 else []
                msgs = list(base) + make_messages(rng, rng.randint(0, 5))
                if rng.random() < 0.5:  # no user message: an agent's greeting, tool output
                    msgs = [m for m in msgs if m.role != MessageRole.USER]
                trace.append(f"{'a' * aio}set({msgs!r})")
                await same(ref, ours, "aset" if aio else "set", msgs, where=where)
            elif op == "reset":
                trace.append(f"{'a' * aio}reset()")
                await same(ref, ours, "areset" if aio else "reset", where=where)
            elif op == "roundtrip":
                by_dict = rng.random() < 0.5
                trace.append(f"roundtrip({'dict' if by_dict else 'string'})")
                want = await run(roundtrip, ref, by_dict)
                got = await run(roundtrip, ours, by_dict)
                # (to_string of an image message raises TypeError in both: AnyUrl)
                assert want[0] == got[0], f"{where}: buffer {want[0]}, ours {got[0]}"
                SEEN[f"roundtrip {got[0]}"] += 1
                if got[0] == "err":
                    assert type(got[1]) is type(want[1]), f"{where}: {want[1]!r} {got[1]!r}"
                if got[0] == "ok":  # both leave tokenizer_fn out: both count with the default
                    await ours.aclose()
                    ref, ours = want[1], got[1]
            elif op == "get":
                kwargs: dict[str, Any] = {}
                choice = rng.random()
                if choice < 0.6:
                    kwargs["input"] = rng.choice(
                        [
                            None,
                            " ".join(rng.choices(WORDS, k=3)),
                            "",
                            " \u200b",
                            "日本語",
                            ChatMessage(role="user", content="cat"),
                            7,
                        ]
                    )
                if rng.random() < 0.7:
                    kwargs["initial_token_count"] = rng.choice(
                        [0, 0, rng.randint(0, limit), limit, limit + rng.randint(1, 9), -3]
                    )
                if rng.random() < 0.1:
                    kwargs["extra"] = "ignored"  # chat engines pass extra keyword arguments
                trace.append(f"{'a' * aio}get({kwargs!r})")
                await check_get(ref, ours, aio, kwargs, where)
            else:
                trace.append(f"{'a' * aio}get_all()")
                await same(ref, ours, "aget_all" if aio else "get_all", where=where)
            # the window itself is never a difference: every message, as put
            assert ours.get_all() == list(ref.get_all()), f"{where}; {trace[-1]}"
    finally:
        await ours.aclose()


@pytest.mark.parametrize(
    "history",
    [
        [("assistant", "Hello! I can help with trips and weather."), ("assistant", "Ask away.")],
        [("tool", "sunny in paris all week long"), ("assistant", "It is sunny.")],
    ],
)
def test_without_a_user_message_the_newest_message_that_fits_is_kept(
    store: HelaMemory, history: list[tuple[str, str]]
) -> None:
    """Found by the differential (seed 18): no user message, the whole window over the
    limit, the newest message fitting alone. README (Order of claims): the list is "the
    longest window that fits, else the newest message alone ... as `ChatMemoryBuffer`
    returns them (... an empty list ... made LlamaIndex's `ReActAgent` and `AgentWorkflow`
    fail with `IndexError`)"."""
    messages = [ChatMessage(role=role, content=text) for role, text in history]
    buffer = ChatMemoryBuffer.from_defaults(
        chat_history=list(messages), token_limit=5, tokenizer_fn=words
    )
    ours = HelaMemChatMemory.from_defaults(
        memory=store, scope=("f1",), chat_history=list(messages), token_limit=5, tokenizer_fn=words
    )
    assert buffer.get() == messages[-1:]
    assert ours.get() == buffer.get()
    ours.close()


def test_without_a_user_message_a_memory_message_keeps_the_newest_message(
    store: HelaMemory,
) -> None:
    """The same with a memory shown: the newest message (3 tokens) fits beside the memory
    message (22) in 30, the whole window (9) does not: README (Order of claims) "The current
    turn ... first; then the memory message; then older messages"."""
    store.add_turn(("f1",), "what is the weather in paris", "It is sunny in paris.")
    messages = [
        ChatMessage(role="tool", content="sunny in paris all week long"),
        ChatMessage(role="assistant", content="It is sunny."),
    ]
    buffer = ChatMemoryBuffer.from_defaults(
        chat_history=list(messages), token_limit=40, tokenizer_fn=words
    )
    ours = HelaMemChatMemory.from_defaults(
        memory=store, scope=("f1",), chat_history=list(messages), token_limit=40, tokenizer_fn=words
    )
    got = ours.get(input="weather in paris", initial_token_count=10)
    assert is_memory_message(got[0]) and len(words(got[0].content or "")) == 22
    assert buffer.get(initial_token_count=10 + 22) == messages[-1:]
    assert got[1:] == messages[-1:]
    ours.close()


def _limit(monkeypatch: pytest.MonkeyPatch, chars: int) -> None:
    """The core's ``MAX_CONTENT_CHARS`` (16 M characters) as ``chars``, for short texts."""
    monkeypatch.setattr(core_inputs, "MAX_CONTENT_CHARS", chars)


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_query_over_the_cores_limit_is_searched_by_its_end(
    store: HelaMemory, monkeypatch: pytest.MonkeyPatch, use_async: bool
) -> None:
    """Found by the differential: a user message (or ``input``) over the core's limit made
    ``get`` raise ``InvalidInputError``, where ``ChatMemoryBuffer`` returns the window."""
    _limit(monkeypatch, 200)
    store.add_turn(("q",), "how is the weather in paris", "It is sunny in paris.")
    ours = HelaMemChatMemory.from_defaults(memory=store, scope=("q",), tokenizer_fn=words)
    question = "x " * 150 + "weather in paris"  # 316 characters
    await ours.aput(ChatMessage(role="user", content=question))
    for kwargs in ({}, {"input": question}):
        got = await ours.aget(**kwargs) if use_async else ours.get(**kwargs)
        assert is_memory_message(got[0]) and "sunny in paris" in (got[0].content or "")
        assert got[1:] == [ChatMessage(role="user", content=question)]
    await ours.aclose()


def test_a_turn_that_failed_to_store_before_get_raises_at_get(
    store: HelaMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README (Read your writes): "a turn that failed to store raises `TurnRecordingError`
    there". It did only while the turn was still being stored: one that had failed before
    the ``get`` raised nowhere until ``close``."""
    _limit(monkeypatch, 200)
    ours = HelaMemChatMemory.from_defaults(memory=store, scope=("t",), tokenizer_fn=words)
    ours.put(ChatMessage(role="user", content="long " * 60))  # 300 characters: refused
    ours.put(ChatMessage(role="assistant", content="ok"))
    recorder = ours._recorder
    assert recorder is not None
    deadline = time.monotonic() + 30
    while recorder.pending and time.monotonic() < deadline:  # failed in the background
        time.sleep(0.01)
    assert not recorder.pending
    with pytest.raises(TurnRecordingError, match="over the 200 limit"):
        ours.get()
    assert ours.get()  # raised once
    ours.close()


def test_a_shared_recorders_failure_is_raised_at_its_owners_flush_not_anothers_get(
    store: HelaMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 123: with one ``TurnRecorder`` shared by two memories, alice's failed turn
    was raised (and used up) at bob's ``get``. A memory's own recorder raises it at its
    ``get``; a shared one at its owner's ``flush``, as before."""
    _limit(monkeypatch, 200)
    recorder = TurnRecorder(store)
    alice, bob = (
        HelaMemChatMemory.from_defaults(
            memory=store, scope=(name,), tokenizer_fn=words, recorder=recorder
        )
        for name in ("alice", "bob")
    )
    alice.put(ChatMessage(role="user", content="long " * 60))  # 300 characters: refused
    alice.put(ChatMessage(role="assistant", content="ok"))
    deadline = time.monotonic() + 30
    while recorder.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    bob.put(ChatMessage(role="user", content="hello"))
    assert bob.get() == [ChatMessage(role="user", content="hello")]
    with pytest.raises(TurnRecordingError, match="over the 200 limit"):
        recorder.flush_sync()
    recorder.close_sync()

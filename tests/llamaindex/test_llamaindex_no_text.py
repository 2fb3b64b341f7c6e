"""A user message without text (an image, audio, a document, empty or blank text) and its
replies: ``HelaMemMemoryBlock`` stores what ``HelaMemChatMemory`` stores for the same
exchange, however ``Memory`` splits it into flushes.

The rule (README, "Replies to a user message without text"): such a message asks no
question of its own, so its replies start no turn and join none; after a question still
waiting for its reply, it joins that question, and the reply answers both.
"""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import (
    AudioBlock,
    DocumentBlock,
    ImageBlock,
    TextBlock,
    ToolCallBlock,
    VideoBlock,
)
from llama_index.core.llms import ChatMessage

from helamem.core import HelaMemory
from helamem.llamaindex import HelaMemChatMemory, HelaMemMemoryBlock

NO_TEXT: dict[str, Any] = {
    "image": [ImageBlock(url="http://x.test/cat.png")],
    "audio": [AudioBlock(url="http://x.test/cat.mp3")],
    "video": [VideoBlock(url="http://x.test/cat.mp4")],
    "document": [DocumentBlock(url="http://x.test/cat.pdf")],
    "empty": [TextBlock(text="")],
    "blank": [TextBlock(text=" \u200b\n")],
    "none": [],
    "tool call": [ToolCallBlock(tool_call_id="c1", tool_name="look", tool_kwargs={})],
}


def _u(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def _a(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def _call() -> list[ChatMessage]:
    """An agent's tool call (no text) and the tool's result."""
    call = ToolCallBlock(tool_call_id="t1", tool_name="look", tool_kwargs={"q": "cat"})
    return [
        ChatMessage(role="assistant", blocks=[call]),
        ChatMessage(role="tool", content="a tabby", additional_kwargs={"tool_call_id": "t1"}),
    ]


def _contents(memory: HelaMemory, scope: tuple[str, ...]) -> list[str]:
    res = memory.search("x", scope, k=50, learn=False, spread=False, semantic_k=0)
    assert len(res) == memory.stats(scope).episodic
    return sorted(h.content for h in res)


def _flushes(blank: ChatMessage) -> dict[str, tuple[list[list[ChatMessage]], list[str]]]:
    """Exchanges, as the flushes ``Memory`` may hand the block, and what both store."""
    return {
        # answered turn, then a message without text and its replies: nothing of them
        "after a turn": (
            [[_u("where do I live"), _a("Paris.")], [blank, _a("That is a cat."), _a("Tabby.")]],
            ["Paris.", "where do I live"],
        ),
        "alone": ([[blank, _a("That is a cat.")]], []),
        "with a tool call": ([[blank, *_call(), _a("That is a cat.")]], []),
        # the message without text ends one flush, its reply begins the next
        "split after it": (
            [[_u("where do I live"), _a("Paris."), blank], [_a("That is a cat.")]],
            ["Paris.", "where do I live"],
        ),
        # after a question still waiting, it joins that question: the reply answers it
        "joins a waiting question": (
            [[_u("what is this"), blank, _a("A cat.")]],
            ["A cat.", "what is this"],
        ),
        "joins a question flushed before it": (
            [[_u("what is this")], [blank, _a("A cat.")]],
            ["A cat.", "what is this"],
        ),
        "joins a question, all split": (
            [[_u("what is this")], [blank], [*_call(), _a("A cat.")]],
            ["A cat.", "what is this"],
        ),
        # a text question after it asks again: its reply is a turn
        "then a question": (
            [[blank, _a("A cat."), _u("its name?"), _a("Miso.")]],
            ["Miso.", "its name?"],
        ),
    }


@pytest.mark.parametrize("exchange", sorted(_flushes(_u("x"))))
@pytest.mark.parametrize("content", sorted(NO_TEXT))
async def test_block_and_chat_memory_store_the_same_for_a_message_without_text(
    store: HelaMemory, content: str, exchange: str
) -> None:
    blank = ChatMessage(role="user", blocks=list(NO_TEXT[content]))
    flushes, want = _flushes(blank)[exchange]
    block = HelaMemMemoryBlock.from_memory(store, scope=("b",))
    for flush in flushes:
        await block._aput(flush)
    await block.aclose()
    chat = HelaMemChatMemory.from_defaults(memory=store, scope=("c",))
    for flush in flushes:
        await chat.aput_messages(flush)
    await chat.aclose()
    assert _contents(store, ("b",)) == want
    assert _contents(store, ("c",)) == want

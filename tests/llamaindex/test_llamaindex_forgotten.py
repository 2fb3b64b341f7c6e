"""HelaMemChatMemory: a turn forgotten in the memory stays forgotten when a copy of the
chat memory saved before its reply (another worker) puts the reply again; the same words
in a new conversation are recorded."""

from __future__ import annotations

import pytest
from llama_index.core.llms import ChatMessage

from helamem.core import HelaMemory
from helamem.llamaindex import HelaMemChatMemory

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")

SCOPE = ("users", "alice")
SECRET = "my bank PIN is 4711"


def _texts(store: HelaMemory) -> list[str]:
    return sorted(h.content for h in store.search("bank PIN 4711", SCOPE, k=10, learn=False))


async def test_a_forgotten_turn_put_again_by_a_saved_copy_is_not_recorded(
    store: HelaMemory,
) -> None:
    """Helper 164: the turn's identity went with its memories, so a worker restored from
    state saved before the reply (``to_dict``) that put the reply again stored the
    forgotten turn again."""
    first = HelaMemChatMemory.from_defaults(memory=store, session_id="s", scope=SCOPE)
    await first.aput(ChatMessage(role="user", content=SECRET))
    saved = first.to_dict()
    await first.aput(ChatMessage(role="assistant", content="Noted."))
    await first.aflush()
    assert _texts(store) == ["Noted.", SECRET]
    store.delete_scope(SCOPE)
    again = HelaMemChatMemory.from_dict(saved)  # another worker, the same request
    await again.aput(ChatMessage(role="assistant", content="Noted."))
    await again.aclose()
    assert _texts(store) == []
    new = HelaMemChatMemory.from_defaults(memory=store, session_id="s", scope=SCOPE)
    await new.aput_messages(  # a new conversation: a new turn, however alike
        [ChatMessage(role="user", content=SECRET), ChatMessage(role="assistant", content="Noted.")]
    )
    await new.aclose()
    await first.aclose()
    assert _texts(store) == ["Noted.", SECRET]

"""The system message a memory injects into a model context, and replacing it.

A memory replaces its own message of the turn before: a system message opening with
its header (:func:`~._convert.memory_header`; also one left by a memory of this scope
in a loaded state), except the message another live memory serving the same context
injected (two memories of one scope, on two stores, on one agent share a header: each
keeps the other's).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from contextvars import ContextVar

from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import SystemMessage

__all__ = ["OWN_LOAD", "forget_injected", "note_injected", "remove_injected"]

OWN_LOAD: ContextVar[bool] = ContextVar("helamem_autogen_own_load", default=False)
"""Set while a memory reloads a context's state itself (the same conversation: no
memory's ``load_state`` hook records or forgets anything)."""

# each context's memories and the text each injected last
_INJECTED: weakref.WeakKeyDictionary[ChatCompletionContext, weakref.WeakKeyDictionary[object, str]]
_INJECTED = weakref.WeakKeyDictionary()


def note_injected(context: ChatCompletionContext, memory: object, text: str | None) -> None:
    """Note what ``memory`` injected into ``context`` (``None``: nothing)."""
    texts = _INJECTED.setdefault(context, weakref.WeakKeyDictionary())
    if text is None:
        texts.pop(memory, None)
    else:
        texts[memory] = text


def forget_injected(memory: object, contexts: list[ChatCompletionContext]) -> None:
    """``memory`` is closed: its messages in ``contexts`` are nobody's now."""
    for context in contexts:
        texts = _INJECTED.get(context)
        if texts is not None:
            texts.pop(memory, None)


def _content(message: object) -> object:
    if isinstance(message, SystemMessage):
        return message.content
    if isinstance(message, Mapping) and message.get("type") == "SystemMessage":
        return message.get("content")
    return None


async def remove_injected(context: ChatCompletionContext, memory: object, header: str) -> None:
    """Drop the system message ``memory`` (header ``header``) injected before, from the
    whole history (a windowed context's view may not show it)."""
    others = {t for m, t in list(_INJECTED.get(context, {}).items()) if m is not memory}
    state = dict(await context.save_state())
    messages = state.get("messages")
    if not isinstance(messages, list):
        return
    kept = []
    for message in messages:
        text = _content(message)
        if not (isinstance(text, str) and text.startswith(header) and text not in others):
            kept.append(message)
    if len(kept) != len(messages):
        state["messages"] = kept
        own = OWN_LOAD.set(True)
        try:
            await context.load_state(state)
        finally:
            OWN_LOAD.reset(own)

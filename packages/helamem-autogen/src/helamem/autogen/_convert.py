"""Translation between AutoGen messages / ``MemoryContent`` and HeLa-Mem text and hits."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from autogen_core.memory import MemoryContent, MemoryMimeType
from autogen_core.models import AssistantMessage, LLMMessage, SystemMessage, UserMessage

from helamem.core import Hit

__all__ = [
    "content_of",
    "encode",
    "is_memory_message",
    "last_text",
    "last_turn",
    "last_user",
    "text_of",
]

_TEXT_TYPES = {MemoryMimeType.TEXT, MemoryMimeType.MARKDOWN}
# Headers of the messages memories inject (HeLa-Mem's own, and AutoGen's ListMemory and
# ChromaDBVectorMemory): they are not conversation, so never a query.
_MEMORY_HEADERS = ("[helamem:", "\nRelevant memory content")


_JSON_KINDS = {
    list: "a JSON array",
    int: "a JSON number",
    float: "a JSON number",
    bool: "a JSON boolean",
    type(None): "JSON null",
    str: "a JSON string",
}


def _mime(value: MemoryMimeType | str) -> MemoryMimeType | None:
    if isinstance(value, MemoryMimeType):
        return value
    try:
        return MemoryMimeType(value)
    except ValueError:
        return None


def text_of(content: object) -> str:
    """The text of a message's content.

    A string as is; of a list (multimodal content, tool results), its strings
    and the ``content`` strings of its items joined by newlines; else ``""``.
    """
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = (p if isinstance(p, str) else getattr(p, "content", None) for p in content)
        return "\n".join(p for p in parts if isinstance(p, str)).strip()
    return ""


def is_memory_message(message: object) -> bool:
    """Whether ``message`` (an ``LLMMessage`` or its saved dict) was injected by a memory."""
    if isinstance(message, SystemMessage):
        content: object = message.content
    elif isinstance(message, Mapping) and message.get("type") == "SystemMessage":
        content = message.get("content")
    else:
        return False
    return isinstance(content, str) and content.startswith(_MEMORY_HEADERS)


def last_turn(messages: Sequence[LLMMessage]) -> tuple[str, str] | None:
    """The last (user, assistant) pair: the last text reply and the user message before it."""
    for i in range(len(messages) - 1, -1, -1):
        reply = messages[i]
        if isinstance(reply, AssistantMessage) and text_of(reply.content):
            for msg in reversed(messages[:i]):
                if isinstance(msg, UserMessage) and text_of(msg.content):
                    return text_of(msg.content), text_of(reply.content)
            return None
    return None


def last_user(messages: Sequence[LLMMessage]) -> str | None:
    """The text of the newest user message that has text."""
    for msg in reversed(messages):
        if isinstance(msg, UserMessage) and text_of(msg.content):
            return text_of(msg.content)
    return None


def last_text(messages: Iterable[LLMMessage]) -> str | None:
    """The text of the newest message of any kind with text, memory messages left out."""
    found = None
    for msg in messages:
        text = text_of(getattr(msg, "content", None))
        if text and not is_memory_message(msg):
            found = text
    return found


def encode(content: MemoryContent) -> tuple[str, MemoryMimeType]:
    """The text stored for ``content`` and its MIME type.

    TEXT and MARKDOWN take a string. JSON takes a dict, or a string holding
    a JSON object (Chroma's rule: JSON content must be a dict; the string form
    is accepted too and comes back as a dict).

    Raises:
        ValueError: On another MIME type, or JSON that is not an object.
    """
    mime = _mime(content.mime_type)
    value = content.content
    if mime is not None and mime in _TEXT_TYPES and isinstance(value, str):
        return value, mime
    if mime is MemoryMimeType.JSON:
        return _json_text(value), mime
    raise ValueError(
        f"Unsupported content type: HelaMemMemory stores text, and MIME type "
        f"{content.mime_type!r} with {type(value).__name__} content is not text; pass TEXT or "
        f"MARKDOWN with a str, or JSON with a dict"
    )


def _json_text(value: object) -> str:
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"JSON content must be a dict (a JSON object); this string does not parse as "
                f"JSON ({exc}); pass a dict"
            ) from exc
        if isinstance(parsed, dict):
            return value
        value = parsed
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    raise ValueError(
        f"JSON content must be a dict (a JSON object), got {kind}; wrap it in an object, "
        f"e.g. {{'items': [1, 2]}}"
    )


def content_of(hit: Hit) -> MemoryContent:
    """A hit as AutoGen ``MemoryContent``; JSON memories come back as dicts."""
    m = hit.memory
    stored = dict(m.metadata)
    mime = _mime(str(stored.get("mime_type", ""))) or MemoryMimeType.TEXT
    value: str | dict[str, Any] = m.content
    if mime is MemoryMimeType.JSON:
        try:
            parsed = json.loads(m.content)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            value = parsed
    metadata = {
        **stored,
        "id": m.id,
        "score": hit.score,
        "activation": hit.activation,
        "base": hit.base,
        "boost": hit.boost,
        "provenance": hit.provenance,
        "scope": list(m.scope),
        "role": m.role,
        "event_time": m.event_time.isoformat(),
    }
    return MemoryContent(content=value, mime_type=mime, metadata=metadata)

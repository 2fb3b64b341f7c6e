"""Translation between AutoGen messages / ``MemoryContent`` and HeLa-Mem text and hits."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from autogen_core.memory import MemoryContent, MemoryMimeType
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import AssistantMessage, LLMMessage, SystemMessage, UserMessage
from pydantic import TypeAdapter, ValidationError

from helamem.core import Hit, InvalidInputError, is_blank

__all__ = [
    "MIME_KEY",
    "TURN_KEY",
    "Turn",
    "content_of",
    "encode",
    "history",
    "humans",
    "is_memory_message",
    "last_text",
    "last_turn",
    "last_user",
    "memory_header",
    "own_metadata",
    "scope_label",
    "text_of",
    "turn_key",
]

_TEXT_TYPES = {MemoryMimeType.TEXT, MemoryMimeType.MARKDOWN}
MIME_KEY = "_helamem_mime_type"
"""The stored metadata key of a memory's MIME type (the caller's own keys are left as given;
memories stored before it was used hold the type under ``mime_type``)."""
TURN_KEY = "_helamem_turn"
"""The stored metadata key of a recorded turn's identity (:func:`turn_key`); internal, as
:data:`MIME_KEY`: query results leave it out."""
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
    Text the core would refuse as blank (only whitespace, control or zero-width
    characters: :func:`helamem.core.is_blank`) is ``""``: no query, no turn.
    """
    text = ""
    if isinstance(content, str):
        text = content.strip()
    elif isinstance(content, list):
        parts = (p if isinstance(p, str) else getattr(p, "content", None) for p in content)
        text = "\n".join(p for p in parts if isinstance(p, str)).strip()
    return "" if is_blank(text) else text


def is_memory_message(message: object) -> bool:
    """Whether ``message`` (an ``LLMMessage`` or its saved dict) was injected by a memory."""
    if isinstance(message, SystemMessage):
        content: object = message.content
    elif isinstance(message, Mapping) and message.get("type") == "SystemMessage":
        content = message.get("content")
    else:
        return False
    return isinstance(content, str) and content.startswith(_MEMORY_HEADERS)


class Turn(NamedTuple):
    """A completed turn and where it is: ``at`` counts the conversation's messages (memory
    messages left out) before its reply, so a repeated turn is told from the one before it."""

    at: int
    user: str
    assistant: str


def humans(
    messages: Sequence[LLMMessage], user_sources: Collection[str] | None = None
) -> frozenset[str]:
    """The sources (AgentChat's ``source``) whose user messages are the user's own words:
    ``user_sources`` when given, else ``"user"`` (AgentChat's source of ``run(task=...)``)
    and the source of the conversation's first user message (who gave the task)."""
    if user_sources is not None:
        return frozenset(user_sources)
    first = next((m.source for m in messages if isinstance(m, UserMessage)), "user")
    return frozenset(("user", first))


def last_turn(
    messages: Sequence[LLMMessage], user_sources: Collection[str] | None = None, since: int = 0
) -> Turn | None:
    """The last (user, assistant) pair: this agent's last text reply, and every message
    with text it answered (since its reply before), joined by newlines: several sent in
    one request, or one answered only by tool calls; the same text twice in a row once.

    In a team, the other agents' messages reach an agent as user messages (a ``Swarm``
    handoff also carries the sender's assistant messages): they are part of what the
    reply answered, each prefixed with its speaker (``"[planner] ..."``); only the user's
    own (:func:`humans`) are taken as said. An assistant message from a source that also
    spoke as a user message is such a teammate's, never this agent's reply (an agent is
    never sent its own messages). A reply right after the agent's previous one (nothing
    said between) is another turn of the question before. ``None`` when there is no
    reply, or nothing with text was said since the reply before (a blank message is not
    answered by the reply to an older question). ``since``: the conversation messages
    (memory messages left out) said before it are in no turn (a memory's ``clear()``)."""
    spoken = [m for m in messages if not is_memory_message(m)]
    users = humans(spoken, user_sources)
    others = frozenset(m.source for m in spoken if isinstance(m, UserMessage)) - users

    def said(m: LLMMessage) -> str | None:
        """What ``m`` says to this agent (``None``: its own message, or no user/teammate's)."""
        if isinstance(m, UserMessage):
            text = text_of(m.content)
            return text if m.source in users or not text else f"[{m.source}] {text}"
        if isinstance(m, AssistantMessage) and m.source in others:
            text = text_of(m.content)
            return f"[{m.source}] {text}" if text else ""
        return None

    def replies(m: LLMMessage) -> bool:
        return isinstance(m, AssistantMessage) and said(m) is None and bool(text_of(m.content))

    at = next((i for i in range(len(spoken) - 1, since - 1, -1) if replies(spoken[i])), None)
    if at is None:
        return None
    asked: list[str] = []
    heard = False  # something said to the agent since its reply before (blank too)
    for msg in reversed(spoken[since:at]):
        if replies(msg):
            if heard:
                break  # the reply before: what came before it was answered
            continue  # a second reply in a row: another turn of the question before
        text = said(msg)
        if text is not None:
            heard = True
            if text and (not asked or asked[-1] != text):
                asked.append(text)
    if not asked:
        return None  # answered already: nothing with text asked since
    return Turn(at, "\n".join(reversed(asked)), text_of(spoken[at].content))


def turn_key(scope: Sequence[str], messages: Sequence[LLMMessage], turn: Turn) -> str:
    """The identity of ``turn`` of a whole history: a hash of the scope and of every user
    and assistant message up to its reply (memory messages left out), so the same
    exchange at another place in a conversation, or in another one, has another key."""
    spoken = [m for m in messages if not is_memory_message(m)][: turn.at + 1]
    said = [
        [type(m).__name__, text_of(m.content)]
        for m in spoken
        if isinstance(m, UserMessage | AssistantMessage)
    ]
    text = json.dumps([list(scope), said], ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: a lone surrogate in a message (the core stores it as given) hashes
    # instead of raising on every later call
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
        TypeError: ``content`` is not a ``MemoryContent`` (a bare string, say).
        ValueError: On another MIME type, or JSON that is not an object.
    """
    if not isinstance(content, MemoryContent):
        raise TypeError(
            f"add() takes a MemoryContent, not {type(content).__name__}: "
            "add(MemoryContent(content=text, mime_type=MemoryMimeType.TEXT))"
        )
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
    """A hit as AutoGen ``MemoryContent``; JSON memories come back as dicts.

    The metadata is what the memory was added with, as given (``ListMemory``
    returns it so too), plus HeLa-Mem's fields (``id``, ``score``,
    ``activation``, ``base``, ``boost``, ``provenance``, ``scope``, ``role``,
    ``event_time``): all of them under ``"helamem"``, and each also at the top
    level where the caller's metadata does not use that key (``"helamem"`` is
    reserved: always HeLa-Mem's own).
    """
    m = hit.memory
    stored = dict(m.metadata)
    stored.pop(TURN_KEY, None)
    kind = stored.pop(MIME_KEY, None)
    if kind is None:  # stored before MIME_KEY: the type is under mime_type
        kind = stored.pop("mime_type", None)
    mime = _mime(str(kind or "")) or MemoryMimeType.TEXT
    value: str | dict[str, Any] = m.content
    if mime is MemoryMimeType.JSON:
        try:
            parsed = json.loads(m.content)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            value = parsed
    ours: dict[str, Any] = {
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
    return MemoryContent(
        content=value, mime_type=mime, metadata={**ours, **stored, "helamem": ours}
    )


def scope_label(scope: Sequence[str]) -> str:
    """``scope`` as one label: joined with "/", or as JSON when a label holds ``/`` or
    ``]``, so that two scopes never share one (a memory's default name and header).

    Examples:
        >>> scope_label(("users", "alice")), scope_label(("team/kb",))
        ('users/alice', '["team/kb"]')
    """
    if any("/" in s or "]" in s for s in scope):
        return json.dumps(list(scope), ensure_ascii=False)
    return "/".join(scope)


def memory_header(scope: Sequence[str]) -> str:
    """The first line of the system message a memory of ``scope`` injects (each memory
    removes only the message it injected itself).

    Examples:
        >>> memory_header(("users", "alice"))
        '[helamem:users/alice] Relevant memories:'
    """
    return f"[helamem:{scope_label(scope)}] Relevant memories:"


def own_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's part of ``metadata``, as ``add`` stores it.

    ``"helamem"`` is HeLa-Mem's (a query result's own fields, see
    :func:`content_of`): it is left out, and so is each top-level field equal
    to its value there, so adding a query result to another memory stores
    none of the first memory's id, scope or score as the caller's.

    Raises:
        InvalidInputError: ``metadata`` holds a key HeLa-Mem keeps for itself
            (``_helamem_mime_type``, ``_helamem_turn``): it would silently go.

    Examples:
        >>> own_metadata({"tag": "a", "id": "x", "helamem": {"id": "x", "score": 0.5}})
        {'tag': 'a'}
    """
    given = dict(metadata or {})
    for key in (MIME_KEY, TURN_KEY):
        if key in given:
            raise InvalidInputError(
                f"metadata key {key!r} is reserved for HeLa-Mem's own bookkeeping (it is "
                "not returned by query); store that value under another key"
            )
    ours = given.pop("helamem", None)
    if isinstance(ours, Mapping):
        for key, value in ours.items():
            if key in given and given[key] == value:
                del given[key]
    return given


logger = logging.getLogger("helamem.autogen.memory")
_MESSAGES: TypeAdapter[list[LLMMessage]] = TypeAdapter(list[LLMMessage])


async def history(model_context: ChatCompletionContext) -> tuple[list[LLMMessage], bool]:
    """The context's whole history, which turns are recorded from, and whether it is whole.

    A windowed context's ``get_messages()`` shows only part of it
    (``BufferedChatCompletionContext`` the last n, so a turn's user message
    may have left the view; ``HeadAndTailChatCompletionContext`` a
    "Skipped n messages." placeholder, which is no user's words); its saved
    state holds every message. A context whose state has no message list
    (a custom one) gives its ``get_messages()``, which may be a window: not whole.
    """
    saved = (await model_context.save_state()).get("messages")
    if isinstance(saved, list):
        try:
            return _MESSAGES.validate_python(saved), True
        except ValidationError:  # not LLMMessages: a custom state; its view is all there is
            logger.debug("model context state holds no LLMMessage list; using get_messages()")
    return list(await model_context.get_messages()), False

"""HeLa-Mem as a LlamaIndex ``BaseMemoryBlock`` for ``Memory.from_defaults(memory_blocks=[...])``.

Examples:
    >>> from llama_index.core.memory import Memory
    >>> block = HelaMemMemoryBlock.from_path("./helamem-data")  # no I/O yet
    >>> memory = Memory.from_defaults(session_id="alice", memory_blocks=[block])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Self

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.bridge.pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
    model_validator,
)
from llama_index.core.memory.memory import BaseMemoryBlock

from helamem.core import (
    HelaMemConfig,
    HelaMemory,
    InvalidInputError,
    InvalidScopeError,
    Scope,
    TurnRecorder,
)

from ._connection import (
    aclose_connection,
    arecord,
    live_memory,
    live_recorder,
)
from ._shared import (
    Line,
    candidates,
    copy_without_connection,
    count_tokens,
    dump_config,
    fit_lines,
    is_final_reply,
    message_text,
    pair_turns,
    register_memory,
    reply_text,
    select_lines,
    window_text,
    without_connection,
)

__all__ = ["HelaMemMemoryBlock"]

logger = logging.getLogger(__name__)

_MAX_TRACKED_TURNS = 256
_Turn = tuple[Scope, str | None, str]  # (scope, session id, user message text)
_QUESTION = "question"  # a flush ended with a question stored alone: next, its reply
_NO_TEXT = "no text"  # ... with a user message without text: its replies start no turn


def _lead(messages: list[ChatMessage], state: str | None) -> tuple[list[str], str | None]:
    """The replies before the flush's first user message with text that answer a
    question of an earlier flush (stored alone), and how the flush stands after them.

    ``state`` is how the earlier flush ended (``None``: unknown, or a completed turn).
    As in :func:`pair_turns`, a reply to a user message without text (an image, audio,
    blank text) starts no turn, and neither do replies after it until a user message
    with text; a message without text after a question still waiting joins it.
    """
    lead: list[str] = []
    for m in messages:
        if m.role == MessageRole.USER:
            if message_text(m):
                break
            if state != _QUESTION:
                state = _NO_TEXT
        elif is_final_reply(m) and state != _NO_TEXT:
            lead.append(reply_text(m))
            state = None
    return lead, state


def _ending(messages: list[ChatMessage], after_lead: str | None) -> str | None:
    """How a flush with no question left waiting ends: :data:`_NO_TEXT` when a user
    message without text is the last question (its replies, in a later flush, start
    no turn), else ``None``; ``after_lead``: how it stood after :func:`_lead`."""
    texts = [i for i, m in enumerate(messages) if m.role == MessageRole.USER and message_text(m)]
    if not texts:  # no question of its own: as the lead left it
        return after_lead
    answered = False
    for m in messages[texts[-1] + 1 :]:
        if is_final_reply(m):
            answered = True
        elif m.role == MessageRole.USER and answered:
            return _NO_TEXT
    return None


class HelaMemMemoryBlock(BaseMemoryBlock[str]):
    """Long-term Hebbian memory as a block of LlamaIndex's ``Memory``.

    ``Memory`` keeps recent messages in its FIFO queue; when the queue passes
    its token limit the oldest turns are flushed to this block, which records
    each completed turn (user message and final assistant reply) through a
    :class:`~helamem.core.TurnRecorder`, together with the ids of the
    memories this block injected into the prompt for that turn. On every
    ``Memory.get``, the recent messages are the query and at most ``k`` hits
    (episodes and distilled facts together, highest score first: the core's
    relevance in [0, 1]) come back as compact text, one line per hit, whole
    lines only while the text fits ``max_tokens`` (counted with LlamaIndex's
    tokenizer, as ``Memory`` counts); ``atruncate`` drops the lowest-ranked
    lines first when ``Memory`` needs room. Memories whose text the messages
    passed in already hold are left out, and the next best take their slots;
    hits of relevance ``min_score`` or less (default: 0) are never shown.
    Reads see the block's own writes: a turn put before ``aget`` is searched
    (``aget`` waits, at most ``read_timeout`` s, for it to be stored).

    The HeLa-Mem scope is ``scope`` when given, else ``("llamaindex",
    session_id)`` with ``Memory``'s session id. Only ``config`` and the
    settings are serialized; the connection is looked up again (same
    process) or reopened from ``config`` (API keys are never serialized).

    Args:
        name: The block name (the tag around its text in the prompt).
        priority: ``Memory`` truncates blocks with a higher number first;
            ``0`` never truncates.
        config: The HeLa-Mem store's configuration.
        scope: A fixed scope for every session, e.g. ``("users", "alice")``.
        k: At most this many hits per retrieval, episodes and distilled
            facts together (facts: at most ``config.retrieval.semantic_k``).
        max_tokens: Budget of the block's text, in LlamaIndex tokenizer
            tokens (whole hits, best first).
        query_messages: How many recent user/assistant messages form the query.
        read_timeout: Most seconds ``aget`` waits for turns still being stored.
        min_score: Only hits scoring above it are shown (relevance in [0, 1]).

    Examples:
        >>> from helamem.core import HashingEmbedder, HelaMemory
        >>> mem = HelaMemory.from_path("./helamem-data", embedder=HashingEmbedder(256))
        >>> block = HelaMemMemoryBlock.from_memory(mem, scope=("users", "alice"))
        >>> block.scope
        ('users', 'alice')
    """

    # a misspelt option (``path=``, ``kk=3``) fails, never ignored
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    name: str = "helamem"
    description: str | None = "Relevant memories from earlier conversations (HeLa-Mem)."
    priority: int = 1
    config: HelaMemConfig = Field(default_factory=HelaMemConfig)
    scope: tuple[str, ...] | None = None
    k: int = Field(default=5, ge=1)
    max_tokens: int = Field(default=400, ge=1)
    query_messages: int = Field(default=3, ge=1)
    read_timeout: float = Field(default=5.0, ge=0)
    min_score: float = Field(default=0.0, ge=0, le=1)

    _memory: HelaMemory | None = PrivateAttr(default=None)
    _owned: bool = PrivateAttr(default=False)
    _recorder: TurnRecorder | None = PrivateAttr(default=None)
    _own_recorder: bool = PrivateAttr(default=False)
    # the question last searched, and where: asked again, it is searched without learning
    _cache: tuple[str, Scope] | None = PrivateAttr(default=None)
    _shown: list[Line] = PrivateAttr(default_factory=list)
    # (scope, user message text) -> ids injected while it was the scope's latest user
    # message: sessions sharing the block never take each other's (a question they share)
    _injected: OrderedDict[_Turn, dict[str, None]] = PrivateAttr(default_factory=OrderedDict)
    # the text recent gets returned -> the turn it was injected for and its lines: atruncate
    # finds them by the content Memory passes (gets of sessions sharing the block interleave)
    _returned: OrderedDict[str, tuple[_Turn | None, list[Line]]] = PrivateAttr(
        default_factory=OrderedDict
    )
    # (scope, session) -> how its last flush ended, when its next flush's first replies
    # answer it: _QUESTION (a question stored alone) or _NO_TEXT (a message without text)
    _open: OrderedDict[tuple[Scope, str | None], str] = PrivateAttr(default_factory=OrderedDict)

    @model_validator(mode="before")
    @classmethod
    def _known_options(cls, data: Any) -> Any:
        """A misspelt or unknown option raises, naming the closest field (``path``:
        :meth:`from_path`); pydantic's ``extra="forbid"`` names no fix."""
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields) - {"class_name"})
            if unknown:
                hints = [
                    "path (use HelaMemMemoryBlock.from_path(path, ...) or config=)"
                    if u == "path"
                    else f"{u} (did you mean {close[0]}?)"
                    if (close := get_close_matches(u, list(cls.model_fields), 1))
                    else u
                    for u in unknown
                ]
                raise InvalidInputError(
                    f"unknown option(s) {', '.join(hints)}: HelaMemMemoryBlock takes "
                    f"{', '.join(sorted(cls.model_fields))}"
                )
        return data

    def __copy__(self) -> Self:
        """A copy without the connection (see :func:`copy_without_connection`)."""
        return copy_without_connection(self)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        """A deep copy without the connection (see :func:`copy_without_connection`)."""
        return copy_without_connection(self, {} if memo is None else memo)

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle without the connection (it is found again, as after ``from_dict``)."""
        return without_connection(super().__getstate__())

    @field_serializer("config")
    def _dump_config(self, config: HelaMemConfig) -> dict[str, Any]:
        return dump_config(config)

    @classmethod
    def from_memory(
        cls, memory: HelaMemory, *, recorder: TurnRecorder | None = None, **kwargs: Any
    ) -> Self:
        """A block over an existing memory (its embedder is kept; the caller closes it).

        Args:
            memory: The memory to use.
            recorder: A recorder to share (over the same memory); default:
                one of its own, created on first use.
            **kwargs: Other fields (``scope``, ``priority``, ``k``, ...).

        Examples:
            >>> block = HelaMemMemoryBlock.from_memory(mem, priority=2)  # doctest: +SKIP
        """
        register_memory(memory)
        block = cls(config=memory.config, **kwargs)
        block._memory = memory
        block._recorder = recorder
        return block

    @classmethod
    def from_path(cls, path: str | Path, **kwargs: Any) -> Self:
        """A block over the store in directory ``path`` with the default config.

        Examples:
            >>> block = HelaMemMemoryBlock.from_path("./helamem-data")
        """
        return cls(config=HelaMemConfig(path=Path(path)), **kwargs)

    @property
    def memory(self) -> HelaMemory:
        """The live memory (reused from this process, else created from ``config``)."""
        return live_memory(self)

    @property
    def recorder(self) -> TurnRecorder:
        """The turn recorder this block records flushed turns with."""
        return live_recorder(self)

    def _scope(self, session_id: str | None) -> Scope:
        if self.scope is not None:
            return self.scope
        if session_id is None:
            raise InvalidScopeError(
                "HelaMemMemoryBlock has no scope: pass scope=(...) or use it inside "
                "llama_index Memory, which passes its session_id"
            )
        return ("llamaindex", session_id)

    async def _aget(
        self,
        messages: list[ChatMessage] | None = None,
        session_id: str | None = None,
        **block_kwargs: Any,
    ) -> str:
        """Retrieve with the recent messages as the query; compact text or ``""``."""
        talk = [
            m
            for m in messages or []
            if m.role in (MessageRole.USER, MessageRole.ASSISTANT) and message_text(m)
        ]
        query = "\n".join(message_text(m) for m in talk[-self.query_messages :])
        if not query:
            return ""
        scope = self._scope(session_id)
        held = window_text(messages or [])
        # asked again within the turn: searched again (a memory deleted or changed since
        # is shown as it is now), without a second reinforcement
        again = self._cache == (query, scope)
        await self._settle()  # read your writes: turns put before this call are searched
        lines = await candidates(
            self.memory, query, scope, self.k, held, self.min_score, learn=not again
        )
        self._cache = (query, scope)
        shown = fit_lines(select_lines(lines, self.k, held), self.max_tokens, count_tokens)
        self._shown = shown
        users = [m for m in talk if m.role == MessageRole.USER]
        turn = (scope, session_id, message_text(users[-1])) if users else None
        if turn is not None:
            self._note_injected(turn, [line.id for line in shown])
        text = "\n".join(line.text for line in shown)
        if text:
            self._returned[text] = (turn, shown)
            self._returned.move_to_end(text)
            while len(self._returned) > _MAX_TRACKED_TURNS:
                self._returned.popitem(last=False)
        return text

    async def _settle(self) -> None:
        """Wait, at most ``read_timeout`` s, for the turns this block is still storing."""
        # pending, or failed since the last wait (a shared recorder's: at its owner's flush)
        if self._recorder is not None and (self._own_recorder or self._recorder.pending):
            try:
                await asyncio.wait_for(self._recorder.flush(), self.read_timeout)
            except TimeoutError:
                logger.warning("turns not stored within %s s: not searched", self.read_timeout)

    def _pop_injected(self, scope: Scope, session: str | None, user: str) -> dict[str, None]:
        """The ids injected for this session's turn (a flush whose messages name no
        session: the latest turn of that question in ``scope``)."""
        key: _Turn = (scope, session, user)
        if key not in self._injected and session is None:
            key = next((t for t in reversed(self._injected) if t[0] == scope and t[2] == user), key)
        return self._injected.pop(key, {})

    def _note_injected(self, turn: _Turn, ids: list[str]) -> None:
        seen = self._injected.setdefault(turn, {})
        seen.update(dict.fromkeys(ids))
        self._injected.move_to_end(turn)
        while len(self._injected) > _MAX_TRACKED_TURNS:
            self._injected.popitem(last=False)

    async def atruncate(self, content: Any, tokens_to_truncate: int) -> str | None:
        """Drop the lowest-ranked lines until about ``tokens_to_truncate`` tokens are gone.

        ``content`` is what :meth:`aget` returned; anything else this block did not
        produce (``Memory`` passes ``[]`` for a block that returned nothing, and
        ``None`` may come) truncates to ``None``, as the base class does.
        """
        if not isinstance(content, str) or not content:
            return None
        turn, shown = self._returned.get(content, (None, []))
        lines = list(shown) or [Line(text, "", "") for text in content.split("\n")]
        # the turn it was injected for (not another turn that was shown the same memory)
        ids = self._injected.get(turn) if turn is not None else None
        while lines and tokens_to_truncate > 0:
            dropped = lines.pop()
            tokens_to_truncate -= count_tokens(dropped.text)
            if ids is not None:  # it did not reach the prompt after all
                ids.pop(dropped.id, None)
        return "\n".join(line.text for line in lines) or None

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Record what ``Memory`` flushed: its completed turns whole, and a user message
        or reply a flush split from its turn on its own, in conversation order.

        Nothing waits in the block for a later flush (which a ``Memory.reset()``
        drops, and a close or a pickle would lose): a piece stored alone stays next
        to the rest of its turn, as consecutive memories of a scope are linked. Only
        how a flush ended is kept per scope and session (a question stored alone, or
        a user message without text, whose replies start no turn: :func:`_lead`), so
        the next flush's first replies are taken as ``HelaMemChatMemory`` takes them.
        """
        sessions = [m.additional_kwargs.get("session_id") for m in messages]
        session = next((s for s in sessions if isinstance(s, str)), None)
        scope = self._scope(session)
        key = (scope, session)
        lead, after = _lead(messages, self._open.pop(key, None))
        for text in lead:
            await self._store_alone(scope, text, "assistant")
        turns, dangling = pair_turns(messages)
        for user, assistant in turns:
            used = list(self._pop_injected(scope, session, user))
            await arecord(
                self, {"scope": scope, "user": user, "assistant": assistant, "used_ids": used}
            )
        if dangling is not None:  # its reply stays in Memory's queue for a later flush
            await self._store_alone(scope, dangling, "user")
        end = _QUESTION if dangling is not None else _ending(messages, after)
        if end is not None:
            self._open[key] = end
            while len(self._open) > _MAX_TRACKED_TURNS:
                self._open.popitem(last=False)
        if turns or lead or dangling is not None:
            self._cache = None  # a new turn: its first search learns

    async def aflush(self) -> None:
        """Wait until every recorded turn is stored (raises what failed in the background)."""
        self._cache = None
        if self._recorder is not None:
            await self._recorder.flush()

    async def _store_alone(self, scope: Scope, text: str, role: str) -> None:
        """Store one message on its own, after the turns queued before it (so the scope's
        order, and its temporal edges, follow the conversation)."""
        if self._recorder is not None:
            await self._recorder.flush()
        await self.memory.aadd(text, scope, role=role, metadata={"source": "llamaindex"})

    async def aclose(self) -> None:
        """Drain the recorder (close it if it is this block's own); close an owned memory."""
        await aclose_connection(self)

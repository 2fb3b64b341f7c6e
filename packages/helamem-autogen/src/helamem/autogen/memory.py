"""HeLa-Mem as an AutoGen AgentChat ``Memory`` component.

Translation only: AutoGen's memory calls become :class:`~helamem.core.HelaMemory`
searches and writes, and completed turns go through a
:class:`~helamem.core.TurnRecorder`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Self, TypeVar

from autogen_core import CancellationToken, Component
from autogen_core.memory import (
    Memory,
    MemoryContent,
    MemoryMimeType,
    MemoryQueryResult,
    UpdateContextResult,
)
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import AssistantMessage, LLMMessage, SystemMessage, UserMessage

from helamem.core import (
    HelaMemory,
    Hit,
    InvalidInputError,
    SearchResult,
    StoreClosedError,
    TurnRecorder,
)

from .config import HelaMemMemoryConfig

__all__ = ["HelaMemMemory"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TEXT_TYPES = {MemoryMimeType.TEXT, MemoryMimeType.MARKDOWN}


def _mime(value: MemoryMimeType | str) -> MemoryMimeType | None:
    if isinstance(value, MemoryMimeType):
        return value
    try:
        return MemoryMimeType(value)
    except ValueError:
        return None


def _text(content: object) -> str:
    """The text of a message's content (strings of a multimodal list joined)."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        return "\n".join(p for p in content if isinstance(p, str)).strip()
    return ""


def _last_turn(messages: Sequence[LLMMessage]) -> tuple[str, str] | None:
    """The last (user, assistant) pair: the last text reply and the user message before it."""
    for i in range(len(messages) - 1, -1, -1):
        reply = messages[i]
        if isinstance(reply, AssistantMessage) and _text(reply.content):
            for msg in reversed(messages[:i]):
                if isinstance(msg, UserMessage) and _text(msg.content):
                    return _text(msg.content), _text(reply.content)
            return None
    return None


def _last_user(messages: Sequence[LLMMessage]) -> str | None:
    for msg in reversed(messages):
        if isinstance(msg, UserMessage) and _text(msg.content):
            return _text(msg.content)
    return None


def _best(hits: Iterable[Hit], k: int, threshold: float | None = None) -> list[Hit]:
    """At most ``k`` hits with ``score >= threshold``, highest score first.

    Episodes and facts compete on the core's relevance (``Hit.score`` in
    [0, 1]); ties keep the core's order (episodes before facts).
    """
    ranked = sorted(hits, key=lambda h: -h.score)  # stable
    return [h for h in ranked if threshold is None or h.score >= threshold][:k]


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be an int >= 1, got {k!r}; pass e.g. k=5")
    return k


def _check_threshold(threshold: object) -> float | None:
    if threshold is None:
        return None
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or not 0.0 <= threshold <= 1.0
    ):
        raise InvalidInputError(
            f"score_threshold must be a relevance in [0, 1] or None, got {threshold!r}; "
            "pass e.g. score_threshold=0.5"
        )
    return float(threshold)


def _fitting(query: str, hits: Sequence[Hit], max_tokens: int | None) -> list[Hit]:
    """The leading hits whose text fits in ``max_tokens`` (core ``to_text`` counting)."""
    if max_tokens is None:
        return list(hits)
    n = 0
    while n < len(hits):
        upto = SearchResult(query, tuple(hits[: n + 1]))
        if upto.to_text(max_tokens) != upto.to_text():
            break
        n += 1
    return list(hits[:n])


async def _linked(aw: Awaitable[T], token: CancellationToken | None) -> T:
    """Await ``aw``; cancelling ``token`` cancels the wait (not work already running)."""
    if token is None:
        return await aw
    fut = asyncio.ensure_future(aw)
    token.link_future(fut)
    return await fut


class HelaMemMemory(Memory, Component[HelaMemMemoryConfig]):
    """Hebbian long-term memory for AutoGen agents.

    Before each model call, :meth:`update_context` searches the memory with
    the latest user message, injects the hits as one system message
    (replacing the one it injected on the previous turn) and records the
    last completed user/assistant turn of the context, together with the ids
    of the memories it injected for that turn, so they co-activate with it.
    The final turn of a conversation is recorded by the next call, or by
    :meth:`record_last_turn`.

    The constructor does no I/O; the store opens on first use. Use one
    instance per agent (it remembers what it injected into that agent's
    context). Call :meth:`close` when done: it drains the turn recorder.

    Args:
        config: Store, scope and retrieval settings (serializable).
        memory: An open or unopened :class:`~helamem.core.HelaMemory` to use
            instead of building one from ``config`` (e.g. to share one store
            between several agents); ``config``'s store fields are then not
            used, and :meth:`close` leaves that memory open.

    Examples:
        >>> from autogen_agentchat.agents import AssistantAgent   # doctest: +SKIP
        >>> memory = HelaMemMemory(HelaMemMemoryConfig(scope=("users", "alice")))
        >>> agent = AssistantAgent("assistant", model_client, memory=[memory])  # doctest: +SKIP
        >>> await agent.run(task="I adopted a cat named Miso")               # doctest: +SKIP
        >>> await memory.close()                                              # doctest: +SKIP
    """

    component_type = "memory"
    component_provider_override = "helamem.autogen.HelaMemMemory"
    component_config_schema = HelaMemMemoryConfig

    def __init__(self, config: HelaMemMemoryConfig, *, memory: HelaMemory | None = None) -> None:
        self._config = config
        self._memory = memory
        self._owns_memory = memory is None
        self._recorder: TurnRecorder | None = None
        self._header = f"[helamem:{'/'.join(config.scope)}] Relevant memories:"
        self._injected: tuple[str, tuple[str, ...]] = ("", ())  # (query, ids) last injected
        self._recorded: tuple[str, str] | None = None
        self._closed = False

    # -- properties ------------------------------------------------------

    @property
    def config(self) -> HelaMemMemoryConfig:
        """The configuration this memory was built from."""
        return self._config

    @property
    def name(self) -> str:
        """The configured name, else ``"helamem:<scope>"``."""
        return self._config.name or f"helamem:{'/'.join(self._config.scope)}"

    @property
    def scope(self) -> tuple[str, ...]:
        """The scope this memory reads and writes."""
        return self._config.scope

    @property
    def helamem(self) -> HelaMemory:
        """The underlying :class:`~helamem.core.HelaMemory` (created on first access, no I/O)."""
        self._check_open()
        if self._memory is None:
            self._memory = HelaMemory(self._config.to_helamem_config())
        return self._memory

    @property
    def recorder(self) -> TurnRecorder:
        """The :class:`~helamem.core.TurnRecorder` completed turns go through."""
        if self._recorder is None:
            self._recorder = TurnRecorder(self.helamem)
        return self._recorder

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(
                f"HelaMemMemory {self.name!r} is closed; create a new one to keep using the store"
            )

    # -- the Memory interface ----------------------------------------------

    async def update_context(self, model_context: ChatCompletionContext) -> UpdateContextResult:
        """Record the last completed turn, then inject memories for the latest user message.

        Args:
            model_context: The agent's model context; gains at most one system
                message from this memory, which replaces the previous one.

        Returns:
            The memories injected: at most ``config.k``, highest score first,
            only those at or above ``config.score_threshold`` and only those
            whose text fits in ``config.max_tokens`` (empty when there is no
            user message or no hit).
        """
        messages = await model_context.get_messages()
        await self._record(messages)
        await self._remove_injected(model_context)
        query = _last_user(messages)
        if query is None:
            self._injected = ("", ())
            return UpdateContextResult(memories=MemoryQueryResult(results=[]))
        found = await self._search(query, self._config.k, self._config.score_threshold)
        hits = _fitting(query, found, self._config.max_tokens)
        self._injected = (query, tuple(h.id for h in hits))
        if hits:
            text = SearchResult(query, tuple(hits)).to_text()
            await model_context.add_message(SystemMessage(content=f"{self._header}\n{text}"))
        return UpdateContextResult(memories=MemoryQueryResult(results=[_content(h) for h in hits]))

    async def query(
        self,
        query: str | MemoryContent,
        cancellation_token: CancellationToken | None = None,
        **kwargs: Any,
    ) -> MemoryQueryResult:
        """Search this memory's scope.

        Args:
            query: Text, or a ``MemoryContent`` with text or JSON content.
            cancellation_token: Cancels the wait.
            **kwargs: ``k`` (int >= 1) and ``score_threshold`` (a relevance
                in [0, 1], or ``None``) override the config.

        Returns:
            At most ``k`` results (episodes and distilled facts together),
            highest ``score`` first, none below ``score_threshold``. Each
            one's metadata holds ``id``, ``score`` (the core's relevance in
            [0, 1], one absolute scale: see :attr:`helamem.core.Hit.score`),
            ``activation`` (what ranked it among the candidates), ``base``,
            ``boost``, ``provenance``, ``scope``, ``role``, ``event_time``
            beside the metadata it was added with.

        Raises:
            TypeError: On another keyword argument.
            InvalidInputError: (a ``ValueError``) on a bad ``k`` or
                ``score_threshold``.
            ValueError: On content that is not text or JSON.
        """
        unknown = set(kwargs) - {"k", "score_threshold"}
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {sorted(unknown)}; use k=, score_threshold="
            )
        text = _encode(query)[0] if isinstance(query, MemoryContent) else query
        k = _check_k(kwargs.get("k", self._config.k))
        threshold = _check_threshold(kwargs.get("score_threshold", self._config.score_threshold))
        hits = await _linked(self._search(text, k, threshold), cancellation_token)
        return MemoryQueryResult(results=[_content(h) for h in hits])

    async def add(
        self, content: MemoryContent, cancellation_token: CancellationToken | None = None
    ) -> None:
        """Store one memory in this memory's scope.

        Args:
            content: TEXT or MARKDOWN (a string) or JSON (a dict, or a string
                holding JSON); its metadata is kept with the memory.
            cancellation_token: Cancels the wait.

        Raises:
            ValueError: On another MIME type or content that does not match it.
        """
        text, mime = _encode(content)
        metadata = {**(content.metadata or {}), "mime_type": mime.value}
        await _linked(self.helamem.aadd(text, self.scope, metadata=metadata), cancellation_token)

    async def clear(self) -> None:
        """Delete every memory of this scope (and of the scopes under it), after pending turns."""
        await self.flush()
        await self.helamem.adelete_scope(self.scope)
        self._injected = ("", ())

    async def close(self) -> None:
        """Drain the turn recorder, then close the store if this memory created it.

        Raises:
            TurnRecordingError: If recording some turns failed.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._recorder is not None:
                await self._recorder.close()
        finally:
            if self._owns_memory and self._memory is not None:
                await self._memory.aclose()

    # -- beyond the interface ----------------------------------------------

    async def record_last_turn(self, model_context: ChatCompletionContext) -> None:
        """Record the last completed turn of ``model_context`` now (e.g. after the final turn).

        A turn already recorded by :meth:`update_context` is not recorded twice.
        """
        await self._record(await model_context.get_messages())

    async def flush(self) -> None:
        """Wait until the recorded turns are stored.

        Raises:
            TurnRecordingError: If recording some turns failed.
        """
        if self._recorder is not None:
            await self._recorder.flush()

    # -- component -----------------------------------------------------------

    def _to_config(self) -> HelaMemMemoryConfig:
        return self._config

    @classmethod
    def _from_config(cls, config: HelaMemMemoryConfig) -> Self:
        return cls(config)

    # -- helpers ---------------------------------------------------------------

    async def _search(self, text: str, k: int, threshold: float | None) -> list[Hit]:
        """At most ``k`` hits, episodes and facts together, highest relevance first."""
        mem = self.helamem
        facts = min(mem.config.retrieval.semantic_k, k)
        result = await mem.asearch(
            text, self.scope, k=k, semantic_k=facts, learn=self._config.learn
        )
        return _best(result, k, threshold)

    async def _record(self, messages: Sequence[LLMMessage]) -> None:
        turn = _last_turn(messages)
        if turn is None or turn == self._recorded:
            return
        query, ids = self._injected
        used = ids if query == turn[0] else ()
        await self.recorder.record_turn(self.scope, turn[0], turn[1], used_ids=used)
        self._recorded = turn
        logger.debug("queued turn for scope %r with %d used memories", self.scope, len(used))

    async def _remove_injected(self, model_context: ChatCompletionContext) -> None:
        """Drop the system message this memory injected before (from the whole history)."""
        state = dict(await model_context.save_state())
        messages = state.get("messages")
        if not isinstance(messages, list):
            return
        kept = [m for m in messages if not self._is_injected(m)]
        if len(kept) != len(messages):
            state["messages"] = kept
            await model_context.load_state(state)

    def _is_injected(self, message: object) -> bool:
        if isinstance(message, SystemMessage):
            content: object = message.content
        elif isinstance(message, Mapping) and message.get("type") == "SystemMessage":
            content = message.get("content")
        else:
            return False
        return isinstance(content, str) and content.startswith(self._header)


def _encode(content: MemoryContent) -> tuple[str, MemoryMimeType]:
    """The text stored for ``content`` and its type; a clear ValueError for anything else."""
    mime = _mime(content.mime_type)
    value = content.content
    if mime is not None and mime in _TEXT_TYPES and isinstance(value, str):
        return value, mime
    if mime is MemoryMimeType.JSON:
        if isinstance(value, dict):
            return json.dumps(value, ensure_ascii=False, sort_keys=True), mime
        if isinstance(value, str):
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"JSON memory content does not parse: {exc}; pass a dict") from exc
            return value, mime
    raise ValueError(
        f"HelaMemMemory stores text: MIME type {content.mime_type!r} with "
        f"{type(value).__name__} content is not supported; pass TEXT or MARKDOWN with a str, "
        f"or JSON with a dict"
    )


def _content(hit: Hit) -> MemoryContent:
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

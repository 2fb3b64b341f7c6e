"""A ``BaseMemory`` drop-in for ``ChatMemoryBuffer`` backed by HeLa-Mem.

Examples:
    >>> from llama_index.core.chat_engine import SimpleChatEngine
    >>> memory = HelaMemChatMemory.from_defaults(path="./helamem-data", session_id="s1")
    >>> engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import pickle
import uuid
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Self

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.bridge.pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
)
from llama_index.core.llms.llm import LLM
from llama_index.core.memory.types import BaseMemory

from helamem.core import (
    HelaMemConfig,
    HelaMemory,
    InvalidInputError,
    InvalidScopeError,
    Scope,
    TurnRecorder,
    is_blank,
)

from ._connection import (
    aclose_connection,
    arecord,
    close_connection,
    live_memory,
    live_recorder,
    record_sync,
)
from ._prompt import compose, drops_first_system_message
from ._shared import (
    Line,
    candidates,
    candidates_sync,
    chain_all,
    chain_message,
    copy_without_connection,
    dump_config,
    is_final_reply,
    lazy_tokenizer,
    message_text,
    pair_turns,
    register_memory,
    reply_text,
    window_text,
    without_connection,
)

__all__ = ["TURN_ID", "HelaMemChatMemory"]


_INTERNAL = frozenset({"answered", "conversation_hash", "conversation_pinned"})
"""Serialized state that ``from_defaults`` does not take (``conversation_id`` it does)."""


TURN_ID = "turn_id"
"""The metadata key of a recorded turn's identity (:meth:`HelaMemChatMemory._identity`)."""

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_LIMIT = 3000
DEFAULT_TOKEN_LIMIT_RATIO = 0.75

_FROM_DEFAULTS = ("memory", "path", "llm", "recorder", "chat_store_key")
"""Options of :meth:`HelaMemChatMemory.from_defaults` beside its fields."""


class HelaMemChatMemory(BaseMemory):
    """``ChatMemoryBuffer`` with long-term Hebbian memory behind it.

    Keeps the recent chat window like the buffer does and records every
    completed turn (user message and final assistant reply; tool calls and
    tool results are not stored) through a :class:`~helamem.core.TurnRecorder`
    with the ids of the memories shown for it. ``get`` returns one system
    message built from retrieval, then the window, all of it within
    ``token_limit`` (text and tool-call arguments, counted with
    ``tokenizer_fn``): the current turn first, then at most ``k`` memory
    lines (episodes and distilled facts together, highest score first: the
    core's relevance in [0, 1]; whole lines within ``memory_tokens``; none
    the window already holds; none of relevance ``min_score`` or less), then
    older messages. Only the lines shown count as used, and none when the
    agent would drop them (see the README on ``ReActAgent``). ``reset``
    clears the window only; the long-term memory stays.

    Serializable (``to_dict``/``from_dict``, workflow ``Context``): the
    window, the pending turn, the conversation id and hash and the settings are; the
    connection is not.
    After loading, the memory is the live one for ``config.path`` in this
    process (see :func:`~helamem.llamaindex.register_memory`), else a new one
    built from ``config`` (API keys are never serialized). The long-term
    state lives in the store under ``scope``, default ``("llamaindex",
    session_id)``; give several sessions one scope to share it.

    Examples:
        >>> memory = HelaMemChatMemory.from_defaults(
        ...     path="./helamem-data", scope=("users", "alice"), token_limit=2000
        ... )
        >>> memory.get_all()
        []
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt option fails, never ignored

    session_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    scope: tuple[str, ...] | None = None
    config: HelaMemConfig = Field(default_factory=HelaMemConfig)
    token_limit: int = Field(default=DEFAULT_TOKEN_LIMIT, ge=1)
    memory_tokens: int = Field(default=400, ge=1)
    k: int = Field(default=5, ge=1)
    memory_header: str = "Relevant memories from earlier conversations:"
    chat_history: list[ChatMessage] = Field(default_factory=list)
    pending_user: str | None = None
    pending_used_ids: list[str] = Field(default_factory=list)
    conversation_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    """This conversation, which a turn's identity holds (:meth:`_identity`): new for a new
    memory, at ``reset`` and when ``set`` gives a window that does not go on from this
    one (unless the window was empty, or the id is the caller's); kept by
    ``to_dict``/``from_dict`` and pickles. Pass your own to ``from_defaults`` (e.g. a
    request's conversation id) to make copies rebuilt from the same history share it:
    ``set`` then keeps it (``reset`` does not)."""
    conversation_pinned: bool = False
    """Whether :attr:`conversation_id` is the caller's (``set`` keeps it); serialized."""
    answered: str | None = None
    """The question the last message answered (a second reply is a turn of it); serialized."""
    conversation_hash: str | None = None
    """The chained hash of the window's messages as they were put (:func:`~._shared.chain_message`;
    serialized, since an agent may rewrite a message of the window in place);
    ``None``: rebuilt from the window."""
    read_timeout: float = Field(default=5.0, ge=0)
    min_score: float = Field(default=0.0, ge=0, le=1)
    tokenizer_fn: Callable[[str], list[Any]] = Field(default=lazy_tokenizer, exclude=True)

    _memory: HelaMemory | None = PrivateAttr(default=None)
    _owned: bool = PrivateAttr(default=False)
    _recorder: TurnRecorder | None = PrivateAttr(default=None)
    _own_recorder: bool = PrivateAttr(default=False)
    _cache: tuple[str, list[Line]] | None = PrivateAttr(default=None)
    _shown: list[Line] = PrivateAttr(default_factory=list)
    _warned: bool = PrivateAttr(default=False)

    def model_post_init(self, context: Any, /) -> None:
        """The window's chained hash, when the state holds none (saved before it existed)."""
        if self.conversation_hash is None:
            self.conversation_hash = chain_all(self.chat_history)

    @classmethod
    def class_name(cls) -> str:
        """The LlamaIndex component name."""
        return "HelaMemChatMemory"

    def __copy__(self) -> Self:
        """A copy without the connection (see :func:`copy_without_connection`)."""
        return copy_without_connection(self)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        """A deep copy without the connection (see :func:`copy_without_connection`)."""
        return copy_without_connection(self, {} if memo is None else memo)

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle without the connection (it is found again, as after ``from_dict``).

        A ``tokenizer_fn`` that cannot be pickled (a tiktoken encoder) comes
        back as LlamaIndex's global tokenizer.
        """
        state = without_connection(BaseModel.__getstate__(self))
        try:
            pickle.dumps(self.tokenizer_fn)
        except Exception:  # noqa: BLE001 - whatever pickle raises, the default replaces it
            state["__dict__"] = {**state["__dict__"], "tokenizer_fn": lazy_tokenizer}
        return state

    def to_string(self) -> str:
        """This memory as JSON, as ``ChatMemoryBuffer.to_string`` (no connection, no secrets)."""
        return self.to_json()

    @classmethod
    def from_string(cls, json_str: str) -> Self:
        """Load what :meth:`to_string` wrote, as ``ChatMemoryBuffer.from_string``.

        Examples:
            >>> again = HelaMemChatMemory.from_string(memory.to_string())  # doctest: +SKIP
        """
        return cls.from_json(json_str)

    @field_serializer("config")
    def _dump_config(self, config: HelaMemConfig) -> dict[str, Any]:
        return dump_config(config)

    @classmethod
    def from_defaults(
        cls,
        chat_history: list[ChatMessage] | None = None,
        llm: LLM | None = None,
        *,
        memory: HelaMemory | None = None,
        path: str | Path | None = None,
        config: HelaMemConfig | None = None,
        session_id: str | None = None,
        scope: Sequence[str] | None = None,
        token_limit: int | None = None,
        recorder: TurnRecorder | None = None,
        **kwargs: Any,
    ) -> Self:
        """Build one like ``ChatMemoryBuffer.from_defaults``.

        Args:
            chat_history: Initial window, as :meth:`set` (completed turns are history,
                not recorded).
            llm: Sets ``token_limit`` to 75% of its context window when
                ``token_limit`` is not given.
            memory: An existing memory (its embedder is kept; the caller
                closes it). Else one is opened from ``config``/``path``.
            path: The store directory (overrides ``config.path``).
            config: The HeLa-Mem configuration.
            session_id: This conversation's id (default: a new one).
                ``chat_store_key``, ``ChatMemoryBuffer``'s name for it, is taken too.
            scope: Where turns are stored and searched; default
                ``("llamaindex", session_id)``.
            token_limit: Budget of the window plus the memory message.
            recorder: A recorder to share (over the same memory); default:
                one of its own, created on first use.
            **kwargs: Other fields (``memory_tokens``, ``k``, ``memory_header``,
                ``tokenizer_fn``).

        Raises:
            InvalidInputError: If both ``memory`` and ``config``/``path`` are given, an
                option is unknown (a misspelling), ``chat_store`` is given (there is
                none: serialize the memory instead), or ``chat_store_key`` and
                ``session_id`` differ.

        Examples:
            >>> m = HelaMemChatMemory.from_defaults(memory=mem, session_id="s1")  # doctest: +SKIP
        """
        if "chat_store" in kwargs:
            raise InvalidInputError(
                "HelaMemChatMemory has no chat_store: it keeps its window itself (serialize "
                "it with to_dict/to_string) and long-term memory in its store; pass "
                "session_id= (or chat_store_key=) to name the conversation"
            )
        key = kwargs.pop("chat_store_key", None)
        if key is not None:  # ChatMemoryBuffer's name for the conversation
            if session_id is not None and session_id != key:
                raise InvalidInputError(
                    f"chat_store_key={key!r} and session_id={session_id!r} differ: they name "
                    "the same thing (the conversation); pass one"
                )
            session_id = str(key)
        options = sorted(
            {*cls.model_fields, *_FROM_DEFAULTS} - {"pending_user", "pending_used_ids", *_INTERNAL}
        )
        unknown = sorted(set(kwargs) - (set(cls.model_fields) - _INTERNAL))
        if unknown:
            hints = [
                f"{u} (did you mean {close[0]}?)"
                if (close := get_close_matches(u, options, 1))
                else u
                for u in unknown
            ]
            raise InvalidInputError(
                f"unknown option(s) {', '.join(hints)}: from_defaults takes {', '.join(options)}"
            )
        if memory is not None and (config is not None or path is not None):
            raise InvalidInputError(
                "pass either memory= or config=/path=, not both: the memory has its own config"
            )
        if memory is not None:
            register_memory(memory)
            config = memory.config
        config = config or HelaMemConfig()
        if path is not None:
            config = config.model_copy(update={"path": Path(path)})
        if token_limit is None:
            window = llm.metadata.context_window if llm is not None else 0
            token_limit = int(window * DEFAULT_TOKEN_LIMIT_RATIO) or DEFAULT_TOKEN_LIMIT
        fields: dict[str, Any] = {"config": config, "token_limit": token_limit, **kwargs}
        if session_id is not None:
            fields["session_id"] = session_id
        if isinstance(scope, str):  # tuple("alice") is ('a', 'l', 'i', 'c', 'e')
            raise InvalidScopeError(
                f"scope must be a sequence of segments, not the string {scope!r}: "
                f"scope=({scope!r},) or ('users', {scope!r})"
            )
        if scope is not None:
            fields["scope"] = tuple(scope)
        made = cls(**fields)
        made.conversation_pinned = "conversation_id" in kwargs  # the caller's: set() keeps it
        if chat_history:
            made.set(list(chat_history))  # the same rule as set(): history is not recorded
        made._memory = memory
        made._recorder = recorder
        return made

    # -- connections -------------------------------------------------------

    @property
    def memory(self) -> HelaMemory:
        """The live memory (reused from this process, else created from ``config``)."""
        return live_memory(self)

    @property
    def recorder(self) -> TurnRecorder:
        """The turn recorder completed turns go through."""
        return live_recorder(self)

    @property
    def memory_scope(self) -> Scope:
        """Where this conversation's turns are stored and searched."""
        return self.scope if self.scope is not None else ("llamaindex", self.session_id)

    # -- planning (pure) -----------------------------------------------------

    def _take_turns(self, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        """Add ``messages`` to the window; the turns they complete, as ``record_turn``'s
        arguments (with their used ids and their identity: :meth:`_identity`)."""
        jobs: list[dict[str, Any]] = []
        for message in messages:
            before = self.conversation_hash or ""
            self.chat_history.append(message)
            self.conversation_hash = chain_message(before, message)
            if message.role == MessageRole.USER:
                self._cache = None  # a new question: retrieve afresh
                self.answered = None
            waiting = self.pending_user
            turns, self.pending_user = pair_turns([message], waiting)
            if not turns and waiting is None and self.answered and is_final_reply(message):
                turns = [(self.answered, reply_text(message))]  # a second reply to it
            for user, assistant in turns:
                self.answered = user
                jobs.append(
                    {
                        "scope": self.memory_scope,
                        "user": user,
                        "assistant": assistant,
                        "used_ids": self.pending_used_ids,
                        **self._identity(before),
                    }
                )
                self.pending_used_ids = []
        return jobs

    def _identity(self, before: str) -> dict[str, Any]:
        """A turn's metadata and ``unique_on``: its identity is a hash of the scope, the
        session, the conversation (:attr:`conversation_id`) and its messages before the
        reply (``before``: :func:`~._shared.chain_message`), so the same turn put again
        by a copy of this memory (restored with ``from_dict`` or a pickle by another
        worker, answered with
        the same or another reply) is stored once, while another conversation's turns,
        however alike, are new."""
        # a conversation id the caller gave names the conversation alone: a server that
        # rebuilds the memory per request need not keep the session id too
        session = None if self.conversation_pinned else self.session_id
        text = json.dumps([list(self.memory_scope), session, self.conversation_id, before])
        key = hashlib.sha256(text.encode()).hexdigest()
        return {"metadata": {**self._metadata(), TURN_ID: key}, "unique_on": (TURN_ID,)}

    def _query(self, input: object) -> str | None:
        if isinstance(input, str) and not is_blank(input):
            return input
        if self.pending_user:
            return self.pending_user
        users = [m for m in self.chat_history if m.role == MessageRole.USER and message_text(m)]
        return message_text(users[-1]) if users else None

    def _note(self, input: str | None, lines: list[Line]) -> None:
        if input or self.pending_user is not None:  # ids used for the turn in progress
            known = dict.fromkeys(self.pending_used_ids)
            known.update(dict.fromkeys(line.id for line in lines))
            self.pending_used_ids = list(known)

    def _room(self, initial_token_count: int) -> int:
        if initial_token_count > self.token_limit:
            raise InvalidInputError(
                f"Initial token count exceeds token limit ({initial_token_count} > "
                f"{self.token_limit}): raise token_limit or shorten the prefix messages"
            )
        return self.token_limit - initial_token_count

    def _count(self, text: str) -> int:
        return len(self.tokenizer_fn(text))

    def _asked(self, query: str) -> bool:
        """Whether this question was searched already in the turn in progress: searched
        again (a memory deleted or changed since is shown as it is now), not learned twice."""
        return self._cache is not None and self._cache[0] == query

    def _finish(
        self, input: object, query: str | None, lines: list[Line], room: int, drops: bool | None
    ) -> list[ChatMessage]:
        """Compose within ``room``; deliver past an agent that drops the first system message."""
        if query is not None:
            self._cache = (query, lines)
        messages, shown = compose(
            self.chat_history,
            lines,
            k=self.k,
            header=self.memory_header,
            memory_tokens=self.memory_tokens,
            room=room,
            count=self._count,
        )
        self._shown = shown
        if shown and drops:  # ReActAgent without a system_prompt drops this placeholder
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=""))
        elif shown and drops is None:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "an AgentWorkflow with a ReActAgent that has no system_prompt drops the "
                    "first system message, where HelaMemChatMemory puts its memories: give "
                    "every ReActAgent a system_prompt; meanwhile they are not counted as used"
                )
            return messages
        if query is not None:
            self._note(input if isinstance(input, str) else None, shown)
        return messages

    def _settle_sync(self) -> None:
        """Wait, at most ``read_timeout`` s, for this memory's turns still being stored (a
        turn that failed to store, now or since, raises ``TurnRecordingError`` here)."""
        if self._recorder is not None and (self._own_recorder or self._recorder.pending):
            try:
                self._recorder.flush_sync(self.read_timeout)
            except TimeoutError:
                logger.warning("turns not stored within %s s: not searched", self.read_timeout)

    async def _settle(self) -> None:
        """Async :meth:`_settle_sync`."""
        if self._recorder is not None and (self._own_recorder or self._recorder.pending):
            try:
                await asyncio.wait_for(self._recorder.flush(), self.read_timeout)
            except TimeoutError:
                logger.warning("turns not stored within %s s: not searched", self.read_timeout)

    # -- BaseMemory: sync ----------------------------------------------------

    def get(
        self, input: object = None, initial_token_count: int = 0, **kwargs: Any
    ) -> list[ChatMessage]:
        """The memory message (when anything is relevant) and the recent window.

        Everything returned fits ``token_limit - initial_token_count`` together
        (text, and tool calls with their arguments, counted with
        ``tokenizer_fn``); the newest turn comes first, then the memories, then
        older messages. When not even the newest user message (with what
        follows it) fits, the newest message alone, as ``ChatMemoryBuffer``.
        Memories the returned window already holds are left out.

        Args:
            input: The query; default (and when it is not a string, which
                ``ChatMemoryBuffer`` ignores too): the latest user message.
            initial_token_count: Tokens the caller puts before these messages.
            **kwargs: Accepted and ignored (chat engines pass extra arguments).

        Returns:
            A system message built from retrieval, then the window.

        Raises:
            InvalidInputError: If ``initial_token_count`` exceeds ``token_limit``
                (a ``ValueError``, as ``ChatMemoryBuffer`` raises).

        Examples:
            >>> memory.get(initial_token_count=12)  # doctest: +SKIP
        """
        room = self._room(initial_token_count)
        drops = drops_first_system_message()
        query = self._query(input)
        lines: list[Line] = []
        if query is not None:
            self._settle_sync()
            held = window_text(self.chat_history)
            learn = not self._asked(query)
            lines = candidates_sync(
                self.memory, query, self.memory_scope, self.k, held, self.min_score, learn
            )
        return self._finish(input, query, lines, room, drops)

    def get_all(self) -> list[ChatMessage]:
        """The whole window (not the long-term memory)."""
        return list(self.chat_history)

    def put(self, message: ChatMessage) -> None:
        """Append to the window; record the turn a final assistant reply completes."""
        self.put_messages([message])

    def put_messages(self, messages: list[ChatMessage]) -> None:
        """Append several messages (e.g. an agent's tool calls and reply)."""
        for job in self._take_turns(messages):
            record_sync(self, job)

    def set(self, messages: list[ChatMessage]) -> None:
        """Replace the window. Its completed turns are history, not recorded again; user
        messages after its last reply are the turn in progress, recorded with the reply
        that answers them (``FunctionAgent.run(chat_history=[..., question])``)."""
        # the same conversation: the caller's id, a first window, or one going on from it
        goes_on = bool(messages) and (
            self.conversation_pinned
            or not self.chat_history
            or messages[: len(self.chat_history)] == list(self.chat_history)
        )
        self.chat_history = list(messages)
        _, pending = pair_turns(self.chat_history)
        self.pending_user, self.pending_used_ids, self._cache = pending, [], None
        self.answered = None
        self.conversation_hash = chain_all(self.chat_history)
        if not goes_on:  # another conversation (or a new one: reset): its turns are new
            self.conversation_id, self.conversation_pinned = uuid.uuid4().hex, False

    def reset(self) -> None:
        """Clear the window; the long-term memory stays (``memory.delete_scope`` forgets)."""
        self.set([])

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every recorded turn is stored (raises what failed in the background)."""
        if self._recorder is not None:
            self._recorder.flush_sync(timeout)

    def close(self) -> None:
        """Drain the recorder (close it if it is this object's own); close an owned memory."""
        close_connection(self)

    # -- BaseMemory: async ---------------------------------------------------

    async def aget(
        self, input: object = None, initial_token_count: int = 0, **kwargs: Any
    ) -> list[ChatMessage]:
        """Async :meth:`get` (retrieval runs off the event loop)."""
        room = self._room(initial_token_count)
        drops = drops_first_system_message()
        query = self._query(input)
        lines: list[Line] = []
        if query is not None:
            await self._settle()
            held = window_text(self.chat_history)
            learn = not self._asked(query)
            lines = await candidates(
                self.memory, query, self.memory_scope, self.k, held, self.min_score, learn
            )
        return self._finish(input, query, lines, room, drops)

    async def aget_all(self) -> list[ChatMessage]:
        """Async :meth:`get_all`."""
        return self.get_all()

    async def aput(self, message: ChatMessage) -> None:
        """Async :meth:`put` (waits for room in the recorder's queue, never blocks)."""
        await self.aput_messages([message])

    async def aput_messages(self, messages: list[ChatMessage]) -> None:
        """Async :meth:`put_messages`."""
        for job in self._take_turns(messages):
            await arecord(self, job)

    async def aset(self, messages: list[ChatMessage]) -> None:
        """Async :meth:`set`."""
        self.set(messages)

    async def areset(self) -> None:
        """Async :meth:`reset`."""
        self.reset()

    async def aflush(self) -> None:
        """Async :meth:`flush`."""
        if self._recorder is not None:
            await self._recorder.flush()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await aclose_connection(self)

    def _metadata(self) -> dict[str, Any]:
        return {"source": "llamaindex", "session_id": self.session_id}

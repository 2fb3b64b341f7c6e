"""``HelaMemCheckpointer``: any LangGraph checkpoint saver, plus turn recording.

Every checkpoint operation is forwarded unchanged to the wrapped saver. When
a root-graph checkpoint written by the Pregel loop ends a turn (no node is
left to run, the last message of the ``messages`` channel is an AI answer
without tool calls, and the human message before it has not been recorded
yet for the thread), the turn is queued on a
:class:`~helamem.core.TurnRecorder` with the ids the thread's nodes got from
:class:`~helamem.langgraph.HelaMemStore` searches during the turn, so those
memories co-activate with the new episode.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from langchain_core.runnables import RunnableConfig

from helamem.core import HelaMemError, StoreClosedError, TurnRecorder, is_blank
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from ._scopes import ReadFailed, Resolved, ScopeBook
from .store import HelaMemStore

__all__ = [
    "CheckpointerClosedError",
    "CheckpointerModeError",
    "CheckpointerNotOpenError",
    "HelaMemCheckpointer",
    "Turn",
    "completed_turn",
    "default_scope",
]

logger = logging.getLogger(__name__)

Turn = tuple[str, str, str, str]
"""``(thread_id, turn key, user message, assistant message)``."""

_ROLES = {"human": "human", "user": "human", "ai": "ai", "assistant": "ai"}


class CheckpointerNotOpenError(HelaMemError, RuntimeError):
    """The default saver is used before the checkpointer was entered."""


class CheckpointerClosedError(StoreClosedError):
    """The checkpointer's own saver is used after its ``with`` block ended."""


class CheckpointerModeError(HelaMemError, RuntimeError):
    """An async call on the sync default saver (or the reverse)."""


def default_scope(config: RunnableConfig) -> tuple[str, ...] | None:
    """``("users", user_id)`` when the run config names a ``user_id``, else ``("threads", id)``.

    Examples:
        >>> default_scope({"configurable": {"thread_id": "t1", "user_id": "alice"}})
        ('users', 'alice')
    """
    conf = config.get("configurable", {})
    if conf.get("user_id"):
        return ("users", str(conf["user_id"]))
    if conf.get("thread_id"):
        return ("threads", str(conf["thread_id"]))
    return None


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def _role(message: Any) -> str | None:
    return _ROLES.get(str(_field(message, "type") or _field(message, "role")))


def _text(message: Any) -> str:
    content = _field(message, "content")
    if isinstance(content, str):
        return content
    parts = [
        p if isinstance(p, str) else str(p.get("text", ""))
        for p in content or []
        if isinstance(p, str) or (isinstance(p, Mapping) and p.get("type") == "text")
    ]
    return "".join(parts)


_SENDS = "__pregel_tasks"  # LangGraph's channel of pending Send packets


def _triggers(channel: str, value: Any) -> bool:
    """Whether a checkpoint's ``channel`` holding ``value`` triggers another node.

    An edge's ``branch:to:<node>`` channel; pending ``Send`` packets (the
    fan-out's workers run next); a join's ``join:<a>+<b>:<node>`` barrier that
    every source has reached (its node runs next; a barrier still waiting, or
    consumed, triggers nothing; a deferred node's barrier holds ``(seen,
    finished)``).

    Examples:
        >>> _triggers("branch:to:final", None), _triggers("__pregel_tasks", [])
        (True, False)
        >>> _triggers("join:a+b:c", {"a", "b"}), _triggers("join:a+b:c", {"a"})
        (True, False)
        >>> _triggers("join:a+b:c", ({"a", "b"}, False)), _triggers("join:a+b:c", (set(), False))
        (True, False)
    """
    if channel.startswith("branch:to:"):
        return True
    if channel == _SENDS:
        return bool(value)
    if channel.startswith("join:"):
        seen = value
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], bool):
            seen = value[0]  # a deferred node's barrier: (sources seen, finished)
        if not isinstance(seen, set | frozenset | list):
            return False
        sources = channel[len("join:") :].rsplit(":", 1)[0].split("+")
        return bool(seen) and set(sources) <= {str(x) for x in seen}
    return False


def completed_turn(
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    messages_key: str = "messages",
) -> Turn | None:
    """The turn a checkpoint completes, if it completes one (pure; no I/O).

    Examples:
        >>> completed_turn(cfg, checkpoint, {"source": "loop"})   # doctest: +SKIP
        ('t1', 'msg-1', 'hi', 'hello!')
    """
    conf = config.get("configurable", {})
    thread = conf.get("thread_id")
    values = checkpoint.get("channel_values") or {}
    # a step of the graph, or an answer written with update_state (human in the loop)
    if metadata.get("source") not in ("loop", "update") or conf.get("checkpoint_ns"):
        return None
    if thread is None:
        return None
    if any(_triggers(str(ch), v) for ch, v in values.items()):
        return None  # more nodes are triggered: the run goes on
    messages = values.get(messages_key)
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if _role(last) != "ai" or _field(last, "tool_calls"):
        return None
    humans = [i for i, m in enumerate(messages) if _role(m) == "human"]
    if not humans:
        return None
    # and every human message before it since the answer to the turn before (two sent
    # at once, or one whose run failed before it was answered): the turn's question
    start = next(
        (
            i + 1
            for i in range(humans[-1] - 1, -1, -1)
            if _role(messages[i]) == "ai"
            and not _field(messages[i], "tool_calls")
            and not is_blank(_text(messages[i]))
        ),
        0,
    )
    humans = [i for i in humans if i >= start]
    human = messages[humans[-1]]
    asked: list[str] = []  # the same question sent again (a retry after a failure): once
    for i in humans:
        text = _text(messages[i])
        if not is_blank(text) and (not asked or asked[-1] != text):
            asked.append(text)
    user = "\n".join(asked)
    answer = _text(last)
    if is_blank(user) or is_blank(answer):  # the core stores no blank text
        return None
    # the human message's id, else its place and text (NO_ID: not an identity, a
    # messages channel without a reducer repeats it)
    key = str(_field(human, "id") or f"{NO_ID}{humans[-1]}:{hash(user)}:{hash(answer)}")
    return str(thread), key, user, answer


NO_ID = "no-id:"
"""The prefix of a turn key made for a human message without an id."""


def _identity(thread: str, key: str) -> dict[str, Any]:
    """A turn's metadata (its thread and human message id) and that pair as its
    ``unique_on`` key: the store records a turn once however often a checkpoint
    completes it (a replay from an earlier checkpoint, another process, an answer
    regenerated for the same message). A human message without an id has no
    identity (without a reducer, "yes" at the same place of a new input is a new
    turn): only the checkpointer's own last-turn check applies."""
    if key.startswith(NO_ID):
        return {"metadata": {"thread_id": thread}}
    return {
        "metadata": {"thread_id": thread, "message_id": key},
        "unique_on": ("thread_id", "message_id"),
    }


class HelaMemCheckpointer(BaseCheckpointSaver[Any]):
    """Wraps a checkpoint saver and records each completed turn in HeLa-Mem.

    Without ``saver``, enter it (``with`` for LangGraph's ``SqliteSaver``,
    ``async with`` for ``AsyncSqliteSaver``) to open ``checkpoints.sqlite``
    in ``path`` (default: the recorder's memory directory). The constructor
    does no I/O. Closing it closes only the saver it opened; you own the
    recorder, the memory and any saver you passed.

    Args:
        recorder: Where completed turns go (its ``memory`` should be the
            store's memory so used ids resolve).
        saver: Any ``BaseCheckpointSaver`` to forward to.
        store: The :class:`HelaMemStore` whose searches are attributed to threads.
        scope: Maps a run config to the HeLa-Mem scope of its turns
            (default :func:`default_scope`); ``None`` skips recording.
        path: Directory of the default SQLite saver.
        messages_key: The state channel holding the chat messages.

    Examples:
        >>> async with TurnRecorder(mem) as rec, HelaMemCheckpointer(rec, store=store) as cp:
        ...     graph = builder.compile(checkpointer=cp, store=store)     # doctest: +SKIP
        ...     await graph.ainvoke({"messages": [("user", "hi")]},
        ...         {"configurable": {"thread_id": "t1", "user_id": "alice"}})
    """

    def __init__(
        self,
        recorder: TurnRecorder,
        saver: BaseCheckpointSaver[Any] | None = None,
        *,
        store: HelaMemStore | None = None,
        scope: Callable[[RunnableConfig], Sequence[str] | None] = default_scope,
        path: str | Path | None = None,
        messages_key: str = "messages",
        max_threads: int = 4096,
    ) -> None:
        super().__init__(serde=saver.serde if saver is not None else None)
        self.recorder = recorder
        self.store = store
        self.scope = scope
        self.messages_key = messages_key
        self._saver = saver
        self._path = path
        self._stack = ExitStack()
        self._astack = AsyncExitStack()
        self._recorded: OrderedDict[str, str] = OrderedDict()  # thread -> last turn key
        self._scopes = ScopeBook(scope, max_threads)  # the scopes stamped on checkpoints
        self._max_threads = max_threads
        self._mode: str | None = None  # "sync"/"async": the default saver this opened
        self._closed = False
        self._allowlist: frozenset[tuple[str, ...]] = frozenset()  # strict msgpack types

    # -- lifecycle --------------------------------------------------------------

    @property
    def saver(self) -> BaseCheckpointSaver[Any]:
        """The wrapped saver.

        Raises:
            CheckpointerNotOpenError: no saver was passed and the checkpointer was not entered.
            CheckpointerClosedError: the checkpointer's own saver was closed with its block.
        """
        if self._closed:
            raise CheckpointerClosedError(
                "the checkpointer was closed when its `with` block ended; run the graph "
                "inside the block, or enter a new HelaMemCheckpointer"
            )
        if self._saver is None:
            raise CheckpointerNotOpenError(
                "no saver: pass saver=... or enter the checkpointer "
                "(`with` / `async with HelaMemCheckpointer(...)`) to open the SQLite default"
            )
        return self._saver

    def _db_file(self) -> str:
        base = Path(self._path or self.recorder.memory.config.path)
        base.mkdir(parents=True, exist_ok=True)
        return str(base / "checkpoints.sqlite")

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> Self:
        """Let the wrapped saver deserialize the graph's own state types under strict
        msgpack (``LANGGRAPH_STRICT_MSGPACK``); ``compile()`` calls this.

        LangGraph's default clones the checkpointer with a new ``serde``, which a
        wrapper never uses: every call goes to the wrapped saver, which would
        return custom types as plain dicts. Here the allowlist goes to the wrapped
        saver, now or when the ``with`` block opens the default one, and this
        checkpointer is returned (so a graph compiled before the block uses the
        saver the block opens). Graphs sharing one checkpointer share the union of
        their types.
        """
        self._allowlist |= frozenset(tuple(entry) for entry in extra_allowlist)
        if self._saver is not None and not self._closed:
            self._opened(self._saver, self._mode)
        return self

    def _opened(self, saver: BaseCheckpointSaver[Any], mode: str | None) -> None:
        if self._allowlist:
            saver = saver.with_allowlist(self._allowlist)
        self._saver = saver
        self.serde = saver.serde
        self._mode = mode
        self._closed = False

    def _async_saver(self) -> BaseCheckpointSaver[Any]:
        """The saver for an async call; refuses the sync default saver with the fix."""
        saver = self.saver
        if self._mode == "sync":
            raise CheckpointerModeError(
                "this checkpointer opened a sync SqliteSaver (`with HelaMemCheckpointer(...)`), "
                "which has no async methods; for ainvoke/astream use `async with "
                "HelaMemCheckpointer(...)` (AsyncSqliteSaver), or pass an async-capable saver"
            )
        return saver

    def __enter__(self) -> Self:
        if self._saver is None or self._closed:
            self._opened(
                self._stack.enter_context(SqliteSaver.from_conn_string(self._db_file())), "sync"
            )
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()
        if self._mode is not None:
            self._closed = True

    async def __aenter__(self) -> Self:
        if self._saver is None or self._closed:
            db = await asyncio.to_thread(self._db_file)
            self._opened(
                await self._astack.enter_async_context(AsyncSqliteSaver.from_conn_string(db)),
                "async",
            )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._astack.aclose()
        if self._mode is not None:
            self._closed = True

    # -- turn recording -----------------------------------------------------------

    def _completed(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Turn | None:
        turn = completed_turn(config, checkpoint, metadata, self.messages_key)
        if turn is None or self._recorded.get(turn[0]) == turn[1]:
            return None
        if (
            turn[1].startswith(NO_ID)
            and metadata.get("source") == "update"
            and self.messages_key not in new_versions
        ):
            return None  # an update of other channels: an id-less turn has no unique_on
        return turn

    def _scope_sync(self, config: RunnableConfig) -> Resolved:
        """:meth:`ScopeBook.resolve` driven with the saver's ``get_tuple``."""
        plan = self._scopes.resolve(config)
        try:
            want = next(plan)
            while True:
                try:
                    tup = self.saver.get_tuple(want)
                except Exception as exc:  # noqa: BLE001 (any saver's error: the put goes on)
                    want = plan.throw(ReadFailed(repr(exc)))
                else:
                    want = plan.send(tup)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _scope(self, config: RunnableConfig) -> Resolved:
        """:meth:`_scope_sync` with ``aget_tuple``."""
        plan = self._scopes.resolve(config)
        try:
            want = next(plan)
            while True:
                try:
                    tup = await self._async_saver().aget_tuple(want)
                except Exception as exc:  # noqa: BLE001 (as above)
                    want = plan.throw(ReadFailed(repr(exc)))
                else:
                    want = plan.send(tup)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _job(self, got: Resolved, turn: Turn | None) -> dict[str, Any] | None:
        """The ``record_turn`` arguments of the turn a saved put completed (``None``:
        none, or no scope); marks it recorded for its thread."""
        if turn is None or got.scope is None:
            return None
        thread, key, user, answer = turn
        self._recorded[thread] = key
        self._recorded.move_to_end(thread)
        while len(self._recorded) > self._max_threads:
            self._recorded.popitem(last=False)
        used = self.store.take_used(thread) if self.store is not None else []
        return {
            "scope": got.scope,
            "user": user,
            "assistant": answer,
            "used_ids": used,
            **_identity(thread, key),
        }

    # -- forwarding (sync) ---------------------------------------------------------

    @property
    def config_specs(self) -> list[Any]:
        return list(self.saver.config_specs)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.saver.get_tuple(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        return self.saver.list(config, filter=filter, before=before, limit=limit)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        got = self._scope_sync(config)
        turn = self._completed(config, checkpoint, metadata, new_versions)
        if turn is not None and got.error is not None:
            raise got.error  # before the put: a retry completes the turn again
        stamped = self._scopes.stamp(metadata, config, got)
        saved = self.saver.put(config, checkpoint, stamped, new_versions)
        self._scopes.remember(saved, got)
        if (job := self._job(got, turn)) is not None:
            self.recorder.record_turn_sync(**job)
        return saved

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.saver.put_writes(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self.saver.delete_thread(thread_id)
        self._recorded.pop(str(thread_id), None)  # a new thread of that id starts afresh

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.saver.delete_for_runs(run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.saver.copy_thread(source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.saver.prune(thread_ids, strategy=strategy)

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self.saver.get_delta_channel_history(config=config, channels=channels)

    def get_next_version(self, current: Any, channel: None) -> Any:
        return self.saver.get_next_version(current, channel)

    # -- forwarding (async) ------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._async_saver().aget_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        saver = self._async_saver()
        async for item in saver.alist(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        got = await self._scope(config)
        turn = self._completed(config, checkpoint, metadata, new_versions)
        if turn is not None and got.error is not None:
            raise got.error  # as put
        stamped = self._scopes.stamp(metadata, config, got)
        saved = await self._async_saver().aput(config, checkpoint, stamped, new_versions)
        self._scopes.remember(saved, got)
        if (job := self._job(got, turn)) is not None:
            await self.recorder.record_turn(**job)
        return saved

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._async_saver().aput_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._async_saver().adelete_thread(thread_id)
        self._recorded.pop(str(thread_id), None)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._async_saver().adelete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._async_saver().acopy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._async_saver().aprune(thread_ids, strategy=strategy)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        saver = self._async_saver()
        return await saver.aget_delta_channel_history(config=config, channels=channels)

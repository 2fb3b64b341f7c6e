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
import threading
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from langchain_core.runnables import RunnableConfig

from helamem.core import HelaMemError, StoreClosedError, TurnRecorder
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

from ._carried import CarriedTurns, Mark, checkpoint_id, marked
from ._scopes import Put, ReadFailed, Resolved, ScopeBook
from ._turns import (
    NO_ID,
    Turn,
    completed_turn,
    identity,
    latest_question,
    outside,
    resume_texts,
)
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

T = TypeVar("T")


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
        # thread -> (epoch, key) of its last recorded turn
        self._recorded: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        # the scopes stamped on checkpoints
        self._scopes = ScopeBook(scope, max_threads, messages_key)
        self._carry = CarriedTurns(messages_key, max_threads)  # turns a put only carries
        # thread -> the strings of its latest Command(resume=...) (a chat through interrupt)
        self._resumed: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._max_threads = max_threads
        self._lru_lock = threading.Lock()  # puts from several threads update the two LRUs
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
        turn: Turn | None,
        epoch: str | None,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Turn | None:
        """``turn`` (the one the put completes) unless this checkpointer recorded it last
        on its thread (in the thread's epoch: another process may have deleted it) or it
        is an id-less turn that an update of other channels carries."""
        if turn is None or self._recorded.get(turn[0]) == (epoch, turn[1]):
            return None
        if (
            turn[1].startswith(NO_ID)
            and metadata.get("source") == "update"
            and self.messages_key not in new_versions
        ):
            return None  # an update of other channels: an id-less turn has no unique_on
        return turn

    def _carried(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
        got: Resolved,
    ) -> Generator[RunnableConfig, CheckpointTuple | None, tuple[Turn | None, Mark | None]]:
        """The turn the put records (``None``: none; :meth:`CarriedTurns.plan`) and its
        mark; a turn the put only carries along counts as this thread's recorded one."""
        done = completed_turn(config, checkpoint, metadata, self.messages_key)
        turn = self._completed(done, got.epoch, metadata, new_versions)
        kept, mark = yield from self._carry.plan(config, checkpoint, done, turn, got.epoch)
        if turn is not None and kept is None:
            self._remember(self._recorded, turn[0], (got.epoch, turn[1]))
        return kept, mark if got.stamp else None

    def _plan(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Generator[RunnableConfig, CheckpointTuple | None, Resolved]:
        """:meth:`ScopeBook.resolve` of this put."""
        key = self.messages_key
        conf = config.get("configurable", {})
        thread = str(conf.get("thread_id"))
        if not conf.get("checkpoint_ns") and metadata.get("source") == "input":
            self._resumed.pop(thread, None)  # a new run: its resumes are to come
        asked = latest_question(checkpoint, key)
        resumed = asked is not None and asked[1] in self._resumed.get(thread, ())
        return self._scopes.resolve(
            config,
            Put(
                None if asked is None else asked[0],
                outside(metadata, new_versions) or resumed,
                metadata.get("source") == "input" or "__start__" in new_versions,
                str(checkpoint["id"]),
            ),
        )

    def _note_resume(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]]) -> None:
        """A ``Command(resume=...)``'s strings: a human message holding one is asked by
        the resuming run (its config's scope), not by a node."""
        conf = config.get("configurable", {})
        texts = resume_texts(writes)
        if not texts or conf.get("checkpoint_ns"):
            return
        self._remember(self._resumed, str(conf.get("thread_id")), texts)

    def _remember(self, lru: OrderedDict[str, Any], thread: str, value: Any) -> None:
        """``lru[thread] = value``, most recent, at most ``max_threads`` kept; locked
        (another thread's eviction between the set and the move raised ``KeyError``)."""
        with self._lru_lock:
            lru[thread] = value
            lru.move_to_end(thread)
            while len(lru) > self._max_threads:
                lru.popitem(last=False)

    def _run_sync(
        self,
        plan: Generator[RunnableConfig, CheckpointTuple | None, T],
        read: dict[str, CheckpointTuple | None],
    ) -> T:
        """Run a plan of reads (:meth:`_plan`, :meth:`_carried`) with the saver's
        ``get_tuple``: sent each tuple, or thrown :class:`ReadFailed`. ``read``: the
        checkpoints one put read already, by id (a put's plans share their reads)."""
        try:
            want = next(plan)
            while True:
                at = checkpoint_id(want)
                if at in read:
                    want = plan.send(read[at])
                    continue
                try:
                    tup = self.saver.get_tuple(want)
                except Exception as exc:  # noqa: BLE001 (any saver's error: the put goes on)
                    want = plan.throw(ReadFailed(repr(exc)))
                else:
                    if at is not None:
                        read[at] = tup
                    want = plan.send(tup)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _run(
        self,
        plan: Generator[RunnableConfig, CheckpointTuple | None, T],
        read: dict[str, CheckpointTuple | None],
    ) -> T:
        """:meth:`_run_sync` with ``aget_tuple``."""
        try:
            want = next(plan)
            while True:
                at = checkpoint_id(want)
                if at in read:
                    want = plan.send(read[at])
                    continue
                try:
                    tup = await self._async_saver().aget_tuple(want)
                except Exception as exc:  # noqa: BLE001 (as above)
                    want = plan.throw(ReadFailed(repr(exc)))
                else:
                    if at is not None:
                        read[at] = tup
                    want = plan.send(tup)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _job(self, got: Resolved, turn: Turn | None) -> dict[str, Any] | None:
        """The ``record_turn`` arguments of the turn a saved put completed (``None``:
        none, or no scope); marks it recorded for its thread."""
        if turn is None:
            return None
        if got.scope is None:  # opted out: its run's searches go with no later turn either
            if self.store is not None:
                self.store.take_used(turn[0])
            return None
        thread, key, user, answer = turn
        self._remember(self._recorded, thread, (got.epoch, key))
        used = self.store.take_used(thread) if self.store is not None else []
        return {
            "scope": got.scope,
            "user": user,
            "assistant": answer,
            "used_ids": used,
            **identity(thread, key, got.epoch),
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
        read: dict[str, CheckpointTuple | None] = {}  # this put's reads, by checkpoint id
        got = self._run_sync(self._plan(config, checkpoint, metadata, new_versions), read)
        carried = self._carried(config, checkpoint, metadata, new_versions, got)
        turn, mark = self._run_sync(carried, read)
        if turn is not None and got.error is not None:
            raise got.error  # before the put: a retry completes the turn again
        stamped = marked(self._scopes.stamp(metadata, config, got), mark)
        saved = self.saver.put(config, checkpoint, stamped, new_versions)
        self._scopes.remember(saved, got)
        self._carry.remember(saved, config, checkpoint, stamped)
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
        self._note_resume(config, writes)

    def delete_thread(self, thread_id: str) -> None:
        self.saver.delete_thread(thread_id)
        self._forget_thread(str(thread_id))

    def _forget_thread(self, thread: str) -> None:
        """A new thread of a deleted one's id starts afresh: no recorded turn, no pending
        resume, and none of the ids its searches returned (they went with a turn of the
        next run, maybe another user's, on the id)."""
        with self._lru_lock:
            self._recorded.pop(thread, None)
            self._resumed.pop(thread, None)
        if self.store is not None:
            self.store.take_used(thread)

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
        read: dict[str, CheckpointTuple | None] = {}  # as put
        got = await self._run(self._plan(config, checkpoint, metadata, new_versions), read)
        carried = self._carried(config, checkpoint, metadata, new_versions, got)
        turn, mark = await self._run(carried, read)
        if turn is not None and got.error is not None:
            raise got.error  # as put
        stamped = marked(self._scopes.stamp(metadata, config, got), mark)
        saved = await self._async_saver().aput(config, checkpoint, stamped, new_versions)
        self._scopes.remember(saved, got)
        self._carry.remember(saved, config, checkpoint, stamped)
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
        self._note_resume(config, writes)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._async_saver().adelete_thread(thread_id)
        self._forget_thread(str(thread_id))

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

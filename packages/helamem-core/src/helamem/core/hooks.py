"""The after-turn recorder: store each agent turn in the background.

A :class:`TurnRecorder` takes ``(scope, user message, assistant message,
ids of the memories used for the turn)``, returns as soon as the turn is
queued, and in the background calls :meth:`HelaMemory.aadd_turn
<helamem.core.HelaMemory.aadd_turn>` (store both messages, link them to the
scope's previous episode, co-activate the used memories with them, advance
the scope's tick, count the turns toward the scope's next consolidation: one
transaction) and, once ``consolidate_every`` turns of a scope are stored since
its last consolidation, ``memory.aconsolidate(scope)`` when the memory has it.
That count is kept in the store, not in the recorder: turns stored by every
process, recorder and adapter count, so a process that records a few turns and
exits (a CLI, a serverless handler) still gets its scopes consolidated; any
consolidation of the scope (an explicit ``consolidate`` too) starts it again,
and of recorders reaching the threshold at once one consolidates (see
:mod:`._turn_count`).

Design:

* One bounded queue (``max_pending`` turns, queued or in progress) with
  backpressure: :meth:`TurnRecorder.record_turn` awaits room without
  blocking the event loop, :meth:`TurnRecorder.record_turn_sync` blocks its
  thread, :meth:`TurnRecorder.record_turn_nowait` raises
  :class:`RecorderFullError`.
* No thread of its own: the queue feeds the memory's owner thread (the one
  thread that runs every storage call), whose event loop runs one lane per
  scope with turns pending. Turns of one scope run strictly in order, in
  batches; different scopes interleave (at most ``concurrency`` lanes at a
  time). The caller's event loop only does queue bookkeeping. (Lanes are in
  :mod:`._recorder_worker`, the queue and its bookkeeping in
  :mod:`._recorder_state`, the turn and error types in
  :mod:`._recorder_types`.)
* Failures are logged (``logging.getLogger(__name__)``) and raised once, as
  one :class:`TurnRecordingError`, at the next :meth:`TurnRecorder.flush`
  or :meth:`TurnRecorder.close`; later turns are still processed.
* :meth:`TurnRecorder.turn` opens a turn context that notes the ids of every
  search made inside it (see :func:`helamem.core.context.collect_used`) and
  records the turn with them as ``used_ids`` on exit.
* Every call of the memory sees every turn recorded before it: the memory
  knows (weakly) its recorders that have turns not yet stored, and each
  read (:meth:`~helamem.core.HelaMemory.search`, ``get``, ``stats``,
  ``list_scopes``, ``find_ids``, ``export_scope``...) or write that depends
  on what is stored (``delete``, ``reinforce``, adds, ``consolidate``,
  ``forget``, ``delete_scope``, ``import_scope``...), sync or async, first
  waits until the turns they accepted before it, in the scopes it touches
  (the scope or every scope under the prefix; every scope for a call by
  id), are stored or failed; a sync call waits in its caller's thread, an
  async twin without blocking the event loop. It does not wait for
  consolidations, nor for turns of other scopes or recorded after it
  began; with none pending anywhere it checks one empty set. The wait is
  bounded by ``search_wait_timeout`` (a stuck store, or a lane still in
  the consolidation its earlier turns triggered): then the call runs
  anyway and logs one WARNING. A call on the memory's owner thread (an
  overridden ``aconsolidate``, say) never waits: it would wait for itself.

The recorder never closes the memory it writes to; close the recorder first.

At a normal interpreter exit (the main thread returns, ``sys.exit``, an
uncaught exception) a recorder that was not closed stores what is still
queued, for at most ``exit_timeout`` seconds (default 10), and then closes;
if the bound is reached, or turns failed and were never raised by a
``flush``/``close``, it logs one WARNING naming exactly how many turns were
lost. This runs before Python stops its thread pools, so the memory can
still store. A killed process (SIGKILL, power loss, ``os._exit``, or SIGTERM
without a handler) loses the turns that were queued but not yet stored:
``flush()`` makes them durable, ``close()`` too.

Examples:
    >>> import tempfile
    >>> from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
    >>> mem = HelaMemory(HelaMemConfig(path=tempfile.mkdtemp()), embedder=HashingEmbedder(64))
    >>> alice = ("users", "alice")
    >>> with TurnRecorder(mem) as rec:
    ...     rec.record_turn_sync(alice, "I adopted a cat named Miso", "Congratulations!")
    ...     with rec.turn(alice) as turn:
    ...         hits = mem.search("cat", alice, learn=False)
    ...         turn.record("What is my cat called?", "Your cat is called Miso.")
    >>> mem.stats(alice).episodic
    4
    >>> mem.close()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from .context import UsedMemories, collect_used
from .errors import InvalidInputError
from .types import Scope, TimeLike, normalize_scope

if TYPE_CHECKING:
    from .engine import HelaMemory
from ._recorder_types import (
    Job,
    RecorderClosedError,
    RecorderFullError,
    TurnFailure,
    TurnRecordingError,
    Waiter,
    check_options,
    make_job,
)
from ._recorder_worker import RecorderWorker

__all__ = [
    "RecorderClosedError",
    "RecorderFullError",
    "TurnContext",
    "TurnFailure",
    "TurnRecorder",
    "TurnRecordingError",
]

logger = logging.getLogger(__name__)


class TurnRecorder(RecorderWorker):
    """Records agent turns into a :class:`~helamem.core.HelaMemory` in the background.

    The constructor does no I/O and starts no thread; turns are stored on the
    memory's own owner thread. Use it as a context manager (``async with``
    or ``with``) or call :meth:`close` / :meth:`close_sync`. One recorder may
    be used from several coroutines, event loops and threads at once, and
    several recorders may share one memory. Closing the recorder does not
    close the memory.

    Args:
        memory: Where turns are stored.
        max_pending: Most turns queued or in progress; more callers wait
            (backpressure).
        consolidate_every: Once this many turns of a scope are stored since its
            last consolidation, call ``memory.aconsolidate(scope)`` (when the
            memory provides it); ``None`` never does. The count is the
            store's: turns stored by any process or recorder (``add_turn`` /
            ``add_turns``) count, and any consolidation covering the scope (an
            explicit ``consolidate`` too) or the end of the one a recorder
            started, done or failed, starts it again. Default (``"config"``):
            ``memory.config.consolidation.every_turns`` (20 unless configured).
        concurrency: Most scopes processed at once (turns of one scope
            always run one after another, in order).
        exit_timeout: At interpreter exit, most seconds spent storing the
            turns still queued in a recorder that was not closed (``0``:
            store none); turns not stored by then are dropped and counted in
            one WARNING log line. A batch already being stored gets up to 2 s
            more, so that count is exact. Consolidations that would fall due
            meanwhile are skipped: their turns stay due, and the next turn
            recorded by a process that then closes or flushes its recorder
            (or an explicit ``consolidate``) starts it.
        search_wait_timeout: Most seconds a call of ``memory`` (a search,
            ``get``, ``stats``, ``delete``...) waits for this recorder's turns
            accepted before it in the scopes it reads to be stored (or
            fail); past that it runs without them and logs one WARNING.
            ``0``: never wait.

    Raises:
        InvalidInputError: On a bad ``max_pending``, ``consolidate_every``,
            ``concurrency``, ``exit_timeout`` or ``search_wait_timeout``, or a
            ``memory`` that is not a :class:`~helamem.core.HelaMemory` (subclasses may override
            ``aadd_turns``/``aconsolidate``).

    Examples:
        >>> async def agent_loop(mem, turns):               # doctest: +SKIP
        ...     async with TurnRecorder(mem) as rec:
        ...         for scope, user, answer, used in turns:
        ...             await rec.record_turn(scope, user, answer, used_ids=used)
        ...         await rec.flush()   # raises TurnRecordingError if any failed
    """

    def __init__(
        self,
        memory: HelaMemory,
        *,
        max_pending: int = 1000,
        consolidate_every: int | Literal["config"] | None = "config",
        concurrency: int = 4,
        exit_timeout: float = 10.0,
        search_wait_timeout: float = 10.0,
    ) -> None:
        every = check_options(
            memory, max_pending, consolidate_every, concurrency, exit_timeout, search_wait_timeout
        )
        super().__init__(memory, max_pending, every, concurrency, exit_timeout, search_wait_timeout)

    # -- introspection -----------------------------------------------------

    @property
    def pending(self) -> int:
        """Turns queued or in progress."""
        with self._cond:
            return len(self._outstanding)

    @property
    def recorded(self) -> int:
        """Turns stored so far by this recorder (one skipped as stored already,
        ``unique_on``, counts too; toward ``consolidate_every`` it does not)."""
        with self._cond:
            return self._recorded

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has begun (no new turns are accepted)."""
        with self._cond:
            return self._closing

    # -- recording ---------------------------------------------------------

    async def record_turn(
        self,
        scope: Sequence[str],
        user: str,
        assistant: str,
        used_ids: Iterable[str] = (),
        event_time: TimeLike | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        unique_on: Sequence[str] = (),
        revive: bool = False,
    ) -> None:
        """Queue one turn; returns once it is queued.

        Waits (without blocking the event loop) only while ``max_pending``
        turns are pending.

        Args:
            scope: Namespace tuple, e.g. ``("users", "alice")``.
            user: The user message.
            assistant: The assistant message.
            used_ids: Ids of the memories used to produce this turn; they
                co-activate with the new episodes (same scope only).
            event_time: When the turn happened (datetime or POSIX seconds);
                default: now (the time of this call).
            metadata: JSON-serialisable dict kept with both messages.
            unique_on: Keys of ``metadata`` that identify the turn: it is not
                stored when a memory of ``scope`` holds the same values, or held
                them and was deleted (an idempotency key; see :meth:`HelaMemory.add_turn`).
            revive: Store it even when a turn of its key was deleted: it was just
                completed, not replayed from a saved history.

        Raises:
            InvalidInputError: On a bad scope, message, id list or time.
            RecorderClosedError: After :meth:`close` began.
            RecorderFullError: Only when called from the recorder's own worker
                (the memory's owner thread, e.g. an overridden ``aconsolidate``)
                while it is full: waiting there would wait for itself.

        Examples:
            >>> await rec.record_turn(("users", "alice"), "hi", "hello!")  # doctest: +SKIP
        """
        job = make_job(scope, user, assistant, used_ids, event_time, metadata, unique_on, revive)
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._try_put_locked(job):
                    return
                if self._on_worker():  # waiting would deadlock: the worker makes the room
                    raise RecorderFullError(self._full_message())
                waiter = Waiter(self._has_room_locked, loop, loop.create_future())
                self._waiters.append(waiter)
            await self._await_waiter(waiter)

    def record_turn_nowait(
        self,
        scope: Sequence[str],
        user: str,
        assistant: str,
        used_ids: Iterable[str] = (),
        event_time: TimeLike | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        unique_on: Sequence[str] = (),
        revive: bool = False,
    ) -> None:
        """Queue one turn or raise at once; never blocks (any thread, any loop).

        Arguments as for :meth:`record_turn`.

        Raises:
            RecorderFullError: When ``max_pending`` turns are pending.
            InvalidInputError: On bad input.
            RecorderClosedError: After :meth:`close` began.

        Examples:
            >>> rec.record_turn_nowait(("users", "alice"), "hi", "hello!")  # doctest: +SKIP
        """
        job = make_job(scope, user, assistant, used_ids, event_time, metadata, unique_on, revive)
        with self._cond:
            if not self._try_put_locked(job):
                raise RecorderFullError(self._full_message())

    def record_turn_sync(
        self,
        scope: Sequence[str],
        user: str,
        assistant: str,
        used_ids: Iterable[str] = (),
        event_time: TimeLike | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        unique_on: Sequence[str] = (),
        revive: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Queue one turn from synchronous code; returns once it is queued.

        Never waits for I/O. It blocks the calling thread only for
        backpressure, while ``max_pending`` turns are pending, so call it
        from a plain thread; on an event loop use :meth:`record_turn` or
        :meth:`record_turn_nowait`.

        Args:
            scope, user, assistant, used_ids, event_time, metadata, unique_on, revive: As
                for :meth:`record_turn`.
            timeout: Most seconds to wait for room; ``None`` waits as long as
                it takes.

        Raises:
            RecorderFullError: If there was no room within ``timeout`` (or if
                called from the recorder's own worker while it is full).
            InvalidInputError: On bad input.
            RecorderClosedError: After :meth:`close` began.

        Examples:
            >>> rec.record_turn_sync(("users", "alice"), "hi", "hello!")  # doctest: +SKIP
        """
        job = make_job(scope, user, assistant, used_ids, event_time, metadata, unique_on, revive)
        with self._cond:
            done = self._try_put_locked(job)
            if not done and not self._on_worker():  # on the worker, waiting would deadlock
                done = self._cond.wait_for(lambda: self._try_put_locked(job), timeout)
            if not done:
                raise RecorderFullError(self._full_message())

    def turn(
        self,
        scope: Sequence[str],
        *,
        event_time: TimeLike | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TurnContext:
        """A context for one agent turn that records it with the memories it used.

        Every :meth:`~helamem.core.HelaMemory.search`/``asearch`` made inside
        the block (in this thread or task, or tasks it spawns) notes the ids
        it returned. Call :meth:`TurnContext.record` with the messages; the
        turn is queued when the block exits without an exception, with
        those ids as ``used_ids``. ``async with`` waits for room like
        :meth:`record_turn`; ``with`` blocks like :meth:`record_turn_sync`.

        Args:
            scope: The turn's scope.
            event_time: Default event time for :meth:`TurnContext.record`.
            metadata: Default metadata for :meth:`TurnContext.record`.

        Raises:
            InvalidScopeError: On a bad scope.

        Examples:
            >>> async with rec.turn(("users", "alice")) as turn:   # doctest: +SKIP
            ...     hits = await mem.asearch(question, ("users", "alice"))
            ...     answer = await llm(question, hits.to_text())
            ...     turn.record(question, answer)
        """
        return TurnContext(self, normalize_scope(scope), event_time=event_time, metadata=metadata)

    # -- waiting -----------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every turn queued before this call is processed.

        Raises:
            TurnRecordingError: If background work failed since the last
                ``flush``/``close`` (each failure is raised once).

        Examples:
            >>> await rec.flush()   # doctest: +SKIP
        """
        self._check_not_worker("flush")
        with self._cond:
            target = self._next_seq
        await self._wait_async(lambda: self._done_before_locked(target))
        self._raise_failures()

    def flush_sync(self, timeout: float | None = None) -> None:
        """Blocking :meth:`flush` (for threads without an event loop).

        Args:
            timeout: Most seconds to wait.

        Raises:
            TimeoutError: If the work was not done within ``timeout``.
            TurnRecordingError: As for :meth:`flush`.
        """
        self._check_not_worker("flush_sync")
        with self._cond:
            target = self._next_seq
            if not self._cond.wait_for(lambda: self._done_before_locked(target), timeout):
                raise TimeoutError(f"turns still pending after {timeout} s; flush again later")
        self._raise_failures()

    async def close(self) -> None:
        """Stop accepting turns, drain the queue, stop the worker. Idempotent.

        Raises:
            TurnRecordingError: If background work failed since the last
                ``flush``/``close``.
        """
        self._check_not_worker("close")
        self._begin_close()
        await self._wait_async(self._drained_locked)
        self._unregister_exit()
        self._raise_failures()

    def close_sync(self, timeout: float | None = None) -> None:
        """Blocking :meth:`close` (for threads without an event loop).

        Args:
            timeout: Most seconds to wait for the drain.

        Raises:
            TimeoutError: If the queue did not drain within ``timeout`` (the
                recorder keeps draining; call ``close_sync`` again).
            TurnRecordingError: As for :meth:`close`.
        """
        self._check_not_worker("close_sync")
        self._begin_close()
        with self._cond:
            if not self._cond.wait_for(self._drained_locked, timeout):
                raise TimeoutError(f"turns still pending after {timeout} s; close again later")
        self._unregister_exit()
        self._raise_failures()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.close()
        except TurnRecordingError as err:
            if e is None:
                raise
            e.add_note(f"also, while closing the turn recorder: {err}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.close_sync()
        except TurnRecordingError as err:
            if e is None:
                raise
            e.add_note(f"also, while closing the turn recorder: {err}")


class TurnContext:
    """One agent turn: notes the memories searched inside it, records the turn on exit.

    Created by :meth:`TurnRecorder.turn`; use it once, as ``with`` or
    ``async with``.

    Examples:
        >>> with rec.turn(("users", "alice")) as turn:          # doctest: +SKIP
        ...     hits = mem.search("pets", ("users", "alice"))
        ...     turn.record("Any pets?", "You have a cat, Miso.")
        >>> turn.used_ids == hits.ids                            # doctest: +SKIP
        True
    """

    def __init__(
        self,
        recorder: TurnRecorder,
        scope: Scope,
        *,
        event_time: TimeLike | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.recorder = recorder
        self.scope = scope
        self._event_time = event_time
        self._metadata = metadata
        self._used: UsedMemories | None = None
        self._extra: dict[str, None] = {}
        self._job: Job | None = None
        self._stack: ExitStack | None = None
        self._entered = False

    @property
    def used_ids(self) -> list[str]:
        """Ids searches returned inside the block so far, then any given to :meth:`record`."""
        ids = dict.fromkeys(self._used.ids if self._used is not None else ())
        ids.update(self._extra)
        return list(ids)

    def record(
        self,
        user: str,
        assistant: str,
        used_ids: Iterable[str] = (),
        event_time: TimeLike | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Set the turn's messages; it is queued when the block exits cleanly.

        Args:
            user: The user message.
            assistant: The assistant message.
            used_ids: Ids used besides those the searches in the block noted.
            event_time: When the turn happened; default: the context's, else now.
            metadata: Kept with both messages; default: the context's.

        Raises:
            InvalidInputError: On bad input, or if the turn was already recorded.
        """
        if self._job is not None:
            raise InvalidInputError(
                "this turn was already recorded; open a new rec.turn(...) for the next one"
            )
        job = make_job(
            self.scope,
            user,
            assistant,
            used_ids,
            self._event_time if event_time is None else event_time,
            self._metadata if metadata is None else metadata,
        )
        self._extra.update(dict.fromkeys(job.used_ids))
        self._job = job

    def _enter(self) -> Self:
        if self._entered:
            raise InvalidInputError("a TurnContext is used once; open a new rec.turn(...)")
        self._entered = True
        self._stack = ExitStack()
        self._used = self._stack.enter_context(collect_used())
        return self

    def _leave(self, failed: bool) -> Job | None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
        if failed or self._job is None:
            return None
        return replace(self._job, used_ids=tuple(self.used_ids))

    def __enter__(self) -> Self:
        return self._enter()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        job = self._leave(et is not None)
        if job is not None:
            self.recorder.record_turn_sync(
                job.scope,
                job.user,
                job.assistant,
                used_ids=job.used_ids,
                event_time=job.event_time,
                metadata=job.metadata,
            )

    async def __aenter__(self) -> Self:
        return self._enter()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        job = self._leave(et is not None)
        if job is not None:
            await self.recorder.record_turn(
                job.scope,
                job.user,
                job.assistant,
                used_ids=job.used_ids,
                event_time=job.event_time,
                metadata=job.metadata,
            )

"""The after-turn recorder: store each agent turn in the background.

A :class:`TurnRecorder` takes ``(scope, user message, assistant message,
ids of the memories used for the turn)``, returns as soon as the turn is
queued, and in the background calls :meth:`HelaMemory.aadd_turn
<helamem.core.HelaMemory.aadd_turn>` (store both messages, link them to the
scope's previous episode, co-activate the used memories with them, advance
the scope's tick: one transaction) and, every ``consolidate_every`` turns of
a scope, ``memory.aconsolidate(scope)`` when the memory has it.

Design:

* One bounded queue (``max_pending`` turns, queued or in progress) with
  backpressure: :meth:`TurnRecorder.record_turn` awaits room without
  blocking the event loop, :meth:`TurnRecorder.record_turn_sync` blocks its
  thread, :meth:`TurnRecorder.record_turn_nowait` raises
  :class:`RecorderFullError`.
* One worker thread per recorder runs its own event loop; it starts with
  the first turn and exits after a few idle seconds (the next turn starts a
  new one), so a recorder never closed does not hold a thread forever.
  Turns of one scope run strictly in order; different scopes proceed
  concurrently (at most ``concurrency`` at a time). The caller's event loop
  only does queue bookkeeping; storage and embedding run on the memory's
  owner thread.
* Failures are logged (``logging.getLogger(__name__)``) and raised once, as
  one :class:`TurnRecordingError`, at the next :meth:`TurnRecorder.flush`
  or :meth:`TurnRecorder.close`; later turns are still processed.
* :meth:`TurnRecorder.turn` opens a turn context that notes the ids of every
  search made inside it (see :func:`helamem.core.context.collect_used`) and
  records the turn with them as ``used_ids`` on exit.

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
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from . import _exit
from .context import UsedMemories, collect_used
from .errors import HelaMemError, InvalidInputError
from .types import NewTurn, Scope, TimeLike, normalize_scope, to_timestamp

if TYPE_CHECKING:
    from .engine import HelaMemory

__all__ = [
    "RecorderClosedError",
    "RecorderFullError",
    "TurnContext",
    "TurnFailure",
    "TurnRecorder",
    "TurnRecordingError",
]

logger = logging.getLogger(__name__)

Stage = Literal["add_turn", "consolidate", "worker"]

_MAX_KEPT_FAILURES = 1000
_IDLE_EXIT_S = 5.0  # an idle worker thread exits; the next turn starts a new one
_BATCH = 32  # queued turns of one scope stored in one add_turns call
_EXIT_GRACE_S = 2.0  # after the exit bound: most extra seconds for batches being stored


class RecorderClosedError(HelaMemError, RuntimeError):
    """The recorder was closed; create a new :class:`TurnRecorder` to record more turns."""


class RecorderFullError(HelaMemError, RuntimeError):
    """The recorder's queue is full (``max_pending`` turns).

    Use ``await record_turn(...)`` (waits for room), pass a timeout to
    ``record_turn_sync``, or raise ``max_pending``.
    """


@dataclass(frozen=True, slots=True)
class TurnFailure:
    """One turn whose background work failed.

    Attributes:
        stage: ``"add_turn"``: the turn was not stored (record it again once
            the cause is fixed); ``"consolidate"``: the turn was stored but
            the consolidation it triggered failed; ``"worker"``: the
            recorder's worker stopped unexpectedly (the turn may or may not
            have been stored).
        scope: The turn's scope.
        user: The user message.
        assistant: The assistant message.
        used_ids: The ids it was recorded with.
        event_time: Its event time (POSIX seconds).
        error: The original exception.
    """

    stage: Stage
    scope: Scope
    user: str
    assistant: str
    used_ids: tuple[str, ...]
    event_time: float
    error: Exception


class TurnRecordingError(HelaMemError, RuntimeError):
    """Background recording failed for some turns (raised at ``flush``/``close``).

    Attributes:
        failures: One :class:`TurnFailure` per failed turn (the first 1000).
        errors: The original exceptions, in the same order.
        total: How many failures happened in all, including any not kept.
    """

    def __init__(self, failures: Sequence[TurnFailure], total: int | None = None) -> None:
        self.failures = tuple(failures)
        self.errors: tuple[Exception, ...] = tuple(f.error for f in self.failures)
        self.total = len(self.failures) if total is None else total
        if self.failures:
            f = self.failures[0]
            first = f"first: {f.stage} in scope {f.scope!r}: {type(f.error).__name__}: {f.error}"
        else:
            first = "no details kept"
        super().__init__(
            f"{self.total} turn(s) failed in the background ({first}); turns that failed at "
            f"stage 'add_turn' were not stored: fix the cause and record them again from "
            f".failures"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.failures, self.total))


@dataclass(slots=True)
class _Job:
    scope: Scope
    user: str
    assistant: str
    used_ids: tuple[str, ...]
    event_time: float
    metadata: dict[str, Any] | None
    seq: int = -1

    def turn(self) -> NewTurn:
        return NewTurn(
            self.scope, self.user, self.assistant, self.event_time, self.metadata, self.used_ids
        )


@dataclass(eq=False, slots=True)
class _Waiter:
    """An async caller waiting (on its own loop) until ``ready()`` holds."""

    ready: Callable[[], bool]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    if not value or value.isspace():  # isspace() stops at the first visible character
        raise InvalidInputError(f"{what} is empty or whitespace only; pass some text")
    return value


def _make_job(
    scope: Sequence[str],
    user: str,
    assistant: str,
    used_ids: Iterable[str],
    event_time: TimeLike | None,
    metadata: Mapping[str, Any] | None,
) -> _Job:
    """Cheap validation in the caller's thread; the memory checks the rest."""
    ids = (used_ids,) if isinstance(used_ids, str) else tuple(used_ids)
    if not all(isinstance(i, str) for i in ids):
        raise InvalidInputError("used_ids must be strings (memory ids)")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a dict, got {type(metadata).__name__}")
    return _Job(
        scope=normalize_scope(scope),
        user=_check_text(user, "user"),
        assistant=_check_text(assistant, "assistant"),
        used_ids=ids,
        # "now" is when the turn happened, not when the worker gets to it
        event_time=to_timestamp(event_time, default=time.time()),
        metadata=None if metadata is None else dict(metadata),
    )


def _configured_every(memory: object) -> int:
    """``memory.config.consolidation.every_turns``, or the documented default 20."""
    every = getattr(
        getattr(getattr(memory, "config", None), "consolidation", None), "every_turns", 20
    )
    return every if isinstance(every, int) and not isinstance(every, bool) and every > 0 else 20


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TurnRecorder:
    """Records agent turns into a :class:`~helamem.core.HelaMemory` in the background.

    The constructor does no I/O and starts no thread; the worker thread
    starts with the first turn. Use it as a context manager (``async with``
    or ``with``) or call :meth:`close` / :meth:`close_sync`. One recorder may
    be used from several coroutines, event loops and threads at once, and
    several recorders may share one memory. Closing the recorder does not
    close the memory.

    Args:
        memory: Where turns are stored.
        max_pending: Most turns queued or in progress; more callers wait
            (backpressure).
        consolidate_every: After every this many stored turns of a scope (as
            counted by this recorder), call ``memory.aconsolidate(scope)``
            when the memory provides it; ``None`` never does. Default
            (``"config"``): ``memory.config.consolidation.every_turns``
            (20 unless configured).
        concurrency: Most scopes processed at once (turns of one scope
            always run one after another, in order).
        exit_timeout: At interpreter exit, most seconds spent storing the
            turns still queued in a recorder that was not closed (``0``:
            store none); turns not stored by then are dropped and counted in
            one WARNING log line. A batch already being stored gets up to 2 s
            more, so that count is exact. Consolidations that would fall due
            meanwhile are skipped (the next one covers their turns).

    Raises:
        InvalidInputError: On a bad ``max_pending``, ``consolidate_every``,
            ``concurrency`` or ``exit_timeout``.

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
    ) -> None:
        for name, value in (("max_pending", max_pending), ("concurrency", concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        if (
            isinstance(exit_timeout, bool)
            or not isinstance(exit_timeout, int | float)
            or not 0 <= exit_timeout < float("inf")
        ):
            raise InvalidInputError(
                f"exit_timeout must be a finite number of seconds >= 0, got {exit_timeout!r}"
            )
        every: object = (
            _configured_every(memory) if consolidate_every == "config" else consolidate_every
        )
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise InvalidInputError(
                f"consolidate_every must be a positive int, None or 'config', got {every!r}"
            )
        self.memory = memory
        self.max_pending = max_pending
        self.consolidate_every: int | None = every
        self.concurrency = concurrency
        self.exit_timeout = float(exit_timeout)
        # Everything below is guarded by _cond, except where noted.
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()  # not yet taken by the worker
        self._outstanding: dict[int, _Job] = {}  # queued or in progress, by seq (in order)
        self._next_seq = 0
        self._waiters: list[_Waiter] = []
        self._failures: list[TurnFailure] = []
        self._failed_total = 0
        self._recorded = 0
        self._closing = False  # no new turns accepted
        self._stop = False  # tells the worker to exit once idle
        self._thread: threading.Thread | None = None
        self._retired: threading.Thread | None = None  # the last worker that exited
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle = False
        self._unstored = 0  # turns failed (not stored) since failures were last raised
        self._exiting = False  # flushing at interpreter exit: no consolidation
        self._abandoned = False  # exit bound reached: lanes drop what they still hold
        self._dropped = 0  # turns dropped at exit
        self._storing = 0  # turns in batches being stored now
        self._exit_token: int | None = None  # registered with _exit while not closed
        # Worker-thread only:
        self._counts: dict[Scope, int] = {}

    # -- introspection -----------------------------------------------------

    @property
    def pending(self) -> int:
        """Turns queued or in progress."""
        with self._cond:
            return len(self._outstanding)

    @property
    def recorded(self) -> int:
        """Turns stored so far by this recorder."""
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

        Raises:
            InvalidInputError: On a bad scope, message, id list or time.
            RecorderClosedError: After :meth:`close` began.

        Examples:
            >>> await rec.record_turn(("users", "alice"), "hi", "hello!")  # doctest: +SKIP
        """
        job = _make_job(scope, user, assistant, used_ids, event_time, metadata)
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._try_put_locked(job):
                    return
                waiter = _Waiter(self._has_room_locked, loop, loop.create_future())
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
        job = _make_job(scope, user, assistant, used_ids, event_time, metadata)
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
        timeout: float | None = None,
    ) -> None:
        """Queue one turn from synchronous code; returns once it is queued.

        Never waits for I/O. It blocks the calling thread only for
        backpressure, while ``max_pending`` turns are pending, so call it
        from a plain thread; on an event loop use :meth:`record_turn` or
        :meth:`record_turn_nowait`.

        Args:
            scope, user, assistant, used_ids, event_time, metadata: As for
                :meth:`record_turn`.
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
        job = _make_job(scope, user, assistant, used_ids, event_time, metadata)
        on_worker = self._on_worker()
        with self._cond:
            if on_worker:  # waiting would deadlock: the worker makes the room
                done = self._try_put_locked(job)
            else:
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
        thread = self._stop_worker()
        if thread is not None:
            await asyncio.to_thread(thread.join)
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
        thread = self._stop_worker()
        if thread is not None:
            thread.join()
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

    # -- bookkeeping (callers' threads, under _cond) -----------------------

    def _has_room_locked(self) -> bool:
        return self._closing or len(self._outstanding) < self.max_pending

    def _done_before_locked(self, target: int) -> bool:
        return not self._outstanding or next(iter(self._outstanding)) >= target

    def _drained_locked(self) -> bool:
        return not self._outstanding

    def _full_message(self) -> str:
        return (
            f"the turn recorder already has max_pending={self.max_pending} turns pending; "
            f"await record_turn() to wait for room, or raise max_pending"
        )

    def _try_put_locked(self, job: _Job) -> bool:
        """Queue ``job`` if there is room (sets its seq); raise if closing."""
        if self._closing:
            raise RecorderClosedError(
                "this TurnRecorder is closed; create a new TurnRecorder to record more turns"
            )
        if len(self._outstanding) >= self.max_pending:
            return False
        seq = self._next_seq
        self._next_seq += 1
        job.seq = seq
        self._outstanding[seq] = job
        self._queue.append(job)
        if self._thread is None:
            self._start_worker_locked()
        else:
            self._kick_locked()
        return True

    def _kick_locked(self) -> None:
        if self._idle and self._loop is not None and self._wakeup is not None:
            self._idle = False
            self._loop.call_soon_threadsafe(self._wakeup.set)

    def _wake_waiters_locked(self) -> None:
        self._cond.notify_all()
        if not self._waiters:
            return
        keep: list[_Waiter] = []
        for w in self._waiters:
            if not w.ready():
                keep.append(w)
                continue
            with suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                w.loop.call_soon_threadsafe(_resolve, w.future)
        self._waiters = keep

    async def _await_waiter(self, waiter: _Waiter) -> None:
        try:
            await waiter.future
        finally:
            with self._cond:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _wait_async(self, ready: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if ready():
                    return
                waiter = _Waiter(ready, loop, loop.create_future())
                self._waiters.append(waiter)
            await self._await_waiter(waiter)

    def _raise_failures(self) -> None:
        with self._cond:
            if not self._failed_total:
                return
            failures, total = self._failures, self._failed_total
            self._failures, self._failed_total, self._unstored = [], 0, 0
        raise TurnRecordingError(failures, total) from (failures[0].error if failures else None)

    def _on_worker(self) -> bool:
        return threading.current_thread() is self._thread

    def _check_not_worker(self, what: str) -> None:
        if self._on_worker():
            raise RuntimeError(
                f"{what}() called from the turn recorder's own worker would wait for itself; "
                f"call it from another thread"
            )

    def _begin_close(self) -> None:
        with self._cond:
            self._closing = True
            self._wake_waiters_locked()  # producers waiting for room now raise

    def _stop_worker(self) -> threading.Thread | None:
        with self._cond:
            thread = self._thread or self._retired
            self._stop = True
            self._kick_locked()
            return thread

    # -- interpreter exit (see helamem.core._exit) ---------------------------

    def _unregister_exit(self) -> None:
        with self._cond:
            token, self._exit_token = self._exit_token, None
        if token is not None:
            _exit.unregister(token)

    def _flush_at_exit(self, started: float) -> None:
        """Store what is queued within ``exit_timeout`` of ``started``, then close.

        Runs once, in the main thread, at interpreter exit, before Python
        stops its thread pools. Never raises; logs one WARNING with the
        exact number of turns lost (dropped at the bound, or failed and never
        raised by a ``flush``/``close``).
        """
        self._begin_close()
        store_closed = getattr(self.memory, "closed", False) is True
        with self._cond:
            self._exiting = True
            pending = len(self._outstanding)
            if pending and not store_closed:
                remaining = started + self.exit_timeout - time.monotonic()
                self._cond.wait_for(self._drained_locked, max(0.0, remaining))
            bounded = bool(self._outstanding)
            if bounded:  # nothing more starts; batches already being stored may finish
                self._abandoned = True
                self._dropped += len(self._queue)
                for job in self._queue:
                    self._outstanding.pop(job.seq, None)
                self._queue.clear()
                self._wake_waiters_locked()
                self._cond.wait_for(self._drained_locked, _EXIT_GRACE_S)
            # Still being stored after the grace: may or may not be. The rest of
            # their lanes is dropped when they finish; count it as dropped now.
            unsure = self._storing
            dropped = self._dropped + len(self._outstanding) - unsure
            failed = self._unstored
        thread = self._stop_worker()
        if thread is not None and not unsure:
            thread.join(_EXIT_GRACE_S)  # a daemon: never waited for beyond this
        self._unregister_exit()
        lost = dropped + failed
        if not lost and not unsure:
            return
        why: list[str] = []
        if dropped:
            cause = (
                "not tried: the memory was already closed"
                if store_closed
                else f"still queued when the exit bound (exit_timeout={self.exit_timeout:g} s) "
                f"was reached"
            )
            why.append(f"{dropped} {cause}")
        if failed:
            why.append(f"{failed} failed in the background (logged above) and were never raised")
        if unsure:
            why.append(
                f"{unsure} more were still being stored {_EXIT_GRACE_S:g} s after the bound and "
                f"may be lost too"
            )
        logger.warning(
            "turn recorder at interpreter exit: %d turn(s) lost, not stored (%s); call "
            "rec.close() or rec.flush() before the process exits, or raise exit_timeout",
            lost,
            "; ".join(why),
        )

    # -- the worker (its own thread and event loop) ------------------------

    def _start_worker_locked(self) -> None:
        self._idle = False
        self._stop = False
        if self._exit_token is None:
            self._exit_token = _exit.register(self, TurnRecorder._flush_at_exit, phase=_exit.FLUSH)
        self._thread = threading.Thread(
            target=self._run_worker, name="helamem-turn-recorder", daemon=True
        )
        self._thread.start()

    def _run_worker(self) -> None:
        try:
            asyncio.run(self._worker())
        finally:
            self._after_worker()

    def _retire_locked(self) -> None:
        """Detach the current worker; the next turn starts a new one (unless closing)."""
        self._retired = self._thread
        self._thread = None
        self._loop = None
        self._wakeup = None
        self._idle = False

    def _after_worker(self) -> None:
        """Fail whatever a worker that died left behind (only after a bug)."""
        with self._cond:
            if self._thread is not threading.current_thread():
                return  # it retired cleanly
            self._retire_locked()
            self._queue.clear()
            if not self._outstanding:
                return
            err = RuntimeError("the turn recorder's worker stopped unexpectedly")
            for job in self._outstanding.values():
                self._fail_locked(job, "worker", err)
            self._outstanding.clear()
            self._wake_waiters_locked()
        logger.error("the turn recorder's worker stopped unexpectedly; pending turns failed")

    async def _worker(self) -> None:
        wakeup = asyncio.Event()
        with self._cond:
            self._loop = asyncio.get_running_loop()
            self._wakeup = wakeup
        lanes: dict[Scope, deque[_Job]] = {}
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            with self._cond:
                jobs = list(self._queue)
                self._queue.clear()
                if not jobs:
                    if self._stop:
                        self._retire_locked()
                        break
                    self._idle = True
                    wakeup.clear()
            if not jobs:
                try:
                    await asyncio.wait_for(wakeup.wait(), _IDLE_EXIT_S)
                except TimeoutError:
                    with self._cond:
                        if self._idle and not self._outstanding:  # no lane is busy either
                            self._retire_locked()  # the next turn starts a new worker
                            return
                continue
            for job in jobs:
                lane = lanes.get(job.scope)
                if lane is not None:
                    lane.append(job)
                    continue
                lanes[job.scope] = deque([job])
                task = asyncio.create_task(self._run_lane(job.scope, lanes, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _run_lane(
        self, scope: Scope, lanes: dict[Scope, deque[_Job]], slots: asyncio.Semaphore
    ) -> None:
        lane = lanes[scope]
        while lane:
            batch = [lane.popleft() for _ in range(min(_BATCH, len(lane)))]
            try:
                async with slots:
                    with self._cond:
                        if self._abandoned:  # the exit bound was reached: drop the rest
                            batch.extend(lane)
                            lane.clear()
                            self._dropped += len(batch)
                            continue
                        self._storing += len(batch)
                    try:
                        await self._process(batch)
                    finally:
                        with self._cond:
                            self._storing -= len(batch)
            finally:
                for job in batch:
                    self._finish(job)
        del lanes[scope]

    async def _process(self, batch: list[_Job]) -> None:
        """Store a batch of one scope's turns in one call; one by one if that fails."""
        stored: list[_Job] = []
        try:
            await self.memory.aadd_turns([j.turn() for j in batch])
            stored = batch
        # Any failure (a custom embedder may raise anything) must not kill the
        # worker: the turns are retried alone, so only the failing ones are kept
        # and re-raised at the next flush()/close().
        except Exception as exc:  # noqa: BLE001
            if len(batch) == 1:
                self._fail(batch[0], "add_turn", exc)
            else:
                for job in batch:
                    try:
                        await self.memory.aadd_turns([job.turn()])
                        stored.append(job)
                    except Exception as one:  # noqa: BLE001 (as above)
                        self._fail(job, "add_turn", one)
        if stored:
            await self._after_store(stored)

    async def _after_store(self, stored: list[_Job]) -> None:
        """Count stored turns; consolidate once if the batch crossed a multiple of N."""
        job = stored[-1]
        with self._cond:
            self._recorded += len(stored)
            if self._exiting:  # the exit bound is for storing turns, not for distilling
                return
        before = self._counts.get(job.scope, 0)
        after = self._counts[job.scope] = before + len(stored)
        every = self.consolidate_every
        if every is None or after // every == before // every:
            return
        consolidate: Callable[[Scope], Awaitable[object]] | None = getattr(
            self.memory, "aconsolidate", None
        )
        if consolidate is None:
            return
        try:
            await consolidate(job.scope)
        # As above: kept and re-raised at the next flush()/close().
        except Exception as exc:  # noqa: BLE001
            self._fail(job, "consolidate", exc)

    def _fail(self, job: _Job, stage: Stage, exc: Exception) -> None:
        logger.error(
            "turn recorder: %s failed for scope %r (raised at the next flush/close): %s: %s",
            stage,
            job.scope,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        with self._cond:
            self._fail_locked(job, stage, exc)

    def _fail_locked(self, job: _Job, stage: Stage, exc: Exception) -> None:
        self._failed_total += 1
        if stage != "consolidate":  # "worker" may or may not have stored it: counted as lost
            self._unstored += 1
        if len(self._failures) < _MAX_KEPT_FAILURES:
            self._failures.append(
                TurnFailure(
                    stage, job.scope, job.user, job.assistant, job.used_ids, job.event_time, exc
                )
            )

    def _finish(self, job: _Job) -> None:
        with self._cond:
            self._outstanding.pop(job.seq, None)
            self._wake_waiters_locked()


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
        self._job: _Job | None = None
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
        job = _make_job(
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

    def _leave(self, failed: bool) -> _Job | None:
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

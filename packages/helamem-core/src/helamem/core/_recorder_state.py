"""The turn recorder's shared state: the bounded queue, waiters and failures, under one condition.

Callers' threads and event loops and the lanes on the memory's owner loop
(:mod:`._recorder_worker`) meet here; every field is guarded by ``_cond``
unless noted. Every read of the memory meets here too: before a search, a
``get``, ``stats``... the memory has each of its recorders wait (bounded)
until the turns it accepted in the scopes read are stored or failed
(:meth:`RecorderState._wait_settled`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

from .errors import CommitUnknownError
from .types import Scope

if TYPE_CHECKING:
    from .engine import HelaMemory
from ._recorder_types import Job, Stage, TurnFailure, TurnRecordingError, Waiter, resolve

__all__ = ["RecorderState"]

logger = logging.getLogger("helamem.core.hooks")

_MAX_KEPT_FAILURES = 1000


class RecorderState:
    """The queue (``max_pending`` turns queued or in progress), its waiters and failures.

    Args:
        memory: Where turns are stored.
        max_pending: Most turns queued or in progress (validated).
        consolidate_every: Turns of a scope between consolidations, or ``None``.
        concurrency: Most scopes processed at once.
        exit_timeout: Seconds spent storing queued turns at interpreter exit.
        search_wait_timeout: Most seconds a read of the memory (a search, ``get``,
            ``stats``...) waits for this recorder's earlier turns in its scopes.
    """

    def __init__(
        self,
        memory: HelaMemory,
        max_pending: int,
        consolidate_every: int | None,
        concurrency: int,
        exit_timeout: float,
        search_wait_timeout: float = 10.0,
    ) -> None:
        self.memory = memory
        self.max_pending = max_pending
        self.consolidate_every: int | None = consolidate_every
        self.concurrency = concurrency
        self.exit_timeout = float(exit_timeout)
        self.search_wait_timeout = float(search_wait_timeout)
        # Everything below is guarded by _cond, except where noted.
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()  # not yet taken by the worker
        self._outstanding: dict[int, Job] = {}  # queued or in progress, by seq (in order)
        # accepted and neither stored nor failed yet: what a read waits for (a
        # turn leaves it before any consolidation it triggers runs)
        self._unsettled: dict[int, Job] = {}
        self._next_seq = 0
        self._waiters: list[Waiter] = []
        self._failures: list[TurnFailure] = []
        self._failed_total = 0
        self._recorded = 0
        self._closing = False  # no new turns accepted
        self._scheduled = False  # the owner loop will take the queue soon
        self._unstored = 0  # turns failed (not stored) since failures were last raised
        self._exiting = False  # flushing at interpreter exit: no consolidation
        self._abandoned = False  # exit bound reached: lanes drop what they still hold
        self._dropped = 0  # turns dropped at exit
        self._storing = 0  # turns in batches being stored now
        self._exit_token: int | None = None  # registered with _exit while not closed
        # Owner-loop only:
        self._counts: dict[Scope, int] = {}  # turns stored, for a memory keeping no count
        self._lanes: dict[Scope, deque[Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._tracked = False  # the memory has this recorder among those reads wait for

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

    def _wake_waiters_locked(self) -> None:
        self._cond.notify_all()
        if not self._waiters:
            return
        keep: list[Waiter] = []
        for w in self._waiters:
            if not w.ready():
                keep.append(w)
                continue
            with suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                w.loop.call_soon_threadsafe(resolve, w.future)
        self._waiters = keep

    async def _await_waiter(self, waiter: Waiter) -> None:
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
                waiter = Waiter(ready, loop, loop.create_future())
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
        """Whether this runs on the memory's owner thread, where the recorder's lanes run."""
        return self.memory._on_owner_thread()

    def _check_not_worker(self, what: str) -> None:
        if self._on_worker():
            raise RuntimeError(
                f"{what}() called from the turn recorder's own worker (the memory's owner "
                f"loop) would wait for itself; call it from another thread or event loop"
            )

    def _begin_close(self) -> None:
        with self._cond:
            self._closing = True
            self._wake_waiters_locked()  # producers waiting for room now raise

    def _fail(self, job: Job, stage: Stage, exc: Exception) -> None:
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

    def _fail_locked(self, job: Job, stage: Stage, exc: Exception) -> None:
        if stage == "add_turn" and isinstance(exc, CommitUnknownError):
            stage = "commit_unknown"  # maybe stored: recording it again could store it twice
        self._failed_total += 1
        if stage != "consolidate":  # "worker", "commit_unknown": maybe stored, counted as lost
            self._unstored += 1
        if len(self._failures) < _MAX_KEPT_FAILURES:
            self._failures.append(
                TurnFailure(
                    stage, job.scope, job.user, job.assistant, job.used_ids, job.event_time, exc
                )
            )

    def _finish(self, job: Job) -> None:
        with self._cond:
            self._outstanding.pop(job.seq, None)
            self._unsettled.pop(job.seq, None)
            self._track_locked()
            self._wake_waiters_locked()

    def _settle(self, jobs: list[Job]) -> None:
        """``jobs`` are stored or failed: reads waiting for them may run."""
        with self._cond:
            for job in jobs:
                self._unsettled.pop(job.seq, None)
            self._track_locked()
            self._wake_waiters_locked()

    def _track_locked(self, busy: bool | None = None) -> None:
        """Keep the memory's set of recorders with unsettled turns (held weakly there)
        in step, so a read with nothing pending anywhere checks one empty set."""
        busy = bool(self._unsettled) if busy is None else busy
        if busy == self._tracked:
            return
        self._tracked = busy
        track = getattr(self.memory, "_add_recorder" if busy else "_remove_recorder", None)
        if callable(track):  # a stand-in memory without searches may lack them
            track(self)

    # -- reads wait for the turns recorded before them ----------------------

    def _unsettled_under_locked(self, prefixes: tuple[Scope, ...]) -> set[int] | None:
        """Seqs of the turns not yet stored or failed in scopes under any of ``prefixes``."""
        if not self._unsettled:
            return None
        return {
            seq
            for seq, job in self._unsettled.items()
            if any(job.scope[: len(p)] == p for p in prefixes)
        } or None

    def _warn_unsettled(self, prefixes: tuple[Scope, ...], left: int, what: str) -> None:
        logger.warning(
            "%s of %s: %d turn(s) recorded before it in that scope were still not stored "
            "after search_wait_timeout=%g s (the recorder is busy: a slow store, or a slow "
            "consolidation before them); going on without them%s",
            what,
            " and ".join(repr(p) for p in prefixes),
            left,
            self.search_wait_timeout,
            " (the delete forgets them: never stored)" if what.endswith("delete_scope") else "",
        )

    def _wait_settled_sync(
        self, prefixes: tuple[Scope, ...], started: float, what: str = "search"
    ) -> None:
        """Block until this recorder's turns accepted so far in scopes under ``prefixes``
        are stored or failed, at most until ``started + search_wait_timeout`` (then log
        one WARNING naming ``what`` waited). Never on the memory's owner thread: the
        memory checks that."""
        with self._cond:
            needed = self._unsettled_under_locked(prefixes)
            if needed is None:
                return
            remaining = started + self.search_wait_timeout - time.monotonic()
            if self._cond.wait_for(lambda: self._unsettled.keys().isdisjoint(needed), remaining):
                return
            left = len(needed.intersection(self._unsettled))
        self._warn_unsettled(prefixes, left, what)

    async def _wait_settled(
        self, prefixes: tuple[Scope, ...], started: float, what: str = "search"
    ) -> None:
        """:meth:`_wait_settled_sync` without blocking the running event loop."""
        with self._cond:
            needed = self._unsettled_under_locked(prefixes)
            if needed is None:
                return
        remaining = started + self.search_wait_timeout - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await self._wait_async(lambda: self._unsettled.keys().isdisjoint(needed))
            return
        except TimeoutError:
            with self._cond:
                left = len(needed.intersection(self._unsettled))
        if left:
            self._warn_unsettled(prefixes, left, what)

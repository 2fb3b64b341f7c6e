"""The turn recorder's worker: its own thread and event loop, per-scope lanes, batches, exit flush.

The worker starts with the first queued turn and exits after
:data:`_IDLE_EXIT_S` idle seconds (the next turn starts a new one). Turns of
one scope run strictly in order, up to :data:`_BATCH` per ``aadd_turns``
call; different scopes proceed concurrently (at most ``concurrency`` at a
time). Storage and embedding run on the memory's owner thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from . import _exit
from .types import Scope

if TYPE_CHECKING:
    pass
from ._recorder_state import RecorderState
from ._recorder_types import Job, RecorderClosedError

__all__ = ["RecorderWorker"]

logger = logging.getLogger("helamem.core.hooks")

_IDLE_EXIT_S = 5.0  # an idle worker thread exits; the next turn starts a new one
_BATCH = 32  # queued turns of one scope stored in one add_turns call
_EXIT_GRACE_S = 2.0  # after the exit bound: most extra seconds for batches being stored


class RecorderWorker(RecorderState):
    """Queue admission and the background worker of :class:`~helamem.core.TurnRecorder`."""

    def _try_put_locked(self, job: Job) -> bool:
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

    def _stop_worker(self) -> threading.Thread | None:
        with self._cond:
            thread = self._thread or self._retired
            self._stop = True
            self._kick_locked()
            return thread

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

    def _start_worker_locked(self) -> None:
        self._idle = False
        self._stop = False
        if self._exit_token is None:
            self._exit_token = _exit.register(
                self, RecorderWorker._flush_at_exit, phase=_exit.FLUSH
            )
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
        lanes: dict[Scope, deque[Job]] = {}
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
        self, scope: Scope, lanes: dict[Scope, deque[Job]], slots: asyncio.Semaphore
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

    async def _process(self, batch: list[Job]) -> None:
        """Store a batch of one scope's turns in one call; one by one if that fails."""
        stored: list[Job] = []
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

    async def _after_store(self, stored: list[Job]) -> None:
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

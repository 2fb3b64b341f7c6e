"""The turn recorder's worker: per-scope lanes, run as tasks on the memory's owner loop; exit flush.

The recorder has no thread or event loop of its own. Queued turns are handed
to the memory's owner thread (:mod:`._owner`), whose event loop runs one
lane per scope with turns pending: turns of one scope run strictly in order,
up to :data:`_BATCH` per ``aadd_turns`` call, and different scopes interleave
(at most ``concurrency`` lanes at a time). The memory's storage calls run on
that same thread, so a lane waits for them without blocking anything, and a
consolidation's LLM call is awaited there without holding up storage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TYPE_CHECKING

from . import _exit
from ._recorder_state import RecorderState
from ._recorder_types import IN_RECORDER_LANE, Job, RecorderClosedError, Stage
from .errors import CommitUnknownError, MemoryNotFoundError, StoreClosedError
from .types import Scope

if TYPE_CHECKING:
    from ._turn_count import Claim

__all__ = ["RecorderWorker"]

logger = logging.getLogger("helamem.core.hooks")

_BATCH = 32  # queued turns of one scope stored in one add_turns call
_EXIT_GRACE_S = 2.0  # after the exit bound: most extra seconds for batches being stored


def _closed_error() -> StoreClosedError:
    return StoreClosedError(
        "the memory was closed before they were stored; close the TurnRecorder before its memory"
    )


class RecorderWorker(RecorderState):
    """Queue admission and the lanes of :class:`~helamem.core.TurnRecorder`."""

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
        self._unsettled[seq] = job
        self._track_locked()
        self._queue.append(job)
        if not self._scheduled:
            try:
                self._schedule_locked()
            except BaseException:  # not accepted after all: nothing may wait for it
                self._queue.remove(job)
                del self._outstanding[seq]
                del self._unsettled[seq]
                self._track_locked()
                raise
        return True

    def _schedule_locked(self) -> None:
        """Have the memory's owner loop take the queue (once per batch of puts)."""
        if self._exit_token is None:
            self._exit_token = _exit.register(
                self, RecorderWorker._flush_at_exit, phase=_exit.FLUSH
            )
        try:
            self.memory._call_soon(self._dispatch)
        except StoreClosedError:  # the memory is closed: nothing queued can be stored
            jobs = list(self._queue)
            self._queue.clear()
            self._fail_unstored(jobs, "add_turn", _closed_error())
            for queued in jobs:
                self._finish(queued)
            return
        self._scheduled = True

    def _fail_unstored(self, jobs: list[Job], stage: Stage, err: Exception) -> None:
        """Fail those of ``jobs`` not stored (``_cond`` is re-entrant), with one log line."""
        unstored = [job for job in jobs if not job.stored]
        if not unstored:
            return
        logger.error("turn recorder: %d turn(s) not stored: %s", len(unstored), err)
        with self._cond:
            for job in unstored:
                self._fail_locked(job, stage, err)

    def _dispatch(self) -> None:
        """On the owner loop: move queued turns into their scopes' lanes, start idle lanes."""
        with self._cond:
            self._scheduled = False
            jobs = list(self._queue)
            self._queue.clear()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        for job in jobs:
            lane = self._lanes.get(job.scope)
            if lane is not None:
                lane.append(job)
                continue
            self._lanes[job.scope] = deque([job])
            task = asyncio.get_running_loop().create_task(self._run_lane(job.scope, self._slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _unregister_exit(self) -> None:
        """Closed and drained: nothing left to flush at exit, nothing for searches to wait for."""
        with self._cond:
            token, self._exit_token = self._exit_token, None
            self._track_locked(busy=False)  # at exit, turns still being stored: not waited for
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
                    self._unsettled.pop(job.seq, None)
                self._track_locked()
                self._queue.clear()
                self._wake_waiters_locked()
                self._cond.wait_for(self._drained_locked, _EXIT_GRACE_S)
            # Still being stored after the grace: may or may not be. The rest of
            # their lanes is dropped when they finish; count it as dropped now.
            unsure = self._storing
            dropped = self._dropped + len(self._outstanding) - unsure
            failed = self._unstored
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
            "(await) rec.close() or rec.flush() (close_sync()/flush_sync() from sync code) before "
            "the process exits, or raise exit_timeout",
            lost,
            "; ".join(why),
        )

    async def _run_lane(self, scope: Scope, slots: asyncio.Semaphore) -> None:
        IN_RECORDER_LANE.set(True)  # this task's context (and threads it starts) only
        lane = self._lanes[scope]
        try:
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
                except BaseException as exc:
                    # The memory closed under a recorder that was not closed first, or
                    # user code raised SystemExit & co. (which must not end the owner
                    # loop): what the lane holds and did not store is failed, and says so.
                    batch.extend(lane)
                    lane.clear()
                    if isinstance(exc, StoreClosedError | asyncio.CancelledError):
                        self._fail_unstored(batch, "add_turn", _closed_error())
                    else:
                        logger.error("turn recorder: a lane stopped on %r", exc, exc_info=exc)
                        err = RuntimeError(f"the turn recorder's lane stopped on {exc!r}")
                        self._fail_unstored(batch, "worker", err)  # may or may not be stored
                    return
                finally:
                    for job in batch:
                        self._finish(job)
        finally:
            del self._lanes[scope]

    def _forget_before(self, prefix: Scope, upto: int, mark: bool = True) -> int:
        """A ``delete_scope(prefix)`` ran (on the owner thread): the turns accepted
        before it (``seq < upto``) in scopes under ``prefix`` and not stored yet are
        never stored; one whose store was queued already is deleted once stored
        (:meth:`_process`). Returns how many turns it marked (``mark=False``: counts)."""
        n = len(prefix)
        with self._cond:
            found = [
                job
                for job in self._unsettled.values()
                if job.seq < upto and job.scope[:n] == prefix and not job.forgotten
            ]
            for job in found if mark else ():
                job.forgotten = True
        return len(found)

    def _accepted_upto(self) -> int:
        """The ``seq`` the next accepted turn gets (see :meth:`_forget_before`)."""
        with self._cond:
            return self._next_seq

    async def _process(self, batch: list[Job]) -> None:
        """Store a batch of one scope's turns in one call; one by one if that fails.
        Turns a ``delete_scope`` forgot are not stored (stored meanwhile: deleted)."""
        everything, batch = batch, [j for j in batch if not j.forgotten]
        if batch:
            await self._store(batch)
        late = [i for job in batch if job.stored and job.forgotten for i in job.ids]
        delete = getattr(self.memory, "adelete", None)
        if late and delete is not None:  # stored after the delete that forgot them
            try:
                try:
                    await delete(late)
                except MemoryNotFoundError:  # some went already: the rest one by one
                    for i in late:
                        with suppress(MemoryNotFoundError):
                            await delete([i])
            except Exception as exc:  # noqa: BLE001 (the lane goes on; the ids are named)
                logger.error(
                    "turn recorder: %d memories of turns a delete_scope forgot were stored "
                    "as it ran and could not be deleted (%s); delete them: memory.delete(%r)",
                    len(late),
                    exc,
                    late,
                )
        self._settle(everything)  # searches waiting for them go on; a consolidation after
        stored = [job for job in batch if job.stored and not job.forgotten]
        if stored:
            await self._after_store(stored)

    async def _store(self, batch: list[Job]) -> None:
        try:
            self._stored(batch, await self.memory.aadd_turns([j.turn() for j in batch]))
        except StoreClosedError:
            raise  # no retry can succeed: the lane fails what it holds
        except CommitUnknownError as exc:  # maybe stored: a retry could store it twice
            for job in batch:  # but not one with unique_on: the store skips it if stored
                if not job.unique_on:
                    self._fail_kept(job, exc)
                    continue
                if job.forgotten:  # a delete_scope forgot it meanwhile
                    continue
                try:
                    self._stored([job], await self.memory.aadd_turns([job.turn()]))
                except Exception as one:  # noqa: BLE001 (as below)
                    self._fail_kept(job, one)
        # Any failure (a custom embedder may raise anything) must not kill the
        # worker: the turns are retried alone, so only the failing ones are kept
        # and re-raised at the next flush()/close().
        except Exception as exc:  # noqa: BLE001
            if len(batch) == 1:
                self._fail_kept(batch[0], exc)
            else:
                for job in batch:
                    if job.forgotten:  # a delete_scope forgot it meanwhile
                        continue
                    try:
                        self._stored([job], await self.memory.aadd_turns([job.turn()]))
                    except Exception as one:  # noqa: BLE001 (as above)
                        self._fail_kept(job, one)

    def _fail_kept(self, job: Job, exc: Exception) -> None:
        """``job``'s store failed: reported at the next flush, unless a ``delete_scope``
        forgot it meanwhile (its user wanted it gone; with ``CommitUnknownError`` it may
        be stored: logged, with what deletes it)."""
        if not job.forgotten:
            self._fail(job, "add_turn", exc)
        elif isinstance(exc, CommitUnknownError):
            logger.error(
                "turn recorder: a turn of %r that a delete_scope forgot may have been "
                "stored (%s); delete_scope(%r) again to be sure",
                job.scope,
                exc,
                job.scope,
            )

    @staticmethod
    def _stored(jobs: list[Job], pairs: object) -> None:
        """``jobs`` are stored, as ``pairs`` (what ``aadd_turns`` returned; a stand-in
        memory may return anything: then no ids)."""
        got = list(pairs) if isinstance(pairs, list) else []
        for i, job in enumerate(jobs):
            job.stored = True
            if i < len(got) and isinstance(got[i], tuple):
                job.ids = tuple(str(m.id) for m in got[i] if hasattr(m, "id"))

    async def _after_store(self, stored: list[Job]) -> None:
        """Consolidate the batch's scope once if ``consolidate_every`` of its turns are due.

        The count is the store's (:mod:`._turn_count`: every turn stored in the scope,
        by any process, since its last consolidation), so short-lived processes that
        each record a few turns still consolidate; a memory that keeps no count (a
        stand-in) is counted here, by this recorder. Of recorders racing to the
        threshold, one claims the consolidation; once it ends (done or failed) the
        count starts again.
        """
        job = stored[-1]
        with self._cond:
            self._recorded += len(stored)
            if self._exiting:  # the exit bound is for storing turns, not for distilling
                return  # (still due: the next turn recorded, by any process, starts it)
        every = self.consolidate_every
        consolidate: Callable[[Scope], Awaitable[object]] | None = getattr(
            self.memory, "aconsolidate", None
        )
        if every is None or consolidate is None:
            return
        claim_due: Callable[[Scope, int], Awaitable[Claim | None]] | None = getattr(
            self.memory, "_aclaim_consolidation", None
        )
        try:
            claim: Claim | None = None
            if claim_due is None:
                before = self._counts.get(job.scope, 0)
                after = self._counts[job.scope] = before + len(stored)
                if after // every == before // every:
                    return
            else:
                try:
                    claim = await claim_due(job.scope, every)
                except StoreClosedError:  # closed since: the count is stored, still due
                    return
                if claim is None:
                    return
            failed: BaseException | None = None
            try:
                await consolidate(job.scope)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 (raised below, once settled)
                failed = exc
            if claim is not None:
                await self._end_claim(claim)
            if failed is not None:
                raise failed
        # As above: kept and re-raised at the next flush()/close().
        except asyncio.CancelledError:  # the memory closed meanwhile: the turns are stored
            self._fail(job, "consolidate", StoreClosedError("the memory closed meanwhile"))
            raise
        except BaseException as exc:  # noqa: BLE001 (SystemExit & co. too: the lane goes on)
            err = exc if isinstance(exc, Exception) else RuntimeError(f"consolidate: {exc!r}")
            self._fail(job, "consolidate", err)

    async def _end_claim(self, claim: Claim) -> None:
        """End a claim; if that fails, the claim lapses by itself (the turns stay due)."""
        try:
            await self.memory._asettle_consolidation(claim)
        except Exception as exc:  # noqa: BLE001 (logged: the consolidation's outcome counts)
            logger.warning("turn recorder: could not end a consolidation's claim: %s", exc)

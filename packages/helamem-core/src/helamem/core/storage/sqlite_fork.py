"""SQLite across ``fork()``: the store's SQLite calls in flight are waited for.

SQLite keeps the state of its file locks, and the mutexes that guard it, in the
process's memory. ``fork()`` copies that memory but not the threads: a call
running on another thread at the fork stays "in progress" in the child's copy.
The child's own connection to the same file then hangs in ``connect`` (a mutex
held forever) or waits its busy timeout on every write and fails (``database is
locked``; both seen). So the store's calls hold a :class:`ForkGate` (each job of
a memory's owner thread, the checkpoint thread's checkpoints), and ``fork()``,
through ``os.register_at_fork``, first takes every gate of the process: it waits
for the calls in progress (at most the gate's ``wait_s`` each, then forks
regardless, logged), the parent's threads wait meanwhile, and both sides get the
gates back once the fork is done."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from types import TracebackType

__all__ = ["ForkGate"]

logger = logging.getLogger(__name__)


class ForkGate:
    """Held around one connection's write transactions (``with gate:``), and by
    ``fork()`` while it copies the process.

    Args:
        wait_s: The most ``fork()`` waits for a transaction in flight (seconds).
        name: The file, for the message when that wait runs out.
    """

    def __init__(self, wait_s: float, name: str) -> None:
        # re-entrant: a nested transaction fails in SQLite (as before), not here; a
        # fork from inside a transaction does not wait for itself
        self._lock = threading.RLock()
        self._wait_s = wait_s
        self._name = name
        _GATES.add(self)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


_GATES: weakref.WeakSet[ForkGate] = weakref.WeakSet()
_taken: list[ForkGate] = []


def _before_fork() -> None:
    """In the parent: take every gate (each thread holds at most its own: no cycle)."""
    for gate in list(_GATES):
        if gate._lock.acquire(timeout=gate._wait_s):
            _taken.append(gate)
        else:  # a very long transaction
            logger.warning(
                "fork() did not wait longer for a write to %s (%.0f s): a child that "
                "opens it may find it locked",
                gate._name,
                gate._wait_s,
            )


def _after_fork_in_parent() -> None:
    while _taken:
        _taken.pop()._lock.release()


def _after_fork_in_child() -> None:
    _taken.clear()
    for gate in list(_GATES):  # the parent's stores: unusable here, but never stuck
        gate._lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )

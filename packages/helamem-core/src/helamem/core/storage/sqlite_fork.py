"""SQLite across ``fork()``: the store's SQLite calls in flight are waited for.

SQLite keeps the state of its file locks, and the mutexes that guard it, in the
process's memory. ``fork()`` copies that memory but not the threads: a call
running on another thread at the fork stays "in progress" in the child's copy.
The child's own connection to the same file then hangs in ``connect`` (a mutex
held forever) or waits its busy timeout on every write and fails (``database is
locked``; both seen). So the store's calls hold a :class:`ForkGate` (each job of
a memory's owner thread, the checkpoint thread's checkpoints), and ``fork()``,
through ``os.register_at_fork``, first takes every gate of the process; the
parent's threads wait meanwhile, and both sides get the gates back once the
fork is done.

The gates are taken all or none (:func:`_take_all`): ``fork()`` never holds one
gate while it waits for another, since the holder of the second may be waiting
for the first (a store closing waits for its checkpoint thread, which needs the
checkpoint's gate). It waits for at most the largest ``wait_s`` of the gates in
all, then forks holding those that are free and logs the others (a child that
opens those files may find them locked). Forks from several threads take turns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from types import TracebackType

__all__ = ["ForkGate"]

logger = logging.getLogger(__name__)


class ForkGate:
    """Held around one connection's work (``with gate:``), and by ``fork()`` while it
    copies the process.

    Args:
        wait_s: The most ``fork()`` waits for work in flight (seconds); with several
            gates, the largest ``wait_s`` bounds the whole wait.
        name: The file, for the message when that wait runs out.
    """

    def __init__(self, wait_s: float, name: str) -> None:
        # re-entrant: a nested transaction fails in SQLite (as before), not here; a
        # fork from inside a job does not wait for itself
        self._lock = threading.RLock()
        self._wait_s = wait_s
        self._name = name
        with _registry:
            _GATES.add(self)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


_GATES: weakref.WeakSet[ForkGate] = weakref.WeakSet()
_registry = threading.Lock()
"""Guards :data:`_GATES` (a gate built on one thread while another forks)."""
_forking = threading.Lock()
"""Held from before a fork to after it, in the parent: forks from two threads take
turns, so each gives back exactly the gates it took."""
_taken: list[ForkGate] = []
"""The gates the fork in progress holds (guarded by :data:`_forking`)."""


def _gates() -> list[ForkGate]:
    with _registry:
        return list(_GATES)


def _take_all(deadline: float) -> tuple[list[ForkGate], list[ForkGate]]:
    """Take every gate, or none: returns (taken, not taken); the latter is empty
    unless ``deadline`` (``time.monotonic()``) passed.

    Each round holds at most the one gate it blocked on last and tries the rest
    without blocking; when one is busy it gives all back and next blocks on that
    one. So a holder that needs a second gate to finish (and let go of the first)
    always can.
    """
    first: ForkGate | None = None
    while True:
        taken: list[ForkGate] = []
        busy: list[ForkGate] = []
        if first is not None:
            wait_s = max(deadline - time.monotonic(), 0.0)
            (taken if first._lock.acquire(timeout=wait_s) else busy).append(first)
        for gate in _gates():
            if gate is first:
                continue
            (taken if gate._lock.acquire(blocking=False) else busy).append(gate)
        if not busy or time.monotonic() >= deadline:
            return taken, busy
        for gate in taken:
            gate._lock.release()
        first = busy[0]


def _before_fork() -> None:
    """In the parent: take every gate (:func:`_take_all`), waiting at most the largest
    ``wait_s`` of them."""
    global _taken
    _forking.acquire()
    wait_s = max((g._wait_s for g in _gates()), default=0.0)
    _taken, busy = _take_all(time.monotonic() + wait_s)
    for gate in busy:  # very long work, or work that waits for this thread
        logger.warning(
            "fork() did not wait longer for work on %s (%.0f s): a child that opens it "
            "may find it locked",
            gate._name,
            wait_s,
        )


def _give_back() -> None:
    """Release the gates the fork took (the forking thread owns them on both sides:
    one it held before, in a job of its own, stays held)."""
    global _taken
    taken, _taken = _taken, []
    for gate in taken:
        gate._lock.release()


def _after_fork_in_parent() -> None:
    _give_back()
    _forking.release()


def _after_fork_in_child() -> None:
    """In the child, whose one thread is the forking one: every gate it does not hold
    (one held by a thread of the parent, which is not here) gets a fresh lock, as do
    the module's; the parent's stores are unusable here, but never stuck."""
    global _registry, _forking
    _give_back()
    for gate in list(_GATES):
        if not gate._lock._is_owned():  # type: ignore[attr-defined]
            gate._lock = threading.RLock()
    _registry, _forking = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )

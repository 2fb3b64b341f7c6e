"""SQLite across ``fork()``.

SQLite keeps the state of its file locks, and the mutexes that guard it, in the
process's memory, keyed by file. ``fork()`` copies that memory but not the
threads. Two consequences, each handled here:

* A child must not open a store file its parent had open at the fork: its new
  connection reuses the copied lock state, believes it holds locks it never took
  from the OS, and the parent (or another process), seeing no lock, may check-
  point or reset the WAL under it: the child's writes are lost or the file is
  damaged (seen: 10 of 100 rows lost; "file is not a database"). So the store's
  files are registered while open (:func:`opened`, :func:`closed`), and in a
  forked child :func:`check_not_inherited` refuses such a file with
  :class:`~helamem.core.errors.ForkedStoreError` naming the fix.
* A SQLite call running on another thread at the fork stays "in progress" in the
  child's copy, and the child's connections to other files could hang on a
  mutex it held. So the store's calls hold a :class:`ForkGate` (each job of a
  memory's owner thread, the checkpoint thread's checkpoints), and ``fork()``,
  through ``os.register_at_fork``, first takes every gate of the process, store
  gates before checkpoint gates (the order a closing store nests them in, so it
  never waits on a holder that waits on it), a busy one waited for at most until the
  largest ``wait_s`` of the busy ones has passed in all (a free gate, of a closed or
  idle store, is taken at once and extends nothing); a gate still busy then is left
  (logged after the fork). Gates built while it waits (a store opened on another
  thread) are taken too, and none can be built until the fork is done. Each
  forking thread gives back exactly the gates it took.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from types import TracebackType

from ..errors import ForkedStoreError

__all__ = ["ForkGate", "check_not_inherited", "closed", "opened"]

logger = logging.getLogger(__name__)

STORE, CHECKPOINT = 0, 1
"""Gate ranks: ``fork()`` takes every store gate, then every checkpoint gate."""


class ForkGate:
    """Held around one connection's work (``with gate:``), and by ``fork()`` while it
    copies the process.

    Args:
        wait_s: The most ``fork()`` waits for work in flight (seconds); with several
            gates, the largest ``wait_s`` bounds the whole wait.
        name: The file, for the message when that wait runs out.
        rank: :data:`STORE` or :data:`CHECKPOINT`: work holding a store gate may
            wait for a checkpoint gate, never the other way.
    """

    def __init__(self, wait_s: float, name: str, rank: int = STORE) -> None:
        # re-entrant: a nested transaction fails in SQLite (as before), not here; a
        # fork from inside a job does not wait for itself
        self._lock = threading.RLock()
        self._wait_s = wait_s
        self._name = name
        self._rank = rank
        with _registry:
            _GATES.add(self)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


_GATES: weakref.WeakSet[ForkGate] = weakref.WeakSet()
_OPEN: Counter[tuple[int, int]] = Counter()
"""The store files open in this process, by ``(st_dev, st_ino)``: connections per file."""
_INHERITED: frozenset[tuple[int, int]] = frozenset()
"""The files a parent (or an earlier ancestor) had open when this process was forked."""
_registry = threading.Lock()
"""Guards :data:`_GATES` and :data:`_OPEN` (a store opened on one thread while another
forks; held only briefly, never while waiting)."""
_mine = threading.local()
"""``held``: the gates this thread's fork took; ``busy``: those it left (only while it
forks; the after-fork hooks act only where the before-fork hook finished)."""


def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # not created yet: nobody can have it open
        return None
    return st.st_dev, st.st_ino


def check_not_inherited(path: Path) -> None:
    """Refuse, in a forked child, a store file the parent had open at the fork.

    Raises:
        ForkedStoreError: It had (its copied lock state would let the child's
            writes be lost).
    """
    if _INHERITED and (key := _key(path)) is not None and key in _INHERITED:
        raise ForkedStoreError(
            f"this process was forked from one that had the SQLite store {path} open: "
            f"SQLite's lock state, copied by fork(), would let this process's writes be "
            f"lost. Close the store in the parent before forking, or start workers with "
            f"multiprocessing's 'spawn' method (multiprocessing.get_context('spawn')), "
            f"or 'forkserver' without preloading a module that opens the store (the fork "
            f"server is then the parent)"
        )


def opened(path: Path) -> tuple[int, int] | None:
    """Register a connection to the store file ``path`` (just opened); its key."""
    key = _key(path)
    if key is not None:
        with _registry:
            _OPEN[key] += 1
    return key


def closed(key: tuple[int, int] | None) -> None:
    """Unregister a connection :func:`opened` registered (once closed)."""
    if key is not None:
        with _registry:
            _OPEN[key] -= 1
            if _OPEN[key] <= 0:
                del _OPEN[key]


def _take_all(start: float) -> None:
    """Take every gate, by rank, into ``_mine.held`` (those still busy once the largest
    ``wait_s`` of the gates found busy has passed since ``start``: ``_mine.busy``; a free
    gate, of a closed or idle store, bounds nothing), and then :data:`_registry`
    (``_mine.registry``): a store built
    meanwhile waits for the fork before its gate exists, so no SQLite work starts
    under a gate the fork did not take. What it takes is recorded as it goes, so an
    exception (a signal's) anywhere gives all of it back (:func:`_give_back`).

    Gates built while it waits (another thread opening a store) are taken in a
    further round, until a look under the registry's lock finds none new.
    """
    taken: list[ForkGate] = []
    busy: list[ForkGate] = []
    seen: set[ForkGate] = set()
    bound = 0.0
    _mine.held, _mine.busy, _mine.registry = taken, busy, False
    try:
        while True:
            with _registry:
                new = sorted((g for g in _GATES if g not in seen), key=lambda g: g._rank)
            for gate in new:
                seen.add(gate)
                if gate._lock.acquire(blocking=False):
                    taken.append(gate)
                    continue
                bound = max(bound, gate._wait_s)  # work in flight under it: wait for it
                wait_s = max(start + bound - time.monotonic(), 0.0)
                (taken if gate._lock.acquire(timeout=wait_s) else busy).append(gate)
            _registry.acquire()
            _mine.registry = True
            if all(g in seen for g in _GATES):
                return
            _mine.registry = False
            _registry.release()
    except BaseException:
        _give_back()
        raise


def _before_fork() -> None:
    """In the parent: take every gate, waiting in all at most the largest ``wait_s`` of
    those busy (a closed store's gate, or an idle one's, makes it wait no longer)."""
    _take_all(time.monotonic())


def _give_back() -> list[ForkGate] | None:
    """Release what this thread's fork took: its gates (the forking thread owns them on
    both sides: one it held before, in a job of its own, stays held) and the registry;
    the gates it left busy, or ``None`` when this thread took nothing. Every release is
    attempted even if an exception (a signal's) interrupts one."""
    held: list[ForkGate] | None = getattr(_mine, "held", None)
    if held is None:
        return None
    busy: list[ForkGate] = _mine.busy
    registry: bool = _mine.registry
    _mine.held = _mine.busy = None
    _mine.registry = False
    try:
        while held:
            held.pop()._lock.release()
    finally:
        while held:
            held.pop()._lock.release()
        if registry:
            _registry.release()
    return busy


def _after_fork_in_parent() -> None:
    for gate in _give_back() or ():  # logged here, not while every gate is held
        logger.warning(
            "fork() did not wait longer for work on %s (%.0f s): a child that opens it "
            "may find it locked",
            gate._name,
            gate._wait_s,
        )


def _after_fork_in_child() -> None:
    """In the child, whose one thread is the forking one: the files open in the parent
    are refused here; every gate it does not hold (one held by a thread of the parent,
    which is not here) gets a fresh lock, as does the registry's; the parent's stores are
    unusable here, but never stuck."""
    global _registry, _INHERITED
    _give_back()
    _INHERITED = _INHERITED | frozenset(_OPEN)
    _OPEN.clear()
    for gate in list(_GATES):
        if not gate._lock._is_owned():  # type: ignore[attr-defined]
            gate._lock = threading.RLock()
    _registry = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )

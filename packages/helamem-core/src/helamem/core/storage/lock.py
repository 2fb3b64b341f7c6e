"""An inter-process lock on an embedded Chroma directory, shared within a process.

Embedded Chroma keeps each HNSW index in the memory of the process that
loaded it and persists it from there, so two processes writing one directory
lose each other's vectors. The first process to need the index takes this
lock (an OS file lock, released by the kernel if the process dies); other
processes are told so by :class:`~helamem.core.storage.base.IndexLockedError`.
Within one process the lock is reference-counted: several stores opened on
one path share it, as they share Chroma's client for that path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import filelock

__all__ = ["ProcessLock"]

_guard = threading.Lock()
_held: dict[str, tuple[filelock.BaseFileLock, int]] = {}
_inherited: list[filelock.BaseFileLock] = []
"""A forked child's copies of its parent's locks: kept, never released. An OS file
lock belongs to the open file, which the child shares with its parent: releasing it
here would unlock the parent's index (it is dropped when both have closed it)."""


def _after_fork() -> None:
    """In a forked child: the parent's locks are not this process's to share or give
    back (its stores need their own: another process, for the file lock), and the
    guard may have been held by a thread that is not here."""
    global _guard
    _guard = threading.Lock()
    _inherited.extend(lock for lock, _ in _held.values())
    _held.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork)


class ProcessLock:
    """A non-blocking, reference-counted (per process) exclusive lock on ``path``.

    Args:
        path: The lock file (created if missing; never deleted).
    """

    def __init__(self, path: Path) -> None:
        self._key = str(path.resolve())
        self._path = path
        self.held = False
        self.first = False  # this object's share took the file lock (no other share held)

    def try_acquire(self) -> bool:
        """Take the lock unless another process holds it; True when this object holds it."""
        if self.held:
            return True
        with _guard:
            entry = _held.get(self._key)
            if entry is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                # not thread-local: a store takes it on its owner thread, and the
                # last store on the path (another owner thread) releases it
                lock = filelock.FileLock(str(self._path), timeout=0, thread_local=False)
                try:
                    lock.acquire()
                except filelock.Timeout:
                    return False
                _held[self._key] = (lock, 1)
            else:
                _held[self._key] = (entry[0], entry[1] + 1)
            self.first = entry is None
        self.held = True
        return True

    def release(self, last: Callable[[], object] | None = None) -> None:
        """Give this object's share back; the file lock goes with the last share, after
        ``last()`` (run only then, with no other share able to start meanwhile)."""
        if not self.held:
            return
        self.held = False
        with _guard:
            if self._key not in _held:  # taken before a fork, in the parent: not ours
                return
            lock, count = _held[self._key]
            if count > 1:
                _held[self._key] = (lock, count - 1)
                return
            del _held[self._key]
            try:
                if last is not None:
                    last()
            finally:
                lock.release()

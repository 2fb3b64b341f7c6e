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

import threading
from pathlib import Path

import filelock

__all__ = ["ProcessLock"]

_guard = threading.Lock()
_held: dict[str, tuple[filelock.BaseFileLock, int]] = {}


class ProcessLock:
    """A non-blocking, reference-counted (per process) exclusive lock on ``path``.

    Args:
        path: The lock file (created if missing; never deleted).
    """

    def __init__(self, path: Path) -> None:
        self._key = str(path.resolve())
        self._path = path
        self.held = False

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
        self.held = True
        return True

    def release(self) -> None:
        """Give this object's share back; the file lock goes with the last share."""
        if not self.held:
            return
        self.held = False
        with _guard:
            lock, count = _held[self._key]
            if count > 1:
                _held[self._key] = (lock, count - 1)
                return
            del _held[self._key]
            lock.release()

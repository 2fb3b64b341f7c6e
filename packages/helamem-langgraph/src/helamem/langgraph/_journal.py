"""The writer lock and intent journal of :class:`~helamem.langgraph.HelaMemStore`.

One file, ``<memory path>/langgraph-store.journal``, is both:

* the **lock** every document and memory write of the store takes: a
  ``threading.Lock`` per store object, then ``flock(LOCK_EX)`` on the file, so
  writers in one thread, several threads, several store objects and several
  processes on one path run one at a time. The OS drops the ``flock`` of a
  killed process;
* the **journal**: before its first write, the holder appends one JSON line per
  item it is about to change (``{"ns", "key", "new", "old"}``: the memory id it
  is about to add and the one it replaces, either may be ``null``) and flushes
  it to the OS; after its last write it truncates the file. A holder killed or
  failed in between leaves its lines, and the next holder settles them before
  it writes anything (see ``HelaMemStore._settle``). A line cut short by a kill
  has no newline and is ignored: nothing was written after it.

A batch's reads take the same file's lock shared (``flock(LOCK_SH)`` on a
descriptor of their own, :meth:`Journal.reading`), so they see one state: no
write of the path commits between them, and reads run beside each other. A
writer waiting for the lock holds ``<memory path>/langgraph-store.gate``
exclusively, which new readers take shared before the journal, so a stream of
overlapping reads cannot keep a writer waiting.

Without ``fcntl`` (Windows) only the in-process lock applies: one process per path,
and a batch's reads may see a write of another store object land between them.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

if sys.platform != "win32":
    import fcntl

__all__ = ["Intent", "Journal"]


@dataclass(frozen=True)
class Intent:
    """One item a writer is about to change: its address, the memory id it
    adds (``None``: the item is deleted or not indexed) and the one it replaces."""

    ns: tuple[str, ...]
    key: str
    new: str | None
    old: str | None

    def line(self) -> str:
        return json.dumps({"ns": list(self.ns), "key": self.key, "new": self.new, "old": self.old})


def _parse(text: str) -> list[Intent]:
    out = []
    for line in text.split("\n")[:-1]:  # the last piece: empty, or cut short by a kill
        row = json.loads(line)
        out.append(Intent(tuple(row["ns"]), str(row["key"]), row["new"], row["old"]))
    return out


class Journal:
    """The lock file and its pending intents (opened on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def _open(self) -> int:
        """The journal's descriptor: unbuffered, appending (other processes write it too)."""
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    @contextmanager
    def held(self, *, wait: bool = True) -> Iterator[list[Intent] | None]:
        """Hold the lock; yields the pending intents of an earlier holder, or
        ``None`` when ``wait=False`` and another writer holds it."""
        if not self._thread_lock.acquire(blocking=wait):
            yield None
            return
        try:
            fd = self._open()
            if sys.platform != "win32":
                try:
                    if wait:
                        with self._gate(fcntl.LOCK_EX):  # new readers wait behind this writer
                            fcntl.flock(fd, fcntl.LOCK_EX)
                    else:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield None
                    return
            try:
                yield _parse(os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8"))
            finally:
                if sys.platform != "win32":
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    @contextmanager
    def _gate(self, how: int) -> Iterator[None]:
        """The gate file locked ``how`` (its own descriptor, closed after)."""
        gate = os.open(self.path.with_suffix(".gate"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(gate, how)
            yield
        finally:
            # unlocked first: a child forked meanwhile shares the open file, and
            # closing this descriptor alone would leave the lock held until it exits
            fcntl.flock(gate, fcntl.LOCK_UN)
            os.close(gate)

    def read_lock(self) -> int | None:
        """Wait until no writer of the path holds or waits for the lock, and take it
        shared: returns the descriptor to give :meth:`read_unlock` (blocking)."""
        if sys.platform == "win32":
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            with self._gate(fcntl.LOCK_SH):
                fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def read_unlock(fd: int | None) -> None:
        """Give back what :meth:`read_lock` took."""
        if fd is not None:
            with suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)  # also for a child forked meanwhile
            os.close(fd)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """:meth:`read_lock` held for the block (a batch's reads). The holder must not
        take the writer lock inside: it would wait for itself."""
        fd = self.read_lock()
        try:
            yield
        finally:
            self.read_unlock(fd)

    def log(self, intents: Sequence[Intent]) -> None:
        """Append intents (the lock is held) and flush them to the OS."""
        if intents:
            data = "".join(i.line() + "\n" for i in intents).encode("utf-8")
            written = os.write(self._open(), data)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")

    def clear(self) -> None:
        """Forget every pending intent (the lock is held): they are settled."""
        os.ftruncate(self._open(), 0)

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

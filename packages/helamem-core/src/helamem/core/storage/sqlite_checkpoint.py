"""The SQLite store's WAL checkpoints, run beside the writer on a thread of their own.

In WAL mode a commit appends pages to the ``-wal`` file; a *checkpoint* copies
them into the database file and syncs it. By default SQLite runs one inside
the commit that takes the WAL past 1,000 pages, on the writer's thread: a bulk
``add_many`` of 1,000 turns (about 6 MB with embeddings, token vectors and
full-text rows) paid one per batch, about half of HeLa-Mem's own ingest time at
100k memories (150 of ~300 µs per memory; README, Scale). Here the store's
connections checkpoint only far behind (:data:`BACKSTOP_PAGES`), and the routine
checkpoint runs on a thread with its own connection, where ``sqlite3`` releases
the GIL: it overlaps the next work (the Chroma upsert that follows a commit)
instead of lengthening the commit. It moves no row and reads none: the writer's
connection stays the single owner of the data. A killed process loses nothing
to it (a checkpoint is atomic and SQLite replays the WAL on the next open).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path

from .sqlite_fork import CHECKPOINT, ForkGate

__all__ = [
    "BACKSTOP_PAGES",
    "CONNECT_TIMEOUT_S",
    "MIN_INTERVAL_S",
    "WalCheckpointer",
    "set_backstop",
]

logger = logging.getLogger(__name__)

BACKSTOP_PAGES = 10_000
"""The store's own connections' ``PRAGMA wal_autocheckpoint`` (WAL frames since
its last restart; ~40 MiB at SQLite's 4 KiB page): they checkpoint inside a commit
only when the thread falls this far behind (or is gone), so the WAL stays
bounded whatever happens to the thread."""

MIN_INTERVAL_S = 0.2
"""At most one checkpoint per this many seconds: a burst of small commits
(``add_turn`` after every turn) costs one checkpoint and its syncs, not one each."""

CONNECT_TIMEOUT_S = 1.0
"""The checkpoint connection's busy timeout: reading the schema is all it may
wait for (a checkpoint in PASSIVE mode waits for nothing), and :meth:`close`
waits for the thread, so it must not wait long; a checkpoint that meets a lock
is skipped until the next commit."""


def set_backstop(db: sqlite3.Connection) -> None:
    """Set :data:`BACKSTOP_PAGES` on a connection to the store's file: every connection
    the store opens (its own, the exact index's) leaves routine checkpoints to the thread.

    Raises:
        sqlite3.Error: The pragma failed (the caller maps it).
    """
    db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")


_LIVE: weakref.WeakSet[WalCheckpointer] = weakref.WeakSet()
"""Every checkpointer of this process, reset in a forked child (:func:`_after_fork`)."""


def _after_fork() -> None:
    """In a forked child: the parent's threads are not here, so each checkpointer
    forgets its thread (and its lock, which a parent's thread may have held); the
    child's first commit starts a thread of its own."""
    for cp in list(_LIVE):
        cp._forget_thread()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork)


class WalCheckpointer:
    """Checkpoints one SQLite file's WAL on a daemon thread and connection of its own.

    :meth:`wrote` (after each commit) wakes the thread, started on first use;
    it runs ``PRAGMA wal_checkpoint(PASSIVE)``, which waits for no reader or
    writer (frames a reader still needs are copied by a later one; another
    process's checkpoint in progress makes this one a no-op). Nothing here
    raises into the writer: a thread that cannot start, a file that cannot be
    opened or a checkpoint that fails is logged (a failure once, until one
    succeeds again) and the writer's :data:`BACKSTOP_PAGES` takes over; the
    WAL keeps every commit. :meth:`close` stops and joins the thread (after the
    checkpoint in progress) and closes its connection. No I/O before the first
    :meth:`wrote`. A forked child starts a thread of its own.

    Args:
        path: The database file, absolute (the thread opens it later, maybe after
            an ``os.chdir``; :class:`~.sqlite_schema.SQLiteConnection` makes it so).
        busy_timeout_s: The store's busy timeout; the thread waits at most
            :data:`CONNECT_TIMEOUT_S`.
    """

    def __init__(self, path: Path, busy_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self._path = path
        self._timeout = min(busy_timeout_s, CONNECT_TIMEOUT_S)
        # fork() waits for a checkpoint in progress (after the store's own gates)
        self._gate = ForkGate(10.0, str(path), CHECKPOINT)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # the thread could not start or open the file: backstop only. Written by the
        # thread without the lock (a bool: read under the lock, or as a hint that at
        # worst starts one more thread, which gives up the same way)
        self._gave_up = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failing = False
        self.checkpoints = 0
        """Checkpoints run (those that failed included)."""
        self.failures = 0
        """Checkpoints that failed, and a failed start or open."""
        _LIVE.add(self)

    def _forget_thread(self) -> None:
        """After a fork, in the child: no thread, a fresh lock and events."""
        self._lock, self._thread, self._gave_up = threading.Lock(), None, False
        self._wake, self._stop = threading.Event(), threading.Event()

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wrote(self) -> None:
        """A commit happened: checkpoint soon (at most once per :data:`MIN_INTERVAL_S`).

        Never raises: the commit it follows is done whatever happens here.
        """
        if self._thread is None and not self._gave_up:
            with self._lock:
                if self._thread is None and not self._gave_up:
                    self._start()
        self._wake.set()

    def _start(self) -> None:
        wake, stop = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=self._run, args=(wake, stop), name="helamem-checkpoint", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no thread can start (a limit, interpreter shutdown)
            self._gave_up = True
            self.failures += 1
            logger.warning(
                "cannot start the checkpoint thread of %s, the writer checkpoints: %s",
                self._path,
                exc,
            )
            return
        self._wake, self._stop, self._thread = wake, stop, thread

    def close(self) -> None:
        """Stop the thread and close its connection; a later :meth:`wrote` starts anew."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()  # this thread's own events: a later start gets new ones
            self._wake.set()
            self._gave_up = False
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _connect(self) -> sqlite3.Connection:
        with self._gate:
            return sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)

    def _run(self, wake: threading.Event, stop: threading.Event) -> None:
        try:
            db = self._connect()
        except sqlite3.Error as exc:
            self._gave_up = True
            self.failures += 1
            logger.warning(
                "cannot open %s for background checkpoints, the writer checkpoints: %s",
                self._path,
                exc,
            )
            return
        try:
            last = -MIN_INTERVAL_S
            while True:
                wake.wait()
                wake.clear()  # before stop is read: close() sets stop, then wakes
                if stop.is_set():
                    return
                pause = last + MIN_INTERVAL_S - time.monotonic()
                if pause > 0 and stop.wait(pause):
                    return
                self._checkpoint(db)
                last = time.monotonic()
        finally:
            with self._gate:
                db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            with self._gate:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # a full disk, an I/O error: the WAL keeps every commit
            self.failures += 1
            self.checkpoints += 1
            if not self._failing:
                self._failing = True
                logger.warning(
                    "background WAL checkpoint of %s failed (logged once until one "
                    "succeeds; the WAL keeps every commit): %s",
                    self._path,
                    exc,
                )
            else:
                logger.debug("background WAL checkpoint of %s failed again: %s", self._path, exc)
            return
        self.checkpoints += 1
        if self._failing:
            self._failing = False
            logger.info("background WAL checkpoints of %s succeed again", self._path)

"""The SQLite store's WAL checkpoints, run beside the writer on a thread of their own.

In WAL mode a commit appends pages to the ``-wal`` file; a *checkpoint* copies
them into the database file and syncs it. By default SQLite runs one inside
the commit that takes the WAL past 1,000 pages, on the writer's thread: a bulk
``add_many`` of 1,000 turns (about 6 MB with embeddings, token vectors and
full-text rows) paid one per batch, about half of HeLa-Mem's own ingest time at
100k memories (150 of ~300 µs per memory; README, Scale). Here the writer's
connection checkpoints only far behind (:data:`BACKSTOP_PAGES`), and the routine
checkpoint runs on a thread with its own connection, where ``sqlite3`` releases
the GIL: it overlaps the next work (the Chroma upsert that follows a commit)
instead of lengthening the commit. It moves no row and reads none: the writer's
connection stays the single owner of the data. A killed process loses nothing
to it (a checkpoint is atomic and SQLite replays the WAL on the next open).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["BACKSTOP_PAGES", "MIN_INTERVAL_S", "WalCheckpointer"]

logger = logging.getLogger(__name__)

BACKSTOP_PAGES = 10_000
"""The writer connection's own ``PRAGMA wal_autocheckpoint`` (pages; ~40 MiB at
SQLite's 4 KiB page): it checkpoints itself only when the thread falls this far
behind (or is gone), so the WAL stays bounded whatever happens to the thread."""

MIN_INTERVAL_S = 0.2
"""At most one checkpoint per this many seconds: a burst of small commits
(``add_turn`` after every turn) costs one checkpoint and its syncs, not one each."""


class WalCheckpointer:
    """Checkpoints one SQLite file's WAL on a daemon thread and connection of its own.

    :meth:`wrote` (after each commit) wakes the thread, started on first use;
    it runs ``PRAGMA wal_checkpoint(PASSIVE)``, which waits for no reader or
    writer (frames a reader still needs are copied by a later one). A failed
    checkpoint is logged, never raised: the WAL keeps every commit, and the
    writer's :data:`BACKSTOP_PAGES` still bounds it. :meth:`close` stops and
    joins the thread (after the checkpoint in progress) and closes its connection.
    No I/O before the first :meth:`wrote`.
    """

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self._path = path
        self._timeout = busy_timeout_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.checkpoints = 0
        """Checkpoints run (those that failed included)."""
        self.failures = 0
        """Checkpoints that failed (logged)."""

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def wrote(self) -> None:
        """A commit happened: checkpoint soon (at most once per :data:`MIN_INTERVAL_S`)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopping.is_set():
                    thread = threading.Thread(
                        target=self._run, name="helamem-checkpoint", daemon=True
                    )
                    thread.start()
                    self._thread = thread
        self._wake.set()

    def close(self) -> None:
        """Stop the thread and close its connection; a later :meth:`wrote` starts anew."""
        with self._start_lock:
            self._stopping.set()
            self._wake.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        self._stopping.clear()
        self._wake.clear()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)

    def _run(self) -> None:
        try:
            db = self._connect()
        except sqlite3.Error as exc:  # the writer's backstop checkpoints instead
            self.failures += 1
            logger.warning("cannot open %s for background checkpoints: %s", self._path, exc)
            return
        try:
            last = -MIN_INTERVAL_S
            while True:
                self._wake.wait()
                # cleared before stopping is read: close() sets stopping, then wakes
                self._wake.clear()
                if self._stopping.is_set():
                    return
                pause = last + MIN_INTERVAL_S - time.monotonic()
                if pause > 0 and self._stopping.wait(pause):
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # a full disk, an I/O error: the WAL keeps all
                    self.failures += 1
                    logger.warning("background WAL checkpoint of %s failed: %s", self._path, exc)
                self.checkpoints += 1
                last = time.monotonic()
        finally:
            db.close()

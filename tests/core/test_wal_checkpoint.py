"""The SQLite store's WAL checkpoints run on a thread of their own (``sqlite_checkpoint``).

A bulk commit no longer copies the WAL into the database file inside the
commit (SQLite's default at 1,000 pages): the writer only asks, and the
checkpoint thread does it with its own connection. The writer still checkpoints
itself past ``BACKSTOP_PAGES`` (a stalled or failing thread cannot grow the WAL
without bound); a failed checkpoint is logged and loses nothing; closing stops
the thread; a process killed mid-ingest loses no committed memory.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
from helamem.core.storage import sqlite_checkpoint
from helamem.core.storage.sqlite_checkpoint import WalCheckpointer

pytestmark = pytest.mark.sqlite_only

SCOPE = ("wal",)
FILLER = "lorem ipsum dolor " * 100  # ~1.8 kB per memory: 1,500 of them are ~1,500 pages


def _open(path: Path) -> HelaMemory:
    m = HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64))
    m.open()
    return m


def _checkpointer(m: HelaMemory) -> WalCheckpointer:
    cp: WalCheckpointer = m._call(lambda c: c.store._checkpointer)
    return cp


def _bulk(m: HelaMemory, n: int = 1500, tag: str = "t") -> None:
    m.add_many(NewMemory(f"{tag} {i} {FILLER}", SCOPE) for i in range(n))


def _until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_bulk_commit_leaves_its_checkpoint_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "helamem.sqlite3"
    asked: list[int] = []
    monkeypatch.setattr(WalCheckpointer, "wrote", lambda self: asked.append(1))
    with _open(tmp_path) as m:
        before = file.stat().st_size
        _bulk(m)
        assert asked  # each commit asks for a checkpoint
        wal = Path(f"{file}-wal").stat().st_size
        assert wal > 1000 * 4096  # past SQLite's default autocheckpoint ...
        assert file.stat().st_size == before  # ... yet the commit copied nothing
        monkeypatch.undo()
        cp = _checkpointer(m)
        cp.wrote()
        _until(lambda: cp.checkpoints >= 1)  # counted once it has returned
        assert cp.failures == 0
        assert file.stat().st_size > before + 1000 * 4096  # the thread copied the pages
        assert m.stats(SCOPE).memories == 1500


def test_the_writer_still_checkpoints_past_the_backstop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "helamem.sqlite3"
    monkeypatch.setattr(sqlite_checkpoint, "BACKSTOP_PAGES", 300)
    monkeypatch.setattr(WalCheckpointer, "wrote", lambda self: None)  # a stalled thread
    with _open(tmp_path) as m:
        db = m._call(lambda c: c.store.db)
        assert m._call(lambda c: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 300
        before = file.stat().st_size
        _bulk(m)
        assert file.stat().st_size > before + 1000 * 4096  # the writer did it itself
        assert m.stats(SCOPE).memories == 1500


class _FailingCheckpoints(sqlite3.Connection):
    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def test_a_failed_checkpoint_is_logged_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def connect(self: WalCheckpointer) -> sqlite3.Connection:
        return sqlite3.connect(self._path, isolation_level=None, factory=_FailingCheckpoints)

    monkeypatch.setattr(WalCheckpointer, "_connect", connect)
    caplog.set_level(logging.WARNING, logger="helamem.core.storage.sqlite_checkpoint")
    with _open(tmp_path) as m:
        _bulk(m, 600, "first")
        cp = _checkpointer(m)
        _until(lambda: cp.failures >= 1)
        _bulk(m, 600, "second")  # writes go on
        _until(lambda: cp.failures >= 2)
        assert m.stats(SCOPE).memories == 1200
    assert "disk is full" in caplog.text
    assert caplog.text.count("background WAL checkpoint of") == 1  # once until one succeeds
    monkeypatch.undo()
    with _open(tmp_path) as m:
        assert m.stats(SCOPE).memories == 1200
        assert m.search("second 599", SCOPE, k=1).hits[0].memory.content.startswith("second 599 ")


def test_an_unopenable_file_leaves_checkpoints_to_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def connect(self: WalCheckpointer) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(WalCheckpointer, "_connect", connect)
    caplog.set_level(logging.WARNING, logger="helamem.core.storage.sqlite_checkpoint")
    with _open(tmp_path) as m:
        _bulk(m, 300)
        cp = _checkpointer(m)
        _until(lambda: cp.failures == 1 and not cp.running)
        _bulk(m, 300, "more")
        assert m.stats(SCOPE).memories == 600
    assert "cannot open" in caplog.text


def test_a_thread_that_cannot_start_fails_no_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At interpreter shutdown (or a thread limit) ``Thread.start`` raises: the commit
    before it is done, so the write returns normally and the writer checkpoints."""

    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name == "helamem-checkpoint":
            raise RuntimeError("can't create new thread at interpreter shutdown")
        start(self)

    file = tmp_path / "helamem.sqlite3"
    caplog.set_level(logging.WARNING, logger="helamem.core.storage.sqlite_checkpoint")
    monkeypatch.setattr(threading.Thread, "start", refuse)
    monkeypatch.setattr(sqlite_checkpoint, "BACKSTOP_PAGES", 300)
    with _open(tmp_path) as m:  # its migrations are the first commit
        before = file.stat().st_size
        stored = m.add_many(NewMemory(f"t {i} {FILLER}", SCOPE) for i in range(1500))
        m.add("one more", SCOPE)
        assert not _checkpointer(m).running
        assert len(stored) == 1500 and m.stats(SCOPE).memories == 1501
        assert file.stat().st_size > before + 1000 * 4096  # the writer's backstop did
    assert caplog.text.count("cannot start the checkpoint thread") == 1


def test_reads_start_no_thread_and_close_stops_it(tmp_path: Path) -> None:
    with _open(tmp_path) as m:
        _bulk(m, 10)
    with _open(tmp_path) as m:  # a reader: no commit, no thread
        assert m.search("lorem", SCOPE, k=3, learn=False).hits
        cp = _checkpointer(m)
        assert cp._thread is None and cp.checkpoints == 0
    with _open(tmp_path) as m:
        cp = _checkpointer(m)
        m.add("one more", SCOPE)
        thread = cp._thread
        assert thread is not None and thread.name == "helamem-checkpoint"
        _until(lambda: cp.checkpoints >= 1)
    thread.join(0)
    assert not thread.is_alive() and not cp.running


CHILD = """
import sys
from pathlib import Path
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
m = HelaMemory(HelaMemConfig(path=Path(sys.argv[1])), embedder=HashingEmbedder(64))
m.open()
for b in range(200):
    m.add_many(NewMemory(f"b{b} i{i} " + "lorem ipsum dolor " * 100, ("wal",)) for i in range(200))
    print((b + 1) * 200, flush=True)
"""


def test_a_process_killed_mid_ingest_keeps_every_committed_memory(tmp_path: Path) -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    file = tmp_path / "helamem.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    done, grown = 0, False
    deadline = time.monotonic() + 300
    try:
        # past a few batches, and until the thread has copied pages into the file
        while (done < 3000 or not grown) and time.monotonic() < deadline:
            ready, _, _ = select.select([child.stdout], [], [], 1.0)
            if not ready:
                continue
            line = child.stdout.readline()
            if not line:
                break
            done = int(line)
            grown = file.stat().st_size > 4 * 1000 * 4096
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert done >= 3000 and grown, f"the child stopped early ({done} memories)"
    db = sqlite3.connect(tmp_path / "helamem.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with _open(tmp_path) as m:
        assert m.stats(SCOPE).memories >= done
        assert m.stats(SCOPE).memories % 200 == 0  # whole batches: a batch is one transaction


def test_the_checkpointer_restarts_after_close_and_closes_from_two_threads(
    tmp_path: Path,
) -> None:
    file = tmp_path / "f.sqlite3"
    db = sqlite3.connect(file, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    cp = WalCheckpointer(file)
    for round_ in (1, 2):
        db.execute("INSERT INTO t VALUES (?)", (round_,))
        cp.wrote()
        _until(lambda r=round_: cp.checkpoints >= r)
        first = cp._thread
        assert first is not None and first.is_alive()
        closers = [threading.Thread(target=cp.close) for _ in range(2)]
        for t in closers:
            t.start()
        for t in closers:
            t.join(20)
            assert not t.is_alive()
        assert not first.is_alive() and not cp.running
    assert cp.failures == 0
    db.close()


def test_a_forked_child_checkpoints_with_a_thread_of_its_own(
    tmp_path: Path, run_forked: Callable[[Callable[[], int]], int]
) -> None:
    """The parent's thread does not survive a fork: the child's first commit starts
    its own (``os.register_at_fork``), which checkpoints the child's writes."""
    file = tmp_path / "f.sqlite3"
    db = sqlite3.connect(file, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.close()
    cp = WalCheckpointer(file)
    cp.wrote()
    _until(lambda: cp.checkpoints >= 1)
    parent_thread = cp._thread

    def child() -> int:
        forgot = cp._thread is None and cp.checkpoints >= 1
        before = cp.checkpoints
        sqlite3.connect(file, isolation_level=None).execute("INSERT INTO t VALUES (1)")
        cp.wrote()
        deadline = time.monotonic() + 20
        while cp.checkpoints == before and time.monotonic() < deadline:
            time.sleep(0.01)
        started = cp._thread is not None and cp._thread is not parent_thread
        ok = forgot and started and cp.checkpoints > before and cp.failures == 0
        cp.close()
        return 0 if ok else 1

    assert run_forked(child) == 0
    assert cp._thread is parent_thread and cp.running  # the parent's thread is untouched
    cp.close()

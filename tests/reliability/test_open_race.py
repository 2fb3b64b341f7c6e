"""Opening one store from several connections and processes at once.

Switching a new SQLite file to WAL needs its exclusive lock, and SQLite
answers ``database is locked`` at once (its deadlock avoidance, no busy
handler) while another connection holds the write lock, for instance while it
creates the schema. Two processes opening one new directory met this in CI
(``test_store_crash``). Opening now waits for the lock up to the busy timeout.

The SQLite WAL-switch tests are about SQLite's own file and run on SQLite
only. :func:`open_race` runs the multi-process case; given a PostgreSQL DSN
the processes open one NEW schema at once (its ``CREATE SCHEMA``, the
migrations under the schema's advisory lock), beside the embedded vector
index they share in the one new directory.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory, PostgresConfig
from helamem.core.errors import StorageError
from helamem.core.storage.sqlite import SQLiteStore
from pg_server import schema_for

PROCESSES = 4


def _hold_write_lock(path: Path, seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Create ``path`` in rollback-journal mode and hold its write lock for ``seconds``."""
    locked = threading.Event()

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS other (x)")
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO other VALUES (1)")
        locked.set()
        time.sleep(seconds)
        db.execute("COMMIT")
        db.close()

    t = threading.Thread(target=hold)
    t.start()
    assert locked.wait(10)
    return t, locked


def test_plain_sqlite_fails_at_once_on_the_wal_switch(tmp_path: Path) -> None:
    """The fault itself: the busy timeout does not cover the switch to WAL."""
    path = tmp_path / "x.sqlite3"
    t, _ = _hold_write_lock(path, 0.5)
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()
        t.join()


def test_open_waits_for_a_writer_holding_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "helamem.sqlite3"
    t, _ = _hold_write_lock(path, 0.5)
    st = SQLiteStore(path, busy_timeout_s=10.0)
    started = time.monotonic()
    st.open()
    try:
        waited = time.monotonic() - started
        t.join()
        assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert waited > 0.1  # it waited for the lock rather than passing by it
    finally:
        st.close()


def test_open_gives_up_after_the_busy_timeout_with_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "helamem.sqlite3"
    t, _ = _hold_write_lock(path, 2.0)
    st = SQLiteStore(path, busy_timeout_s=0.3)
    try:
        with pytest.raises(StorageError, match="busy_timeout_s"):
            st.open()
    finally:
        t.join()
    st.open()  # free again: it opens
    st.close()


def _config(path: Path, dsn: str | None) -> HelaMemConfig:
    """The store at ``path``: SQLite's file, or given ``dsn`` the schema of ``path``."""
    if dsn is None:
        return HelaMemConfig(path=path)
    pg = PostgresConfig(dsn=dsn, schema_name=schema_for(path))  # type: ignore[arg-type]
    return HelaMemConfig(path=path, store=pg)


def _open_and_add(
    path: str, n: int, ready: Any, start: Any, out: Any, dsn: str | None = None
) -> None:
    # what an open imports (Chroma, psycopg), imported first, so the opens meet
    for module in ("helamem.core.storage.chroma", "helamem.core.storage.postgres"):
        importlib.import_module(module)

    ready.put(n)
    start.wait(60)
    try:
        with HelaMemory(_config(Path(path), dsn), embedder=HashingEmbedder(32)) as m:
            ids = [x.id for x in m.add_many([NewMemory(f"p{n} m{i}", ("s",)) for i in range(5)])]
        out.put((n, ids))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails
        out.put((n, repr(exc)))


def open_race(tmp_path: Path, pg_dsn: str | None) -> None:
    """``PROCESSES`` processes open one new store at once (its graph in PostgreSQL
    given ``pg_dsn``) and add; each must succeed and all their memories be there."""
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    store = str(tmp_path / "store")
    procs = [
        ctx.Process(target=_open_and_add, args=(store, n, ready, start, out, pg_dsn))
        for n in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:  # each imported, so the opens meet
            ready.get(timeout=120)
        start.set()
        got = dict(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(isinstance(v, list) for v in got.values()), got
    with HelaMemory(_config(tmp_path / "store", pg_dsn), embedder=HashingEmbedder(32)) as m:
        ids = [i for v in got.values() for i in v]
        assert len(set(ids)) == 5 * PROCESSES
        assert [m.get(i).id for i in ids] == ids


# on PostgreSQL, stores opening one new schema at once: test_pg_schema_race.py (the
# race is in the server; threads meet it as processes do, at a fraction of the time)
@pytest.mark.sqlite_only
def test_several_processes_open_one_new_directory_at_once(
    tmp_path: Path, pg_dsn: str | None
) -> None:
    open_race(tmp_path, pg_dsn)

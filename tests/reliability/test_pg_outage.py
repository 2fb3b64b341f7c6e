"""PostgreSQL goes away for a while under an open HelaMemory, then comes back.

Each test runs its own server: stopping it drops every other test's connections.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helamem.core import (
    CommitUnknownError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    PostgresConfig,
    StorageError,
    TurnRecorder,
    TurnRecordingError,
)
from pg_server import PgServer, schema_for

A = ("users", "alice")
KEYED: dict[str, Any] = {"metadata": {"turn": "t1"}, "unique_on": ("turn",)}


@pytest.fixture
def srv() -> Iterator[PgServer]:
    server = PgServer.start()
    yield server
    server.stop()


def test_the_first_call_after_an_outage_succeeds(srv: PgServer, tmp_path: Path) -> None:
    """The server is down for ~9 s while the app keeps calling: the pool's own
    reconnection backs off (1, 2, 4, 8 s ...), and waiting for it failed every call
    for seconds, up to minutes, after the server was back. The first call after the
    server is back must succeed, without reopening the memory."""
    pg = PostgresConfig(dsn=srv.dsn, schema_name="outage", connect_timeout_s=1.0)  # type: ignore[arg-type]
    with HelaMemory(
        HelaMemConfig(path=tmp_path / "s", store=pg), embedder=HashingEmbedder(64)
    ) as m:
        a = m.add("the cabin by the river", A).id
        srv._pg_ctl("-m", "fast", "stop")
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="PostgreSQL"):
            m.add("written while the server is down", A)
        time.sleep(max(0.0, 9.0 - (time.monotonic() - t0)))
        srv._pg_ctl("start")
        b = m.add("letters from grandmother", A).id  # no retry: the server is back
        got = m.search("cabin river grandmother letters down", A, k=5, learn=False).ids
        assert sorted(got) == sorted([a, b])  # the add that raised was not stored
        assert m.stats(A).memories == 2


def _lose_the_next_commit(monkeypatch: pytest.MonkeyPatch, dsn: str) -> list[int]:
    """The next write transaction's COMMIT meets a connection the server just dropped
    (its backend terminated, as a failover or a cut network does); returns the pids cut."""
    import psycopg

    from helamem.core.storage.pg_conn import PgConnection

    real = PgConnection._execute
    cut: list[int] = []

    def execute(self: PgConnection, sql: str, params: Any, head: str) -> Any:
        if not cut and head.rstrip() == "COMMIT" and self._in_tx == "write":
            pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            cut.append(int(pid))
        return real(self, sql, params, head)

    monkeypatch.setattr(PgConnection, "_execute", execute)
    return cut


def test_a_commit_whose_connection_is_lost_raises_commit_unknown(
    pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README (Several machines, Connections): "A `COMMIT` whose connection was lost raises
    `CommitUnknownError` (the write may be saved: read before writing again; the turn
    recorder reports it instead of retrying, as stage `commit_unknown`, never `add_turn`
    ...; a turn with `unique_on` it retries itself)". The connection is cut by the real
    server at the COMMIT; the store goes on with a new one."""
    pg = PostgresConfig(dsn=pg_server.dsn, schema_name=schema_for(tmp_path / "s"))  # type: ignore[arg-type]
    with HelaMemory(
        HelaMemConfig(path=tmp_path / "s", store=pg), embedder=HashingEmbedder(64)
    ) as m:
        m.add("the cabin by the river", A)
        cut = _lose_the_next_commit(monkeypatch, pg_server.dsn)
        with pytest.raises(CommitUnknownError, match="read before writing it again"):
            m.add("written as the connection went", A)
        assert len(cut) == 1
        kept = m.add("letters from grandmother", A)  # the next call has a new connection
        assert kept.content == "letters from grandmother"

        # the recorder: a plain turn is reported, not retried; a keyed one retries itself
        cut = _lose_the_next_commit(monkeypatch, pg_server.dsn)
        rec = TurnRecorder(m)
        rec.record_turn_sync(("plain",), "did it land", "maybe")
        with pytest.raises(TurnRecordingError) as info:
            rec.close_sync()
        assert len(cut) == 1
        assert [f.stage for f in info.value.failures] == ["commit_unknown"]
        assert m.stats(("plain",)).memories == 0  # cut before it landed, and not retried
        cut = _lose_the_next_commit(monkeypatch, pg_server.dsn)
        rec = TurnRecorder(m)
        rec.record_turn_sync(("keyed",), "ask once", "answer once", **KEYED)
        rec.close_sync()  # retried after the lost COMMIT, raises nothing
        assert len(cut) == 1
        assert m.stats(("keyed",)).memories == 2  # stored once: the question and the answer


def _server_pids(srv: PgServer) -> list[int]:
    """The postmaster's pid and its children's (every backend and helper process)."""
    head = int((srv.root / "data" / "postmaster.pid").read_text().split()[0])
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == head:
            kids.append(int(stat.parent.name))
    return [head, *kids]


def test_a_server_that_stops_answering_costs_a_bounded_wait_not_a_hang(
    srv: PgServer, tmp_path: Path
) -> None:
    """Every process of the server stops (SIGSTOP: no reply, no reset, as a frozen VM or a
    partition that drops packets): libpq waited forever, holding the owner thread and so
    every call of the memory. Each call must raise StorageError within about
    ``PostgresConfig.timeout_s``, a write in flight must not be stored, and once the server
    runs again the memory works without reopening."""
    import os
    import signal
    import threading

    pg = PostgresConfig(  # type: ignore[arg-type]
        dsn=srv.dsn, schema_name="frozen", connect_timeout_s=1.0, lock_timeout_s=0.5, timeout_s=1.5
    )
    with HelaMemory(
        HelaMemConfig(path=tmp_path / "s", store=pg), embedder=HashingEmbedder(64)
    ) as m:
        a = m.add("the cabin by the river", A).id
        pids = _server_pids(srv)
        got: list[Any] = []

        def calls() -> None:
            for call in (
                lambda: m.search("cabin river", A, k=3, learn=False),
                lambda: m.add("written while the server is frozen", A),
            ):
                try:
                    call()
                    got.append("answered")
                except StorageError as exc:
                    got.append(exc)

        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            worker = threading.Thread(target=calls, daemon=True)
            t0 = time.monotonic()
            worker.start()
            worker.join(60)
            took = time.monotonic() - t0
            assert not worker.is_alive(), "a call hung on the server that stopped answering"
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert len(got) == 2 and all(isinstance(e, StorageError) for e in got), got
        assert "PostgresConfig.timeout_s" in str(got[0])
        # the next call finds no connection answering: named as such, with its bound
        assert "connect_timeout_s" in str(got[1]) or "PostgresConfig.timeout_s" in str(got[1])
        assert took < 30, took
        b = m.add("letters from grandmother", A).id  # the server runs again
        got_ids = m.search("cabin river grandmother letters frozen", A, k=5, learn=False).ids
        assert sorted(got_ids) == sorted([a, b])  # the add that raised was not stored
        assert m.stats(A).memories == 2


def test_a_slow_statement_or_lock_wait_on_a_server_that_answers_is_not_cut_off(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """Review 168: a bound on the whole wait cut off work that was only slow (a large
    delete or export, a migration, a write waiting for another process's lock) as "no
    answer", and left it running on the server. A statement outliving ``timeout_s`` on a
    server that still answers a new connection goes on to its result."""
    import threading

    import psycopg

    from helamem.core.storage.pg_conn import advisory_key

    pg = PostgresConfig(  # type: ignore[arg-type]
        dsn=pg_server.dsn, schema_name=schema_for(tmp_path / "s"), timeout_s=0.5,
        lock_timeout_s=10.0, connect_timeout_s=2.0,
    )  # fmt: skip
    with HelaMemory(
        HelaMemConfig(path=tmp_path / "s", store=pg), embedder=HashingEmbedder(64)
    ) as m:
        m.add("the cabin by the river", A)
        slept = m._call(lambda c: c.store._pg.execute("SELECT pg_sleep(1.5), 7").fetchone())
        assert slept[1] == 7
        held = threading.Event()

        def hold_the_write_lock() -> None:
            with psycopg.connect(pg_server.dsn, autocommit=True) as other, other.transaction():
                other.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(pg.schema_name),))
                held.set()
                time.sleep(1.5)  # three bounds long

        holder = threading.Thread(target=hold_the_write_lock)
        holder.start()
        assert held.wait(10)
        kept = m.add("written once the lock was free", A)  # waited ~1.5 s for the lock
        holder.join(10)
        assert m.get(kept.id).content == "written once the lock was free"
        assert m.stats(A).memories == 2


class _LossyProxy:
    """A TCP proxy to the server (127.0.0.1) whose connections open so far can be made
    to lose what the server sends (``cut()``): a half-open connection, as when a NAT or
    a failover forgot the flow, while new connections go through."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self._target = port
        self._cut: set[int] = set()
        self._conns: list[Any] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            self._conns += [client, server]
            key = id(client)
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, key), daemon=True).start()

    def _pump(self, src: Any, dst: Any, key: int | None) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if key is not None and key in self._cut:
                continue  # lost on the way back
            try:
                dst.sendall(data)
            except OSError:
                return

    def cut(self) -> None:
        self._cut.update(id(c) for c in self._conns[::2])

    def close(self) -> None:
        self._listener.close()
        for c in self._conns:
            c.close()


def test_a_connection_whose_answers_are_lost_is_given_up_while_the_server_answers(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """Review 170: the probe asked only whether the server answered some new connection,
    so a statement whose own connection lost the server's answers (half-open) while new
    connections went through waited forever. The probe asks after this connection's own
    backend: done with the statement (idle), it will send nothing more."""
    import threading

    proxy = _LossyProxy(pg_server.port)
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    pg = PostgresConfig(  # type: ignore[arg-type]
        dsn=dsn, schema_name=schema_for(tmp_path / "s"), timeout_s=0.5, connect_timeout_s=2.0
    )
    try:
        with HelaMemory(
            HelaMemConfig(path=tmp_path / "s", store=pg), embedder=HashingEmbedder(64)
        ) as m:
            a = m.add("the cabin by the river", A).id
            got: list[Any] = []

            def read() -> None:
                try:
                    got.append(m._call(lambda c: c.store._pg.execute("SELECT 1").fetchone()))
                except StorageError as exc:
                    got.append(exc)

            proxy.cut()  # every connection open now loses what the server sends
            worker = threading.Thread(target=read, daemon=True)
            worker.start()
            worker.join(30)
            assert not worker.is_alive(), "a statement whose answer was lost waited forever"
            assert isinstance(got[0], StorageError), got
            assert "stopped answering" in str(got[0])
            assert m.get(a).content == "the cabin by the river"  # a new connection goes on
    finally:
        proxy.close()

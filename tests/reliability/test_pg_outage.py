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

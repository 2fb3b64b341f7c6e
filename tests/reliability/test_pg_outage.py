"""PostgreSQL goes away for a while under an open HelaMemory, then comes back.

Each test runs its own server: stopping it drops every other test's connections.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, PostgresConfig, StorageError
from pg_server import PgServer

A = ("users", "alice")


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

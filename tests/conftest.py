"""Shared fixtures: hermetic stores in tmp paths with a deterministic embedder."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    PostgresConfig,
    RetrievalConfig,
)
from pg_server import PgServer, schema_for

BACKENDS = ("sqlite", "postgres")
"""The graph stores every test of the ``mem`` / ``make_mem`` / ``store_config`` fixtures runs on."""


def make_memory(path: Path, *, pg_dsn: str | None = None, **retrieval: object) -> HelaMemory:
    """An unopened HelaMemory at ``path`` (its graph in PostgreSQL when ``pg_dsn`` is given:
    a schema of its own per path, so reopening ``path`` finds the same memories)."""
    cfg = HelaMemConfig(
        path=path,
        retrieval=RetrievalConfig(**retrieval),  # type: ignore[arg-type]
        store=None if pg_dsn is None else pg_config(pg_dsn, path),
    )
    return HelaMemory(cfg, embedder=HashingEmbedder(256))


def pg_config(dsn: str, path: Path) -> PostgresConfig:
    return PostgresConfig(dsn=dsn, schema_name=schema_for(path))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL on 127.0.0.1 per test process (started on first use)."""
    srv = PgServer.start()
    yield srv
    srv.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pg_dsn(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The test PostgreSQL's DSN on the postgres backend, None on SQLite."""
    if backend == "sqlite":
        return None
    return str(request.getfixturevalue("pg_server").dsn)


@pytest.fixture
def store_config(pg_dsn: str | None) -> Callable[[Path], PostgresConfig | None]:
    """``store_config(path)`` → the ``HelaMemConfig.store`` of this backend for ``path``."""
    return lambda path: None if pg_dsn is None else pg_config(pg_dsn, path)


@pytest.fixture
def store_db(pg_dsn: str | None) -> Callable[[Path], Any]:
    """``store_db(path)`` → a connection to the graph store of the memory at ``path``
    (``execute``/``close``; the store's portable SQL with ``?`` runs on both backends)."""

    def connect(path: Path) -> Any:
        if pg_dsn is None:
            return sqlite3.connect(path / "helamem.sqlite3", isolation_level=None)
        from helamem.core.storage.postgres import connect_reader

        return connect_reader(pg_config(pg_dsn, path))

    return connect


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Leave out the PostgreSQL run of tests marked ``sqlite_only`` (SQLite's file,
    FTS5 or the tantivy index it derives)."""
    items[:] = [
        it
        for it in items
        if not (
            it.get_closest_marker("sqlite_only")
            and getattr(getattr(it, "callspec", None), "params", {}).get("backend") == "postgres"
        )
    ]


@pytest.fixture
def mem(tmp_path: Path, pg_dsn: str | None) -> Iterator[HelaMemory]:
    m = make_memory(tmp_path / "store", pg_dsn=pg_dsn)
    yield m
    m.close()


@pytest.fixture
def make_mem(pg_dsn: str | None) -> Callable[..., HelaMemory]:
    """Factory: ``make_mem(path, **retrieval_overrides)`` → an unopened HelaMemory."""
    return partial(make_memory, pg_dsn=pg_dsn)


# Property tests are derandomized by default so that CI is reproducible; explore
# new examples locally with ``pytest --hypothesis-profile=explore``.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("ci")


def _run_forked(child: Callable[[], int], limit_s: float = 90.0) -> int:
    """Run ``child`` in a forked process and return its exit status. The child ends by
    its own alarm (60 s) and the parent kills it at ``limit_s``: a hang fails the test
    instead of hanging the run. The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(60)
            code = child()
        finally:
            os._exit(code)
    deadline = time.monotonic() + limit_s
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.WIFEXITED(done[1]), f"the child ended by signal {os.WTERMSIG(done[1])}"
    return os.WEXITSTATUS(done[1])


@pytest.fixture
def run_forked() -> Callable[[Callable[[], int]], int]:
    """:func:`_run_forked`: a child process's checks, bounded in time (POSIX only)."""
    if not hasattr(os, "fork"):
        pytest.skip("POSIX fork")
    return _run_forked


@pytest.fixture
def chroma_port(tmp_path: Path) -> Iterator[int]:
    """A ``chroma run`` server on 127.0.0.1 for this test (files under ``tmp_path``);
    yields its port. Skips where the chroma CLI is not installed."""
    from chroma_server import CHROMA, chroma_server

    if not Path(CHROMA).exists():
        pytest.skip("the chroma CLI is not installed")
    try:
        with chroma_server(tmp_path / "chroma") as port:
            yield port
    except RuntimeError as exc:  # it exited or never answered
        pytest.fail(str(exc))

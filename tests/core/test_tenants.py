"""Many tenants under a small open-file limit (issue 14, case 13).

Each case runs in a spawned child with ``RLIMIT_NOFILE`` lowered (the limit is
per process), bounded in time. Every add must reach the index, and every
scope's search must find its own memories, including after a search over the
whole prefix. Some scopes are large enough for their own HNSW collection, so
Chroma's bounded cache of loaded indexes is exercised too.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
from pathlib import Path

import pytest

from own_vectors import lost
from pg_server import schema_for

SMALL_LIMIT = 256


def _tenants(
    path: str,
    store: tuple[str, str] | None,
    nofile: int,
    scopes: int,
    large: int,
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    from helamem.core import (
        ChromaConfig,
        HashingEmbedder,
        HelaMemConfig,
        HelaMemory,
        NewMemory,
        PostgresConfig,
    )

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    pg = None
    if store is not None:  # the PostgreSQL graph store, rebuilt from its DSN and schema
        pg = PostgresConfig(dsn=store[0], schema_name=store[1])  # type: ignore[arg-type]
    cfg = HelaMemConfig(path=Path(path), chroma=ChromaConfig(exact_below=12), store=pg)
    problems: list[str] = []
    import logging

    fallbacks: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                fallbacks.append(record.getMessage())

    logging.getLogger("helamem").addHandler(_Catch())
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        ids: dict[int, list[str]] = {}
        for s in range(scopes):
            n = 14 if s < large else 3  # the first `large` scopes get their own collection
            batch = [NewMemory(f"tenant {s} note {i} word{s}x{i}", ("t", str(s))) for i in range(n)]
            ids[s] = [x.id for x in m.add_many(batch)]
        st = m.stats()
        if st.unindexed or st.vectors != st.memories:
            problems.append(f"unindexed={st.unindexed} vectors={st.vectors} of {st.memories}")
        assert m.search("tenant note", ("t",), k=10, learn=False).hits  # the whole prefix

        if (n_lost := len(m._call(lambda core: lost(core, k=3)))) != 0:
            problems.append(f"{n_lost} memories not found by their own vector")
        for s in range(scopes):
            got = m.search(f"word{s}x1", ("t", str(s)), k=1, learn=False).ids
            if got != [ids[s][1]]:
                problems.append(f"scope {s}: {got}")
                break
    # no HNSW collection may fail (the exact fallback would hide a lost index)
    problems += [f"warning: {w}" for w in fallbacks[:3]]
    out.put(problems)


def _run(
    tmp_path: Path, pg_dsn: str | None, nofile: int, scopes: int, large: int, timeout: float
) -> list[str]:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < nofile:
        pytest.skip("the hard open-file limit is below the test's")
    path = tmp_path / "s"
    # the spawned child gets plain values: the DSN and this path's schema
    store = None if pg_dsn is None else (pg_dsn, schema_for(path))
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    p = ctx.Process(target=_tenants, args=(str(path), store, nofile, scopes, large, q))
    p.start()
    try:
        problems: list[str] = q.get(timeout=timeout)
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0
    return problems


@pytest.mark.sqlite_only  # open files: SQLite's and Chroma's (PostgreSQL's are the server's)
def test_300_scopes_under_256_open_files(tmp_path: Path, pg_dsn: str | None) -> None:
    # 60 HNSW collections (5 files each when loaded) would need 300 files
    assert _run(tmp_path, pg_dsn, SMALL_LIMIT, scopes=300, large=60, timeout=240) == []


@pytest.mark.sqlite_only  # as above
def test_1200_scopes_under_1024_open_files(tmp_path: Path, pg_dsn: str | None) -> None:
    assert _run(tmp_path, pg_dsn, 1024, scopes=1200, large=40, timeout=300) == []

"""Stores opening one NEW PostgreSQL schema at the same instant (issue 20).

Every store creates its schema when it opens (``CREATE SCHEMA IF NOT EXISTS``,
then the migrations under the schema's advisory lock). ``IF NOT EXISTS`` does
not make two concurrent creations safe: the second waits for the first's
insert into ``pg_namespace`` and then fails on its unique index (``duplicate
key value violates unique constraint "pg_namespace_nspname_index"``) instead
of finding the schema. Here the opens start together behind a barrier, in
threads: each must open, and all their memories must be there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory, PostgresConfig
from helamem.core.storage.postgres import PostgresStore
from pg_server import PgServer, schema_for

STORES = 6
ROUNDS = 2


def _together(n: int, work: Callable[[int], None]) -> list[str]:
    """Run ``work(i)`` for i < n in threads released at once; the errors, as text."""
    barrier = threading.Barrier(n)
    errors: list[str] = []

    def run(i: int) -> None:
        barrier.wait(30)
        try:
            work(i)
        except Exception as exc:  # noqa: BLE001 - collected; the test fails on any
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test_stores_opening_one_new_schema_at_once_all_open(pg_server: PgServer) -> None:
    for r in range(ROUNDS):
        cfg = PostgresConfig(dsn=pg_server.dsn, schema_name=f"open_race_{r}")  # type: ignore[arg-type]
        stores = [PostgresStore(cfg) for _ in range(STORES)]
        errors = _together(STORES, lambda i, stores=stores: stores[i].open())  # type: ignore[misc]
        for st in stores:
            st.close()
        assert errors == [], f"round {r}: {len(errors)} of {STORES} opens failed: {errors[0]}"


def test_memories_opening_one_new_schema_at_once_keep_every_memory(
    tmp_path: Path, pg_server: PgServer
) -> None:
    for r in range(ROUNDS):
        path = tmp_path / f"store{r}"
        pg = PostgresConfig(dsn=pg_server.dsn, schema_name=schema_for(path))  # type: ignore[arg-type]
        cfg = HelaMemConfig(path=path, store=pg)
        ids: list[str] = []

        def open_and_add(i: int, cfg: HelaMemConfig = cfg, ids: list[str] = ids) -> None:
            with HelaMemory(cfg, embedder=HashingEmbedder(32)) as m:
                added = m.add_many([NewMemory(f"t{i} m{j}", ("s",)) for j in range(3)])
                ids.extend(x.id for x in added)

        errors = _together(STORES, open_and_add)
        assert errors == [], f"round {r}: {len(errors)} of {STORES} opens failed: {errors[0]}"
        with HelaMemory(cfg, embedder=HashingEmbedder(32)) as m:
            assert len(set(ids)) == 3 * STORES
            assert [m.get(i).id for i in ids] == ids

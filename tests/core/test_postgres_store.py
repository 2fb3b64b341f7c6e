"""What only the PostgreSQL graph store has: URLs, BM25 in SQL, sharing, errors (issue 20).

The engine's own tests run on both backends through the ``mem``/``make_mem``
fixtures; these test the PostgreSQL store's parts against a real server.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from helamem.core import (
    ChromaConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    InvalidInputError,
    NewMemory,
    PostgresConfig,
    StorageError,
)
from helamem.core.storage.pg_schema import quoted
from helamem.core.storage.postgres import PostgresStore
from helamem.core.storage.sqlite import SQLiteStore
from helamem.core.text import fts_match
from pg_server import PgServer, schema_for

A = ("users", "alice")
WORDS = [
    "tea",
    "garden",
    "violin",
    "recital",
    "paris",
    "tomato",
    "orchid",
    "river",
    "bread",
    "milk",
    "train",
    "ticket",
    "piano",
    "lesson",
    "doctor",
    "visit",
    "birthday",
    "cake",
    "running",
    "shoes",
    "museum",
    "painting",
    "harbor",
    "lighthouse",
    "storm",
    "winter",
    "cabin",
    "letters",
    "grandmother",
    "recipe",
    "soup",
    "market",
    "fishing",
]


def _pg(server: PgServer, path: Path) -> PostgresConfig:
    return PostgresConfig(dsn=server.dsn, schema_name=schema_for(path))  # type: ignore[arg-type]


def test_from_url_opens_the_postgres_store_and_another_object_sees_it(
    tmp_path: Path, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default path is relative: run where no earlier store (./dev demo's) lies
    monkeypatch.chdir(tmp_path)
    url = pg_server.dsn
    with HelaMemory.from_url(url, schema="url_test", embedder=HashingEmbedder(64)) as one:
        assert one.config.store is not None and one.config.store.schema_name == "url_test"
        a = one.add("the harbor lighthouse keeps a logbook", A)
        b = one.add("storms come in winter", A)
        one.reinforce([a.id, b.id])
        with HelaMemory.from_path(url, one.config, embedder=HashingEmbedder(64)) as two:
            assert two.get(a.id).content == "the harbor lighthouse keeps a logbook"
            # the temporal edge (0.5), co-activated once (+0.05), seen from the other object
            assert (two.stats(A).edges, two.stats(A).mean_edge_weight) == (1, pytest.approx(0.55))
            assert two.search("lighthouse logbook", A, k=1, learn=False).ids == [a.id]
    # nothing was written beside the store's directory: the graph is on the server
    assert not (Path(one.config.path) / "helamem.sqlite3").exists()


def test_other_url_schemes_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"postgresql://\.\.\."):
        HelaMemory.from_url("mysql://db/agents")


def test_bm25_scores_equal_sqlite_fts5(tmp_path: Path, pg_server: PgServer) -> None:
    """The same memories, the same queries: PostgreSQL's SQL BM25 gives FTS5's scores."""
    rng = random.Random(5)
    texts = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        + ("" if i % 7 else " running runs ran")  # stemming: porter, as FTS5
        for i in range(300)
    ]
    lite = SQLiteStore(tmp_path / "lite.sqlite3")
    pg = PostgresStore(_pg(pg_server, tmp_path / "bm25"))
    lite.open()
    pg.open()
    try:
        tags: dict[int, str] = {}
        for store in (lite, pg):
            with store.tx() as db:
                sid = store.ensure_scope(db, A)
                tags[id(store)] = f"s{sid}k1"
                for i, t in enumerate(texts):
                    store.insert_memory(
                        db,
                        id=f"m{i:04d}",
                        scope_id=sid,
                        tags=tags[id(store)],
                        kind="episodic",
                        content=t,
                        search_text=t,
                        role=None,
                        event_time=float(i),
                        created_at=float(i),
                        keywords="[]",
                        metadata="{}",
                        provenance="[]",
                        embedding=b"",
                    )
        # delete some, so document frequencies and lengths must follow deletes
        for store in (lite, pg):
            gone = list(store.rows_by_id([f"m{i:04d}" for i in range(0, 300, 9)]).values())
            with store.tx() as db:
                store.delete_memories(db, gone)
        # rewrite some (as a fact merge does), with another tag: lengths count tags
        for store in (lite, pg):
            rows = store.rows_by_id([f"m{i:04d}" for i in range(1, 300, 23)])
            with store.tx() as db:
                for r in rows.values():
                    text = f"{r.content} recipe soup"
                    store.update_fact(
                        db,
                        r,
                        content=text,
                        search_text=text,
                        tags=f"{tags[id(store)]} s99k1",
                        keywords="[]",
                        provenance="[]",
                        event_time=r.event_time,
                        embedding=b"",
                    )
        for _ in range(40):
            words = rng.sample([*WORDS, "running", "nosuchword"], rng.randint(1, 4))
            match = fts_match(words)
            assert match is not None
            want = lite.lexical(match, None, 20)
            got = pg.lexical(match, None, 20)
            assert [round(s, 9) for _, s in got] == [round(s, 9) for _, s in want], words
            assert {n for n, _ in got} == {n for n, _ in want} or _ties(want, got)
            assert pg.term_stats(words) == lite.term_stats(words)
            tag = pg.lexical(match, tags[id(pg)], 5)
            assert [round(s, 9) for _, s in tag] == [round(s, 9) for _, s in want[:5]]
            assert pg.lexical(match, "s98k1", 5) == []  # another scope's tag: nothing
    finally:
        lite.close()
        pg.close()


def _ties(want: list[tuple[int, float]], got: list[tuple[int, float]]) -> bool:
    """Only rows tied on score (order among equals is unspecified in FTS5) differ."""
    score = {n: round(s, 9) for n, s in want}
    last = round(want[-1][1], 9) if want else None
    return all(score.get(n, last) == round(s, 9) for n, s in got)


def test_quoted_terms_of_an_fts_match() -> None:
    assert quoted('"tea" OR "say ""hi"""') == ["tea", 'say "hi"']


def test_an_unreachable_server_is_a_storage_error_naming_the_fix(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        store=PostgresConfig(
            dsn=f"postgresql://nobody@127.0.0.1:{port}/x",  # type: ignore[arg-type]
            connect_timeout_s=2,
        ),
    )
    with pytest.raises(StorageError, match=r"PostgresConfig\.dsn"):
        HelaMemory(cfg, embedder=HashingEmbedder(64)).open()


def test_a_schema_from_a_newer_release_is_refused(tmp_path: Path, pg_server: PgServer) -> None:
    cfg = HelaMemConfig(path=tmp_path / "s", store=_pg(pg_server, tmp_path / "newer"))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        m.add("x", A)
        m._call(lambda core: core.store.db.execute("INSERT INTO schema_version VALUES (99, 0)"))
    with pytest.raises(StorageError, match="upgrade helamem-core"):
        HelaMemory(cfg, embedder=HashingEmbedder(64)).open()


def test_secrets_in_the_dsn_are_not_shown(tmp_path: Path) -> None:
    cfg = PostgresConfig(dsn="postgresql://app:hunter2@db/agents")  # type: ignore[arg-type]
    assert "hunter2" not in repr(cfg) and "hunter2" not in repr(HelaMemConfig(store=cfg))


def test_a_server_restart_costs_no_call(tmp_path: Path) -> None:
    """Every connection is dropped (a restart, a failover): the next calls reconnect.

    Its own server: a restart drops every other test's connections too.
    """
    srv = PgServer.start()
    try:
        cfg = HelaMemConfig(path=tmp_path / "s", store=_pg(srv, tmp_path / "restart"))
        with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
            a = m.add("the cabin by the river", A)
            assert m.search("cabin river", A, k=1).ids == [a.id]
            srv.restart()
            b = m.add("letters from grandmother", A)  # a write first: its BEGIN runs again
            srv.restart()
            assert m.search("grandmother letters", A, k=1).ids == [b.id]  # a read first
            assert m.get(a.id).content == "the cabin by the river"
            assert m.stats(A).memories == 2
    finally:
        srv.stop()


def test_a_write_lock_held_too_long_is_a_storage_error_naming_the_setting(
    tmp_path: Path, pg_server: PgServer
) -> None:
    import psycopg

    from helamem.core.storage.pg_conn import advisory_key

    pg = _pg(pg_server, tmp_path / "locked").model_copy(update={"lock_timeout_s": 0.5})
    cfg = HelaMemConfig(path=tmp_path / "s", store=pg)
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        m.add("before the lock", A)
        with psycopg.connect(pg_server.dsn, autocommit=True) as other:
            other.execute("BEGIN")  # another client's write transaction, left open
            other.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(pg.schema_name),))
            with pytest.raises(StorageError, match=r"PostgresConfig\.lock_timeout_s"):
                m.add("waits for the lock", A)
            other.execute("ROLLBACK")
        m.add("after the lock", A)  # nothing was left half done
        assert m.stats(A).memories == 2


def test_ids_under_a_base_match_bytewise_on_both_stores(mem: HelaMemory) -> None:
    """The prefix match LangGraph's field memories use: no wildcard, no collation."""
    ids = ["a[1]", "a[1].1", "a[1].z", "a_1.1", "a%1.1", "a[1]x", "A[1].1", "a[1]/1", "a[1]-1"]
    mem.add_many([NewMemory(f"memory {i}", A, id=i) for i in ids])
    got = mem._call(lambda core: sorted(core.store.ids_under(["a[1]", "a_1"])))
    assert got == ["a[1].1", "a[1].z", "a_1.1"]


def test_json_field_reads_metadata_on_both_stores(mem: HelaMemory) -> None:
    mem.add("tagged", A, metadata={"langgraph": {"key": "k"}})
    mem.add("null", A, metadata={"langgraph": None})
    mem.add("plain", A)

    def untagged(core: Any) -> list[str]:
        cond = core.store.json_field("metadata", "langgraph")
        return sorted(
            str(r[0])
            for r in core.store.db.execute(f"SELECT content FROM memories WHERE {cond} IS NULL")
        )

    assert mem._call(untagged) == ["null", "plain"]
    with pytest.raises(ValueError, match="plain JSON key"):
        mem._call(lambda core: core.store.json_field("metadata", "x') OR ('1"))


def test_lexical_statistics_come_from_one_snapshot(tmp_path: Path, pg_server: PgServer) -> None:
    """Frequencies and the row count are read in one statement (a delete between two
    reads once made a word seem in more rows than exist: a negative log's argument);
    a frequency above the count still gives the floor idf, never an error."""
    cfg = HelaMemConfig(path=tmp_path / "s", store=_pg(pg_server, tmp_path / "snap"))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        ids = [m.add(f"tea garden note {i}", A).id for i in range(5)]

        def skewed(core: Any) -> list[tuple[int, float]]:
            real = core.store._stats
            core.store._stats = lambda toks: (1, 3, dict.fromkeys(real(toks)[2], 5))
            try:
                out: list[tuple[int, float]] = core.store.lexical('"tea"', None, 10)
                return out
            finally:
                del core.store._stats

        got = m._call(skewed)
        assert len(got) == 5 and all(s > 0 for _, s in got)
        assert m.search("tea garden", A, k=5, learn=False).ids[0] in ids


def test_write_transactions_are_read_committed_whatever_the_database_default(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """A database defaulting to REPEATABLE READ: its snapshot would predate the write
    lock, and checks inside it (an id taken, a scope created) read stale rows."""
    import psycopg

    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS rr_default")
        admin.execute("CREATE DATABASE rr_default")
        admin.execute(
            "ALTER DATABASE rr_default SET default_transaction_isolation = 'repeatable read'"
        )
    dsn = pg_server.dsn.rsplit("/", 1)[0] + "/rr_default"
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        store=PostgresConfig(dsn=dsn, schema_name="rr"),  # type: ignore[arg-type]
    )
    with HelaMemory(cfg, embedder=HashingEmbedder(64)):
        pass  # the schema exists before the writers race
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
                for j in range(15):
                    a = m.add(f"writer {i} note {j}", (f"team{j % 3}", "shared"))
                    m.add_turn(("shared",), f"w{i} asks {j}", f"w{i} answers {j}", used_ids=[a.id])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        assert m.stats().memories == 4 * 15 * 3


def test_a_connection_lost_inside_a_transaction_never_goes_on_without_it(
    pg_server: PgServer, tmp_path: Path
) -> None:
    import psycopg

    from helamem.core.storage.postgres import connect_reader

    pg = _pg(pg_server, tmp_path / "lost")
    with HelaMemory(HelaMemConfig(path=tmp_path / "s", store=pg), embedder=HashingEmbedder(64)):
        pass
    db = connect_reader(pg)
    try:
        db.execute("BEGIN IMMEDIATE")
        pid = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StorageError):
            db.execute("INSERT INTO meta(key, value) VALUES ('a', '1')")
        # not on a new connection, outside the lock: the transaction is gone
        with pytest.raises(StorageError, match="lost inside a transaction"):
            db.execute("INSERT INTO meta(key, value) VALUES ('b', '1')")
        with pytest.raises(StorageError, match="lost inside a write transaction"):
            db.execute("COMMIT")
        assert db.execute("SELECT COUNT(*) FROM meta WHERE key IN ('a', 'b')").fetchone()[0] == 0
    finally:
        db.close()


def test_a_password_never_reaches_an_error_message(tmp_path: Path) -> None:
    mem = HelaMemory.from_url(
        "postgresql://app:hun%zzter2@127.0.0.1:1/db", HelaMemConfig(path=tmp_path / "s")
    )
    with pytest.raises(StorageError) as info:
        mem.open()
    assert "hun" not in str(info.value) and "zzter2" not in str(info.value)
    assert "not a valid connection string" in str(info.value)


def test_schemas_sharing_a_chroma_server_get_collections_of_their_own(
    tmp_path: Path, pg_server: PgServer
) -> None:
    names = []
    for schema in ("tenant_a", "tenant_b"):
        pg = PostgresConfig(dsn=pg_server.dsn, schema_name=schema)  # type: ignore[arg-type]
        with HelaMemory(
            HelaMemConfig(path=tmp_path / schema, store=pg), embedder=HashingEmbedder(64)
        ) as m:
            m.add("x", A)
            names.append(m._call(lambda core: core.index._config.collection))
    assert names == ["helamem.tenant_a", "helamem.tenant_b"]


def test_a_prefix_over_more_scope_nodes_than_postgresql_binds(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """66,000 tenants under one prefix: more ids than a statement's 65,535 parameters."""
    cfg = HelaMemConfig(path=tmp_path / "s", store=_pg(pg_server, tmp_path / "many"))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        m.add_many(
            [NewMemory(f"tenant {t} likes cats", ("users", str(t)), event_time=t) for t in (1, 2)]
        )

        def tenants(core: Any) -> None:  # empty tenants, in one statement (adding is slow)
            users = core.store.find_scope(["users"])
            with core.store.tx() as db:
                db.execute(
                    "INSERT INTO scopes(parent, name, path, depth) SELECT ?, CAST(g AS TEXT),"
                    " '[\"users\", \"' || g || '\"]', 2 FROM generate_series(3, 66000) g",
                    (users,),
                )

        m._call(tenants)
        assert m._call(lambda c: len(c.store.descendants(c.store.find_scope(["users"])))) == 66_001
        st = m.stats(("users",))
        assert (st.memories, st.scopes, st.edges) == (2, 2, 0)
        assert m.list_scopes(("users",)) == [("users", "1"), ("users", "2")]
        assert m.search("cats", ("users",), k=5, learn=False).ids != []
        assert m.decay(("users",)) == {"pruned": 0, "edges": 0}
        assert [c.content for c in m.forget(("users",), older_than_s=0).candidates] == []
        assert m.delete_scope(("users",)) == 2
        assert m.stats(("users",)).memories == 0


def test_a_statement_the_client_library_refuses_is_not_called_an_outage(
    tmp_path: Path, pg_server: PgServer
) -> None:
    from helamem.core.storage.postgres import connect_reader

    pg = _pg(pg_server, tmp_path / "refused")
    with HelaMemory(HelaMemConfig(path=tmp_path / "s", store=pg), embedder=HashingEmbedder(64)):
        pass
    db = connect_reader(pg)
    try:
        too_many = list(range(65_536))  # libpq's limit is 65,535: nothing reaches the server
        with pytest.raises(StorageError) as err:
            db.execute(f"SELECT 1 WHERE 1 IN ({','.join('?' * len(too_many))})", too_many)
        assert "number of parameters" in str(err.value)
        assert "unreachable" not in str(err.value) and "PostgresConfig.dsn" not in str(err.value)
        assert "client library" in str(err.value)
        assert db.execute("SELECT 2").fetchone()[0] == 2  # the connection was intact
    finally:
        db.close()


def test_databases_with_one_schema_name_on_one_chroma_server_keep_their_vectors(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """Trial: two databases, both with the default schema ``helamem``, shared the
    collection ``helamem.helamem-h2-e`` on one server; each open took the other's as an
    older copy and rebuilt it, and a store found none of its memories by their vectors.
    A server's collections now carry the database's id, as an SQLite store's do."""
    import chromadb
    import psycopg

    from chroma_server import chroma_server

    SCOPES = [("u", "alice"), ("u", "bob")]  # noqa: N806 (node 2 in each database)
    db = f"other_{random.randrange(10**9)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    dsns = [pg_server.dsn, pg_server.dsn.rsplit("/", 1)[0] + f"/{db}"]
    schema = schema_for(tmp_path / "shared")  # one schema name in both databases
    with chroma_server(tmp_path / "chroma") as port:
        chroma = ChromaConfig(mode="http", host="127.0.0.1", port=port, exact_below=20)
        mems = [
            HelaMemory(
                HelaMemConfig(
                    path=tmp_path / f"s{i}",
                    store=PostgresConfig(dsn=dsn, schema_name=schema),  # type: ignore[arg-type]
                    chroma=chroma,
                ),
                embedder=HashingEmbedder(64),
            )
            for i, dsn in enumerate(dsns)
        ]
        try:
            own = []
            for m in mems:
                m.open()
            for i, m in enumerate(mems):
                added = [m.add(f"store {i} note {j}", SCOPES[i]) for j in range(30)]  # HNSW
                own.append({x.id for x in added})
                m.flush()

            def indexed(core: Any, scope: tuple[str, ...]) -> set[str]:  # HNSW's answer
                qv = core.embedder.embed(["store note"])[0]
                node = core.store.find_scope(scope)
                return {mid for mid, _ in core.index.query(qv, 50, [node], "episodic")}

            for i, m in enumerate(mems):  # both open: each index holds its own
                assert m._call(lambda core, i=i: indexed(core, SCOPES[i])) == own[i]
            server = chromadb.HttpClient(host="127.0.0.1", port=port)
            counts = sorted(c.count() for c in server.list_collections())
            assert counts == [30, 30]  # before: one collection of the last store's 30
        finally:
            for m in mems:
                m.close()

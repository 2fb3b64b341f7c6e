"""PostgreSQL's migration 4: the text shape of rows whose ``content`` is not the
caller's text (a NUL, a lone surrogate: the exact text is in ``content_raw``)."""

from __future__ import annotations

from pathlib import Path

from helamem.core import PostgresConfig
from helamem.core.storage.postgres import PG_SCHEMA_VERSION, PostgresStore
from helamem.core.storage.sqlite_schema import text_shape
from helamem.core.text import safe_text
from pg_server import PgServer, schema_for

TEXTS = [
    "plain words",
    "a plain question? \n",
    "Why?\x00",  # '?' then a NUL: no question (content holds 'Why? ')
    "Is it?\x00 \t",
    "ends in a lone surrogate \ud800",  # content: three U+FFFD, the length grew by 2
    "Was it?\udc80",
    "lone \udfff then a question?  ",
    "a NUL\x00 inside, then a question?\r\n",
    "emoji \U0001f600 \ud83d and é?",
    "\ufffd a real replacement character?",
    "\x00",
    "",
]

# migration 3's backfill, as it ran before migration 4 existed
_MIGRATION_3 = (
    "UPDATE memories SET shape = LEAST(length(content), 1000000) * 2"
    " + CASE WHEN right(rtrim(content, E' \\t\\r\\n'), 1) = chr(63) THEN 1 ELSE 0 END"
)


def _store(server: PgServer, path: Path) -> PostgresStore:
    cfg = PostgresConfig(dsn=server.dsn, schema_name=schema_for(path))  # type: ignore[arg-type]
    store = PostgresStore(cfg)
    store.open()
    return store


def test_migration_4_writes_the_shape_an_insert_writes(tmp_path: Path, pg_server: PgServer) -> None:
    path = tmp_path / "shape"
    store = _store(pg_server, path)
    try:
        with store.tx() as db:
            sid = store.ensure_scope(db, ("users", "alice"))
            for i, t in enumerate(TEXTS):
                store.insert_memory(
                    db,
                    id=f"m{i:02d}",
                    scope_id=sid,
                    tags=f"s{sid}k1",
                    kind="episodic",
                    content=t,
                    search_text=safe_text(t),
                    role=None,
                    event_time=float(i),
                    created_at=float(i),
                    keywords="[]",
                    metadata="{}",
                    provenance="[]",
                    embedding=b"",
                )
        shapes = dict(store.db.execute("SELECT id, shape FROM memories").fetchall())
        assert shapes == {f"m{i:02d}": text_shape(t) for i, t in enumerate(TEXTS)}  # new writes
        # a store written before migration 4: migration 3's shapes, version 3
        with store.tx() as db:
            db.execute(_MIGRATION_3)
            db.execute("DROP TABLE forgotten_turns")  # migration 6's
            db.execute("DROP INDEX memories_unique")  # migration 5's
            db.execute("ALTER TABLE memories DROP COLUMN unique_key")
            db.execute("DELETE FROM schema_version WHERE version > 3")
        stale = dict(store.db.execute("SELECT id, shape FROM memories").fetchall())
        assert stale["m02"] == text_shape("Why?\x00") + 1  # migration 3 saw a question
        assert stale["m04"] == text_shape(TEXTS[4]) + 4  # and three characters, not one
    finally:
        store.close()
    store = _store(pg_server, path)  # opening applies migration 4
    try:
        rows = store.db.execute("SELECT id, shape FROM memories").fetchall()
        got = {str(i): int(s) for i, s in rows}
        assert got == {f"m{i:02d}": text_shape(t) for i, t in enumerate(TEXTS)}
        assert store.rows_by_id(["m04"])["m04"].content == TEXTS[4]
        assert store.schema_version() == PG_SCHEMA_VERSION
    finally:
        store.close()

"""The PostgreSQL store's schema, its append-only migrations and FTS5's tokenizer.

:mod:`.postgres` runs the store; this module holds what it creates
(:data:`PG_MIGRATIONS`, recorded in ``schema_version`` of the configured
schema) and how it cuts text into the tokens of its BM25 statistics
(:class:`Fts5Tokenizer`, exactly as the SQLite store's FTS5 index does).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

__all__ = ["PG_MIGRATIONS", "PG_SCHEMA_VERSION", "Fts5Tokenizer", "quoted", "pg_text"]

PG_MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema (the SQLite store's, version 6, with BM25 statistics for FTS5)
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE scopes (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        parent BIGINT REFERENCES scopes(id),
        name TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        depth INTEGER NOT NULL,
        tick BIGINT NOT NULL DEFAULT 0,
        last_episode BIGINT
    );
    CREATE INDEX scopes_parent ON scopes(parent);
    CREATE TABLE memories (
        n BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        scope_id BIGINT NOT NULL REFERENCES scopes(id),
        kind TEXT NOT NULL,
        content TEXT NOT NULL,
        content_raw BYTEA,
        role TEXT,
        event_time DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        keywords TEXT NOT NULL DEFAULT '[]',
        access_count BIGINT NOT NULL DEFAULT 0,
        last_access DOUBLE PRECISION,
        metadata TEXT NOT NULL DEFAULT '{}',
        provenance TEXT NOT NULL DEFAULT '[]',
        embedding BYTEA,
        indexed INTEGER NOT NULL DEFAULT 0,
        tags TEXT[] NOT NULL DEFAULT '{}'
    );
    CREATE INDEX memories_scope ON memories(scope_id, kind, event_time);
    CREATE INDEX memories_unindexed ON memories(indexed) WHERE indexed = 0;
    CREATE TABLE postings (
        term TEXT NOT NULL,
        n BIGINT NOT NULL,
        tf INTEGER NOT NULL,
        dl INTEGER NOT NULL,
        PRIMARY KEY (term, n)
    );
    CREATE INDEX postings_n ON postings(n);
    CREATE TABLE terms (term TEXT PRIMARY KEY, df BIGINT NOT NULL);
    CREATE TABLE lexical_totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        docs BIGINT NOT NULL,
        tokens BIGINT NOT NULL
    );
    INSERT INTO lexical_totals VALUES (1, 0, 0);
    CREATE TABLE edges (
        a BIGINT NOT NULL,
        b BIGINT NOT NULL,
        scope_id BIGINT NOT NULL,
        weight DOUBLE PRECISION NOT NULL,
        tick BIGINT NOT NULL,
        PRIMARY KEY (a, b),
        CHECK (a < b)
    );
    CREATE INDEX edges_b ON edges(b);
    CREATE INDEX edges_scope ON edges(scope_id);
    CREATE TABLE tombstones (id TEXT PRIMARY KEY, scope_id BIGINT NOT NULL, kind TEXT NOT NULL);
    CREATE TABLE clusters (
        scope_id BIGINT NOT NULL,
        signature TEXT NOT NULL,
        hub TEXT NOT NULL,
        facts INTEGER NOT NULL,
        distilled_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (scope_id, signature)
    );
    CREATE TABLE token_vectors (n BIGINT PRIMARY KEY, data BYTEA NOT NULL);
    """,
    # 2: ids in bytewise order, for prefix ranges (SQLiteStore.ids_under)
    """
    CREATE INDEX memories_id_c ON memories (id COLLATE "C");
    """,
    # 3: each memory's text shape for the learned selection (the SQLite store's 7)
    """
    ALTER TABLE memories ADD COLUMN shape BIGINT NOT NULL DEFAULT 0;
    UPDATE memories SET shape = LEAST(length(content), 1000000) * 2
        + CASE WHEN right(rtrim(content, E' \t\r\n'), 1) = chr(63) THEN 1 ELSE 0 END;
    """,
    # 4: 3's backfill again where content is not the caller's text (the SQLite
    # store's 8): a NUL is a space there ("Why?\0" got a question mark) and a lone
    # surrogate three U+FFFD (two characters too many). The caller's exact text is
    # content_raw (UTF-8, surrogates as three bytes), read here byte by byte in hex:
    # its characters are its bytes but continuation bytes (80-bf), and it asks a
    # question when its last byte, past trailing 20 09 0a 0d, is 3f: what
    # text_shape gives, as inserts write it. No question mark in the SQL (the
    # connection reads it as a parameter).
    """
    UPDATE memories SET shape = LEAST(length(regexp_replace(
            encode(content_raw, 'hex'), '([0-7c-f][0-9a-f])|[89ab][0-9a-f]', E'\\\\1', 'g')) / 2,
            1000000) * 2
        + CASE WHEN encode(content_raw, 'hex') ~ '^([0-9a-f][0-9a-f])*3f(20|09|0a|0d)*$'
            THEN 1 ELSE 0 END
        WHERE content_raw IS NOT NULL;
    """,
    # 5: a turn's idempotency key (the SQLite store's 9; the backfill writes what
    # legacy_unique_key() gives, matching the metadata's text by the same pattern: a
    # JSON cast would decode a row's NUL or lone surrogate escapes, which PostgreSQL
    # refuses)
    """
    ALTER TABLE memories ADD COLUMN unique_key TEXT;
    CREATE INDEX memories_unique ON memories(scope_id, unique_key) WHERE unique_key IS NOT NULL;
    UPDATE memories
        SET unique_key = '{"_helamem_turn":"' || substr(metadata, 20, 64) || '"}'
        WHERE metadata ~ '^[{]"_helamem_turn": "[0-9a-f]{64}"[}]$';
    """,
    # 6: the idempotency keys of deleted turns, as sha256 digests (the SQLite store's 10)
    """
    CREATE TABLE forgotten_turns (
        scope_id BIGINT NOT NULL, key_digest TEXT NOT NULL, PRIMARY KEY (scope_id, key_digest)
    );
    """,
)
PG_SCHEMA_VERSION = len(PG_MIGRATIONS)


class Fts5Tokenizer:
    """Tokens exactly as the SQLite store's FTS5 index makes them, from SQLite itself.

    An in-memory SQLite database with an FTS5 table of the same tokenizer
    (``porter unicode61 remove_diacritics 2``) and its ``fts5vocab`` instance
    view. Thread-safe (one lock).
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE VIRTUAL TABLE t USING fts5("
            "w, tokenize = 'porter unicode61 remove_diacritics 2')"
        )
        self._db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        self._lock = threading.Lock()

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's tokens in order (stemmed, folded), as FTS5 indexes them."""
        with self._lock:
            self._db.execute("DELETE FROM t")
            self._db.executemany(
                "INSERT INTO t(rowid, w) VALUES (?, ?)", [(i, t) for i, t in enumerate(texts)]
            )
            found: list[list[tuple[int, str]]] = [[] for _ in texts]
            for doc, term, offset in self._db.execute("SELECT doc, term, offset FROM v"):
                found[int(doc)].append((int(offset), str(term)))
            self._db.execute("DELETE FROM t")
        return [[t for _, t in sorted(f)] for f in found]

    def close(self) -> None:
        self._db.close()


def quoted(match: str) -> list[str]:
    """The quoted strings of an FTS5 OR query (``"a" OR "b"`` → ``['a', 'b']``)."""
    out: list[str] = []
    i = 0
    while True:
        start = match.find('"', i)
        if start < 0:
            return out
        j = start + 1
        buf = []
        while j < len(match):
            if match[j] == '"':
                if match[j + 1 : j + 2] == '"':
                    buf.append('"')
                    j += 2
                    continue
                break
            buf.append(match[j])
            j += 1
        out.append("".join(buf))
        i = j + 1


def pg_text(s: str) -> str:
    """Text PostgreSQL's ``TEXT`` accepts (a NUL becomes a space; a lone surrogate,
    which :func:`~helamem.core.text.safe_text` already made U+FFFD in the texts the
    store writes, becomes ``?``); the exact text is kept in ``content_raw``."""
    if "\x00" in s:
        s = s.replace("\x00", " ")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s

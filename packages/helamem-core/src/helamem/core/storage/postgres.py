"""The graph store in PostgreSQL: memories, edges, scope clocks, BM25 statistics, facts.

:class:`PostgresStore` runs the SQLite store's queries (written once, in SQL
both engines share; see :mod:`.pg_conn`) over a psycopg connection from a
``psycopg_pool`` pool, and replaces what only SQLite has:

* **Schema.** Its own append-only migrations (:data:`PG_MIGRATIONS`),
  recorded in ``schema_version`` inside the configured schema, applied under
  the schema's advisory lock (two processes opening a new schema at once
  create it once).
* **Keys.** Memory keys ``n`` and scope ids come from identity columns: never
  reused, unique across every process and machine.
* **Writes.** Write transactions take the schema's advisory lock
  (``BEGIN IMMEDIATE``, see :mod:`.pg_conn`): they run one at a time, as
  SQLite's, so the engine's read-check-write steps stay atomic. A
  co-activation is one SQL upsert besides
  (:meth:`~helamem.core.storage.sqlite.SQLiteStore.co_activate`).
* **BM25.** PostgreSQL's ``ts_rank`` is not BM25, so the store keeps term
  statistics in SQL: ``postings (term, n, tf, dl)``, ``terms (term, df)``
  and one row of totals (memories and tokens), all written in the memory's
  own transaction. Text is tokenized exactly as FTS5 does (``porter
  unicode61 remove_diacritics 2``, by SQLite's own tokenizer in memory), and
  :meth:`PostgresStore.lexical` scores with FTS5's formula (k1 1.2, b 0.75,
  :math:`\\mathrm{idf} = \\ln\\frac{N - n + 0.5}{n + 0.5}`, floored at 1e-6),
  so rankings match the SQLite store's. A query word FTS5 would split into a
  phrase (several tokens) counts as its rarest token.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import PostgresConfig
from ..errors import StorageError
from .pg_conn import AnsweringConnection, PgConnection, advisory_key, answers, redacted
from .pg_schema import PG_MIGRATIONS, PG_SCHEMA_VERSION, Fts5Tokenizer, pg_text, quoted
from .sqlite import SQLiteStore
from .sqlite_schema import qmarks

__all__ = ["PG_MIGRATIONS", "PG_SCHEMA_VERSION", "PostgresStore", "connect_reader"]

_K1, _B = 1.2, 0.75  # FTS5's bm25() constants
_IDLE_ONLY_S = 0.05
"""How long :meth:`PostgresStore._take` waits for the pool (an idle connection only)."""


def _configure(config: PostgresConfig) -> Callable[[psycopg.Connection[Any]], None]:
    """Set a new connection's ``search_path`` (the schema), ``lock_timeout`` and its
    bound on the server's answer (:class:`.AnsweringConnection`, ``timeout_s``)."""

    def configure(conn: psycopg.Connection[Any]) -> None:
        if isinstance(conn, AnsweringConnection):
            _bound(conn, config)
        conn.execute(
            pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(config.schema_name))
        )
        conn.execute(
            pgsql.SQL("SET lock_timeout = {}").format(
                pgsql.Literal(f"{int(config.lock_timeout_s * 1000)}ms")
            )
        )

    return configure


def _bound(conn: AnsweringConnection, config: PostgresConfig) -> None:
    """Bound ``conn``'s waits for the server (:class:`.AnsweringConnection`): its
    backend, named by pid and start time, is what the probe asks after."""
    row = conn.execute(
        "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    ).fetchone()
    conn.answer_s = config.timeout_s
    pid = conn.info.backend_pid
    conn.answering = partial(answers, partial(_probe, config), pid, None if row is None else row[0])


def _probe(config: PostgresConfig) -> psycopg.Connection[Any]:
    """A connection asking whether the server answers: each wait ``connect_timeout_s``."""
    conn = AnsweringConnection.connect(
        config.dsn.get_secret_value(),
        autocommit=True,
        connect_timeout=max(1, math.ceil(config.connect_timeout_s)),
    )
    conn.answer_s = config.connect_timeout_s
    return conn


def _connect(config: PostgresConfig) -> psycopg.Connection[Any]:
    conn = AnsweringConnection.connect(
        config.dsn.get_secret_value(),
        autocommit=True,
        connect_timeout=max(1, math.ceil(config.connect_timeout_s)),
    )
    _configure(config)(conn)
    return conn


def connect_reader(config: PostgresConfig) -> PgConnection:
    """One more connection to ``config``'s schema (the exact vector scan's own; made
    again after the server dropped it).

    Raises:
        StorageError: PostgreSQL cannot be reached.
    """
    conn = PgConnection(partial(_connect, config), advisory_key(config.schema_name))
    _ = conn.conn  # connect now: a wrong DSN fails at open
    return conn


_BAD_ESCAPE = "\\\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})"
"""A JSON escape PostgreSQL will not decode into text (NUL, a surrogate half), as a
POSIX regular expression in a SQL literal (no question mark: the connection's
parameter marker)."""
_BAD_RUN = "((^|[^\\\\])(\\\\\\\\)*)" + _BAD_ESCAPE
""":data:`_BAD_ESCAPE` after an even run of backslashes (an escape, not an escaped
backslash followed by "u0000"); group 1 is what comes before it."""


def _fmt(sql: str) -> str:
    """``sql`` inside a :meth:`str.format` template."""
    return sql.replace("{", "{{").replace("}", "}}")


def _pg_bad(c: str) -> bool:
    return c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF


class PostgresStore(SQLiteStore):
    """Memories, edges and scopes in one PostgreSQL schema (see the module docstring).

    The constructor does no I/O; :meth:`open` creates the pool, the schema and
    its tables. Every method runs on the store's owner thread, as the SQLite
    store's.
    """

    _MIGRATIONS: tuple[tuple[str, ...], ...] = tuple((m,) for m in PG_MIGRATIONS)
    _SECONDS_TYPE = "DOUBLE PRECISION"

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__(Path(f"postgresql-schema-{config.schema_name}"), config.connect_timeout_s)
        self.config = config
        self._pool: ConnectionPool[Any] | None = None
        self._pg: PgConnection | None = None
        self._tok: Fts5Tokenizer | None = None
        self._lock_key = advisory_key(config.schema_name)

    def describe(self) -> str:
        return f"PostgreSQL schema {self.config.schema_name!r}"

    def repair_hint(self) -> str:
        return (
            f"restore {self.describe()} from a backup, or export what is readable "
            f"(HelaMemory.export_scope) and import it into a new schema"
        )

    # -- connection ------------------------------------------------------

    def open(self) -> None:
        """Connect (a pool of ``pool_size``), create the schema and apply migrations.

        Raises:
            StorageError: PostgreSQL cannot be reached, or the schema is newer
                than this helamem-core.
        """
        cfg = self.config
        try:
            self._create_schema()
            pool: ConnectionPool[Any] = ConnectionPool(
                cfg.dsn.get_secret_value(),
                min_size=1,
                max_size=cfg.pool_size,
                kwargs={"autocommit": True},
                connection_class=AnsweringConnection,
                configure=_configure(cfg),
                check=ConnectionPool.check_connection,
                timeout=cfg.connect_timeout_s,
                open=False,
                name=f"helamem-{cfg.schema_name}",
            )
            pool.open(wait=True, timeout=cfg.connect_timeout_s)
            self._pool = pool
        except psycopg.ProgrammingError as exc:  # libpq could not parse the DSN
            self.close()
            why = redacted(str(exc), cfg.dsn.get_secret_value())
            raise StorageError(
                f"PostgresConfig.dsn is not a valid connection string ({why}); "
                f"pass postgresql://user@host:port/database or host=... dbname=... (a "
                f"password with special characters must be percent-encoded in a URL)"
            ) from exc
        except (psycopg.Error, PoolTimeout) as exc:
            self.close()
            why = redacted(str(exc), cfg.dsn.get_secret_value())
            raise StorageError(
                f"cannot open the PostgreSQL store ({why}); check that the "
                f"server runs and that PostgresConfig.dsn names it"
            ) from exc
        self._pg = PgConnection(self._take, self._lock_key, release=self._give)
        self._db = self._pg  # type: ignore[assignment]  # the shared queries' connection
        self._tok = Fts5Tokenizer()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _take(self) -> psycopg.Connection[Any]:
        """The store's connection: an idle one of the pool, else one made now.

        The pool replaces a connection the server dropped on its own schedule,
        retried with a backoff that doubles while the server is down (1, 2, 4,
        8 ... s, up to minutes): waiting for it failed every call for as long
        again after the server was back. A connection made here is tried at
        once, at every call.
        """
        pool = self._pool
        assert pool is not None
        try:
            conn: psycopg.Connection[Any] = pool.getconn(timeout=_IDLE_ONLY_S)
        except PoolTimeout:
            return _connect(self.config)
        return conn

    def _give(self, conn: psycopg.Connection[Any]) -> None:
        """Take back a connection of :meth:`_take`: the pool's to the pool, else closed."""
        pool = self._pool
        if pool is None or id(getattr(conn, "_pool", None)) != id(pool):
            conn.close()  # one made by _take (or the pool closed)
            return
        pool.putconn(conn)  # discards a broken one

    def _create_schema(self) -> None:
        """Create the schema once, under its advisory lock: ``IF NOT EXISTS`` alone
        lets two sessions creating it at once fail on a unique violation."""
        cfg = self.config
        conn = AnsweringConnection.connect(
            cfg.dsn.get_secret_value(),
            autocommit=True,
            connect_timeout=max(1, math.ceil(cfg.connect_timeout_s)),
        )
        _bound(conn, cfg)
        with conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            conn.execute(
                pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    pgsql.Identifier(cfg.schema_name)
                )
            )

    def close(self) -> None:
        self._db = None
        if self._tok is not None:
            self._tok.close()
            self._tok = None
        if self._pg is not None:
            self._pg.close()  # back to the pool
        if self._pool is not None:
            self._pool.close()
        self._pool = None
        self._pg = None

    @property
    def pg(self) -> PgConnection:
        if self._pg is None:
            raise StorageError("the PostgreSQL store is not open")
        return self._pg

    @staticmethod
    def _rollback(db: Any) -> None:
        if db.in_transaction:
            with suppress(StorageError):  # the original error is what the caller needs
                db.execute("ROLLBACK")

    @contextmanager
    def tx(self) -> Iterator[Any]:
        """One write transaction under the schema's advisory lock (see :mod:`.pg_conn`)."""
        db = self.pg
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            self._rollback(db)
            raise
        else:
            try:
                db.execute("COMMIT")
            except StorageError:
                self._rollback(db)
                raise

    @contextmanager
    def read_tx(self) -> Iterator[None]:
        """A read transaction: one snapshot (``REPEATABLE READ``) for every query inside."""
        db = self.pg
        db.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            with suppress(StorageError):
                db.execute("COMMIT")

    # -- scopes and memories ---------------------------------------------

    def ensure_scope(self, db: Any, scope: Sequence[str]) -> int:
        """The id of ``scope``'s node, creating it and its ancestors (inside a tx)."""
        from .sqlite_schema import scope_path

        parent: int | None = None
        for depth in range(1, len(scope) + 1):
            path = scope_path(scope[:depth])
            r = db.execute("SELECT id FROM scopes WHERE path = ?", (path,)).fetchone()
            if r is None:
                r = db.execute(
                    "INSERT INTO scopes(parent, name, path, depth) VALUES (?, ?, ?, ?)"
                    " RETURNING id",
                    (parent, scope[depth - 1], path, depth),
                ).fetchone()
            parent = int(r[0])
        assert parent is not None
        return parent

    def _index_texts(self, db: Any, items: Sequence[tuple[int, str, str]]) -> None:
        """Postings, document frequencies and totals of new texts ``(n, text, tags)``.

        A row's length ``dl`` counts its tags too: FTS5's ``bm25()`` takes the
        row's and the average length over all columns (``xColumnSize(-1)``),
        the tags column included, though that column's weight is 0.
        """
        assert self._tok is not None
        toks = self._tok.tokens([t for _, t, _ in items])
        postings: list[tuple[str, int, int, int]] = []
        df: Counter[str] = Counter()
        total = 0
        for (n, _, tags), words in zip(items, toks, strict=True):
            counts = Counter(words)
            dl = len(words) + len(tags.split())
            total += dl
            df.update(counts.keys())
            postings.extend((t, n, c, dl) for t, c in counts.items())
        db.executemany("INSERT INTO postings(term, n, tf, dl) VALUES (?, ?, ?, ?)", postings)
        db.executemany(
            "INSERT INTO terms(term, df) VALUES (?, ?) "
            "ON CONFLICT(term) DO UPDATE SET df = terms.df + excluded.df",
            sorted(df.items()),
        )
        db.execute(
            "UPDATE lexical_totals SET docs = docs + ?, tokens = tokens + ?",
            (len(items), total),
        )

    def _unindex_texts(self, db: Any, ns: Sequence[int]) -> None:
        """Remove memories' postings (their terms' frequencies and the totals follow)."""
        # only rows that still exist count (another writer may have deleted one
        # since it was read); one with no token in its text has only its tags' length
        lengths = {
            int(n): len(t)
            for n, t in db.execute("SELECT n, tags FROM memories WHERE n = ANY(?)", (list(ns),))
        }
        if not lengths:
            return
        rows = db.execute(
            "DELETE FROM postings WHERE n = ANY(?) RETURNING term, n, dl", (list(lengths),)
        ).fetchall()
        df = Counter(str(r[0]) for r in rows)
        lengths.update((int(r[1]), int(r[2])) for r in rows)
        db.executemany(
            "UPDATE terms SET df = df - ? WHERE term = ?", [(c, t) for t, c in sorted(df.items())]
        )
        db.execute("DELETE FROM terms WHERE df <= 0")
        db.execute(
            "UPDATE lexical_totals SET docs = docs - ?, tokens = tokens - ?",
            (len(lengths), sum(lengths.values())),
        )

    @staticmethod
    def _stored_text(search_text: str) -> str:
        return pg_text(search_text)  # PostgreSQL's text holds no NUL and no lone surrogate

    @staticmethod
    def _tag_columns(tags: str) -> dict[str, object]:
        return {"tags": tags.split()}  # _unindex_texts reads them back for the row length

    def _insert_row(self, db: Any, columns: dict[str, object]) -> int:
        r = db.execute(
            f"INSERT INTO memories({', '.join(columns)}) VALUES ({qmarks(len(columns))})"
            " RETURNING n",
            tuple(columns.values()),
        ).fetchone()
        return int(r[0])

    # -- dialect -------------------------------------------------------------

    # As text, as SQLite's. A row whose JSON holds a NUL or a surrogate escape (its
    # metadata may hold any text: JSON keeps them escaped) is cast with those escapes
    # made U+FFFD (an escaped backslash before one kept: two passes, as each match
    # takes the character before it), since PostgreSQL refuses to decode them: its keys
    # are exact, its values a superset for :meth:`_json_param`'s (Python decides). A row
    # without an escape (most: ASCII metadata) skips the regular expressions.
    _JSON_FIELD = (
        "(CAST(CASE WHEN strpos({column}, '\\u') = 0 THEN {column} WHEN {column} ~ '"
        + _fmt(_BAD_ESCAPE)
        + "' THEN regexp_replace(regexp_replace({column}, '"
        + _fmt(_BAD_RUN)
        + "', '\\1\\\\ufffd', 'g'), '"
        + _fmt(_BAD_RUN)
        + "', '\\1\\\\ufffd', 'g') ELSE {column} END AS JSON) ->> '{key}')"
    )

    @staticmethod
    def _json_param(value: str) -> str:
        """``value`` as :attr:`_JSON_FIELD` reads it from a row holding it: NUL, lone
        surrogates and each half of a pair as U+FFFD."""
        return "".join(
            "\ufffd\ufffd" if ord(c) > 0xFFFF else "\ufffd" if _pg_bad(c) else c for c in value
        )

    _LIST_IN = "{column} = ANY(CAST(? AS {type}[]))"

    @staticmethod
    def _list_param(values: list[int] | list[str]) -> object:
        return values  # an array parameter

    @staticmethod
    def _ids_sql(where: str) -> str:
        # bytewise order (the database's collation may not be), as SQLite's; the
        # index memories_id_c serves it
        return f'SELECT id FROM (SELECT id COLLATE "C" AS id FROM memories) m WHERE {where}'

    # -- BM25 --------------------------------------------------------------

    def _word_tokens(self, words: Sequence[str]) -> list[tuple[str, ...]]:
        todo = [w for w in dict.fromkeys(words) if w not in self._stems]
        if len(self._stems) + len(todo) > 65_536:
            self._stems.clear()
            todo = list(dict.fromkeys(words))
        if todo:
            assert self._tok is not None
            for w, toks in zip(todo, self._tok.tokens(todo), strict=True):
                self._stems[w] = tuple(dict.fromkeys(toks))
        return [self._stems[w] for w in words]

    def _totals(self) -> tuple[int, int]:
        r = self.pg.execute("SELECT docs, tokens FROM lexical_totals").fetchone()
        if r is None:
            raise StorageError(f"{self.describe()} has no lexical_totals row; it was altered")
        return int(r[0]), int(r[1])

    def _stats(self, tokens: set[str]) -> tuple[int, int, dict[str, int]]:
        """``(memories, tokens, token -> document frequency)``, read in ONE statement:
        one snapshot, so no frequency exceeds the memories counted (a writer deleting
        rows between two reads made the idf's logarithm negative)."""
        out = dict.fromkeys(tokens, 0)
        rows = self.pg.execute(
            "SELECT t.docs, t.tokens, x.term, x.df FROM lexical_totals t"
            " LEFT JOIN terms x ON x.term = ANY(?)",
            (sorted(tokens),),
        ).fetchall()
        if not rows:
            raise StorageError(f"{self.describe()} has no lexical_totals row; it was altered")
        out.update((str(r[2]), int(r[3])) for r in rows if r[2] is not None)
        return int(rows[0][0]), int(rows[0][1]), out

    def term_stats(self, words: Sequence[str]) -> tuple[int, list[int]]:
        """Memories indexed, and each word's document frequency (its rarest token's; 0
        when it has none), read from the ``terms`` table (exact, no cache)."""
        toks = self._word_tokens(words)
        rows, _, df = self._stats({t for ts in toks for t in ts})
        return rows, [min((df[t] for t in ts), default=0) for ts in toks]

    def fts_rows(self) -> int:
        """Memories in the BM25 statistics (every memory)."""
        return self._totals()[0]

    def lexical(
        self, match: str, tag: str | None, limit: int, after: int = 0
    ) -> list[tuple[int, float]]:
        """BM25 top ``limit`` for the quoted words of ``match`` (an OR of terms, see
        :func:`~helamem.core.text.fts_match`) among rows carrying ``tag``, keys above
        ``after``; FTS5's formula and constants, so scores equal the SQLite store's
        ``-bm25()`` for single-token words.

        Returns ``(n, score)``, best first (ties: lower key first).
        """
        words = [w.replace('""', '"') for w in quoted(match)]
        toks = self._word_tokens(words)
        docs, tokens, df = self._stats({t for ts in toks for t in ts})
        # a phrase (several tokens) counts as its rarest token; as in FTS5, two
        # words of one stem ("running", "runs") are two phrases, each scored
        chosen = [min(ts, key=lambda t: (df[t], t)) for ts in toks if ts]
        chosen = [t for t in chosen if df[t] > 0]
        if not chosen:
            return []
        avgdl = tokens / docs if docs else 1.0
        idf = [max(math.log((max(docs - df[t], 0) + 0.5) / (df[t] + 0.5)), 1e-6) for t in chosen]
        where, params = "", [chosen, idf]
        join = ""
        if tag is not None:
            join = " JOIN memories m ON m.n = p.n"
            where += " AND ? = ANY(m.tags)"
            params.append(tag)
        if after:
            where += " AND p.n > ?"
            params.append(after)
        params.append(limit)
        rows = self.pg.execute(
            "SELECT p.n, SUM(q.idf * p.tf * ? / (p.tf + ? * (? + ? * p.dl / ?))) AS s"
            " FROM postings p JOIN unnest(CAST(? AS TEXT[]), CAST(? AS FLOAT8[])) AS q(term, idf)"
            f" ON p.term = q.term{join} WHERE TRUE{where}"
            " GROUP BY p.n ORDER BY s DESC, p.n LIMIT ?",
            (_K1 + 1, _K1, 1 - _B, _B, avgdl, *params),
        ).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

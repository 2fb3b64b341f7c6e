"""A psycopg connection that runs the SQLite store's portable SQL on PostgreSQL.

The graph store's queries are written once (:mod:`.sqlite`, :mod:`.sqlite_upkeep`,
:mod:`.exact`) in the subset of SQL both engines share; :class:`PgConnection`
offers the part of :class:`sqlite3.Connection` they use (``execute``,
``executemany``, ``in_transaction``) and rewrites the few spellings that differ:

* ``?`` parameters become ``%s`` (the queries hold no literal ``?`` or ``%``);
* ``BEGIN IMMEDIATE`` (SQLite's writer lock up front) becomes ``BEGIN`` plus
  ``pg_advisory_xact_lock`` on the schema's key: write transactions of one
  memory run one at a time, on every machine, exactly as SQLite's single
  writer, so every read-check-write inside one (an id taken, a scope's tick
  and last episode, a promoted scope) is atomic; the lock goes with the
  transaction, also when the client dies;
* ``BEGIN`` / ``BEGIN DEFERRED`` (a read snapshot) become ``BEGIN ISOLATION
  LEVEL REPEATABLE READ``;
* ``INDEXED BY`` hints are dropped; ``INSERT OR IGNORE`` becomes
  ``INSERT … ON CONFLICT DO NOTHING``.

Errors come out as HeLa-Mem's typed ones (:func:`pg_error`), never as
psycopg's. Statements that only SQLite has (FTS5, PRAGMA) are never sent here:
:class:`~helamem.core.storage.postgres.PostgresStore` overrides the methods
that use them.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg_pool import PoolTimeout

from ..errors import DiskFullError, StorageError

__all__ = ["PgConnection", "advisory_key", "pg_error", "translate"]

_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+")
_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO", re.IGNORECASE)
_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ"


def advisory_key(schema: str) -> int:
    """The ``pg_advisory_xact_lock`` key of a schema's write lock (a signed 64-bit int).

    Examples:
        >>> advisory_key("helamem") == advisory_key("helamem")
        True
    """
    return (zlib.crc32(f"helamem:{schema}".encode()) << 16) | 0x4D45


def translate(sql: str) -> str:
    """``sql`` (the store's portable SQLite spelling) in PostgreSQL's.

    Examples:
        >>> translate("SELECT n FROM memories INDEXED BY memories_unindexed WHERE id = ?")
        'SELECT n FROM memories WHERE id = %s'
        >>> translate("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)")
        'INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING'
    """
    out = _INDEXED_BY.sub("", sql).replace("?", "%s")
    if _OR_IGNORE.match(out):
        out = _OR_IGNORE.sub("INSERT INTO", out).rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    return out


def pg_error(exc: psycopg.Error, what: str) -> StorageError:
    """The typed HeLa-Mem error for a PostgreSQL failure, naming its cause and the fix.

    Returns :class:`DiskFullError` for a full disk (SQLSTATE 53100), a
    :class:`StorageError` naming the server for a lost or refused connection,
    :class:`StorageError` otherwise (the caller raises it ``from exc``).
    """
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, pg_errors.DiskFull):
        return DiskFullError(
            f"{what}: the PostgreSQL server's disk is full ({text}); free space on the server "
            f"and retry (the transaction was rolled back: nothing was written)"
        )
    if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.QueryCanceled):
        return StorageError(
            f"{what}: another process held this memory's write lock past "
            f"PostgresConfig.lock_timeout_s ({text}); raise it, or find the client that holds a "
            f"transaction open (pg_stat_activity)"
        )
    if isinstance(exc, psycopg.OperationalError):
        return StorageError(
            f"{what}: PostgreSQL is unreachable or refused the connection ({text}); check "
            f"that the server runs and that PostgresConfig.dsn names it"
        )
    return StorageError(f"{what}: {text}")


class PgConnection:
    """The slice of :class:`sqlite3.Connection` the store uses, over one psycopg connection.

    The connection is in autocommit mode: a statement outside ``BEGIN`` …
    ``COMMIT`` commits by itself, as in SQLite's autocommit mode. A connection
    the server dropped (a restart, a failover, an idle timeout) is replaced by a
    new one before the next statement outside a transaction; the statement that
    met the drop raised :class:`StorageError`, and its transaction rolled back.

    Args:
        connect: Returns an open psycopg connection (autocommit, ``search_path``
            set): from the store's pool, or a plain one.
        lock_key: The advisory lock of ``BEGIN IMMEDIATE`` (:func:`advisory_key`).
        release: Takes back a connection this object is done with (the pool's
            ``putconn``, which discards a broken one); default: close it.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        lock_key: int,
        release: Callable[[psycopg.Connection[Any]], None] | None = None,
    ) -> None:
        self._connect = connect
        self._release = release
        self._conn: psycopg.Connection[Any] | None = None
        self._key = lock_key
        self._sql: dict[str, str] = {}

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The live connection (a new one when the last was dropped).

        Raises:
            StorageError: no connection to PostgreSQL could be made.
        """
        c = self._conn
        if c is not None and not c.closed and not c.broken:
            return c
        self._conn = None
        if c is not None:
            self._give_back(c)
        try:
            self._conn = self._connect()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(
                f"cannot reach PostgreSQL ({exc}); check that the server runs and that "
                f"PostgresConfig.dsn names it"
            ) from exc
        return self._conn

    def _give_back(self, c: psycopg.Connection[Any]) -> None:
        with suppress(psycopg.Error):
            if self._release is not None:
                self._release(c)
            else:
                c.close()

    def _translated(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = translate(sql)
        return out

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """Run one statement; returns its cursor (``fetchone``, ``fetchall``, iteration).

        A ``BEGIN`` or a read outside a transaction that meets a connection the
        server dropped (seen only when it is used) runs again, once, on a new
        one: nothing had happened yet. Anything else raises.

        Raises:
            StorageError: PostgreSQL refused it (see :func:`pg_error`).
        """
        head = sql.lstrip()[:16].upper()
        retry = not self.in_transaction and head.startswith(("BEGIN", "SELECT", "WITH"))
        try:
            return self._execute(sql, params, head)
        except psycopg.OperationalError as exc:
            c = self._conn
            if not (retry and (c is None or c.closed or c.broken)):
                raise pg_error(exc, "a PostgreSQL statement failed") from exc
        except psycopg.Error as exc:
            raise pg_error(exc, "a PostgreSQL statement failed") from exc
        try:
            return self._execute(sql, params, head)
        except psycopg.Error as exc:
            raise pg_error(exc, "a PostgreSQL statement failed") from exc

    def _execute(self, sql: str, params: Sequence[Any], head: str) -> psycopg.Cursor[Any]:
        head = head.rstrip()
        if head == "BEGIN IMMEDIATE":
            conn = self.conn
            cur = conn.execute("BEGIN")
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._key,))
            except psycopg.Error:  # no lock (lock_timeout): no transaction either
                with suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise
            return cur
        if head in ("BEGIN", "BEGIN DEFERRED"):
            return self.conn.execute(_READ)
        return self.conn.execute(self._translated(sql), tuple(params) or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row (pipelined by psycopg)."""
        rows = list(rows)
        if not rows:
            return
        try:
            with self.conn.cursor() as cur:
                cur.executemany(self._translated(sql), rows)
        except psycopg.Error as exc:
            raise pg_error(exc, "a PostgreSQL statement failed") from exc

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (also one a failed statement aborted)."""
        c = self._conn
        if c is None or c.closed or c.broken:
            return False
        return c.info.transaction_status in (
            TransactionStatus.INTRANS,
            TransactionStatus.INERROR,
            TransactionStatus.ACTIVE,
        )

    def close(self) -> None:
        """Give the connection back (rolled back first if a transaction is open)."""
        c, self._conn = self._conn, None
        if c is None:
            return
        with suppress(psycopg.Error):
            if (
                not c.closed
                and not c.broken
                and c.info.transaction_status != TransactionStatus.IDLE
            ):
                c.rollback()
        self._give_back(c)

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

import functools
import math
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import PQGen
from psycopg.pq import TransactionStatus
from psycopg_pool import PoolTimeout

from ..errors import CommitUnknownError, DiskFullError, StorageError

__all__ = [
    "AnsweringConnection",
    "NoAnswerError",
    "PgConnection",
    "advisory_key",
    "answers",
    "pg_error",
    "translate",
]

_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+")
_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO", re.IGNORECASE)
_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ"
# a write transaction's statements each see what committed before them (the lock
# is taken first): whatever default_transaction_isolation the database or role sets
_WRITE = "BEGIN ISOLATION LEVEL READ COMMITTED"


class NoAnswerError(psycopg.OperationalError):
    """The server did not answer a statement within ``PostgresConfig.timeout_s``; the
    connection was closed (see :class:`AnsweringConnection`)."""


class AnsweringConnection(psycopg.Connection[Any]):
    """A psycopg connection that stops waiting for a server that no longer answers.

    libpq waits for a statement's answer without limit: a server that stops
    answering (stopped, swapped out, a network that drops packets without a
    reset) held the store's owner thread, and so every call of the memory,
    forever. Here, each ``answer_s`` seconds a statement goes on without its
    answer, ``answering()`` asks the server on a connection of its own (within
    ``connect_timeout_s``) whether this connection's backend still works on it
    (:func:`answers`): while it does, the statement is merely slow and the wait
    goes on (a long migration, a large delete or export); once it does not (no
    answer, the backend gone, idle or unable to write to this connection), the
    connection is closed (the server rolls back the transaction it held, when it
    runs again) and
    :class:`NoAnswerError` is raised. Both are set from the
    :class:`~helamem.core.config.PostgresConfig` when the connection is
    configured; until then (and for a wait psycopg bounds itself, e.g.
    ``notifies(timeout=)``) psycopg's own wait runs unchanged.
    """

    answer_s: float = math.inf
    answering: Callable[[], bool] | None = None

    def wait(
        self,
        gen: PQGen[Any],
        interval: float = 0.1,
        timeout: float | None = None,
    ) -> Any:
        if timeout is not None or math.isinf(self.answer_s):
            return super().wait(gen, interval, timeout)
        while True:
            try:  # psycopg's wait leaves the generator where it was: it can go on
                return super().wait(gen, interval, self.answer_s)
            except pg_errors._WaitTimeout as exc:  # psycopg's own, for this very bound
                if self.answering is not None and self.answering():
                    continue  # a slow statement on a server that answers: wait on
                self.close()  # mid-statement: the protocol cannot go on on this connection
                raise NoAnswerError(
                    f"no answer for {self.answer_s:g} s, and the statement is not being "
                    f"worked on: its backend gone, idle or unable to write to this "
                    f"connection, or no new connection answered "
                    f"(PostgresConfig.timeout_s, connect_timeout_s)"
                ) from exc


_WORKING = """SELECT state, wait_event FROM pg_stat_activity
WHERE pid = %s AND backend_start = %s"""


def answers(connect: Callable[[], psycopg.Connection[Any]], pid: int, started: Any) -> bool:
    """Whether the server still works on the statement of its backend ``pid`` (started
    at ``started``), asked on a new connection from ``connect`` (which bounds its own
    waits: :class:`AnsweringConnection` without ``answering``).

    False when no connection answers, when that backend is gone (or the new connection
    reached another server: a failover), when it is idle (it answered, and the answer
    was lost: a half-open connection) or waits to write to its client (which no longer
    reads it): the statement's own connection is stuck, whatever the server does.
    """
    try:
        with connect() as probe:
            row = probe.execute(_WORKING, (pid, started)).fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] == "active" and row[1] != "ClientWrite"


def advisory_key(schema: str) -> int:
    """The ``pg_advisory_xact_lock`` key of a schema's write lock (a signed 64-bit int).

    Examples:
        >>> advisory_key("helamem") == advisory_key("helamem")
        True
    """
    return (zlib.crc32(f"helamem:{schema}".encode()) << 16) | 0x4D45


@functools.lru_cache(maxsize=4096)  # bounded: IN lists of every length are distinct texts
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


_PASSWORD = (
    re.compile(r"(?P<head>://[^:/@\s]*:)(?P<secret>[^@\s]*)@"),  # a URL's user:password@
    re.compile(r"(?P<head>password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE),
)


def redacted(text: str, dsn: str | None = None) -> str:
    """``text`` with any DSN password in it replaced by ``***``: libpq echoes the
    token it could not parse, which may be the password alone (so the passwords
    written in ``dsn`` go too).

    Examples:
        >>> redacted('invalid token: "postgresql://app:hun%zz@db/x"')
        'invalid token: "postgresql://app:***@db/x"'
        >>> redacted("host=db password='s e' user=app")
        'host=db password=*** user=app'
        >>> redacted('invalid percent-encoded token: "hun%zz"', "postgresql://a:hun%zz@db/x")
        'invalid percent-encoded token: "***"'
    """
    for secret in _secrets(dsn or ""):
        text = text.replace(secret, "***")
    for pattern in _PASSWORD:
        text = pattern.sub(
            lambda m: f"{m.group('head')}***" + ("@" if m.group(0).endswith("@") else ""), text
        )
    return text


def _secrets(dsn: str) -> list[str]:
    """The password spellings written in ``dsn`` (longest first)."""
    found = [m.group("secret").strip("'") for p in _PASSWORD for m in p.finditer(dsn)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def pg_error(
    exc: psycopg.Error, what: str, conn: psycopg.Connection[Any] | None = None
) -> StorageError:
    """The typed HeLa-Mem error for a PostgreSQL failure, naming its cause and the fix.

    By SQLSTATE: :class:`DiskFullError` for a full disk (53100); a lost or
    refused connection (class 08, or an error without SQLSTATE that left
    ``conn``, the connection it came from, closed or broken: unknown when not
    given); a serialization failure or deadlock (class 40: retry); the write
    lock's timeout (55P03); a statement timeout (57014); an error without
    SQLSTATE on a connection still intact is the client library's own (libpq
    refused the statement, e.g. too many parameters); otherwise
    :class:`StorageError` with the server's message (the caller raises it
    ``from exc``). A password in the message is redacted.
    """
    text = redacted(str(exc).strip() or type(exc).__name__)
    state = exc.sqlstate or ""
    if isinstance(exc, NoAnswerError):
        return StorageError(
            f"{what}: PostgreSQL stopped answering ({text}); the connection was closed and "
            f"the server rolls back its transaction, if any, when it runs again (nothing "
            f"of it is written; a COMMIT's outcome is unknown); check the server"
        )
    if isinstance(exc, pg_errors.DiskFull):
        return DiskFullError(
            f"{what}: the PostgreSQL server's disk is full ({text}); free space on the server "
            f"and retry (the transaction was rolled back: nothing was written)"
        )
    if isinstance(exc, pg_errors.LockNotAvailable):
        return StorageError(
            f"{what}: another process held this memory's write lock past "
            f"PostgresConfig.lock_timeout_s ({text}); raise it, or find the client that holds a "
            f"transaction open (pg_stat_activity)"
        )
    if isinstance(exc, pg_errors.QueryCanceled):
        return StorageError(
            f"{what}: the server cancelled the statement ({text}); a statement_timeout set on "
            f"the database or role is shorter than this call needs: raise it"
        )
    if state.startswith("40"):
        return StorageError(
            f"{what}: PostgreSQL aborted the transaction to keep concurrent ones consistent "
            f"({text}); nothing was written: retry the call"
        )
    client_side = isinstance(exc, psycopg.OperationalError) and not state
    lost = conn is None or conn.closed or conn.broken
    if state.startswith("08") or (client_side and lost):
        return StorageError(
            f"{what}: PostgreSQL is unreachable or refused the connection ({text}); check "
            f"that the server runs and that PostgresConfig.dsn names it"
        )
    if client_side:
        return StorageError(
            f"{what}: the PostgreSQL client library (libpq) refused the statement ({text}); "
            f"the connection is intact: this is no outage"
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
        # "read" or "write" from a BEGIN until its COMMIT or ROLLBACK, else None
        self._in_tx: str | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The live connection (a new one when the last was dropped).

        Raises:
            StorageError: no connection to PostgreSQL could be made.
        """
        c = self._conn
        if c is not None and not c.closed and not c.broken:
            return c
        if self._in_tx:  # the transaction went with the connection: never go on without it
            raise StorageError(
                "the connection to PostgreSQL was lost inside a transaction; the server rolled "
                "it back (nothing of it was written); retry the call"
            )
        self._conn = None
        if c is not None:
            self._give_back(c)
        try:
            self._conn = self._connect()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(
                f"cannot reach PostgreSQL ({redacted(str(exc))}); check that the server runs "
                f"and that PostgresConfig.dsn names it (a server that accepts no connection "
                f"within PostgresConfig.connect_timeout_s, a stopped or cut-off one, fails so)"
            ) from exc
        return self._conn

    def _give_back(self, c: psycopg.Connection[Any]) -> None:
        with suppress(psycopg.Error):
            if self._release is not None:
                self._release(c)
            else:
                c.close()

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
            # a read whose connection the server had dropped runs again; not one the
            # server left unanswered (that would double the wait)
            again = retry and not isinstance(exc, NoAnswerError)
            if not (again and (c is None or c.closed or c.broken)):
                raise pg_error(exc, "a PostgreSQL statement failed", self._conn) from exc
        except psycopg.Error as exc:
            raise pg_error(exc, "a PostgreSQL statement failed", self._conn) from exc
        try:
            return self._execute(sql, params, head)
        except psycopg.Error as exc:
            raise pg_error(exc, "a PostgreSQL statement failed", self._conn) from exc

    def _execute(self, sql: str, params: Sequence[Any], head: str) -> psycopg.Cursor[Any]:
        head = head.rstrip()
        if head.startswith("BEGIN"):
            if self._in_tx:
                raise StorageError("a transaction is already open on this connection")
            conn = self.conn
            if head == "BEGIN IMMEDIATE":
                cur = conn.execute(_WRITE)
                try:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._key,))
                except psycopg.Error:  # no lock (lock_timeout): no transaction either
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                    raise
            else:
                cur = conn.execute(_READ)
            self._in_tx = "write" if head == "BEGIN IMMEDIATE" else "read"
            return cur
        if head in ("COMMIT", "ROLLBACK"):
            kind, self._in_tx = self._in_tx, None
            c = self._conn
            lost = c is None or c.closed or c.broken
            if kind is not None and lost:  # the server rolled it back when it went
                if head == "COMMIT" and kind == "write":
                    raise StorageError(
                        "the connection to PostgreSQL was lost inside a write transaction; "
                        "the server rolled it back (nothing of it was written); retry the call"
                    )
                return self.conn.cursor()  # nothing to end
            try:
                return self.conn.execute(head)
            except psycopg.OperationalError as exc:
                if (
                    head == "COMMIT"
                    and kind == "write"
                    and (self._conn is None or self._conn.broken or self._conn.closed)
                ):
                    raise CommitUnknownError(
                        "the connection to PostgreSQL was lost during COMMIT: the write may or "
                        "may not have been saved; read before writing it again"
                    ) from exc
                raise
        return self.conn.execute(translate(sql), tuple(params) or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row (pipelined by psycopg)."""
        rows = list(rows)
        if not rows:
            return
        try:
            with self.conn.cursor() as cur:
                cur.executemany(translate(sql), rows)
        except psycopg.Error as exc:
            raise pg_error(exc, "a PostgreSQL statement failed", self._conn) from exc

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (also one a failed statement aborted, or one
        whose connection was lost: its COMMIT or ROLLBACK is still due)."""
        if self._in_tx is not None:
            return True
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
        self._in_tx = None
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

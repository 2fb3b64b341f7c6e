"""The SQLite store's schema and migrations, its connection, transactions and error mapping.

SQLite is the source of truth. WAL journal, ``BEGIN IMMEDIATE`` write
transactions, a busy timeout so several processes can share a file, and
append-only migrations recorded in ``schema_version``. The queries live in
:mod:`.sqlite` (memories, scopes, edges, full text) and
:mod:`.sqlite_upkeep` (facts, clusters, forgetting, export and import).

Every method runs on the store's single owner thread (see
:class:`helamem.core.engine.HelaMemory`); nothing here is thread-safe by
itself.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..errors import CorruptStoreError, DiskFullError, StorageError
from .base import MemoryRow
from .sqlite_checkpoint import WalCheckpointer, set_backstop
from .sqlite_fork import check_not_inherited, closed, opened
from .unique import legacy_unique_key

__all__ = [
    "MIGRATIONS",
    "connect_existing",
    "SCHEMA_VERSION",
    "SQLiteConnection",
    "MEMORY_COLS",
    "SUBTREE",
    "memory_row",
    "in_list",
    "qmarks",
    "text_shape",
    "scope_path",
    "sqlite_errors",
    "storage_error",
]

MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE scopes (
        id INTEGER PRIMARY KEY,
        parent INTEGER REFERENCES scopes(id),
        name TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        depth INTEGER NOT NULL,
        tick INTEGER NOT NULL DEFAULT 0,
        last_episode INTEGER
    );
    CREATE INDEX scopes_parent ON scopes(parent);
    CREATE TABLE memories (
        n INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        scope_id INTEGER NOT NULL REFERENCES scopes(id),
        kind TEXT NOT NULL,
        content TEXT NOT NULL,
        content_raw BLOB,
        role TEXT,
        event_time REAL NOT NULL,
        created_at REAL NOT NULL,
        keywords TEXT NOT NULL DEFAULT '[]',
        access_count INTEGER NOT NULL DEFAULT 0,
        last_access REAL,
        metadata TEXT NOT NULL DEFAULT '{}',
        provenance TEXT NOT NULL DEFAULT '[]',
        embedding BLOB,
        indexed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX memories_scope ON memories(scope_id, kind, event_time);
    CREATE INDEX memories_unindexed ON memories(indexed) WHERE indexed = 0;
    CREATE VIRTUAL TABLE memories_fts USING fts5(
        content, tags, tokenize = 'porter unicode61 remove_diacritics 2'
    );
    CREATE TABLE edges (
        a INTEGER NOT NULL,
        b INTEGER NOT NULL,
        scope_id INTEGER NOT NULL,
        weight REAL NOT NULL,
        tick INTEGER NOT NULL,
        PRIMARY KEY (a, b),
        CHECK (a < b)
    ) WITHOUT ROWID;
    CREATE INDEX edges_b ON edges(b);
    CREATE INDEX edges_scope ON edges(scope_id);
    CREATE TABLE tombstones (id TEXT PRIMARY KEY, scope_id INTEGER NOT NULL, kind TEXT NOT NULL);
    """,
    # 2: Hebbian distillation bookkeeping
    """
    CREATE TABLE clusters (
        scope_id INTEGER NOT NULL,
        signature TEXT NOT NULL,
        hub TEXT NOT NULL,
        facts INTEGER NOT NULL,
        distilled_at REAL NOT NULL,
        PRIMARY KEY (scope_id, signature)
    );
    """,
    # 3: per-term document frequencies (a read-only view of the FTS index), used to
    # leave very common words out of lexical queries
    """
    CREATE VIRTUAL TABLE memories_fts_vocab USING fts5vocab(memories_fts, 'col');
    """,
    # 4: memory keys (n) are never reused (AUTOINCREMENT): with plain rowids a
    # key freed by a delete could be handed to another process's new memory
    # while edges, searches or read-backs still referred to the old one
    """
    CREATE TABLE memories_v4 (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        scope_id INTEGER NOT NULL REFERENCES scopes(id),
        kind TEXT NOT NULL,
        content TEXT NOT NULL,
        content_raw BLOB,
        role TEXT,
        event_time REAL NOT NULL,
        created_at REAL NOT NULL,
        keywords TEXT NOT NULL DEFAULT '[]',
        access_count INTEGER NOT NULL DEFAULT 0,
        last_access REAL,
        metadata TEXT NOT NULL DEFAULT '{}',
        provenance TEXT NOT NULL DEFAULT '[]',
        embedding BLOB,
        indexed INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO memories_v4 SELECT n, id, scope_id, kind, content, content_raw, role,
        event_time, created_at, keywords, access_count, last_access, metadata, provenance,
        embedding, indexed FROM memories ORDER BY n;
    DROP TABLE memories;
    ALTER TABLE memories_v4 RENAME TO memories;
    CREATE INDEX memories_scope ON memories(scope_id, kind, event_time);
    CREATE INDEX memories_unindexed ON memories(indexed) WHERE indexed = 0;
    """,
    # 5: per-token vectors for late interaction (MaxSim), a derived cache by
    # memory key: written at ingest, filled lazily for older memories, dropped
    # with the memory and when the embedder changes
    """
    CREATE TABLE token_vectors (n INTEGER PRIMARY KEY, data BLOB NOT NULL);
    """,
    # 6: the keys of deleted and rewritten memories, for the tantivy BM25 index
    # of large stores (storage/lexical.py); logged by every process, in the
    # writing transaction, once that index exists (meta 'lexical_index'), and
    # emptied by the index's holder as it applies them
    """
    CREATE TABLE lexical_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL);
    CREATE TRIGGER lexical_log_delete AFTER DELETE ON memories
    WHEN EXISTS (SELECT 1 FROM meta WHERE key = 'lexical_index')
    BEGIN INSERT INTO lexical_log(n) VALUES (old.n); END;
    CREATE TRIGGER lexical_log_update AFTER UPDATE OF content, scope_id, kind ON memories
    WHEN EXISTS (SELECT 1 FROM meta WHERE key = 'lexical_index')
    BEGIN INSERT INTO lexical_log(n) VALUES (old.n); END;
    """,
    # 7: each memory's text shape for the learned selection (retrieval.py), written
    # at insert so a search reads no content: length in characters (capped at
    # 1,000,000) times 2, plus 1 when the text ends with a question mark
    """
    ALTER TABLE memories ADD COLUMN shape INTEGER NOT NULL DEFAULT 0;
    UPDATE memories SET shape = min(length(content), 1000000) * 2
        + (substr(rtrim(content, ' ' || char(9) || char(10) || char(13)), -1) = char(63));
    """,
    # 8: 7's backfill again where SQL's text functions read another text than the
    # caller's: SQLite's length() and rtrim() stop at a NUL (a memory "a\0 long
    # text?" got length 1 and no question mark), and a lone surrogate's text is in
    # content_raw (content holds U+FFFD replacements, up to 3 per character); the
    # rows' shape is now what an insert writes (text_shape, registered on every
    # connection as helamem_shape)
    """
    UPDATE memories SET shape = helamem_shape(content, content_raw)
        WHERE content_raw IS NOT NULL OR instr(CAST(content AS BLOB), x'00') > 0;
    """,
    # 9: a turn's idempotency key (``add_turn``'s ``unique_on``: its metadata pairs as
    # ASCII JSON, keys sorted, no spaces: :func:`.unique.unique_key`), found by scope through an
    # index in the write transaction. Backfilled for the AutoGen adapter's turn
    # identity, which it looked up by metadata before (:func:`.unique.legacy_unique_key`: its
    # turns' metadata is exactly {"_helamem_turn": <64 hex digits>}, as dump_json
    # writes it; matched as text, so no row's other JSON is decoded)
    """
    ALTER TABLE memories ADD COLUMN unique_key TEXT;
    CREATE INDEX memories_unique ON memories(scope_id, unique_key) WHERE unique_key IS NOT NULL;
    UPDATE memories SET unique_key = helamem_legacy_unique_key(metadata)
        WHERE metadata LIKE '{"_helamem_turn": "%"}' AND length(metadata) = 85;
    """,
    # 10: the idempotency keys of deleted turns (their sha256, ``unique.key_digest``),
    # kept by the deleting transaction: no process stores a forgotten turn again
    # (``SQLiteUpkeep.forget_unique_keys``)
    """
    CREATE TABLE forgotten_turns (
        scope_id INTEGER NOT NULL, key_digest TEXT NOT NULL, PRIMARY KEY (scope_id, key_digest)
    ) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


MEMORY_COLS = (
    "n, id, scope_id, kind, content, content_raw, role, event_time, created_at, keywords, "
    "access_count, last_access, metadata, provenance, embedding"
)

# the node bound to the first parameter and every node under it, as CTE ``down``
SUBTREE = (
    "WITH RECURSIVE down(id) AS ("
    "SELECT CAST(? AS BIGINT) UNION ALL SELECT s.id FROM scopes s JOIN down ON s.parent = down.id)"
)


def scope_path(scope: Sequence[str]) -> str:
    """Unambiguous key of a scope (JSON array; surrogates escaped)."""
    return json.dumps(list(scope))


def memory_row(r: Any) -> MemoryRow:
    raw = r[5]
    content = bytes(raw).decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(r[4])
    return MemoryRow(
        n=int(r[0]),
        id=str(r[1]),
        scope_id=int(r[2]),
        kind=str(r[3]),
        content=content,
        role=None if r[6] is None else str(r[6]),
        event_time=float(r[7]),
        created_at=float(r[8]),
        keywords=str(r[9]),
        access_count=int(r[10]),
        last_access=None if r[11] is None else float(r[11]),
        metadata=str(r[12]),
        provenance=str(r[13]),
        embedding=None if r[14] is None else bytes(r[14]),
    )


_CORRUPT = ("malformed", "not a database", "corrupt")


def _io_error(low: str, code: str) -> bool:
    return "disk i/o error" in low or code.startswith("SQLITE_IOERR")


def _full(path: Path, floor: int = 1 << 20) -> bool:
    """Whether the filesystem holding ``path`` has less than ``floor`` bytes free
    (a full disk often surfaces as SQLITE_IOERR when the WAL or its index cannot grow)."""
    try:
        return shutil.disk_usage(path.parent).free < floor
    except OSError:
        return False


def connect_existing(db_path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file ``db_path``, never creating one where there is
    none (``mode=rw``), autocommit, waiting up to 30 s for a writer's lock (for readers
    outside a store: ``helamem check``, the embedder record)."""
    db = sqlite3.connect(
        f"{db_path.resolve().as_uri()}?mode=rw", uri=True, timeout=30.0, isolation_level=None
    )
    db.execute("PRAGMA busy_timeout=30000")
    return db


def is_locked(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds a lock (``SQLITE_BUSY``/``LOCKED``).

    By its primary result code (5, 6; extended codes keep it in the low byte),
    by its message when the error carries no code.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    low = str(exc).lower()
    return "locked" in low or "busy" in low


def storage_error(exc: sqlite3.Error, path: Path, what: str) -> StorageError:
    """The typed HeLa-Mem error for an SQLite failure, naming its cause and the fix.

    Returns :class:`DiskFullError` for a full disk, :class:`CorruptStoreError` for a
    damaged file, :class:`StorageError` otherwise (the caller raises it ``from exc``).
    """
    text = str(exc)
    low = text.lower()
    code = getattr(exc, "sqlite_errorname", "")
    if "disk is full" in low or code == "SQLITE_FULL" or (_io_error(low, code) and _full(path)):
        return DiskFullError(
            f"{what}: the disk holding {path} is full ({text}); free space and retry "
            f"(SQLite rolled the transaction back: nothing was lost)"
        )
    if any(w in low for w in _CORRUPT) or code in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return CorruptStoreError(
            f"{what}: the SQLite store {path} is corrupt ({text}); run `helamem check "
            f"{path.parent}` to see what is damaged, restore helamem.sqlite3 from a backup "
            f"(an export: import it into a new store), then run `helamem reindex "
            f"{path.parent}` to rebuild the vector index, which derives from it"
        )
    if is_locked(exc):
        return StorageError(
            f"{what}: {text} ({path}): another connection held the write lock past the busy "
            f"timeout; raise HelaMemConfig.busy_timeout_s, or find the process that holds "
            f"{path.name} open in a long transaction"
        )
    return StorageError(f"{what}: {text} ({path})")


@contextmanager
def sqlite_errors(path: Path, what: str = "storage operation failed") -> Iterator[None]:
    """Turn any :class:`sqlite3.Error` raised inside into a typed :class:`StorageError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise storage_error(exc, path, what) from exc


def text_shape(content: str) -> int:
    """The ``shape`` column (migration 7) of a memory's text.

    Examples:
        >>> text_shape("Where to? "), text_shape("Here.")
        (21, 10)
    """
    asks = content.rstrip(" \t\r\n").endswith("?")
    return min(len(content), 1_000_000) * 2 + int(asks)


def _row_shape(content: str, raw: bytes | None) -> int:
    """:func:`text_shape` of a row's text (``content_raw`` when set: the caller's exact text)."""
    return text_shape(bytes(raw).decode("utf-8", "surrogatepass") if raw is not None else content)


def statements(script: str) -> list[str]:
    """A script's SQL statements, one each (a trigger's body keeps its ``;``).

    Examples:
        >>> statements("CREATE TABLE t (a); CREATE TRIGGER x AFTER DELETE ON t BEGIN "
        ...            "DELETE FROM t; END;")  # doctest: +NORMALIZE_WHITESPACE
        ['CREATE TABLE t (a);', 'CREATE TRIGGER x AFTER DELETE ON t BEGIN DELETE FROM t; END;']
    """
    out: list[str] = []
    part = ""
    for piece in script.split(";"):
        part += piece + ";"
        if sqlite3.complete_statement(part):
            if part.strip(" \n;"):
                out.append(part.strip())
            part = ""
    if part.strip(" \n;"):
        raise ValueError(f"an unfinished SQL statement: {part.strip()[:80]!r}")
    return out


def raw_content(content: str, stored: str) -> bytes | None:
    """The ``content_raw`` column: the caller's exact text (UTF-8, lone surrogates
    kept) when the searchable ``content`` column holds another spelling, else NULL."""
    return None if content == stored else content.encode("utf-8", "surrogatepass")


def qmarks(n: int) -> str:
    return ",".join("?" * n)


#: The lengths an ``IN (…)`` list is padded to (see :func:`in_list`).
IN_SIZES = (8, 16, 32, 64, 128, 256, 512)


def in_list(keys: Sequence[object], limit: int = IN_SIZES[-1]) -> tuple[str, list[object]]:
    """The placeholders of an ``IN (…)`` list of ``keys`` and its parameters, padded
    with NULL (which equals no row) to the next of :data:`IN_SIZES` up to ``limit``
    (a longer list keeps its length).

    So a statement's text repeats from call to call whatever the number of keys,
    and the connection's statement cache reuses its compiled plan: compiling one
    anew took about a third of a 90-row lookup at 100k memories (0.9 against
    0.55 ms). Only for ``IN``: under ``NOT IN`` a NULL would match nothing.

    Examples:
        >>> in_list([3, 1])
        ('?,?,?,?,?,?,?,?', [3, 1, None, None, None, None, None, None])
    """
    n = len(keys)
    size = next((s for s in IN_SIZES if n <= s <= limit), n)
    return qmarks(size), [*keys, *([None] * (size - n))]


class SQLiteConnection:
    """One SQLite file: its connection, schema migrations, transactions and meta table."""

    #: The append-only migrations, each as its statements (``PostgresStore``: its own).
    _MIGRATIONS: tuple[tuple[str, ...], ...] = tuple(tuple(statements(m)) for m in MIGRATIONS)
    #: The SQL type of ``schema_version.applied_at`` (Unix seconds).
    _SECONDS_TYPE = "REAL"

    def __init__(self, path: Path, busy_timeout_s: float = 30.0, mmap_mb: int = 0) -> None:
        # absolute once, here (no I/O): a later os.chdir moves neither this connection's
        # file nor its checkpoint thread's
        self._path = path.absolute()
        self._timeout = busy_timeout_s
        self._mmap_bytes = mmap_mb * 1024 * 1024  # PRAGMA mmap_size: reads only
        self._db: sqlite3.Connection | None = None
        self._stems: dict[str, tuple[str, ...]] = {}  # word -> its FTS5 tokens
        self._stemmer = False  # the temp tokenizing tables exist on this connection
        # document frequencies read from fts5vocab (which walks whole posting
        # lists), valid while neither this store (_fts_writes) nor another
        # connection (PRAGMA data_version) has changed the index since
        self._df: dict[str, int] = {}
        self._df_rows = 0
        self._df_token: tuple[int, int] | None = None
        self._fts_writes = 0
        self._checkpointer = WalCheckpointer(self._path, busy_timeout_s)
        self._open_key: tuple[int, int] | None = None

    def open(self) -> None:
        """Connect, set pragmas and apply pending migrations."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, a read-only disk
            raise StorageError(
                f"cannot create the store directory {self._path.parent}: {exc}; pass the path "
                f"of a directory (new or existing) that this process may write"
            ) from exc
        check_not_inherited(self._path)
        try:
            db = sqlite3.connect(
                self._path,
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,  # the padded IN lists' texts (in_list) stay cached
            )
            self._set_up(db)
        except sqlite3.Error as exc:
            err = storage_error(exc, self._path, "cannot open the SQLite store")
            if type(err) is StorageError and not is_locked(exc):
                err = StorageError(
                    f"cannot open SQLite store {self._path}: {exc}; check that the path is a "
                    f"writable directory"
                )
            with suppress(UnboundLocalError, sqlite3.Error):
                db.close()
            raise err from exc
        self._db = db
        self._open_key = opened(self._path)  # a forked child refuses it (sqlite_fork)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _set_up(self, db: sqlite3.Connection) -> None:
        """Set the connection's pragmas, retrying while another connection holds a lock.

        Switching a new file to WAL needs its exclusive lock, and SQLite answers
        ``SQLITE_BUSY`` at once, without calling the busy handler, when another
        connection holds the write lock (its deadlock avoidance): two processes
        opening one new directory meet this. So a lock error is retried here
        until the busy timeout has passed; any other error is raised at once.

        Raises:
            sqlite3.OperationalError: still locked after ``busy_timeout_s``, or
                any other SQLite error.
        """
        deadline = time.monotonic() + self._timeout
        pause = 0.001
        while True:
            try:
                db.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                # routine checkpoints run beside this connection (sqlite_checkpoint)
                set_backstop(db)
                db.execute("PRAGMA foreign_keys=ON")
                # reads through a memory map instead of a read() per page (writes still
                # go through write(), so a full disk fails a write as before)
                db.execute(f"PRAGMA mmap_size={self._mmap_bytes}")
                try:  # SQLite built without its math functions: the co-activation update's
                    db.execute("SELECT POWER(2.0, 2)").fetchone()
                except sqlite3.OperationalError:
                    db.create_function("POWER", 2, math.pow, deterministic=True)
                db.create_function("helamem_shape", 2, _row_shape, deterministic=True)
                db.create_function(
                    "helamem_legacy_unique_key", 1, legacy_unique_key, deterministic=True
                )
                # a damaged file often opens fine and fails on the first read
                db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if not is_locked(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def repair_hint(self) -> str:
        """What to run when the store holds something it should not."""
        d = self._path.parent
        return f"run `helamem check {d}`: it names what is damaged and its fix ({self._path})"

    def close(self) -> None:
        self._checkpointer.close()
        if self._db is not None:
            self._db.close()
            self._db = None
            closed(self._open_key)
            self._open_key = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError("the SQLite store is not open")
        return self._db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the writer lock up front)."""
        db = self.db
        changes = db.total_changes
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise storage_error(exc, self._path, "could not start a write transaction") from exc
        try:
            yield db
        except sqlite3.Error as exc:
            self._rollback(db)
            raise storage_error(exc, self._path, "write failed, nothing was written") from exc
        except BaseException:
            self._rollback(db)
            raise
        else:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise storage_error(exc, self._path, "commit failed, nothing was written") from exc
            if db.total_changes != changes:  # pages went to the WAL: checkpoint them soon
                self._checkpointer.wrote()

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        """Roll back, unless SQLite already did (disk full, I/O errors roll back themselves)."""
        if db.in_transaction:
            with suppress(sqlite3.Error):  # the original error is what the caller needs
                db.execute("ROLLBACK")

    def describe(self) -> str:
        """The store, for messages: its database file."""
        return str(self._path)

    def _migrate(self) -> None:
        """Apply the migrations the store lacks, in order, in one write transaction;
        a store newer than this code is refused."""
        latest = len(self._MIGRATIONS)
        with self.tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                f"(version INTEGER PRIMARY KEY, applied_at {self._SECONDS_TYPE} NOT NULL)"
            )
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0] or 0) if row is not None else 0
            if current > latest:
                raise StorageError(
                    f"{self.describe()} has schema version {current}, newer than this "
                    f"helamem-core ({latest}); upgrade helamem-core"
                )
            for version in range(current + 1, latest + 1):
                for stmt in self._MIGRATIONS[version - 1]:
                    db.execute(stmt)
                db.execute(
                    "INSERT INTO schema_version(version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )

    def schema_version(self) -> int:
        return int(self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    def get_meta(self, key: str) -> str | None:
        r = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else str(r[0])

    def delete_meta(self, db: sqlite3.Connection, keys: Sequence[str]) -> None:
        """Delete these meta keys (those that exist), 500 to a statement."""
        for i in range(0, len(keys), 500):
            part = list(keys[i : i + 500])
            db.execute(f"DELETE FROM meta WHERE key IN ({qmarks(len(part))})", part)

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

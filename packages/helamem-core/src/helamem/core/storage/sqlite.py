"""The SQLite graph store: memories, edges, scopes, FTS5 (the only sqlite3 user).

SQLite is the source of truth. WAL journal, ``BEGIN IMMEDIATE`` write
transactions, a busy timeout so several processes can share a file, and
append-only migrations recorded in ``schema_version``.

Every method runs on the store's single owner thread (see
:class:`helamem.core.engine.HelaMemory`); nothing here is thread-safe by
itself.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..errors import CorruptStoreError, DiskFullError, InvalidInputError, StorageError
from .base import EdgeRow, MemoryRow, RankRow

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "sqlite_errors", "storage_error"]

# Append-only: never edit a shipped migration; add a new one.
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
)
SCHEMA_VERSION = len(MIGRATIONS)

_MEMORY_COLS = (
    "n, id, scope_id, kind, content, content_raw, role, event_time, created_at, keywords, "
    "access_count, last_access, metadata, provenance, embedding"
)

# the node bound to the first parameter and every node under it, as CTE ``down``
_SUBTREE = (
    "WITH RECURSIVE down(id) AS ("
    "SELECT ? UNION ALL SELECT s.id FROM scopes s JOIN down ON s.parent = down.id)"
)


def scope_path(scope: Sequence[str]) -> str:
    """Unambiguous key of a scope (JSON array; surrogates escaped)."""
    return json.dumps(list(scope))


def _row(r: Any) -> MemoryRow:
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
            f"{path.parent}` to see what is damaged, and restore helamem.sqlite3 from a "
            f"backup (the vector index is derived: `helamem reindex {path.parent}` rebuilds it)"
        )
    return StorageError(f"{what}: {text} ({path})")


@contextmanager
def sqlite_errors(path: Path, what: str = "storage operation failed") -> Iterator[None]:
    """Turn any :class:`sqlite3.Error` raised inside into a typed :class:`StorageError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise storage_error(exc, path, what) from exc


def _qmarks(n: int) -> str:
    return ",".join("?" * n)


class SQLiteStore:
    """Memories, edges and scopes in one SQLite file."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self._path = path
        self._timeout = busy_timeout_s
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

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Connect, set pragmas and apply pending migrations."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, a read-only disk
            raise StorageError(
                f"cannot create the store directory {self._path.parent}: {exc}; pass the path "
                f"of a directory (new or existing) that this process may write"
            ) from exc
        try:
            db = sqlite3.connect(
                self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            # a damaged file often opens fine and fails on the first read
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            err = storage_error(exc, self._path, "cannot open the SQLite store")
            if type(err) is StorageError:
                err = StorageError(
                    f"cannot open SQLite store {self._path}: {exc}; check that the path is a "
                    f"writable directory"
                )
            with suppress(UnboundLocalError, sqlite3.Error):
                db.close()
            raise err from exc
        self._db = db
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError("the SQLite store is not open")
        return self._db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the writer lock up front)."""
        db = self.db
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

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        """Roll back, unless SQLite already did (disk full, I/O errors roll back themselves)."""
        if db.in_transaction:
            with suppress(sqlite3.Error):  # the original error is what the caller needs
                db.execute("ROLLBACK")

    def _migrate(self) -> None:
        db = self.db
        with self.tx():
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"{self._path} has schema version {current}, newer than this "
                    f"helamem-core ({SCHEMA_VERSION}); upgrade helamem-core"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[version - 1].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(
                    "INSERT INTO schema_version(version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )

    def schema_version(self) -> int:
        return int(self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    # -- meta ------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        r = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else str(r[0])

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- scopes ----------------------------------------------------------

    def find_scope(self, scope: Sequence[str]) -> int | None:
        r = self.db.execute("SELECT id FROM scopes WHERE path = ?", (scope_path(scope),)).fetchone()
        return None if r is None else int(r[0])

    def ensure_scope(self, db: sqlite3.Connection, scope: Sequence[str]) -> int:
        """The id of ``scope``'s node, creating it and its ancestors (inside a tx)."""
        parent: int | None = None
        for depth in range(1, len(scope) + 1):
            path = scope_path(scope[:depth])
            r = db.execute("SELECT id FROM scopes WHERE path = ?", (path,)).fetchone()
            if r is None:
                cur = db.execute(
                    "INSERT INTO scopes(parent, name, path, depth) VALUES (?, ?, ?, ?)",
                    (parent, scope[depth - 1], path, depth),
                )
                parent = int(cur.lastrowid or 0)
            else:
                parent = int(r[0])
        assert parent is not None
        return parent

    def all_scope_ids(self) -> list[int]:
        """Every scope node's id."""
        return [int(r[0]) for r in self.db.execute("SELECT id FROM scopes ORDER BY id")]

    def ancestors(self, scope_id: int) -> list[int]:
        """``scope_id`` and every ancestor node id."""
        rows = self.db.execute(
            "WITH RECURSIVE up(id, parent) AS ("
            " SELECT id, parent FROM scopes WHERE id = ?"
            " UNION ALL SELECT s.id, s.parent FROM scopes s JOIN up ON s.id = up.parent)"
            " SELECT id FROM up",
            (scope_id,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def descendants(self, scope_id: int) -> list[int]:
        """``scope_id`` and every descendant node id."""
        rows = self.db.execute(
            "WITH RECURSIVE down(id) AS ("
            " SELECT ? UNION ALL SELECT s.id FROM scopes s JOIN down ON s.parent = down.id)"
            " SELECT id FROM down",
            (scope_id,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def holding(self) -> dict[str, set[int]]:
        """Kind → the scope nodes holding memories of that kind (a covering-index scan)."""
        out: dict[str, set[int]] = {}
        for sid, kind in self.db.execute("SELECT DISTINCT scope_id, kind FROM memories"):
            out.setdefault(str(kind), set()).add(int(sid))
        return out

    def nodes_holding(self, node_ids: Sequence[int], kind: str) -> list[int]:
        """The nodes among ``node_ids`` that hold memories of ``kind`` (index probes only)."""
        out: list[int] = []
        for i in range(0, len(node_ids), 500):
            chunk = list(node_ids[i : i + 500])
            out.extend(
                int(r[0])
                for r in self.db.execute(
                    f"SELECT s.id FROM scopes s WHERE s.id IN ({_qmarks(len(chunk))})"
                    " AND EXISTS (SELECT 1 FROM memories m WHERE m.scope_id = s.id AND m.kind = ?)",
                    (*chunk, kind),
                )
            )
        return out

    def scope_of(self, scope_id: int) -> tuple[str, ...]:
        r = self.db.execute("SELECT path FROM scopes WHERE id = ?", (scope_id,)).fetchone()
        if r is None:
            raise CorruptStoreError(
                f"scope node {scope_id} is missing from {self._path}; run "
                f"`helamem check {self._path.parent}` and `helamem reindex {self._path.parent}`"
            )
        return tuple(json.loads(r[0]))

    def scope_state(self, scope_id: int) -> tuple[int, int | None]:
        """``(tick, last_episode)`` of a scope node."""
        r = self.db.execute(
            "SELECT tick, last_episode FROM scopes WHERE id = ?", (scope_id,)
        ).fetchone()
        return int(r[0]), (None if r[1] is None else int(r[1]))

    def set_scope_state(
        self, db: sqlite3.Connection, scope_id: int, tick: int, last_episode: int | None
    ) -> None:
        db.execute(
            "UPDATE scopes SET tick = ?, last_episode = ? WHERE id = ?",
            (tick, last_episode, scope_id),
        )

    def scopes_with_memories(self, node_ids: Sequence[int] | None) -> list[tuple[str, ...]]:
        sql = (
            "SELECT path FROM scopes s"
            " WHERE EXISTS (SELECT 1 FROM memories m WHERE m.scope_id = s.id)"
        )
        params: tuple[int, ...] = ()
        if node_ids is not None:
            sql += f" AND s.id IN ({_qmarks(len(node_ids))})"
            params = tuple(node_ids)
        return sorted(tuple(json.loads(r[0])) for r in self.db.execute(sql, params))

    # -- memories --------------------------------------------------------

    def insert_memory(
        self,
        db: sqlite3.Connection,
        *,
        id: str,
        scope_id: int,
        tags: str,
        kind: str,
        content: str,
        search_text: str,
        role: str | None,
        event_time: float,
        created_at: float,
        keywords: str,
        metadata: str,
        provenance: str,
        embedding: bytes,
    ) -> int:
        raw = None if content == search_text else content.encode("utf-8", "surrogatepass")
        if db.execute("SELECT 1 FROM memories WHERE id = ?", (id,)).fetchone() is not None:
            # another writer took this caller-chosen id first (checked inside the tx)
            raise InvalidInputError(
                f"a memory with id {id!r} exists; delete it first or choose another id"
            )
        cur = db.execute(
            "INSERT INTO memories(id, scope_id, kind, content, content_raw, role, event_time,"
            " created_at, keywords, metadata, provenance, embedding)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                id,
                scope_id,
                kind,
                search_text,
                raw,
                role,
                event_time,
                created_at,
                keywords,
                metadata,
                provenance,
                embedding,
            ),
        )
        n = int(cur.lastrowid or 0)
        self._fts_writes += 1
        db.execute(
            "INSERT INTO memories_fts(rowid, content, tags) VALUES (?, ?, ?)",
            (n, search_text, tags),
        )
        return n

    def rows_by_n(self, ns: Iterable[int]) -> dict[int, MemoryRow]:
        ns = list(ns)
        out: dict[int, MemoryRow] = {}
        for i in range(0, len(ns), 500):
            chunk = ns[i : i + 500]
            for r in self.db.execute(
                f"SELECT {_MEMORY_COLS} FROM memories WHERE n IN ({_qmarks(len(chunk))})", chunk
            ):
                row = _row(r)
                out[row.n] = row
        return out

    def rows_by_id(self, ids: Iterable[str]) -> dict[str, MemoryRow]:
        ids = list(ids)
        out: dict[str, MemoryRow] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for r in self.db.execute(
                f"SELECT {_MEMORY_COLS} FROM memories WHERE id IN ({_qmarks(len(chunk))})", chunk
            ):
                row = _row(r)
                out[row.id] = row
        return out

    def rank_rows(self, ids: Iterable[str], ns: Iterable[int]) -> dict[int, RankRow]:
        """The ranking columns of the memories with these ids or keys, by key.

        One query per 500 keys: ``id IN (…) OR n IN (…)`` reads each row once
        even when it is named both ways.
        """
        out: dict[int, RankRow] = {}
        id_list, n_list = list(ids), list(ns)
        i = j = 0
        while i < len(id_list) or j < len(n_list):
            chunk_ids = id_list[i : i + 500]
            chunk_ns = n_list[j : j + 500 - len(chunk_ids)]
            i, j = i + len(chunk_ids), j + len(chunk_ns)
            where = " OR ".join(
                f"{col} IN ({_qmarks(len(keys))})"
                for col, keys in (("id", chunk_ids), ("n", chunk_ns))
                if keys
            )
            for r in self.db.execute(
                f"SELECT n, id, scope_id, kind, event_time, embedding FROM memories WHERE {where}",
                [*chunk_ids, *chunk_ns],
            ):
                out[r[0]] = RankRow(r[0], r[1], r[2], r[3], r[4], r[5])
        return out

    def unindexed(self, limit: int = 10_000) -> list[MemoryRow]:
        return [
            _row(r)
            for r in self.db.execute(
                f"SELECT {_MEMORY_COLS} FROM memories WHERE indexed = 0 LIMIT ?", (limit,)
            )
        ]

    def all_rows(self, batch: int = 2048) -> Iterator[list[MemoryRow]]:
        last = 0
        while True:
            rows = [
                _row(r)
                for r in self.db.execute(
                    f"SELECT {_MEMORY_COLS} FROM memories WHERE n > ? ORDER BY n LIMIT ?",
                    (last, batch),
                )
            ]
            if not rows:
                return
            yield rows
            last = rows[-1].n

    def mark_indexed(self, keys: Sequence[tuple[int, str]], value: int = 1) -> None:
        """Set ``indexed`` of the memories ``(n, id)`` (a key and id that no longer
        match, because the memory was deleted meanwhile, change nothing)."""
        with self.tx() as db:
            db.executemany(
                "UPDATE memories SET indexed = ? WHERE n = ? AND id = ?",
                [(value, n, i) for n, i in keys],
            )

    def set_embeddings(self, items: Sequence[tuple[int, bytes]]) -> None:
        """Replace memories' vectors (their token vectors go too: they are refilled lazily)."""
        with self.tx() as db:
            db.executemany(
                "UPDATE memories SET embedding = ?, indexed = 0 WHERE n = ?",
                [(e, n) for n, e in items],
            )
            db.executemany("DELETE FROM token_vectors WHERE n = ?", [(n,) for n, _ in items])

    def put_token_vectors(self, db: sqlite3.Connection, items: Sequence[tuple[int, bytes]]) -> None:
        """Store memories' token vectors (see :func:`~helamem.core.retrieval.pack_tokens`)."""
        db.executemany("INSERT OR REPLACE INTO token_vectors(n, data) VALUES (?, ?)", items)

    def token_vectors(self, ns: Sequence[int]) -> dict[int, bytes]:
        """The stored token vectors of these memory keys (those that have them)."""
        out: dict[int, bytes] = {}
        for i in range(0, len(ns), 500):
            chunk = list(ns[i : i + 500])
            out.update(
                self.db.execute(
                    f"SELECT n, data FROM token_vectors WHERE n IN ({_qmarks(len(chunk))})", chunk
                ).fetchall()
            )
        return out

    def clear_token_vectors(self) -> None:
        """Drop every token vector (the embedder changed; they are refilled lazily)."""
        with self.tx() as db:
            db.execute("DELETE FROM token_vectors")

    def delete_memories(self, db: sqlite3.Connection, rows: Sequence[MemoryRow]) -> None:
        """Delete memories, their FTS rows and edges; leave tombstones for the index."""
        ns = [(r.n,) for r in rows]
        db.executemany("DELETE FROM token_vectors WHERE n = ?", ns)
        db.executemany("DELETE FROM edges WHERE a = ? OR b = ?", [(n, n) for (n,) in ns])
        self._fts_writes += 1
        db.executemany("DELETE FROM memories_fts WHERE rowid = ?", ns)
        db.executemany("DELETE FROM memories WHERE n = ?", ns)
        db.executemany("UPDATE scopes SET last_episode = NULL WHERE last_episode = ?", ns)
        db.executemany(
            "INSERT OR IGNORE INTO tombstones(id, scope_id, kind) VALUES (?, ?, ?)",
            [(r.id, r.scope_id, r.kind) for r in rows],
        )

    def tombstones(self, ids: Sequence[str] | None = None) -> list[tuple[str, int, str]]:
        """``(id, scope_id, kind)`` of deleted memories whose vectors may remain
        (all, or those among ``ids``)."""
        if ids is None:
            rows = self.db.execute("SELECT id, scope_id, kind FROM tombstones").fetchall()
        else:
            rows = []
            for i in range(0, len(ids), 500):
                chunk = list(ids[i : i + 500])
                rows += self.db.execute(
                    f"SELECT id, scope_id, kind FROM tombstones WHERE id IN "
                    f"({_qmarks(len(chunk))})",
                    chunk,
                ).fetchall()
        return [(str(i), int(s), str(k)) for i, s, k in rows]

    def existing(self, db: sqlite3.Connection, ns: Iterable[int]) -> set[int]:
        """The keys among ``ns`` whose memories exist (read inside a write transaction)."""
        ns = list(ns)
        out: set[int] = set()
        for i in range(0, len(ns), 500):
            chunk = ns[i : i + 500]
            out.update(
                int(r[0])
                for r in db.execute(
                    f"SELECT n FROM memories WHERE n IN ({_qmarks(len(chunk))})", chunk
                )
            )
        return out

    def clear_tombstones(self, ids: Sequence[str]) -> None:
        with self.tx() as db:
            db.executemany("DELETE FROM tombstones WHERE id = ?", [(i,) for i in ids])

    def touch(self, db: sqlite3.Connection, ns: Sequence[int], now: float) -> None:
        db.executemany(
            "UPDATE memories SET access_count = access_count + 1, last_access = ? WHERE n = ?",
            [(now, n) for n in ns],
        )

    def vectors_of(
        self, scope_id: int, kind: str, after_n: int = 0
    ) -> tuple[list[int], list[str], list[bytes | None]]:
        """``(ns, ids, embeddings)`` of a scope node's memories of ``kind`` with n > after_n."""
        rows = self.db.execute(
            "SELECT n, id, embedding FROM memories WHERE scope_id = ? AND kind = ? AND n > ?"
            " ORDER BY n",
            (scope_id, kind, after_n),
        ).fetchall()
        return (
            [int(r[0]) for r in rows],
            [str(r[1]) for r in rows],
            [None if r[2] is None else bytes(r[2]) for r in rows],
        )

    def update_fact(
        self,
        db: sqlite3.Connection,
        row: MemoryRow,
        *,
        content: str,
        search_text: str,
        tags: str,
        provenance: str,
        event_time: float,
        embedding: bytes,
    ) -> None:
        """Rewrite a fact's text, provenance and vector (FTS kept in step; re-index pending)."""
        raw = None if content == search_text else content.encode("utf-8", "surrogatepass")
        db.execute(
            "UPDATE memories SET content = ?, content_raw = ?, provenance = ?, event_time = ?,"
            " embedding = ?, indexed = 0 WHERE n = ?",
            (search_text, raw, provenance, event_time, embedding, row.n),
        )
        self._fts_writes += 1
        db.execute("DELETE FROM token_vectors WHERE n = ?", (row.n,))
        db.execute("DELETE FROM memories_fts WHERE rowid = ?", (row.n,))
        db.execute(
            "INSERT INTO memories_fts(rowid, content, tags) VALUES (?, ?, ?)",
            (row.n, search_text, tags),
        )

    def cluster_known(self, scope_id: int, signature: str) -> bool:
        r = self.db.execute(
            "SELECT 1 FROM clusters WHERE scope_id = ? AND signature = ?", (scope_id, signature)
        ).fetchone()
        return r is not None

    def record_cluster(
        self, db: sqlite3.Connection, scope_id: int, signature: str, hub: str, facts: int
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO clusters(scope_id, signature, hub, facts, distilled_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (scope_id, signature, hub, facts, time.time()),
        )

    def cited_ids(self, scope_ids: Sequence[int]) -> set[str]:
        """Episode ids that some fact of these scopes cites."""
        out: set[str] = set()
        for i in range(0, len(scope_ids), 500):
            chunk = list(scope_ids[i : i + 500])
            for (prov,) in self.db.execute(
                f"SELECT provenance FROM memories WHERE kind = 'semantic'"
                f" AND scope_id IN ({_qmarks(len(chunk))})",
                chunk,
            ):
                out.update(json.loads(prov))
        return out

    def forget_candidates(
        self, scope_ids: Sequence[int], cutoff: float, limit: int
    ) -> list[MemoryRow]:
        """Never-accessed episodes with event time before ``cutoff``."""
        q = _qmarks(len(scope_ids))
        return [
            _row(r)
            for r in self.db.execute(
                f"SELECT {_MEMORY_COLS} FROM memories WHERE kind = 'episodic'"
                f" AND access_count = 0 AND event_time < ? AND scope_id IN ({q})"
                f" ORDER BY event_time LIMIT ?",
                (cutoff, *scope_ids, limit),
            )
        ]

    def rows_in_scopes(self, scope_ids: Sequence[int]) -> list[MemoryRow]:
        q = _qmarks(len(scope_ids))
        return [
            _row(r)
            for r in self.db.execute(
                f"SELECT {_MEMORY_COLS} FROM memories WHERE scope_id IN ({q})", tuple(scope_ids)
            )
        ]

    def newest_event(self, scope_ids: Sequence[int]) -> float | None:
        q = _qmarks(len(scope_ids))
        r = self.db.execute(
            f"SELECT MAX(event_time) FROM memories WHERE scope_id IN ({q})", tuple(scope_ids)
        ).fetchone()
        return None if r[0] is None else float(r[0])

    def delete_clusters(self, db: sqlite3.Connection, scope_ids: Sequence[int]) -> None:
        db.executemany("DELETE FROM clusters WHERE scope_id = ?", [(s,) for s in scope_ids])

    # -- lexical ---------------------------------------------------------

    def lexical(self, match: str, tag: str | None, limit: int) -> list[tuple[int, float]]:
        """BM25 top ``limit`` for ``match`` among rows carrying ``tag`` (all rows if None).

        Returns ``(n, score)`` with score = -bm25 (higher is better).
        """
        q = match if tag is None else f"tags:{tag} AND ({match})"
        try:
            rows = self.db.execute(
                "SELECT rowid, bm25(memories_fts, 1.0, 0.0) AS r FROM memories_fts "
                "WHERE memories_fts MATCH ? ORDER BY r LIMIT ?",
                (q, limit),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            raise StorageError(f"lexical search failed for {match!r}: {exc}") from exc
        return [(int(r[0]), -float(r[1])) for r in rows]

    def term_stats(self, words: Sequence[str]) -> tuple[int, list[int]]:
        """Rows in the FTS index, and each word's document frequency in ``content``.

        A word is tokenized exactly as FTS5 does (porter stemming); when it yields
        several tokens (a phrase) its frequency is that of its rarest token, and 0
        when it yields none. Frequencies are exact: they are cached per token
        until this store or another connection changes the index.
        """
        try:
            todo = [w for w in dict.fromkeys(words) if w not in self._stems]
            if len(self._stems) + len(todo) > 65_536:
                self._stems.clear()
                todo = list(dict.fromkeys(words))
            if todo:
                self._stem(todo)
            token = (self._fts_writes, int(self.db.execute("PRAGMA data_version").fetchone()[0]))
            if token != self._df_token or len(self._df) > 65_536:
                self._df.clear()
                self._df_rows = self._fts_rows()
                self._df_token = token
            stems = {t for w in words for t in self._stems[w]} - self._df.keys()
            if stems:
                self._df.update(dict.fromkeys(stems, 0))
                self._df.update(
                    (str(t), int(d))
                    for t, d in self.db.execute(
                        f"SELECT term, doc FROM memories_fts_vocab WHERE term IN "
                        f"({_qmarks(len(stems))}) AND col = 'content'",
                        tuple(stems),
                    )
                )
        except sqlite3.Error as exc:
            raise StorageError(f"term statistics failed: {exc}") from exc
        df = self._df
        return self._df_rows, [min((df[t] for t in self._stems[w]), default=0) for w in words]

    def _stem(self, words: list[str]) -> None:
        db = self.db
        if not self._stemmer:
            db.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS temp.helamem_stem USING fts5("
                "w, tokenize = 'porter unicode61 remove_diacritics 2')"
            )
            db.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS temp.helamem_stem_v "
                "USING fts5vocab(temp, helamem_stem, 'instance')"
            )
            self._stemmer = True
        db.execute("DELETE FROM temp.helamem_stem")
        db.executemany(
            "INSERT INTO temp.helamem_stem(rowid, w) VALUES (?, ?)", list(enumerate(words))
        )
        found: dict[int, list[str]] = {}
        for doc, term in db.execute("SELECT doc, term FROM temp.helamem_stem_v"):
            found.setdefault(int(doc), []).append(str(term))
        db.execute("DELETE FROM temp.helamem_stem")
        for i, w in enumerate(words):
            self._stems[w] = tuple(found.get(i, ()))

    def _fts_rows(self) -> int:
        """Rows in ``memories_fts``, read from FTS5's averages record (O(1)).

        The record (``id = 1`` of the ``_data`` table, part of FTS5's stable file
        format) starts with the row count as an SQLite varint.
        """
        r = self.db.execute("SELECT block FROM memories_fts_data WHERE id = 1").fetchone()
        if r is None or not r[0]:
            return 0
        block = bytes(r[0])
        value = 0
        for i, byte in enumerate(block[:9]):
            if i == 8:
                return (value << 8) | byte
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                return value
        return value

    # -- edges -----------------------------------------------------------

    def edges_of(self, ns: Sequence[int]) -> list[EdgeRow]:
        """Every edge touching any of ``ns``."""
        if not ns:
            return []
        q = _qmarks(len(ns))
        rows = self.db.execute(
            f"SELECT a, b, scope_id, weight, tick FROM edges WHERE a IN ({q}) "
            f"UNION SELECT a, b, scope_id, weight, tick FROM edges WHERE b IN ({q})",
            (*ns, *ns),
        ).fetchall()
        return [EdgeRow(int(a), int(b), int(s), float(w), int(t)) for a, b, s, w, t in rows]

    def edges_among(self, ns: Sequence[int]) -> dict[tuple[int, int], EdgeRow]:
        """Edges with both ends in ``ns``."""
        if len(ns) < 2:
            return {}
        q = _qmarks(len(ns))
        rows = self.db.execute(
            f"SELECT a, b, scope_id, weight, tick FROM edges WHERE a IN ({q}) AND b IN ({q})",
            (*ns, *ns),
        ).fetchall()
        return {
            (int(a), int(b)): EdgeRow(int(a), int(b), int(s), float(w), int(t))
            for a, b, s, w, t in rows
        }

    def edges_in_scopes(self, scope_ids: Sequence[int]) -> list[EdgeRow]:
        q = _qmarks(len(scope_ids))
        rows = self.db.execute(
            f"SELECT a, b, scope_id, weight, tick FROM edges WHERE scope_id IN ({q})",
            tuple(scope_ids),
        ).fetchall()
        return [EdgeRow(int(a), int(b), int(s), float(w), int(t)) for a, b, s, w, t in rows]

    def upsert_edges(self, db: sqlite3.Connection, edges: Iterable[EdgeRow]) -> None:
        db.executemany(
            "INSERT INTO edges(a, b, scope_id, weight, tick) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(a, b) DO UPDATE SET weight = excluded.weight, tick = excluded.tick",
            [(e.a, e.b, e.scope_id, e.weight, e.tick) for e in edges],
        )

    def delete_edges(self, db: sqlite3.Connection, keys: Iterable[tuple[int, int]]) -> None:
        db.executemany("DELETE FROM edges WHERE a = ? AND b = ?", list(keys))

    # -- stats -----------------------------------------------------------

    def counts(self, scope_ids: Sequence[int] | None) -> dict[str, float]:
        where, params = "", tuple[int, ...]()
        if scope_ids is not None:
            where = f" WHERE scope_id IN ({_qmarks(len(scope_ids))})"
            params = tuple(scope_ids)
        out: dict[str, float] = {"episodic": 0, "semantic": 0}
        for kind, count in self.db.execute(
            f"SELECT kind, COUNT(*) FROM memories{where} GROUP BY kind", params
        ):
            out[str(kind)] = int(count)
        n, mean = self.db.execute(
            f"SELECT COUNT(*), AVG(weight) FROM edges{where}", params
        ).fetchone()
        out["edges"] = int(n)
        out["mean_edge_weight"] = float(mean or 0.0)
        out["unindexed"] = int(
            self.db.execute(
                f"SELECT COUNT(*) FROM memories{where}{' AND' if where else ' WHERE'} indexed = 0",
                params,
            ).fetchone()[0]
        )
        return out

    # -- export / import (see helamem.core._portable) ----------------------

    @contextmanager
    def read_tx(self) -> Iterator[None]:
        """A read transaction: every query inside sees one snapshot (WAL readers never block)."""
        db = self.db
        try:
            db.execute("BEGIN DEFERRED")
        except sqlite3.Error as exc:
            raise StorageError(f"could not start a read transaction: {exc}") from exc
        try:
            yield
        finally:
            db.execute("COMMIT")  # read-only: releases the snapshot

    def iter_memories_under(self, node: int, batch: int = 1024) -> Iterator[list[MemoryRow]]:
        """Memories of ``node`` and its descendants in ``n`` order, streamed in batches."""
        cur = self.db.execute(
            f"{_SUBTREE} SELECT {_MEMORY_COLS} FROM memories"
            " WHERE scope_id IN (SELECT id FROM down) ORDER BY n",
            (node,),
        )
        while rows := cur.fetchmany(batch):
            yield [_row(r) for r in rows]

    def iter_edges_under(
        self, node: int, batch: int = 4096
    ) -> Iterator[list[tuple[str, str, float, int]]]:
        """``(id_a, id_b, weight, tick)`` of edges under ``node`` in ``(a, b)`` order, batched."""
        cur = self.db.execute(
            f"{_SUBTREE} SELECT ma.id, mb.id, e.weight, e.tick FROM edges e"
            " JOIN memories ma ON ma.n = e.a JOIN memories mb ON mb.n = e.b"
            " WHERE e.scope_id IN (SELECT id FROM down) ORDER BY e.a, e.b",
            (node,),
        )
        while rows := cur.fetchmany(batch):
            yield [(str(a), str(b), float(w), int(t)) for a, b, w, t in rows]

    def locate(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``id -> (n, scope_id)`` of the memories among ``ids`` that exist."""
        out: dict[str, tuple[int, int]] = {}
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            for mid, n, sid in self.db.execute(
                f"SELECT id, n, scope_id FROM memories WHERE id IN ({_qmarks(len(chunk))})", chunk
            ):
                out[str(mid)] = (int(n), int(sid))
        return out

    def id_of(self, n: int) -> str | None:
        r = self.db.execute("SELECT id FROM memories WHERE n = ?", (n,)).fetchone()
        return None if r is None else str(r[0])

    def last_episode_upto(self, scope_id: int, n: int) -> str | None:
        """Id of the newest episode of node ``scope_id`` with ``n`` at most ``n``."""
        r = self.db.execute(
            "SELECT id FROM memories WHERE scope_id = ? AND kind = 'episodic' AND n <= ?"
            " ORDER BY n DESC LIMIT 1",
            (scope_id, n),
        ).fetchone()
        return None if r is None else str(r[0])

    def has_memories_under(self, node: int) -> bool:
        r = self.db.execute(
            f"{_SUBTREE} SELECT 1 FROM memories WHERE scope_id IN (SELECT id FROM down) LIMIT 1",
            (node,),
        ).fetchone()
        return r is not None

    def set_access(
        self, db: sqlite3.Connection, n: int, access_count: int, last_access: float | None
    ) -> None:
        db.execute(
            "UPDATE memories SET access_count = ?, last_access = ? WHERE n = ?",
            (access_count, last_access, n),
        )

    def clusters_of(self, scope_id: int) -> list[tuple[str, str, int, float]]:
        """``(signature, hub, facts, distilled_at)`` of a node's distilled clusters."""
        return [
            (str(s), str(h), int(f), float(t))
            for s, h, f, t in self.db.execute(
                "SELECT signature, hub, facts, distilled_at FROM clusters WHERE scope_id = ?"
                " ORDER BY signature",
                (scope_id,),
            )
        ]

    def put_cluster(
        self,
        db: sqlite3.Connection,
        scope_id: int,
        signature: str,
        hub: str,
        facts: int,
        distilled_at: float,
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO clusters(scope_id, signature, hub, facts, distilled_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (scope_id, signature, hub, facts, distilled_at),
        )

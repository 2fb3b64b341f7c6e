"""The SQLite store's upkeep queries: facts and clusters, forgetting, export and import reads."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from ..jsontext import load_metadata
from .base import MemoryRow, rests_on
from .exact import REWRITTEN_KEY
from .sqlite_schema import (
    MEMORY_COLS,
    SUBTREE,
    SQLiteConnection,
    in_list,
    memory_row,
    qmarks,
    raw_content,
    storage_error,
    text_shape,
)
from .unique import keep_forgotten, key_digest

__all__ = ["INLINE_IDS", "SQLiteUpkeep"]

#: The longest id list a query binds as ``IN (?, ?, …)``, one parameter per id (so
#: the planner sees each value); a longer one is bound as ONE parameter
#: (:meth:`SQLiteUpkeep.ids_in`). A statement so never nears the engines' caps on
#: parameters (SQLite's ``SQLITE_MAX_VARIABLE_NUMBER``: 999 before 3.32, 32,766 since;
#: PostgreSQL's 65,535), however many scope nodes a prefix holds; 400 keeps a
#: statement naming one list twice under SQLite's old 999 (so lists are padded
#: by :func:`~helamem.core.storage.sqlite_schema.in_list` only up to 400).
INLINE_IDS = 400


def _is_str(value: object, want: str) -> bool:
    return isinstance(value, str) and value == want


class SQLiteUpkeep(SQLiteConnection):
    """Queries of consolidation (facts, clusters), forgetting, export and import."""

    # -- what the engines spell differently (PostgresStore overrides these) --

    @staticmethod
    def _stored_text(search_text: str) -> str:
        """The ``content`` column's value for this text (SQLite keeps any str)."""
        return search_text

    @staticmethod
    def _tag_columns(tags: str) -> dict[str, object]:
        """Extra ``memories`` columns holding a row's scope tags (SQLite: in FTS5 only)."""
        return {}

    def _insert_row(self, db: sqlite3.Connection, columns: dict[str, object]) -> int:
        """``INSERT`` one ``memories`` row; returns its key ``n``."""
        cur = db.execute(
            f"INSERT INTO memories({', '.join(columns)}) VALUES ({qmarks(len(columns))})",
            tuple(columns.values()),
        )
        return int(cur.lastrowid or 0)

    def _index_texts(self, db: sqlite3.Connection, items: Sequence[tuple[int, str, str]]) -> None:
        """Make new texts ``(n, search_text, tags)`` findable by BM25 (FTS5 rows)."""
        self._fts_writes += 1
        db.executemany("INSERT INTO memories_fts(rowid, content, tags) VALUES (?, ?, ?)", items)

    def _unindex_texts(self, db: sqlite3.Connection, ns: Sequence[int]) -> None:
        """Remove memories' texts from BM25 (their FTS5 rows); run before the rows change."""
        self._fts_writes += 1
        db.executemany("DELETE FROM memories_fts WHERE rowid = ?", [(n,) for n in ns])

    #: ``column`` among ONE bound list of values of SQL type ``{type}`` (:meth:`ids_in`,
    #: :meth:`texts_in`; PostgresStore: its own, which needs the type).
    _LIST_IN = "{column} IN (SELECT value FROM json_each(?))"

    @staticmethod
    def _list_param(values: list[int] | list[str]) -> object:
        """The parameter of :attr:`_LIST_IN` (SQLite: a JSON array; a lone surrogate
        fails to encode as it does bound inline)."""
        return json.dumps(values, ensure_ascii=False)

    @classmethod
    def _values_in(
        cls, column: str, values: list[int] | list[str], sql_type: str
    ) -> tuple[str, list[object]]:
        """SQL true where ``column`` is among ``values``, and its parameters: one per
        value (padded with NULL, see ``in_list``) up to :data:`INLINE_IDS`, else one in
        all, so any number fits one statement on both engines (``1 = 0`` for none)."""
        if not values:
            return "1 = 0", []
        if len(values) <= INLINE_IDS:
            q, params = in_list(values, INLINE_IDS)
            return f"{column} IN ({q})", params
        return cls._LIST_IN.format(column=column, type=sql_type), [cls._list_param(values)]

    @classmethod
    def ids_in(cls, column: str, ids: Sequence[int]) -> tuple[str, list[object]]:
        """:meth:`_values_in` for an integer column (keys ``n``, scope ids)."""
        return cls._values_in(column, [int(i) for i in ids], "BIGINT")

    @classmethod
    def ids_not_in(cls, column: str, ids: Sequence[int]) -> tuple[str, list[object]]:
        """SQL true where integer ``column`` is not among ``ids``, and its parameters: one
        bound list whatever their number (not :func:`in_list`'s NULL padding, under
        which ``NOT IN`` matches nothing; ``1 = 1`` for none)."""
        if not ids:
            return "1 = 1", []
        values = [int(i) for i in ids]
        return f"NOT ({cls._LIST_IN.format(column=column, type='BIGINT')})", [
            cls._list_param(values)
        ]

    @classmethod
    def texts_in(cls, column: str, values: Sequence[str]) -> tuple[str, list[object]]:
        """:meth:`_values_in` for a text column (memory ids). Beyond :data:`INLINE_IDS`
        values SQLite's JSON path ends a value at a NUL, so a value holding one
        matches nothing there (stored memory ids are printable ASCII,
        :func:`~helamem.core.types.check_id`)."""
        return cls._values_in(column, [str(v) for v in values], "TEXT")

    # -- writes shared by both engines ---------------------------------------

    def update_fact(
        self,
        db: sqlite3.Connection,
        row: MemoryRow,
        *,
        content: str,
        search_text: str,
        tags: str,
        keywords: str,
        provenance: str,
        event_time: float,
        embedding: bytes,
        metadata: str | None = None,
    ) -> None:
        """Rewrite a fact's text, provenance, vector and (given) metadata (BM25 kept in step;
        re-index pending); what derives from the text (keywords, ``shape``) is rewritten too."""
        stored = self._stored_text(search_text)
        self._unindex_texts(db, [row.n])  # first: PostgreSQL's reads the row's old tags
        sets: dict[str, object] = {
            "content": stored,
            "content_raw": raw_content(content, stored),
            "keywords": keywords,
            "shape": text_shape(content),
            "provenance": provenance,
            "event_time": event_time,
            "embedding": embedding,
            "indexed": 0,
            **self._tag_columns(tags),
            **({} if metadata is None else {"metadata": metadata}),
        }
        db.execute(
            f"UPDATE memories SET {', '.join(f'{c} = ?' for c in sets)} WHERE n = ?",
            (*sets.values(), row.n),
        )
        db.execute("DELETE FROM token_vectors WHERE n = ?", (row.n,))
        self.vectors_rewritten(db)
        self._index_texts(db, [(row.n, search_text, tags)])

    def set_embeddings(
        self, items: Sequence[tuple[int, str, bytes]], check: Callable[[], None] | None = None
    ) -> None:
        """Replace memories' vectors ``(n, text, vector)`` computed from ``text`` (their
        token vectors go too: they are refilled lazily), in one write transaction.

        A memory whose text is no longer ``text`` (another writer rewrote it since it
        was read, as a consolidation updating a fact does) keeps the vector written
        with its new text; one deleted meanwhile changes nothing. ``check`` runs first,
        inside the transaction (under the writer lock): what it raises rolls it back
        (the engine refuses vectors of an embedder the store no longer records).
        """
        with self.tx() as db:
            if check is not None:
                check()
            now: dict[int, str] = {}
            ns = sorted({n for n, _, _ in items})
            for i in range(0, len(ns), 500):
                chunk = ns[i : i + 500]
                for r in db.execute(
                    f"SELECT {MEMORY_COLS} FROM memories WHERE n IN ({qmarks(len(chunk))})", chunk
                ):
                    now[int(r[0])] = memory_row(r).content
            same = [(n, e) for n, text, e in items if now.get(n) == text]
            db.executemany(
                "UPDATE memories SET embedding = ?, indexed = 0 WHERE n = ?",
                [(e, n) for n, e in same],
            )
            db.executemany("DELETE FROM token_vectors WHERE n = ?", [(n,) for n, _ in same])
            self.vectors_rewritten(db)

    def vectors_rewritten(self, db: sqlite3.Connection) -> None:
        """Tell every process's exact-tier cache (storage/exact.py) that stored vectors
        changed in place, which its fingerprint of a scope cannot see."""
        self.set_meta(db, REWRITTEN_KEY, secrets.token_hex(8))

    def cluster_known(self, scope_id: int, signature: str, newest: float) -> bool:
        """Whether these members were distilled together: the cluster is recorded, after
        ``newest`` (its newest member's ``created_at``). A member deleted and added again
        under its id since is another memory, so its cluster is not known."""
        r = self.db.execute(
            "SELECT 1 FROM clusters WHERE scope_id = ? AND signature = ? AND distilled_at >= ?",
            (scope_id, signature, newest),
        ).fetchone()
        return r is not None

    def record_cluster(
        self,
        db: sqlite3.Connection,
        scope_id: int,
        signature: str,
        hub: str,
        facts: int,
        newest: float,
    ) -> None:
        """Record a distilled cluster whose newest member was created at ``newest``
        (never stamped before it, whatever the clocks: see :meth:`cluster_known`)."""
        self.put_cluster(db, scope_id, signature, hub, facts, max(time.time(), newest))

    def cited_ids(self, scope_ids: Sequence[int]) -> set[str]:
        """Episode ids that some fact of these scopes rests on (:func:`.base.rests_on`:
        cited, or distilled from)."""
        out: set[str] = set()
        among, params = self.ids_in("scope_id", scope_ids)
        for prov, meta in self.db.execute(
            f"SELECT provenance, metadata FROM memories WHERE kind = 'semantic' AND {among}",
            params,
        ):
            out.update(rests_on(prov, meta))
        return out

    def facts_citing(self, scope_ids: Iterable[int], ids: Iterable[str]) -> list[MemoryRow]:
        """Facts of these scopes resting on any of ``ids`` (citing it, or distilled from
        a cluster holding it: :func:`.base.rests_on`; run inside the deleting
        transaction: a fact written by another writer before it is seen)."""
        wanted, scopes = set(ids), sorted(set(scope_ids))
        hits: list[int] = []
        for i in range(0, len(scopes) if wanted else 0, 500):
            chunk = scopes[i : i + 500]
            hits += [
                int(n)
                for n, prov, meta in self.db.execute(
                    f"SELECT n, provenance, metadata FROM memories WHERE kind = 'semantic'"
                    f" AND scope_id IN ({qmarks(len(chunk))})",
                    chunk,
                )
                if not wanted.isdisjoint(rests_on(prov, meta))
            ]
        rows: list[MemoryRow] = []
        for i in range(0, len(hits), 500):
            chunk = hits[i : i + 500]
            rows += [
                memory_row(r)
                for r in self.db.execute(
                    f"SELECT {MEMORY_COLS} FROM memories WHERE n IN ({qmarks(len(chunk))})", chunk
                )
            ]
        return rows

    def forget_candidates(
        self, scope_ids: Sequence[int], older_than_s: float, limit: int
    ) -> list[MemoryRow]:
        """Never-accessed episodes older than ``older_than_s`` before their own scope's
        newest event (each scope by its own clock), oldest first, at most ``limit``: one
        query (each scope's newest in one grouped pass) whatever the number of scopes."""
        among, params = self.ids_in("scope_id", scope_ids)
        cols = ", ".join(f"m.{c.strip()}" for c in MEMORY_COLS.split(","))
        return [
            memory_row(r)
            for r in self.db.execute(
                f"SELECT {cols} FROM memories m JOIN (SELECT scope_id, MAX(event_time) AS"
                f" newest FROM memories WHERE {among} GROUP BY scope_id) t"
                f" ON m.scope_id = t.scope_id WHERE m.kind = 'episodic'"
                f" AND m.access_count = 0 AND m.event_time < t.newest - ?"
                f" ORDER BY m.event_time, m.n LIMIT ?",
                (*params, older_than_s, limit),
            )
        ]

    @classmethod
    def _heads_after(
        cls, db: sqlite3.Connection, rows: Sequence[MemoryRow]
    ) -> dict[int, int | None]:
        """Per scope whose newest episode is among ``rows``: its newest after the delete.

        That is the temporal predecessor (the older end of its edges in its scope)
        that survives, walking back past episodes deleted with it; where that walk
        finds none (the edge went with an episode deleted in an earlier call), the
        scope's newest surviving episode before it in the chain's order (key ``n``,
        insertion order). ``None`` only when no older episode of the scope is left.
        """
        gone = {r.n for r in rows}
        heads: dict[int, int | None] = {}
        ns = sorted(gone)
        for i in range(0, len(ns), 500):
            part = ns[i : i + 500]
            found = db.execute(
                f"SELECT id, last_episode FROM scopes WHERE last_episode IN ({qmarks(len(part))})",
                part,
            ).fetchall()
            for scope_id, n in found:
                head: int | None = int(n)
                for _ in range(len(gone) + 1):  # walk back past episodes deleted with it
                    if head is None or head not in gone:
                        break
                    before = db.execute(
                        "SELECT MAX(m.n) FROM edges e JOIN memories m"
                        " ON m.n = CASE WHEN e.a = ? THEN e.b ELSE e.a END"
                        " WHERE (e.a = ? OR e.b = ?) AND m.n < ? AND m.scope_id = ?"
                        " AND m.kind = 'episodic'",
                        (head, head, head, head, scope_id),
                    ).fetchone()
                    if before is None or before[0] is None:
                        head = cls._newest_left(db, int(scope_id), head, gone)
                    else:
                        head = int(before[0])
                heads[int(scope_id)] = head
        return heads

    @staticmethod
    def _newest_left(
        db: sqlite3.Connection, scope_id: int, below: int, gone: set[int]
    ) -> int | None:
        """The newest episode of ``scope_id`` with key under ``below`` not in ``gone``."""
        while True:
            found = [
                int(r[0])
                for r in db.execute(
                    "SELECT n FROM memories WHERE scope_id = ? AND kind = 'episodic' AND n < ?"
                    " ORDER BY n DESC LIMIT 256",
                    (scope_id, below),
                ).fetchall()
            ]
            left = [n for n in found if n not in gone]
            if left or len(found) < 256:
                return left[0] if left else None
            below = found[-1]

    def rows_in_scopes(self, scope_ids: Sequence[int]) -> list[MemoryRow]:
        among, params = self.ids_in("scope_id", scope_ids)
        return [
            memory_row(r)
            for r in self.db.execute(f"SELECT {MEMORY_COLS} FROM memories WHERE {among}", params)
        ]

    def newest_event(self, scope_ids: Sequence[int]) -> float | None:
        among, params = self.ids_in("scope_id", scope_ids)
        r = self.db.execute(
            f"SELECT MAX(event_time) FROM memories WHERE {among}", params
        ).fetchone()
        return None if r[0] is None else float(r[0])

    def delete_clusters(self, db: sqlite3.Connection, scope_ids: Sequence[int]) -> None:
        among, params = self.ids_in("scope_id", scope_ids)
        db.execute(f"DELETE FROM clusters WHERE {among}", params)

    def forget_clusters(
        self, db: sqlite3.Connection, scope_id: int, signatures: Sequence[str]
    ) -> None:
        """These clusters of a node count as never distilled (the next consolidation
        distils them again)."""
        db.executemany(
            "DELETE FROM clusters WHERE scope_id = ? AND signature = ?",
            [(scope_id, sig) for sig in signatures],
        )

    def get_metas(self, keys: Sequence[str]) -> dict[str, str]:
        """The values of those of ``keys`` that exist, 500 to a statement."""
        found: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            part = list(keys[i : i + 500])
            found.update(
                (str(k), str(v))
                for k, v in self.db.execute(
                    f"SELECT key, value FROM meta WHERE key IN ({qmarks(len(part))})", part
                )
            )
        return found

    def set_metas(self, db: sqlite3.Connection, items: Sequence[tuple[str, str]]) -> None:
        """:meth:`set_meta` of each ``(key, value)``, in one batch."""
        if items:
            db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [list(item) for item in items],
            )

    def set_metadata(self, db: sqlite3.Connection, n: int, metadata: str) -> None:
        """Rewrite one memory's metadata (JSON text) alone."""
        db.execute("UPDATE memories SET metadata = ? WHERE n = ?", (metadata, n))

    @contextmanager
    def read_tx(self) -> Iterator[None]:
        """A read transaction: every query inside sees one snapshot (WAL readers never block)."""
        db = self.db
        try:
            db.execute("BEGIN DEFERRED")
        except sqlite3.Error as exc:
            raise storage_error(exc, self._path, "could not start a read transaction") from exc
        try:
            yield
        finally:
            db.execute("COMMIT")  # read-only: releases the snapshot

    def iter_memories_under(self, node: int, batch: int = 1024) -> Iterator[list[MemoryRow]]:
        """Memories of ``node`` and its descendants in ``n`` order, streamed in batches."""
        cur = self.db.execute(
            f"{SUBTREE} SELECT {MEMORY_COLS} FROM memories"
            " WHERE scope_id IN (SELECT id FROM down) ORDER BY n",
            (node,),
        )
        while rows := cur.fetchmany(batch):
            yield [memory_row(r) for r in rows]

    def iter_edges_under(
        self, node: int, batch: int = 4096
    ) -> Iterator[list[tuple[str, str, float, int]]]:
        """``(id_a, id_b, weight, tick)`` of edges under ``node`` in ``(a, b)`` order, batched
        (an edge whose ends are not both of its scope, damage ``reindex`` drops, is not)."""
        cur = self.db.execute(
            f"{SUBTREE} SELECT ma.id, mb.id, e.weight, e.tick FROM edges e"
            " JOIN memories ma ON ma.n = e.a JOIN memories mb ON mb.n = e.b"
            " WHERE e.scope_id IN (SELECT id FROM down)"
            " AND ma.scope_id = e.scope_id AND mb.scope_id = e.scope_id ORDER BY e.a, e.b",
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
                f"SELECT id, n, scope_id FROM memories WHERE id IN ({qmarks(len(chunk))})", chunk
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
            f"{SUBTREE} SELECT 1 FROM memories WHERE scope_id IN (SELECT id FROM down) LIMIT 1",
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
            "INSERT INTO clusters(scope_id, signature, hub, facts, distilled_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(scope_id, signature) DO UPDATE SET"
            " hub = excluded.hub, facts = excluded.facts, distilled_at = excluded.distilled_at",
            (scope_id, signature, hub, facts, distilled_at),
        )

    # -- for adapters: SQL pieces that differ between the graph stores ------------

    #: The SQL of :meth:`json_field` (``PostgresStore``: its own spelling).
    _JSON_FIELD = "json_extract({column}, '$.{key}')"

    @staticmethod
    def _json_param(value: str) -> object:
        """``value`` as :meth:`json_field` reads it from a row holding it, to narrow by
        (the JSON decides): ``json_extract`` ends a text at a NUL and gives a lone
        surrogate as its three UTF-8 bytes, so the bytes, cast to text in SQL."""
        return value.split("\x00", 1)[0].encode("utf-8", "surrogatepass")

    @classmethod
    def json_field(cls, column: str, key: str) -> str:
        """SQL for JSON field ``key`` of ``column`` (NULL when absent or JSON null).

        Raises:
            ValueError: ``key`` is not a plain identifier.
        """
        if not key.isidentifier():
            raise ValueError(f"not a plain JSON key: {key!r}")
        return cls._JSON_FIELD.format(column=column, key=key)

    def ids_with_metadata(
        self, scope_ids: Sequence[int] | None, fields: Mapping[str, str], limit: int | None
    ) -> list[str]:
        """Ids of the memories of nodes ``scope_ids`` (``None``: every scope) whose metadata
        holds every ``fields`` key (a plain identifier) with that string value, oldest
        first, at most ``limit`` (``None``: all). SQL narrows by :meth:`json_field` (text on
        both engines: PostgreSQL's also equals a number or boolean spelled so); the JSON
        itself then decides, so only a string value matches."""
        where: list[str] = []
        params: list[object] = []
        if scope_ids is not None:
            among, params = self.ids_in("scope_id", scope_ids)
            where.append(among)
        for key, value in fields.items():
            where.append(f"{self.json_field('metadata', key)} = CAST(? AS TEXT)")
            params.append(self._json_param(value))
        cur = self.db.execute(
            f"SELECT id, metadata FROM memories WHERE {' AND '.join(where)} ORDER BY n", params
        )
        out: list[str] = []
        try:
            while (limit is None or len(out) < limit) and (rows := cur.fetchmany(256)):
                for mid, raw in rows:
                    meta = load_metadata(raw)
                    if all(_is_str(meta.get(k), v) for k, v in fields.items()):
                        out.append(str(mid))
        finally:
            cur.close()
        return out if limit is None else out[:limit]

    def ids_with_unique_key(self, scope_id: int, key: str) -> list[str]:
        """Ids of scope node ``scope_id``'s memories stored with idempotency key ``key``
        (:func:`~.unique.unique_key`), oldest first (an index lookup)."""
        rows = self.db.execute(
            "SELECT id FROM memories WHERE scope_id = ? AND unique_key = ? ORDER BY n",
            (scope_id, key),
        )
        return [str(r[0]) for r in rows]

    def forget_unique_keys(self, db: sqlite3.Connection, ns: Sequence[int]) -> None:
        """Keep the idempotency keys (digests) of memories ``ns``, deleted next in the
        caller's transaction, as forgotten: no process stores a turn of one again."""
        where, params = self.ids_in("n", ns)
        sql = f"SELECT DISTINCT scope_id, unique_key FROM memories WHERE {where} AND "
        keep_forgotten(db, list(db.execute(sql + "unique_key > ''", params)))

    def key_forgotten(self, scope_id: int, key: str) -> bool:
        """Whether a turn of ``scope_id`` with idempotency key ``key`` was deleted."""
        sql = "SELECT 1 FROM forgotten_turns WHERE scope_id = ? AND key_digest = ?"
        return self.db.execute(sql, (scope_id, key_digest(key))).fetchone() is not None

    def unique_keys(self, ns: Sequence[int]) -> dict[int, str]:
        """The idempotency keys of those of memories ``ns`` that have one."""
        where, params = self.ids_in("n", ns)
        rows = self.db.execute(
            f"SELECT n, unique_key FROM memories WHERE {where} AND unique_key IS NOT NULL", params
        )
        return {int(n): str(k) for n, k in rows}

    def ids_under(self, bases: Sequence[str]) -> list[str]:
        """Ids that start with ``base + "."`` for some ``base`` (an index range per base:
        ids are printable ASCII, compared bytewise, and ``"/"`` follows ``"."``)."""
        out: list[str] = []
        for i in range(0, len(bases), 200):
            part = list(bases[i : i + 200])
            where = " OR ".join(["(id >= ? AND id < ?)"] * len(part))
            params = [x for b in part for x in (f"{b}.", f"{b}/")]
            out += [str(r[0]) for r in self.db.execute(self._ids_sql(where), params)]
        return out

    @staticmethod
    def _ids_sql(where: str) -> str:
        return f"SELECT id FROM memories WHERE {where}"

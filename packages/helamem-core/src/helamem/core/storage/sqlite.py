"""The SQLite graph store's queries: memories, scopes, vectors, full text, edges, counts.

SQLite is the source of truth. WAL journal, ``BEGIN IMMEDIATE`` write
transactions, a busy timeout so several processes can share a file, and
append-only migrations recorded in ``schema_version``.

Every method runs on the store's single owner thread (see
:class:`helamem.core.engine.HelaMemory`); nothing here is thread-safe by
itself.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from ..errors import CorruptStoreError, InvalidInputError
from .base import EdgeRow, MemoryRow, RankRow
from .sqlite_schema import (
    MEMORY_COLS,
    MIGRATIONS,
    SCHEMA_VERSION,
    in_list,
    memory_row,
    qmarks,
    raw_content,
    scope_path,
    sqlite_errors,
    storage_error,
    text_shape,
)
from .sqlite_upkeep import SQLiteUpkeep

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "sqlite_errors", "storage_error"]

# an existing edge's weight decayed to the new tick plus the learning rate (parameters
# decay_rate, learning_rate); CASE, not MIN/MAX or LEAST/GREATEST: both engines run it
_DECAYED_PLUS = (
    "(edges.weight * POWER(?, CASE WHEN excluded.tick > edges.tick"
    " THEN excluded.tick - edges.tick ELSE 0 END) + ?)"
)


class SQLiteStore(SQLiteUpkeep):
    """Memories, edges and scopes in one SQLite file."""

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
            " SELECT CAST(? AS BIGINT)"
            " UNION ALL SELECT s.id FROM scopes s JOIN down ON s.parent = down.id)"
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

    def of_kind(self, ns: Sequence[int], kind: str, scope_ids: Sequence[int] | None) -> set[int]:
        """The keys among ``ns`` of memories of ``kind`` in ``scope_ids`` (any scope if None)."""
        where, params = self.ids_in("n", ns)
        if scope_ids is not None:
            among, more = self.ids_in("scope_id", scope_ids)
            where, params = f"{where} AND {among}", [*params, *more]
        return {
            int(r[0])
            for r in self.db.execute(
                f"SELECT n FROM memories WHERE {where} AND kind = ?", (*params, kind)
            )
        }

    def nodes_holding(self, node_ids: Sequence[int], kind: str) -> list[int]:
        """The nodes among ``node_ids`` that hold memories of ``kind`` (index probes only)."""
        among, params = self.ids_in("s.id", node_ids)
        return [
            int(r[0])
            for r in self.db.execute(
                f"SELECT s.id FROM scopes s WHERE {among}"
                " AND EXISTS (SELECT 1 FROM memories m WHERE m.scope_id = s.id AND m.kind = ?)"
                " ORDER BY s.id",
                (*params, kind),
            )
        ]

    def scope_of(self, scope_id: int) -> tuple[str, ...]:
        r = self.db.execute("SELECT path FROM scopes WHERE id = ?", (scope_id,)).fetchone()
        if r is None:
            raise CorruptStoreError(f"scope node {scope_id} is missing; {self.repair_hint()}")
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
        params: list[object] = []
        if node_ids is not None:
            among, params = self.ids_in("s.id", node_ids)
            sql += f" AND {among}"
        return sorted(tuple(json.loads(r[0])) for r in self.db.execute(sql, params))

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
        generated_id: bool = False,
        unique_key: str | None = None,
    ) -> int:
        """Insert one memory and its BM25 entry; returns its key ``n``. A ``generated_id``
        (``new_id()``, just now) skips the check that raises InvalidInputError
        when a caller-chosen id names a stored memory (``UNIQUE`` still holds).
        ``unique_key``: its turn's idempotency key (:meth:`ids_with_unique_key`)."""
        if (
            not generated_id
            and db.execute("SELECT 1 FROM memories WHERE id = ?", (id,)).fetchone() is not None
        ):
            # another writer took this caller-chosen id first (checked inside the tx)
            raise InvalidInputError(
                f"a memory with id {id!r} exists; delete it first or choose another id"
            )
        stored = self._stored_text(search_text)
        n = self._insert_row(
            db,
            {
                "id": id,
                "scope_id": scope_id,
                "kind": kind,
                "content": stored,
                "content_raw": raw_content(content, stored),
                "role": role,
                "event_time": event_time,
                "created_at": created_at,
                "keywords": keywords,
                "metadata": metadata,
                "provenance": provenance,
                "embedding": embedding,
                "shape": text_shape(content),
                "unique_key": unique_key,
                **self._tag_columns(tags),
            },
        )
        self._index_texts(db, [(n, search_text, tags)])
        return n

    def rows_by_n(self, ns: Iterable[int]) -> dict[int, MemoryRow]:
        where, params = self.ids_in("n", list(ns))  # any number of keys, one statement
        rows = (
            memory_row(r)
            for r in self.db.execute(f"SELECT {MEMORY_COLS} FROM memories WHERE {where}", params)
        )
        return {row.n: row for row in rows}

    def rows_by_id(self, ids: Iterable[str]) -> dict[str, MemoryRow]:
        where, params = self.texts_in("id", list(ids))  # any number of ids, one statement
        rows = (
            memory_row(r)
            for r in self.db.execute(f"SELECT {MEMORY_COLS} FROM memories WHERE {where}", params)
        )
        return {row.id: row for row in rows}

    def rank_rows(
        self, ids: Iterable[str], ns: Iterable[int], *, tokens: bool = False
    ) -> dict[int, RankRow]:
        """The ranking columns of the memories with these ids or keys, by key.

        One statement for any number of keys: ``id IN (…) OR n IN (…)`` reads
        each row once even when it is named both ways. With ``tokens``, the same statement
        also reads each memory's token vectors (:attr:`RankRow.tokens`): a
        search's MaxSim needs no second query for them.
        """
        id_list, n_list = list(ids), list(ns)
        if not id_list and not n_list:
            return {}
        select = (
            "SELECT m.n, m.id, m.scope_id, m.kind, m.event_time, m.embedding, m.shape, m.role"
            + (
                ", t.data FROM memories m LEFT JOIN token_vectors t ON t.n = m.n"
                if tokens
                else " FROM memories m"
            )
        )
        # each list inline up to INLINE_IDS (400, padded) or one parameter: at most
        # 800 parameters (under SQLite's old 999). An empty list is left out, not
        # ``1 = 0``: ``… OR 1 = 0`` makes SQLite scan the whole table
        parts = ([self.texts_in("m.id", id_list)] if id_list else []) + (
            [self.ids_in("m.n", n_list)] if n_list else []
        )
        where = " OR ".join(w for w, _ in parts)
        rows = self.db.execute(f"{select} WHERE {where}", [x for _, p in parts for x in p])
        return {
            r[0]: RankRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6] >> 1,
                bool(r[6] & 1),
                r[7],
                r[8] if tokens else None,
            )
            for r in rows
        }

    def unindexed(self, limit: int = 10_000) -> list[MemoryRow]:
        return [
            memory_row(r)
            for r in self.db.execute(
                f"SELECT {MEMORY_COLS} FROM memories WHERE indexed = 0 LIMIT ?", (limit,)
            )
        ]

    def all_rows(self, batch: int = 2048) -> Iterator[list[MemoryRow]]:
        last = 0
        while True:
            rows = [
                memory_row(r)
                for r in self.db.execute(
                    f"SELECT {MEMORY_COLS} FROM memories WHERE n > ? ORDER BY n LIMIT ?",
                    (last, batch),
                )
            ]
            if not rows:
                return
            yield rows
            last = rows[-1].n

    def keys_of(self, ids: Iterable[str]) -> dict[str, int]:
        """The key ``n`` of each memory id that exists."""
        where, params = self.texts_in("id", list(ids))
        return {
            str(r[0]): int(r[1])
            for r in self.db.execute(f"SELECT id, n FROM memories WHERE {where}", params)
        }

    def mark_indexed(
        self, keys: Sequence[tuple[int, str]], value: int = 1, written: Sequence[bytes] = ()
    ) -> None:
        """Set ``indexed`` of the memories ``(n, id)`` (a key and id that no longer match,
        the memory deleted meanwhile, change nothing); given the vectors ``written`` to the
        index, a row whose vector changed since (a fact another writer rewrote) gets 0."""
        same = "CASE WHEN embedding = ? THEN ? ELSE 0 END" if written else "?"
        vecs: Sequence[tuple[bytes, ...]] = [(w,) for w in written] if written else [()] * len(keys)
        with self.tx() as db:
            db.executemany(
                f"UPDATE memories SET indexed = {same} WHERE n = ? AND id = ?",
                [(*w, value, n, i) for w, (n, i) in zip(vecs, keys, strict=True)],
            )

    def put_token_vectors(self, db: sqlite3.Connection, items: Sequence[tuple[int, bytes]]) -> None:
        """Store memories' token vectors (see :func:`~helamem.core.retrieval.pack_tokens`)."""
        db.executemany(
            "INSERT INTO token_vectors(n, data) VALUES (?, ?) "
            "ON CONFLICT(n) DO UPDATE SET data = excluded.data",
            items,
        )

    def token_vectors(self, ns: Sequence[int]) -> dict[int, bytes]:
        """The stored token vectors of these memory keys (those that have them)."""
        where, params = self.ids_in("n", ns)
        return dict(self.db.execute(f"SELECT n, data FROM token_vectors WHERE {where}", params))

    def clear_token_vectors(self) -> None:
        """Drop every token vector (the embedder changed; they are refilled lazily)."""
        with self.tx() as db:
            db.execute("DELETE FROM token_vectors")

    def delete_memories(self, db: sqlite3.Connection, rows: Sequence[MemoryRow]) -> None:
        """Delete memories, their BM25 entries, token vectors and edges; leave tombstones
        for the index (both engines: one statement per table per 500 memories).

        A scope whose newest episode goes gets the one before it as its newest (the
        episode its temporal edge came from, past any deleted with it; else, when an
        earlier delete took that edge, the newest episode before it that is left), so
        the next add still links to the conversation before it.
        """
        heads = self._heads_after(db, rows)
        for i in range(0, len(rows), 500):
            ns = [r.n for r in rows[i : i + 500]]
            q = qmarks(len(ns))
            db.execute(f"DELETE FROM token_vectors WHERE n IN ({q})", ns)
            db.execute(f"DELETE FROM edges WHERE a IN ({q}) OR b IN ({q})", [*ns, *ns])
            self._unindex_texts(db, ns)
            self.forget_unique_keys(db, ns)  # a deleted turn is never stored again
            db.execute(f"DELETE FROM memories WHERE n IN ({q})", ns)
            db.execute(f"UPDATE scopes SET last_episode = NULL WHERE last_episode IN ({q})", ns)
        for scope_id, head in heads.items():
            db.execute("UPDATE scopes SET last_episode = ? WHERE id = ?", (head, scope_id))
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
            where, params = self.texts_in("id", list(ids))
            rows = self.db.execute(
                f"SELECT id, scope_id, kind FROM tombstones WHERE {where}", params
            ).fetchall()
        return [(str(i), int(s), str(k)) for i, s, k in rows]

    def existing(self, db: sqlite3.Connection, ns: Iterable[int]) -> set[int]:
        """The keys among ``ns`` whose memories exist (read inside a write transaction)."""
        where, params = self.ids_in("n", list(ns))
        return {int(r[0]) for r in db.execute(f"SELECT n FROM memories WHERE {where}", params)}

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

    def lexical(
        self, match: str, tag: str | None, limit: int, after: int = 0
    ) -> list[tuple[int, float]]:
        """BM25 top ``limit`` for ``match`` among rows carrying ``tag`` (all rows if
        None) whose key is above ``after``.

        Returns ``(n, score)`` with score = -bm25 (higher is better).
        """
        q = match if tag is None else f"tags:{tag} AND ({match})"
        try:
            rows = self.db.execute(
                "SELECT rowid, bm25(memories_fts, 1.0, 0.0) AS r FROM memories_fts "
                f"WHERE memories_fts MATCH ?{' AND rowid > ?' if after else ''} "
                "ORDER BY r LIMIT ?",
                (q, after, limit) if after else (q, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise storage_error(exc, self._path, f"lexical search failed for {match!r}") from exc
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
                self._df_rows = self.fts_rows()
                self._df_token = token
            stems = {t for w in words for t in self._stems[w]} - self._df.keys()
            if stems:
                self._df.update(dict.fromkeys(stems, 0))
                q, params = in_list(list(stems))
                self._df.update(
                    (str(t), int(d))
                    for t, d in self.db.execute(
                        f"SELECT term, doc FROM memories_fts_vocab WHERE term IN ({q})"
                        " AND col = 'content'",
                        params,
                    )
                )
        except sqlite3.Error as exc:
            raise storage_error(exc, self._path, "term statistics failed") from exc
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

    def fts_rows(self) -> int:
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

    def edges_of(self, ns: Sequence[int]) -> list[EdgeRow]:
        """Every edge touching any of ``ns``."""
        if not ns:
            return []
        (at_a, pa), (at_b, pb) = self.ids_in("a", ns), self.ids_in("b", ns)
        rows = self.db.execute(
            f"SELECT a, b, scope_id, weight, tick FROM edges WHERE {at_a} "
            f"UNION SELECT a, b, scope_id, weight, tick FROM edges WHERE {at_b}",
            (*pa, *pb),
        ).fetchall()
        return [EdgeRow(int(a), int(b), int(s), float(w), int(t)) for a, b, s, w, t in rows]

    def edges_among(self, ns: Sequence[int]) -> dict[tuple[int, int], EdgeRow]:
        """Edges with both ends in ``ns``."""
        if len(ns) < 2:
            return {}
        (at_a, pa), (at_b, pb) = self.ids_in("a", ns), self.ids_in("b", ns)
        rows = self.db.execute(
            f"SELECT a, b, scope_id, weight, tick FROM edges WHERE {at_a} AND {at_b}",
            (*pa, *pb),
        ).fetchall()
        return {
            (int(a), int(b)): EdgeRow(int(a), int(b), int(s), float(w), int(t))
            for a, b, s, w, t in rows
        }

    def edges_in_scopes(self, scope_ids: Sequence[int]) -> list[EdgeRow]:
        among, params = self.ids_in("scope_id", scope_ids)
        rows = self.db.execute(
            f"SELECT a, b, scope_id, weight, tick FROM edges WHERE {among}", params
        ).fetchall()
        return [EdgeRow(int(a), int(b), int(s), float(w), int(t)) for a, b, s, w, t in rows]

    def upsert_edges(self, db: sqlite3.Connection, edges: Iterable[EdgeRow]) -> None:
        db.executemany(
            "INSERT INTO edges(a, b, scope_id, weight, tick) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(a, b) DO UPDATE SET weight = excluded.weight, tick = excluded.tick",
            [(e.a, e.b, e.scope_id, e.weight, e.tick) for e in edges],
        )

    def co_activate(
        self,
        db: sqlite3.Connection,
        pairs: Sequence[tuple[int, int]],
        scope_id: int,
        tick: int,
        learning_rate: float,
        decay_rate: float,
    ) -> None:
        r"""Co-activate edges ``pairs`` (``a < b``) at ``tick``: one atomic SQL upsert each.

        An existing edge decays to ``tick``, gains :math:`\eta` and is capped at 1
        (:func:`~helamem.core.dynamics.decayed`, :func:`~helamem.core.dynamics.reinforced`:
        :math:`w' = \min(1, w\,\delta^{\max(0,\,t - t_0)} + \eta)`) and keeps the
        later tick; a new one starts at :math:`\min(1, \eta)`. The update reads and
        writes the row in one statement, so concurrent writers never lose one.
        """
        db.executemany(
            "INSERT INTO edges(a, b, scope_id, weight, tick) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(a, b) DO UPDATE SET weight = CASE WHEN "
            f"{_DECAYED_PLUS} > 1.0 THEN 1.0 ELSE {_DECAYED_PLUS} END, "
            "tick = CASE WHEN excluded.tick > edges.tick THEN excluded.tick ELSE edges.tick END",
            [
                (a, b, scope_id, min(1.0, learning_rate), tick, *(decay_rate, learning_rate) * 2)
                for a, b in pairs
            ],
        )

    def delete_edges(self, db: sqlite3.Connection, keys: Iterable[tuple[int, int]]) -> None:
        db.executemany("DELETE FROM edges WHERE a = ? AND b = ?", list(keys))

    def counts(self, scope_ids: Sequence[int] | None) -> dict[str, float]:
        where, params = "", list[object]()
        if scope_ids is not None:
            among, params = self.ids_in("scope_id", scope_ids)
            where = f" WHERE {among}"
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

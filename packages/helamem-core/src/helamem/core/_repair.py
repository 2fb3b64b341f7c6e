"""Repair of what derives from the memories (``helamem reindex``): full text, edges, vectors."""

from __future__ import annotations

import functools
import logging
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._base import scope_tag
from .jsontext import MAX_JSON_DEPTH, json_text_depth, load_metadata
from .types import dump_json

if TYPE_CHECKING:
    from ._base import CoreBase

__all__ = [
    "FTS_TABLES",
    "RepairReport",
    "heal_fts",
    "missing_fts",
    "rebuild_fts",
    "repair_derived",
    "too_deep",
]

logger = logging.getLogger(__name__)

#: The full-text index's tables (derived from ``memories``), as migrations 1 and 3
#: create them; FTS5 keeps each table's rows in its shadow tables (``_data`` …).
FTS_TABLES = {
    "memories_fts": "CREATE VIRTUAL TABLE memories_fts USING fts5(\n"
    "        content, tags, tokenize = 'porter unicode61 remove_diacritics 2'\n    )",
    "memories_fts_vocab": "CREATE VIRTUAL TABLE memories_fts_vocab"
    " USING fts5vocab(memories_fts, 'col')",
}
_MANY_BRACKETS = (
    "SELECT id, metadata FROM memories WHERE length(metadata)"
    " - length(replace(replace(metadata, '[', ''), '{', '')) > ? ORDER BY n"
)
"""Memories whose metadata has more than ``?`` opening brackets: those that may nest
deeper than :data:`.jsontext.MAX_JSON_DEPTH` (most have none)."""


def too_deep(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """``(id, metadata)`` of the memories whose metadata nests deeper than
    :data:`.jsontext.MAX_JSON_DEPTH` (stored before the limit), oldest first."""
    return [
        (str(mid), raw)
        for mid, raw in db.execute(_MANY_BRACKETS, (MAX_JSON_DEPTH,)).fetchall()
        if json_text_depth(raw) > MAX_JSON_DEPTH
    ]


_SHADOWS = tuple(f"memories_fts_{s}" for s in ("data", "idx", "content", "docsize", "config"))


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What :func:`repair_derived` rebuilt or dropped.

    Attributes:
        fts_rows: Full-text rows written (one per memory).
        edges_dropped: Edges of missing memories, or crossing scopes, deleted.
        vectors: Memories indexed into the rebuilt vector index.
        metadata_mended: Memories whose metadata nested deeper than
            :data:`.types.MAX_JSON_DEPTH` (stored before the limit), stored again
            with each too-deep value as its JSON text (as reads return it).
    """

    fts_rows: int
    edges_dropped: int
    vectors: int
    metadata_mended: int = 0


def repair_derived(core: CoreBase, *, reembed: bool = False, vectors: bool = True) -> RepairReport:
    """Rebuild what is derived from the ``memories`` table (runs on the owner thread).

    In one transaction: the full-text index is dropped and rebuilt from the
    memories (so a damaged FTS5 index is replaced, not read), edges whose
    end memory is missing or whose scope differs from an end's are deleted, and
    metadata nesting deeper than :data:`.types.MAX_JSON_DEPTH` is stored as
    :func:`.jsontext.load_metadata` reads it (``helamem check``'s ``metadata_depth``).
    Then (``vectors``) the vector index is rebuilt from the stored vectors
    (``reembed``: recomputed with the store's embedder, as
    :meth:`HelaMemory.reindex`); ``RepairReport.vectors`` is 0 without it.

    Raises:
        StorageError: SQLite or the vector index failed; the transaction was
            rolled back (the vector index is rebuilt on the next reindex).
    """
    store = core.sqlite_store
    with store.tx() as db:
        rows = rebuild_fts(core, db)
        deep = [(dump_json(load_metadata(raw), "metadata"), mid) for mid, raw in too_deep(db)]
        db.executemany("UPDATE memories SET metadata = ? WHERE id = ?", deep)
        dropped = db.execute(
            "DELETE FROM edges WHERE NOT EXISTS (SELECT 1 FROM memories m"
            " WHERE m.n = edges.a AND m.scope_id = edges.scope_id)"
            " OR NOT EXISTS (SELECT 1 FROM memories m"
            " WHERE m.n = edges.b AND m.scope_id = edges.scope_id)"
        ).rowcount
        db.execute(
            "UPDATE scopes SET last_episode = NULL WHERE last_episode IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM memories m WHERE m.n = scopes.last_episode)"
        )
    if not vectors:  # core.reindex drops it otherwise
        core.drop_lexical()
    vecs = core.reindex(reembed) if vectors else 0
    return RepairReport(rows, int(dropped), vecs, len(deep))


def missing_fts(db: sqlite3.Connection) -> list[str]:
    """The full-text index's tables (and FTS5 shadow tables) ``db`` lacks, sorted."""
    names = (*FTS_TABLES, *_SHADOWS)
    found = {
        str(r[0])
        for r in db.execute(
            f"SELECT name FROM sqlite_master WHERE name IN ({', '.join('?' * len(names))})",
            names,
        )
    }
    return sorted(set(names) - found)


@functools.cache
def _empty_shadows() -> dict[str, tuple[str, list[tuple[object, ...]]]]:
    """Each FTS5 shadow table of an empty ``memories_fts``: its DDL and rows."""
    with closing(sqlite3.connect(":memory:")) as mem:
        mem.execute(FTS_TABLES["memories_fts"])
        return {
            str(name): (str(sql), mem.execute(f"SELECT * FROM {name}").fetchall())
            for name, sql in mem.execute(
                "SELECT name, sql FROM sqlite_master WHERE name LIKE 'memories~_fts~_%' ESCAPE '~'"
                " AND type = 'table'"
            ).fetchall()
        }


def rebuild_fts(core: CoreBase, db: sqlite3.Connection) -> int:
    """Drop and rebuild the full-text index from ``memories`` inside the caller's
    transaction ``db`` (a damaged or missing FTS5 table is replaced, not read);
    returns the rows written. The tantivy index, derived from it, is rebuilt by
    whichever store holds it (key 0 in its log: everything changed).
    """
    store = core.sqlite_store
    gone = missing_fts(db)
    if "memories_fts" not in gone:  # FTS5 cannot drop a table without its shadow tables:
        for shadow, (sql, empty) in _empty_shadows().items():  # give it empty ones
            if shadow in gone:
                db.execute(sql)
                for row in empty:
                    db.execute(f"INSERT INTO {shadow} VALUES ({', '.join('?' * len(row))})", row)
        db.execute("DROP TABLE memories_fts")
    for shadow in _SHADOWS:  # left over when the table itself went
        db.execute(f"DROP TABLE IF EXISTS {shadow}")
    db.execute(FTS_TABLES["memories_fts"])
    if (
        db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_fts_vocab'").fetchone()
        is None
    ):
        db.execute(FTS_TABLES["memories_fts_vocab"])
    tags: dict[tuple[int, str], str] = {}
    rows = 0
    last = 0
    while batch := db.execute(
        "SELECT n, scope_id, kind, content FROM memories WHERE n > ? ORDER BY n LIMIT 2048",
        (last,),
    ).fetchall():
        out = []
        for n, sid, kind, content in batch:
            key = (int(sid), str(kind))
            if key not in tags:
                tags[key] = " ".join(scope_tag(a, key[1]) for a in store.ancestors(key[0]))
            out.append((int(n), str(content), tags[key]))
        db.executemany("INSERT INTO memories_fts(rowid, content, tags) VALUES (?, ?, ?)", out)
        rows += len(out)
        last = int(batch[-1][0])
    store._fts_writes += 1  # the term statistics cache is stale
    db.execute(
        "INSERT INTO lexical_log(n) SELECT 0"
        " WHERE EXISTS (SELECT 1 FROM meta WHERE key = 'lexical_index')"
    )
    return rows


def heal_fts(core: CoreBase) -> None:
    """At open: rebuild a full-text index whose tables are gone (dropped by hand, or a
    file tool that kept only some tables), under the writer lock, once across processes.
    Lexical search would otherwise fail on every call. A SQLite store only.

    Raises:
        StorageError: SQLite failed; the transaction was rolled back.
    """
    if core.config.store is not None:
        return
    store = core.sqlite_store
    if not missing_fts(store.db):
        return
    with store.tx() as db:
        gone = missing_fts(db)  # again under the lock: another process may have rebuilt it
        if gone:
            logger.warning(
                "%s: the full-text index lacks %s; rebuilding it from the memories",
                core.config.path,
                ", ".join(gone),
            )
            rows = rebuild_fts(core, db)
            logger.info("rebuilt the full-text index: %d rows", rows)

"""Repair of what derives from the memories (``helamem reindex``): full text, edges, vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._base import scope_tag
from .errors import StorageError

if TYPE_CHECKING:
    from ._base import CoreBase

__all__ = ["RepairReport", "repair_derived"]


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What :func:`repair_derived` rebuilt or dropped.

    Attributes:
        fts_rows: Full-text rows written (one per memory).
        edges_dropped: Edges of missing memories, or crossing scopes, deleted.
        vectors: Memories indexed into the rebuilt vector index.
    """

    fts_rows: int
    edges_dropped: int
    vectors: int


def repair_derived(core: CoreBase, *, reembed: bool = False, vectors: bool = True) -> RepairReport:
    """Rebuild what is derived from the ``memories`` table (runs on the owner thread).

    In one transaction: the full-text index is dropped and rebuilt from the
    memories (so a damaged FTS5 index is replaced, not read), and edges whose
    end memory is missing or whose scope differs from an end's are deleted.
    Then (``vectors``) the vector index is rebuilt from the stored vectors
    (``reembed``: recomputed with the store's embedder, as
    :meth:`HelaMemory.reindex`); ``RepairReport.vectors`` is 0 without it.

    Raises:
        StorageError: SQLite or the vector index failed; the transaction was
            rolled back (the vector index is rebuilt on the next reindex).
    """
    store = core.sqlite_store
    with store.tx() as db:
        sql = db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'memories_fts'"
        ).fetchone()
        if sql is None:
            raise StorageError(
                f"{core.config.path}: the full-text table definition is missing; restore "
                f"helamem.sqlite3 from a backup"
            )
        db.execute("DROP TABLE memories_fts")
        db.execute(str(sql[0]))
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
        store._fts_writes += 1  # the term statistics cache is stale
        # the tantivy index (derived from FTS5) is rebuilt by whichever store holds it,
        # in this process or another (key 0 in its log: everything changed)
        db.execute(
            "INSERT INTO lexical_log(n) SELECT 0"
            " WHERE EXISTS (SELECT 1 FROM meta WHERE key = 'lexical_index')"
        )
    if not vectors:  # core.reindex drops it otherwise
        core.drop_lexical()
    return RepairReport(rows, int(dropped), core.reindex(reembed) if vectors else 0)

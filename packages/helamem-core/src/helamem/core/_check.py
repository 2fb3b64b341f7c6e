"""Integrity check of a store directory (``helamem check``), read without opening the store.

The repair of what derives from the memories (``helamem reindex``) is in
:mod:`._repair`; the report types are in :mod:`._check_report`.

:func:`check_store` reads ``helamem.sqlite3`` through its own connection and
the vector index through :meth:`VectorIndex.count` and ``all_ids()``,
without opening the store (so nothing in SQLite is reconciled, migrated or
repaired first; only the vector index, which verifies itself when it opens,
may rebuild a collection that lost vectors), and returns a
:class:`CheckReport`: counts, and one :class:`Defect` per kind of damage
found:

=====================  ======================================================
kind                   meaning
=====================  ======================================================
``sqlite_integrity``   ``PRAGMA integrity_check`` failed, or the file is not
                       a readable SQLite database
``sqlite_schema``      the database lacks HeLa-Mem's tables (empty file?), or
                       a newer helamem-core wrote it
``fts_integrity``      FTS5's ``integrity-check`` failed, or its tables are missing
``fts_missing``        a memory has no full-text row (lexical search misses it)
``fts_orphan``         a full-text row has no memory
``fts_stale``          a full-text row's text differs from its memory's
``vector_missing``     a memory marked indexed has no vector in the index
``vector_orphan``      the index holds a vector of no memory (and of no
                       deletion still pending)
``vector_count``       the index's ``count()`` disagrees with its ids
``index_unavailable``  the vector index cannot be opened or listed
``edge_orphan``        an edge whose end memory does not exist
``edge_scope``         an edge whose scope differs from an end memory's
``fact_orphan``        a fact resting on an episode that does not exist (one
                       it cites or was distilled from: it may repeat deleted
                       content)
``scope_orphan``       a memory or scope node whose scope node is missing
``embedding_missing``  an indexed memory whose stored vector is missing or of
                       the wrong size for the store's embedder
``embedder_switch``    a switch of embedder was interrupted
``embedder_unknown``   memories hold vectors but the store's record of the
                       embedder that made them is missing or unreadable
=====================  ======================================================

Pending work is counted, not reported as damage: memories not yet in the
vector index (``unindexed``) and deletions not yet applied to it
(``tombstones``) are settled the next time the store opens.

Run it on an idle store for exact results: a write racing the check can
show up as a difference (discrepancies are re-read once to drop most).
"""

from __future__ import annotations

import shlex
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._check_report import (
    DEFECT_KINDS,
    EXAMPLES,
    FACT_FIX,
    METADATA_FIX,
    REINDEX_FIX,
    RESTORE_FIX,
    UPGRADE_FIX,
    CheckReport,
    Defect,
    store_file,
)
from ._reembed import records
from ._repair import missing_fts, too_deep
from .config import HelaMemConfig
from .embeddings import Embedder, HashingEmbedder, create_embedder
from .errors import HelaMemError, StorageError
from .jsontext import MAX_JSON_DEPTH
from .storage.base import IndexLockedError, VectorIndex, rests_on
from .storage.sqlite_schema import MIGRATIONS, connect_existing, is_locked

#: The schema version that creates ``memories_fts_vocab`` (an older store lacks it).
_VOCAB_SINCE = next(v for v, sql in enumerate(MIGRATIONS, 1) if "memories_fts_vocab" in sql)

__all__ = [
    "DEFECT_KINDS",
    "CheckReport",
    "Defect",
    "check_store",
]


@runtime_checkable
class _Listing(Protocol):
    def all_ids(self) -> list[str]: ...


_FTS_UNREADABLE = "the full-text index cannot be read: it is damaged"
#: The full-text index's rows against the memories: (defect kind, query, message).
_FTS_ROWS = (
    (
        "fts_missing",
        "SELECT m.id FROM memories m WHERE NOT EXISTS"
        " (SELECT 1 FROM memories_fts f WHERE f.rowid = m.n) ORDER BY m.n",
        "memories without a full-text row (lexical search cannot find them)",
    ),
    (
        "fts_orphan",
        "SELECT f.rowid FROM memories_fts f WHERE NOT EXISTS"
        " (SELECT 1 FROM memories m WHERE m.n = f.rowid) ORDER BY f.rowid",
        "full-text rows of no memory",
    ),
    (
        "fts_stale",
        "SELECT m.id FROM memories m JOIN memories_fts f ON f.rowid = m.n"
        " WHERE f.content IS NOT m.content ORDER BY m.n",
        "full-text rows whose text differs from their memory's",
    ),
)


class _Checker:
    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self.db = db
        self.defects: list[Defect] = []
        self.facts: dict[str, Any] = {}
        self.notes: list[str] = []

    def add(
        self, kind: str, items: Sequence[object], message: str, fix: str, count: int | None = None
    ) -> None:
        n = len(items) if count is None else count
        if n:
            examples = tuple(str(i) for i in items[:EXAMPLES])
            self.defects.append(
                Defect(kind, n, message, examples, fix.format(path=shlex.quote(str(self.path))))
            )

    def one(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self.db.execute(sql, params).fetchone()[0]

    def col(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return [r[0] for r in self.db.execute(sql, params)]

    # -- SQLite ------------------------------------------------------------

    def sqlite(self) -> bool:
        """Integrity and schema; False when nothing further can be read."""
        try:
            problems = [str(r[0]) for r in self.db.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:  # damage it could not read past
            code = getattr(exc, "sqlite_errorname", None)  # Python 3.11+; else the text
            if code == "SQLITE_NOTADB" or (code is None and "not a database" in str(exc)):
                why = "the file is not a SQLite database"
                self.add("sqlite_integrity", [str(exc)], why, RESTORE_FIX)
                return False
            problems = [str(exc)]  # the rest may read: what does is counted below
        if problems != ["ok"]:
            self.add(
                "sqlite_integrity",
                problems,
                "PRAGMA integrity_check found damage in helamem.sqlite3",
                RESTORE_FIX,
            )
        tables = set(self.col("SELECT name FROM sqlite_master WHERE type = 'table'"))
        needed = {"meta", "scopes", "memories", "edges", "tombstones"}
        if not needed <= tables:
            missing = sorted(needed - tables)
            self.add(
                "sqlite_schema",
                missing,
                "the database lacks HeLa-Mem tables (an empty or foreign file)",
                RESTORE_FIX,
            )
            self.facts["empty"] = True
            return False
        if "schema_version" in tables:
            self.facts["schema_version"] = self.one("SELECT MAX(version) FROM schema_version")
        version = self.facts.get("schema_version")
        if isinstance(version, int) and version > len(MIGRATIONS):  # opening refuses it too
            why = (
                f"the store's schema version {version} is newer than this helamem-core's "
                f"({len(MIGRATIONS)}): its checks do not know that schema"
            )
            self.add("sqlite_schema", [f"schema_version {version}"], why, UPGRADE_FIX)
            return False
        gone = missing_fts(self.db)
        if isinstance(version, int) and version < _VOCAB_SINCE:  # made by a later migration
            gone = [t for t in gone if t != "memories_fts_vocab"]
        self.add(
            "fts_integrity",
            gone,
            "the full-text index's tables are missing (lexical search fails until it is "
            "rebuilt; opening the store rebuilds it)",
            REINDEX_FIX,
        )
        self.facts["fts_gone"] = bool(gone)
        return True

    def counts(self) -> None:
        f = self.facts
        f["memories"] = self.one("SELECT COUNT(*) FROM memories")
        try:
            f["fts_rows"] = 0 if f["fts_gone"] else self.one("SELECT COUNT(*) FROM memories_fts")
        except sqlite3.DatabaseError:  # a damaged full-text index: fts() reports it
            f["fts_rows"] = 0
        f["edges"] = self.one("SELECT COUNT(*) FROM edges")
        f["scope_nodes"] = self.one("SELECT COUNT(*) FROM scopes")
        f["scopes"] = self.one("SELECT COUNT(DISTINCT scope_id) FROM memories")
        f["unindexed"] = self.one("SELECT COUNT(*) FROM memories WHERE indexed = 0")
        f["tombstones"] = self.one("SELECT COUNT(*) FROM tombstones")

    def fts(self) -> None:
        if self.facts["fts_gone"]:
            return  # reported by sqlite(): nothing to read
        damaged = False
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")
            finally:
                self.db.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and is_locked(exc):
                raise StorageError(
                    f"helamem check: the store {self.path} stayed locked by a writer for 30 s "
                    f"({exc}); retry when it is idle"
                ) from exc
            damaged = True
            self.add(
                "fts_integrity",
                [str(exc)],
                "FTS5 integrity-check failed: the full-text index is damaged",
                REINDEX_FIX,
            )
        for kind, sql, message in _FTS_ROWS:
            try:
                items = self.col(sql)
            except sqlite3.DatabaseError as exc:  # too damaged to read its rows
                if not damaged:
                    damaged = True
                    self.add("fts_integrity", [str(exc)], _FTS_UNREADABLE, REINDEX_FIX)
                continue
            if kind == "fts_orphan":
                items = [f"fts row {r}" for r in items]
            self.add(kind, items, message, REINDEX_FIX)

    def edges(self) -> None:
        orphans = self.db.execute(
            "SELECT e.a, e.b FROM edges e WHERE"
            " NOT EXISTS (SELECT 1 FROM memories m WHERE m.n = e.a)"
            " OR NOT EXISTS (SELECT 1 FROM memories m WHERE m.n = e.b) ORDER BY e.a, e.b"
        ).fetchall()
        self.add(
            "edge_orphan",
            [f"edge {a}-{b}" for a, b in orphans],
            "edges whose end memory does not exist",
            REINDEX_FIX,
        )
        crossed = self.db.execute(
            "SELECT e.a, e.b FROM edges e JOIN memories ma ON ma.n = e.a"
            " JOIN memories mb ON mb.n = e.b"
            " WHERE ma.scope_id != e.scope_id OR mb.scope_id != e.scope_id ORDER BY e.a, e.b"
        ).fetchall()
        self.add(
            "edge_scope",
            [f"edge {a}-{b}" for a, b in crossed],
            "edges whose scope differs from an end memory's (edges never cross scopes)",
            REINDEX_FIX,
        )

    def facts_cited(self) -> None:
        """Facts resting on an episode that no longer exists (:func:`.storage.base.rests_on`:
        one it cites, or one its distiller was shown)."""
        citing: dict[str, list[str]] = {}
        for fact, prov, meta in self.db.execute(
            "SELECT id, provenance, metadata FROM memories WHERE kind = 'semantic' ORDER BY n"
        ):
            try:
                cited = rests_on(prov, meta)
            except (TypeError, ValueError, AttributeError):  # a damaged row: no episode read
                cited = set()
            for i in sorted(cited):
                citing.setdefault(i, []).append(str(fact))
        known = set(self._still(list(citing), _KNOWN_IDS))
        orphans = dict.fromkeys(f for i, fs in citing.items() if i not in known for f in fs)
        self.add(
            "fact_orphan",
            list(orphans),
            "facts resting on an episode that does not exist, cited or distilled from (they "
            "may repeat deleted content)",
            FACT_FIX,
        )

    def metadata(self) -> None:
        """Metadata nesting deeper than :data:`.types.MAX_JSON_DEPTH` (stored before the
        limit: its reads see each too-deep value as its JSON text)."""
        deep = [mid for mid, _ in too_deep(self.db)]
        self.add(
            "metadata_depth",
            deep,
            f"memories whose metadata nests objects and arrays over {MAX_JSON_DEPTH} levels deep",
            METADATA_FIX,
        )

    def scopes(self) -> None:
        lost = self.col(
            "SELECT m.id FROM memories m WHERE NOT EXISTS"
            " (SELECT 1 FROM scopes s WHERE s.id = m.scope_id) ORDER BY m.n"
        )
        lost += [
            f"scope node {i}"
            for i in self.col(
                "SELECT s.id FROM scopes s WHERE s.parent IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM scopes p WHERE p.id = s.parent) ORDER BY s.id"
            )
        ]
        self.add(
            "scope_orphan",
            lost,
            "memories or scope nodes whose scope node is missing",
            RESTORE_FIX,
        )

    def unknown_embedder(self) -> int | None:
        """With no readable embedder record: the dimension most stored vectors have
        (reported as ``embedder_unknown``), or None when no memory holds one."""
        row = self.db.execute(
            "SELECT length(embedding) / 4 AS d FROM memories WHERE embedding IS NOT NULL"
            " GROUP BY d ORDER BY COUNT(*) DESC, d LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        dim = int(row[0])
        self.add(
            "embedder_unknown",
            [f"dimension {dim}"],
            "the store's record of its embedder is missing or unreadable; its memories "
            f"hold vectors of dimension {dim}",
            "open the store once with the embedder that made them, which records it: "
            f"`helamem stats {{path}} --embedder NAME --dimension {dim}` (NAME: minilm, "
            "hashing or litellm with --model)",
        )
        return dim

    def embeddings(self, dim: int | None, switch: dict[str, Any] | None) -> None:
        if switch is not None:
            self.add(
                "embedder_switch",
                [f"{switch.get('name')} ({switch.get('dimension')})"],
                "a switch of embedder was interrupted; the store refuses to open until it "
                "is finished",
                "finish it with `helamem reindex --reembed {path}` (re-embeds the remaining "
                "memories with the new embedder)",
            )
            return  # vectors of two embedders are expected until then
        if dim is None:
            return
        bad = self.col(  # an unindexed row's vector is (re)computed when it is indexed
            "SELECT id FROM memories WHERE indexed != 0"
            " AND (embedding IS NULL OR length(embedding) != ?) ORDER BY n",
            (4 * dim,),
        )
        self.add(
            "embedding_missing",
            bad,
            f"memories whose stored vector is missing or not of dimension {dim}",
            REINDEX_FIX,
        )

    # -- vector index ------------------------------------------------------

    def vectors(self, index: VectorIndex) -> None:
        try:
            count = int(index.count())
            self.facts["vectors"] = count
            # opening the index settles what was pending (a rebuild marks rows indexed)
            self.facts["unindexed"] = self.one("SELECT COUNT(*) FROM memories WHERE indexed = 0")
            self.facts["tombstones"] = self.one("SELECT COUNT(*) FROM tombstones")
            if not isinstance(index, _Listing):
                self.notes.append("vector ids not checked: the vector index has no all_ids()")
                return
            ids = [str(i) for i in index.all_ids()]
        except IndexLockedError as exc:
            self.notes.append(f"vector ids not checked: {exc}")
            return
        except HelaMemError as exc:
            self.add(
                "index_unavailable",
                [str(exc)],
                "the vector index cannot be read",
                REINDEX_FIX,
            )
            return
        self.facts["vector_ids_checked"] = True
        in_index = set(ids)
        if count != len(ids):
            self.add(
                "vector_count",
                [f"count() {count}, ids {len(ids)}"],
                "the vector index's count disagrees with the ids it lists",
                REINDEX_FIX,
                count=abs(count - len(ids)) or 1,
            )
        indexed = self.col("SELECT id FROM memories WHERE indexed = 1 ORDER BY n")
        missing = [i for i in indexed if i not in in_index]
        if missing:  # re-read: deleted or re-queued since the first read
            missing = self._still(missing, "SELECT id FROM memories WHERE indexed = 1 AND id IN")
        self.add(
            "vector_missing",
            missing,
            "memories marked indexed that have no vector (dense search misses them)",
            REINDEX_FIX,
        )
        known = set(self.col("SELECT id FROM memories"))
        known.update(self.col("SELECT id FROM tombstones"))
        orphans = sorted(in_index - known)
        if orphans:  # re-read: added since the first read
            orphans = [o for o in orphans if o not in set(self._still(orphans, _KNOWN_IDS))]
        self.add(
            "vector_orphan",
            orphans,
            "vectors in the index of memories SQLite does not hold",
            REINDEX_FIX,
        )

    def _still(self, ids: Sequence[str], sql: str) -> list[str]:
        out: list[str] = []
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            out += self.col(f"{sql} ({','.join('?' * len(chunk))})", chunk)
        order = {v: i for i, v in enumerate(ids)}
        return sorted(out, key=order.__getitem__)


_KNOWN_IDS = "SELECT id FROM memories WHERE id IN"


@contextmanager
def _opened(index: VectorIndex, dimension: int) -> Iterator[VectorIndex]:
    index.open(dimension)
    try:
        yield index
    finally:
        index.close()


def check_store(
    path: str | Path,
    config: HelaMemConfig | None = None,
    *,
    embedder: Embedder | None = None,
    vector_index: VectorIndex | None = None,
) -> CheckReport:
    """Check the store in directory ``path`` without opening (or changing) it.

    Args:
        path: The store directory (holding ``helamem.sqlite3``).
        config: For the vector index's settings (``config.chroma``); its
            ``path`` is replaced by ``path``.
        embedder: Only its dimension and type are used, to open the index;
            default: the one the store records.
        vector_index: A custom index (as given to ``HelaMemory``); it must
            offer ``all_ids()`` for vector ids to be checked.

    Returns:
        The report; ``report.ok`` is true when no defect was found.

    Raises:
        InvalidInputError: There is no store at ``path``.
    """
    root = Path(path)
    db_path = store_file(root)
    cfg = (config or HelaMemConfig()).model_copy(update={"path": root})
    try:
        db = connect_existing(db_path)
    except sqlite3.DatabaseError as exc:
        return CheckReport(
            root,
            defects=(
                Defect(
                    "sqlite_integrity", 1, f"cannot open helamem.sqlite3: {exc}", (), RESTORE_FIX
                ),
            ),
        )
    chk = _Checker(root, db)
    name: str | None = None
    dim: int | None = None
    readable = False  # memories could be read: compare the index's ids with them
    try:
        try:
            if chk.sqlite():
                chk.counts()
                info, switch = records(db)
                if info is not None:
                    name, dim = str(info.get("name")), int(info.get("dimension", 0))
                else:
                    dim = chk.unknown_embedder()
                chk.fts()
                chk.edges()
                chk.facts_cited()
                chk.metadata()
                chk.scopes()
                chk.embeddings(dim, switch)
                readable = True
        except sqlite3.DatabaseError as exc:
            chk.add("sqlite_integrity", [str(exc)], "reading helamem.sqlite3 failed", RESTORE_FIX)
        index_dim = dim or (embedder.dimension if embedder is not None else cfg.embedder.dimension)
        index = vector_index
        if index is None:
            from .storage.chroma import make_index

            index = make_index(cfg.chroma, root, _stand_in(cfg, embedder, name, index_dim))
        try:
            with _opened(index, index_dim) as opened:
                if readable:
                    chk.vectors(opened)
                elif chk.facts.get("empty"):  # no memories table: every vector is an orphan
                    chk.facts["vectors"] = n = int(opened.count())
                    chk.add(
                        "vector_orphan",
                        [f"{n} vectors"],
                        "the vector index holds vectors while the database holds no memories",
                        RESTORE_FIX,
                        count=n,
                    )
        except HelaMemError as exc:  # rebuilt from the database, once that reads again
            fix = REINDEX_FIX if readable else RESTORE_FIX
            chk.add("index_unavailable", [str(exc)], "the vector index cannot be opened", fix)
    finally:
        db.close()
    f = chk.facts
    return CheckReport(
        root,
        schema_version=f.get("schema_version"),
        embedder=None if name is None else f"{name} ({dim})",
        memories=f.get("memories", 0),
        fts_rows=f.get("fts_rows", 0),
        edges=f.get("edges", 0),
        scopes=f.get("scopes", 0),
        scope_nodes=f.get("scope_nodes", 0),
        vectors=f.get("vectors"),
        unindexed=f.get("unindexed", 0),
        tombstones=f.get("tombstones", 0),
        vector_ids_checked=bool(f.get("vector_ids_checked", False)),
        defects=tuple(chk.defects),
        notes=tuple(chk.notes),
    )


def _stand_in(
    cfg: HelaMemConfig, embedder: Embedder | None, name: str | None, dim: int
) -> Embedder:
    """The embedder ``make_index`` is given (it never embeds, only looks at the type)."""
    if embedder is not None:
        return embedder
    from ._reembed import embedder_config

    ecfg = embedder_config(name, dim) if name is not None else cfg.embedder
    if ecfg is not None and ecfg.provider == "minilm":
        return create_embedder(ecfg)
    return HashingEmbedder(dim)

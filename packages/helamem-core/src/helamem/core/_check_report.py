"""What ``helamem check`` reports: the kinds of defect, one defect, and the report."""

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .identity import is_dsn

__all__ = [
    "DB_NAME",
    "DEFECT_KINDS",
    "EXAMPLES",
    "FACT_FIX",
    "METADATA_FIX",
    "CheckReport",
    "Defect",
    "REINDEX_FIX",
    "RESTORE_FIX",
    "no_store",
    "store_file",
]

DB_NAME = "helamem.sqlite3"


def store_file(path: str | Path) -> Path:
    """The database file of the store in directory ``path``.

    Raises:
        InvalidInputError: There is no store at ``path``.
    """
    db_path = Path(path) / DB_NAME
    if not db_path.is_file():
        raise InvalidInputError(no_store(path))
    return db_path


def no_store(path: str | Path) -> str:
    """Why ``path`` is not a store directory, and the fix."""
    if Path(path).name == DB_NAME and Path(path).is_file():
        return f"{path} is the store's database: pass its directory, {Path(path).parent}"
    text = str(path).strip()
    if is_dsn(text):
        return (  # a key=value DSN, not echoed: it may hold a password
            "that is a PostgreSQL connection string, not a store directory: the command line "
            "reads SQLite stores; read a PostgreSQL store from Python (with HelaMemory("
            "HelaMemConfig(store=PostgresConfig(dsn=...))) as m: m.stats(); "
            "m.export_scope(scope, file), a file `helamem import` takes)"
        )
    scheme = re.match(r"([a-z][a-z0-9+.-]*):/", text, re.IGNORECASE)  # however Path folded it
    if scheme is not None:  # a URL: not echoed either
        name = scheme.group(1)
        how = (
            "HelaMemory.from_url(url)"
            if name in ("postgresql", "postgres")  # as from_url takes them
            else f"HelaMemory.from_url(url) with a postgresql:// URL (not {name}://)"
        )
        return (
            "that is a database URL, not a store directory: the command line reads SQLite "
            f"stores; read a PostgreSQL store from Python (with {how} as m: m.stats(); "
            "m.export_scope(scope, file), a file `helamem import` takes)"
        )
    shown = re.sub(r":[^:/@\s]+@", ":***@", str(path))  # a password however it came
    return f"no HeLa-Mem store at {shown} ({DB_NAME} not found); check the path"


EXAMPLES = 5

DEFECT_KINDS: tuple[str, ...] = (
    "sqlite_integrity",
    "sqlite_schema",
    "fts_integrity",
    "fts_missing",
    "fts_orphan",
    "fts_stale",
    "vector_missing",
    "vector_orphan",
    "vector_count",
    "index_unavailable",
    "edge_orphan",
    "edge_scope",
    "fact_orphan",
    "metadata_depth",
    "scope_orphan",
    "embedding_missing",
    "embedder_switch",
    "embedder_unknown",
)

REINDEX_FIX = (
    "run `helamem reindex {path}` (it rebuilds the vector and full-text indexes from the "
    "memories and drops edges of missing memories)"
)
FACT_FIX = (
    "delete those facts with `HelaMemory.delete(ids)`: they may repeat episodes that were "
    "deleted (before deletes took the facts citing them along); the next consolidation "
    "distils the surviving episodes again"
)
METADATA_FIX = (
    "run `helamem reindex {path}`: it stores each too-deep value as its JSON text, a "
    "string (what reads return for it already)"
)
UPGRADE_FIX = (
    "upgrade helamem-core (`pip install -U helamem-core`) to the version that wrote the "
    "store, then check it again"
)
RESTORE_FIX = (
    "restore helamem.sqlite3 from a backup, or, if the store still opens, export what "
    "still reads with `helamem export {path} --scope ... --out FILE` and import it into "
    "a new store"
)


@dataclass(frozen=True, slots=True)
class Defect:
    """One kind of damage: how many items, a few of them, and the fix.

    Attributes:
        kind: One of :data:`DEFECT_KINDS`.
        count: Items affected.
        message: What is wrong, in words.
        examples: Up to 5 affected items (memory ids, ``a-b`` edge keys...).
        fix: What to do about it.
    """

    kind: str
    count: int
    message: str
    examples: tuple[str, ...] = ()
    fix: str = ""


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The result of :func:`check_store`.

    Attributes:
        path: The store directory.
        schema_version: SQLite schema version (``None`` if unreadable).
        embedder: ``name (dimension)`` of the stored vectors' embedder.
        memories: Memories in SQLite.
        fts_rows: Rows of the full-text index.
        edges: Edges in SQLite.
        scopes: Scopes holding memories.
        scope_nodes: Scope nodes (every prefix of every scope).
        vectors: The index's ``count()`` (``None`` when not read).
        unindexed: Memories not yet in the vector index (indexed on open).
        tombstones: Deletions not yet applied to the vector index (on open).
        vector_ids_checked: Whether the index listed its ids (``all_ids()``).
        defects: One entry per kind of damage found (empty when clean).
        notes: What could not be checked, and why.
    """

    path: Path
    schema_version: int | None = None
    embedder: str | None = None
    memories: int = 0
    fts_rows: int = 0
    edges: int = 0
    scopes: int = 0
    scope_nodes: int = 0
    vectors: int | None = None
    unindexed: int = 0
    tombstones: int = 0
    vector_ids_checked: bool = False
    defects: tuple[Defect, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """No defect found."""
        return not self.defects

    @property
    def kinds(self) -> set[str]:
        """The kinds of the defects found."""
        return {d.kind for d in self.defects}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``path`` as a string, ``ok`` added)."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["ok"] = self.ok
        return out

    def to_text(self) -> str:
        """A readable multi-line report."""
        vectors = "not read" if self.vectors is None else str(self.vectors)
        lines = [
            f"store      {self.path}",
            f"schema     {self.schema_version}",
            f"embedder   {self.embedder}",
            f"memories   {self.memories}",
            f"fts rows   {self.fts_rows}",
            f"vectors    {vectors}" + ("" if self.vector_ids_checked else " (ids not checked)"),
            f"edges      {self.edges}",
            f"scopes     {self.scopes} ({self.scope_nodes} scope nodes)",
            f"pending    {self.unindexed} memories to index, "
            f"{self.tombstones} vector deletions (done by the process holding the index "
            "within seconds, or when the store opens)",
        ]
        lines += [f"note       {n}" for n in self.notes]
        if self.ok:
            lines.append("OK: no defect found")
            return "\n".join(lines)
        lines.append(f"DEFECTS: {len(self.defects)} kind(s)")
        for d in self.defects:
            lines.append(f"  [{d.kind}] {d.message} ({d.count})")
            if d.examples:
                lines.append(f"      e.g. {', '.join(d.examples)}")
            if d.fix:
                lines.append(f"      fix: {d.fix}")
        return "\n".join(lines)

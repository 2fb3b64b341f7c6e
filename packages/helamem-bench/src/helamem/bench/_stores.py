"""Where a benchmark's stores keep their graph and vectors: the backend options.

By default (``backend="sqlite"``, no Chroma server) every store a benchmark
builds is the embedded one: ``<path>/helamem.sqlite3`` and Chroma's files
under ``<path>/chroma``. :class:`BenchStores` switches the graph to
PostgreSQL (a fresh schema per store, dropped when the run ends) and, for
``bench scale``, the vectors to a Chroma server (a fresh collection prefix
per store, its collections deleted when the store is done).

Examples:
    >>> s = BenchStores()
    >>> s.store() is None, s.chroma().mode, s.describe()
    (True, 'persistent', {'backend': 'sqlite', 'chroma': 'embedded'})
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from helamem.core.config import ChromaConfig, PostgresConfig

__all__ = ["BACKENDS", "BenchStores"]

BACKENDS = ("sqlite", "postgres")


def _fresh(prefix: str, sep: str) -> str:
    return f"{prefix}{sep}{uuid.uuid4().hex[:16]}"


def _where(dsn: str) -> str:
    """``host:port/database`` of a DSN, no user or password (for the results)."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return "?"
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:  # an odd DSN: say nothing about it
        return "?"
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


@dataclass
class BenchStores:
    """The graph store and vector index of every store a benchmark builds.

    Args:
        backend: ``"sqlite"`` (default: ``<path>/helamem.sqlite3``) or
            ``"postgres"`` (a schema of its own per store in ``postgres_dsn``).
        postgres_dsn: The PostgreSQL server (``postgresql://...``); needed
            for ``"postgres"``.
        chroma_host: A Chroma server (``chroma run``) for the vectors;
            ``None``: the embedded Chroma under each store's path.
        chroma_port: Its port.

    Raises:
        ValueError: An unknown backend, or ``"postgres"`` without a DSN.
    """

    backend: str = "sqlite"
    postgres_dsn: str | None = None
    chroma_host: str | None = None
    chroma_port: int = 8000
    schemas: list[str] = field(default_factory=list, init=False)
    """Schemas handed out so far (dropped by :meth:`cleanup`)."""
    collections: list[str] = field(default_factory=list, init=False)
    """Chroma collection prefixes handed out so far (deleted by :meth:`cleanup`)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {list(BACKENDS)}")
        if self.backend == "postgres" and not self.postgres_dsn:
            raise ValueError("the postgres backend needs a DSN (--postgres-dsn)")

    def store(self) -> PostgresConfig | None:
        """``HelaMemConfig.store`` for one new store: ``None`` (SQLite) or a fresh schema."""
        if self.backend != "postgres":
            return None
        schema = _fresh("bench", "_")
        self.schemas.append(schema)
        return PostgresConfig(dsn=self.postgres_dsn, schema_name=schema)

    def chroma(self, base: ChromaConfig | None = None) -> ChromaConfig:
        """``HelaMemConfig.chroma`` for one new store (a fresh collection prefix on a server)."""
        base = base or ChromaConfig()
        if self.chroma_host is None:
            return base
        prefix = self.collection_prefix()
        return base.model_copy(
            update={
                "mode": "http",
                "host": self.chroma_host,
                "port": self.chroma_port,
                "collection": prefix,
            }
        )

    def collection_prefix(self) -> str:
        """A fresh collection name prefix on the Chroma server (deleted by :meth:`cleanup`)."""
        prefix = _fresh("bench", "-")
        self.collections.append(prefix)
        return prefix

    def chroma_client(self) -> Any:
        """A ``chromadb.HttpClient`` of the Chroma server (``chroma_host`` must be set)."""
        import chromadb
        from chromadb.config import Settings

        assert self.chroma_host is not None
        return chromadb.HttpClient(
            host=self.chroma_host,
            port=self.chroma_port,
            settings=Settings(anonymized_telemetry=False),
        )

    def describe(self) -> dict[str, Any]:
        """What the results record: the backend, and where (never a password)."""
        out: dict[str, Any] = {"backend": self.backend}
        if self.backend == "postgres" and self.postgres_dsn:
            out["postgres"] = _where(self.postgres_dsn)
        out["chroma"] = (
            "embedded"
            if self.chroma_host is None
            else f"http {self.chroma_host}:{self.chroma_port}"
        )
        return out

    def schema_bytes(self, schema: str) -> int:
        """Bytes PostgreSQL holds for ``schema``'s tables (with indexes and TOAST)."""
        import psycopg

        assert self.postgres_dsn is not None
        with psycopg.connect(self.postgres_dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
                (schema,),
            ).fetchone()
        return int(row[0]) if row else 0

    def drop_schemas(self, schemas: Sequence[str] | None = None) -> None:
        """Drop schemas handed out (all by default), best effort."""
        todo = list(self.schemas if schemas is None else schemas)
        if not todo or self.postgres_dsn is None:
            return
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(self.postgres_dsn, autocommit=True, connect_timeout=10) as conn:
                for schema in todo:
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )
        except psycopg.Error:
            return
        self.schemas = [s for s in self.schemas if s not in todo]

    def drop_collections(self, prefixes: Sequence[str] | None = None) -> None:
        """Delete the server's collections of prefixes handed out (all by default), best effort."""
        todo = list(self.collections if prefixes is None else prefixes)
        if not todo or self.chroma_host is None:
            return
        import httpx
        from chromadb.errors import ChromaError

        try:
            client = self.chroma_client()
            for col in client.list_collections():
                name = col if isinstance(col, str) else col.name
                if any(name.startswith(f"{p}-") for p in todo):
                    client.delete_collection(name)
        except (ChromaError, httpx.HTTPError, ValueError, OSError):  # a server gone away
            return
        self.collections = [c for c in self.collections if c not in todo]

    def cleanup(self) -> None:
        """Drop every schema and delete every collection handed out."""
        self.drop_schemas()
        self.drop_collections()

"""Which store a configuration opens, as a key (adapters share one connection, and
wait for each other's turns, per store): its directory, and on PostgreSQL its schema
and which database its DSN names."""

from __future__ import annotations

import hashlib
import os
import re

from .config import HelaMemConfig

__all__ = ["database_key", "is_dsn", "store_key"]


_DSN_KEY = re.compile(r"(^|\s)(host|hostaddr|dbname|user|port|password|sslmode)\s*=")


def is_dsn(text: str) -> bool:
    """Whether ``text`` reads as a libpq key=value connection string (not a path).

    Examples:
        >>> is_dsn("user=app password=x host=db"), is_dsn("./helamem-data")
        (True, False)
    """
    return _DSN_KEY.search(text) is not None


def database_key(dsn: str) -> str:
    """Which database a PostgreSQL DSN names: a digest of its host, port (default
    5432), database and user only, so two spellings of one DSN (options, ``sslmode``, a
    password, a default port left out) agree and no secret goes in; ``""`` for a text
    that is no DSN. Two names of one server (``localhost``, ``127.0.0.1``) are two
    databases here.

    Examples:
        >>> database_key("postgresql://app:secret@db/agents") == database_key(
        ...     "postgresql://app@db:5432/agents?sslmode=require")
        True
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:  # not a DSN: the store says so when it opens
        return ""
    who = [str(parts.get(k) or d) for k, d in (("host", ""), ("port", "5432"), ("dbname", ""))]
    who.append(str(parts.get("user") or ""))
    return hashlib.sha256("\x00".join(who).encode()).hexdigest()[:16]


def store_key(config: HelaMemConfig, database: str | None = None) -> str:
    """The store ``config`` opens: its directory (absolute); with a PostgreSQL store,
    its schema and :func:`database_key` too (``database``: that key when the caller
    knows it otherwise, as from a dump that holds no DSN). Schemas, or databases, on
    one path are separate stores.

    Examples:
        >>> store_key(HelaMemConfig(path="/data/m"))
        '/data/m'
    """
    where = os.path.abspath(os.fspath(config.path))
    store = config.store
    if store is None:
        return where
    if database is None:
        database = database_key(store.dsn.get_secret_value())
    return f"{where}\x00{store.schema_name}\x00{database}"

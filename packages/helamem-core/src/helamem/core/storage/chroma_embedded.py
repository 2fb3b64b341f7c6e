"""Embedded Chroma's in-process engine: the bounded persistent client, Chroma's cache of
systems, and fork safety.

Chroma's embedded clients (``PersistentClient``, ``EphemeralClient``) run a Rust
engine with threads of its own. ``fork()`` copies none of them, so in a child of a
process whose engine had started, a new embedded client waits forever for them
(seen: ``get_tenant`` never returns). :func:`engine_inherited` tells the index so;
it then treats the embedded index as held by another process (small scopes are
searched exactly, large ones raise :class:`~helamem.core.storage.base.IndexLockedError`
naming the fix) instead of hanging.
"""

from __future__ import annotations

import os
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

from chromadb.config import Settings
from chromadb.errors import ChromaError

from .base import IndexLockedError

__all__ = [
    "bounded_persistent_client",
    "engine_inherited",
    "forget_system",
    "inherited_engine_error",
    "note_engine_started",
]

_RUST_API = "chromadb.api.rust.RustBindingsAPI"
_engine_pid: int | None = None
"""The process whose embedded Chroma engine started (ours or another library's)."""


def note_engine_started() -> None:
    """Record that this process starts Chroma's embedded engine (before a client is built)."""
    global _engine_pid
    if _engine_pid is None:
        _engine_pid = os.getpid()


def _before_fork() -> None:
    """In the parent, before ``fork()``: an engine another library started counts too."""
    ssc = sys.modules.get("chromadb.api.shared_system_client")
    if _engine_pid is None and ssc is not None:
        systems = list(ssc.SharedSystemClient._identifier_to_system.values())
        if any(getattr(s.settings, "chroma_api_impl", None) == _RUST_API for s in systems):
            note_engine_started()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_before_fork)


def engine_inherited() -> bool:
    """Whether this process was forked from one whose embedded engine had started: a
    new embedded client here would hang (its engine's threads were not copied)."""
    return _engine_pid is not None and _engine_pid != os.getpid()


def inherited_engine_error(path: Path) -> IndexLockedError:
    """The error of an operation that needs the embedded index in such a child."""
    return IndexLockedError(
        f"this process was forked from one that had started embedded Chroma (the index in "
        f"{path}), whose engine does not survive fork(): a new client here would hang. "
        f"Start worker processes with multiprocessing's 'spawn' or 'forkserver' method "
        f"(multiprocessing.get_context('spawn')), or run a Chroma server (`chroma run "
        f"--path {path} --host 127.0.0.1 --port 8000`) and open every process with "
        f'ChromaConfig(mode="http", host="127.0.0.1", port=8000)'
    )


def forget_system(path: Path) -> None:
    """Drop Chroma's cached in-process system for ``path`` (after a failed open)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient._identifier_to_system.pop(str(path), None)
    SharedSystemClient._identifier_to_refcount.pop(str(path), None)


def bounded_persistent_client(path: Path, settings: Settings, cache_size: int) -> Any:
    """A ``PersistentClient`` whose HNSW cache holds at most ``cache_size`` indexes.

    Chroma sizes its cache of loaded HNSW indexes at a fifth of the open-file
    limit (5 files each), which leaves nothing for anything else. The system
    is built here, the size set before it starts, and then shared as
    ``PersistentClient(path)`` would share it.
    """
    from chromadb.api import ServerAPI
    from chromadb.api.client import Client
    from chromadb.api.shared_system_client import SharedSystemClient
    from chromadb.config import System
    from chromadb.telemetry.product import ProductTelemetryClient

    full = Settings(
        **{**settings.model_dump(), "is_persistent": True, "persist_directory": str(path)}
    )
    if str(path) not in SharedSystemClient._identifier_to_system:
        system = System(full)
        system.instance(ProductTelemetryClient)  # type: ignore[type-abstract]
        api = system.instance(ServerAPI)  # type: ignore[type-abstract]
        if hasattr(api, "hnsw_cache_size"):
            api.hnsw_cache_size = cache_size
        try:
            system.start()
        except BaseException:
            with suppress(AttributeError, ChromaError):
                system.stop()
            raise
        SharedSystemClient._identifier_to_system[str(path)] = system
    return Client(settings=full)

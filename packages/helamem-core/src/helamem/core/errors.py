"""Typed exceptions. Every message names the fix."""

from __future__ import annotations

__all__ = [
    "CommitUnknownError",
    "ConfigError",
    "CorruptStoreError",
    "DiskFullError",
    "EmbeddingError",
    "ForkedStoreError",
    "HelaMemError",
    "IndexLockedError",
    "InvalidInputError",
    "InvalidScopeError",
    "LLMError",
    "LLMResponseError",
    "LLMUnavailableError",
    "MemoryNotFoundError",
    "StorageError",
    "StoreClosedError",
    "UnknownScopeError",
]


class HelaMemError(Exception):
    """Base class of every error HeLa-Mem raises on purpose."""


class InvalidInputError(HelaMemError, ValueError):
    """An argument was rejected before anything was written."""


class InvalidScopeError(InvalidInputError):
    """A scope (namespace tuple) is malformed."""


class UnknownScopeError(InvalidInputError):
    """The store never held the scope named, nor any scope under it (a typo would
    otherwise read as "no memories"): nothing was done."""


class MemoryNotFoundError(HelaMemError, KeyError):
    """No memory has the given id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "memory not found"


class StoreClosedError(HelaMemError, RuntimeError):
    """The store was closed; make a new ``HelaMemory`` on the same store the way the
    closed one was made, with the same arguments (``HelaMemory(old.config,
    embedder=...)``, or ``HelaMemory.from_path(path, embedder=...)``/``from_url``)."""


class ConfigError(HelaMemError, ValueError):
    """The configuration cannot work as given."""


class EmbeddingError(HelaMemError, RuntimeError):
    """The embedder failed or returned vectors of the wrong shape."""


class StorageError(HelaMemError, RuntimeError):
    """The graph store (SQLite or PostgreSQL) or the vector index failed."""


class CommitUnknownError(StorageError):
    """The connection to PostgreSQL was lost during a write's ``COMMIT``: the write may
    or may not be saved. Read it back (``get``, ``search``) before writing it again:
    a blind retry may store it twice (a turn with ``unique_on`` may be retried: the
    store skips it if it was saved; ``TurnRecorder`` retries such turns itself)."""


class DiskFullError(StorageError):
    """The disk is full; the write was rolled back (nothing lost). Free space and retry."""


class CorruptStoreError(StorageError):
    """The store's files are damaged: run ``helamem check PATH``; restore
    ``helamem.sqlite3`` from a backup (the vector index rebuilds with ``helamem reindex``)."""


class IndexLockedError(StorageError):
    """Another process holds this directory's embedded Chroma index.

    Embedded Chroma (``ChromaConfig(mode="persistent")``) is single-process:
    scopes searched by exact scan work from every process, but a scope large
    enough for its own HNSW collection is served only by the process holding
    the index. To share such a store between processes, run a Chroma server
    (``chroma run --path DIR --host 127.0.0.1 --port 8000``) and open every
    process with ``ChromaConfig(mode="http", host="127.0.0.1", port=8000)``.
    """


class ForkedStoreError(StorageError):
    """This process was forked from one that had this SQLite store open: SQLite's lock
    state, copied by ``fork()``, would let this process's writes be lost. Close the
    store in the parent before forking, or start worker processes with
    multiprocessing's ``spawn`` or ``forkserver`` method."""


class LLMError(HelaMemError, RuntimeError):
    """An LLM call failed; nothing was written."""


class LLMUnavailableError(LLMError):
    """Every model (and fallback) failed after retries: rate limits, timeouts, 5xx.

    Retry later, raise ``LLMConfig.max_retries``/``timeout_s``, or add
    ``fallbacks``.
    """


class LLMResponseError(LLMError):
    """The model's answer was not valid JSON for the expected schema, even after one repair."""

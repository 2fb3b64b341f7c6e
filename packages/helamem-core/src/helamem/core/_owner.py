"""The memory's owner thread: the one thread running every storage call; open and close.

:class:`OwnedCore` builds the :class:`~helamem.core._core.Core` on first use,
runs each call on its single owner thread (sync callers wait on a future,
async callers await it) and closes it, also at interpreter exit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from . import _exit
from ._core import Core
from .config import HelaMemConfig
from .distill import Distiller
from .embeddings import Embedder, create_embedder
from .errors import InvalidInputError, StoreClosedError
from .llm import LLMClient
from .storage.base import VectorIndex
from .storage.sqlite import sqlite_errors

__all__ = ["OwnedCore"]

logger = logging.getLogger("helamem.core.engine")

T = TypeVar("T")


def _close_at_exit(mem: OwnedCore, started: float) -> None:
    """A store never closed is closed at interpreter exit (see :mod:`helamem.core._exit`)."""
    mem.close()


class OwnedCore:
    """The store behind a :class:`~helamem.core.HelaMemory`, owned by one thread (see there)."""

    def __init__(
        self,
        config: HelaMemConfig | None = None,
        *,
        embedder: Embedder | Any | None = None,
        vector_index: VectorIndex | None = None,
        llm: LLMClient | None = None,
        distiller: Distiller | None = None,
        reembed: bool = False,
    ) -> None:
        self.config = config or HelaMemConfig()
        self._reembed = reembed
        self._embedder_arg = embedder
        self._index_arg = vector_index
        self._llm = llm
        self._distiller = distiller
        self._core: Core | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._owner: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False  # no new work accepted
        self._finished = False  # storage released (owner thread only)
        self._exit_token: int | None = None  # closed at interpreter exit unless closed before

    @classmethod
    def from_path(
        cls, path: str | Path, config: HelaMemConfig | None = None, **kwargs: Any
    ) -> Self:
        """A memory stored in directory ``path`` (opened on first use or ``with``).

        ``kwargs`` are the constructor's (``embedder``, ``vector_index``, ``llm``,
        ``distiller``, ``reembed``).

        Examples:
            >>> mem = HelaMemory.from_path("./helamem-data")   # no I/O yet
        """
        base = config or HelaMemConfig()
        return cls(base.model_copy(update={"path": Path(path)}), **kwargs)

    def _build_core(self) -> Core:
        emb = self._embedder_arg
        if emb is None:
            embedder: Embedder = create_embedder(self.config.embedder)
        elif isinstance(emb, Embedder):
            embedder = emb
        elif callable(emb):
            from .storage.chroma import ChromaEmbedder

            embedder = ChromaEmbedder(emb)
        else:
            raise InvalidInputError(
                "embedder must implement name/dimension/embed() or be a Chroma embedding function"
            )
        if self._index_arg is not None:
            index = self._index_arg
        else:
            from .storage.chroma import make_index

            index = make_index(self.config.chroma, self.config.path, embedder)
        core = Core(self.config, embedder, index, reembed=self._reembed)
        core.open()
        return core

    def _on_owner(self) -> Core:
        if self._finished:
            raise StoreClosedError("this HelaMemory is closed; open a new one with from_path()")
        if self._core is None:
            self._core = self._build_core()
        return self._core

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise StoreClosedError(
                    "this HelaMemory is closed; open a new one with HelaMemory.from_path()"
                )
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="helamem-store")
                # after turn recorders flush, before Python stops thread pools
                self._exit_token = _exit.register(self, _close_at_exit, phase=_exit.CLOSE)
            return self._pool

    def _run(self, fn: Callable[[Core], T]) -> T:
        # every SQLite failure leaves as a typed StorageError (disk full, corrupt, ...)
        with sqlite_errors(self.config.path / "helamem.sqlite3"):
            return fn(self._on_owner())

    def _submit(self, fn: Callable[[Core], T]) -> Future[T]:
        def job() -> T:
            self._owner = threading.current_thread()
            return self._run(fn)

        return self._executor().submit(job)

    def _call(self, fn: Callable[[Core], T]) -> T:
        if threading.current_thread() is self._owner:
            return self._run(fn)
        return self._submit(fn).result()

    async def _acall(self, fn: Callable[[Core], T]) -> T:
        return await asyncio.wrap_future(self._submit(fn))

    def open(self) -> Self:
        """Open the store now (otherwise it opens on first use)."""
        self._call(lambda c: None)
        return self

    async def aopen(self) -> Self:
        await self._acall(lambda c: None)
        return self

    def close(self) -> None:
        """Flush and release the store. Idempotent; later calls raise StoreClosedError."""
        pool = self._close_pool()
        if pool is not None:
            pool.shutdown(wait=True)

    async def aclose(self) -> None:
        pool = self._close_pool()
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True)

    def _close_pool(self) -> ThreadPoolExecutor | None:
        with self._lock:
            if self._closed:
                return None
            pool = self._pool
            if pool is not None:
                pool.submit(self._close_core)
            self._closed = True
            if self._exit_token is not None:
                _exit.unregister(self._exit_token)
            return pool

    def _close_core(self) -> None:
        self._finished = True
        if self._core is not None:
            self._core.close()
            self._core = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await self.aopen()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

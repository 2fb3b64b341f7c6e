"""The memory's owner thread: the one thread running every storage call; open and close.

:class:`OwnedCore` builds the :class:`~helamem.core._core.Core` on first use,
runs each call on its single owner thread (sync callers wait on a future,
async callers await it) and closes it, also at interpreter exit.

The owner thread runs an event loop. Storage calls are plain callbacks on it,
one at a time and in submission order, so they never overlap; the loop also
hosts the background work that feeds them (the turn recorders' per-scope
lanes, :mod:`._recorder_worker`), so recording needs no thread of its own.
The memory knows those recorders (weakly), so that every call first waits
for the turns they accepted before it in the scopes it reads
(:meth:`OwnedCore._call`'s ``sees``, :meth:`OwnedCore._wait_recorded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from pydantic import ValidationError

from . import _exit
from ._core import Core
from ._recorder_types import IN_RECORDER_LANE
from .config import EMPTY_PATH, HelaMemConfig
from .distill import Distiller
from .embeddings import Embedder, create_embedder
from .errors import ConfigError, InvalidInputError, StorageError, StoreClosedError
from .identity import is_dsn
from .llm import LLMClient
from .storage.base import VectorIndex
from .storage.sqlite import sqlite_errors
from .storage.sqlite_fork import ForkGate
from .types import normalize_prefix

__all__ = ["EVERY_SCOPE", "KeepsPending", "OwnedCore"]

logger = logging.getLogger("helamem.core.engine")

T = TypeVar("T")


_PG_SCHEMES = ("postgresql://", "postgres://")

EVERY_SCOPE: tuple[Sequence[str], ...] = ((),)
"""A call's ``sees`` by default: the turns recorded in every scope."""


class _Recorder(Protocol):
    """What a read needs of a turn recorder (:mod:`._recorder_state`)."""

    def _wait_settled_sync(
        self, prefixes: tuple[tuple[str, ...], ...], started: float, what: str = "search"
    ) -> None: ...

    async def _wait_settled(
        self, prefixes: tuple[tuple[str, ...], ...], started: float, what: str = "search"
    ) -> None: ...

    def _accepted_upto(self) -> int: ...

    def _forget_before(self, prefix: tuple[str, ...], upto: int, mark: bool = True) -> int: ...


class KeepsPending(Generic[T]):
    """A planned call that may run while added vectors wait for their batched index
    write (adds, searches and calls that never touch the vector index, see
    ``ChromaConfig.upsert_batch``); every other call writes them first."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Core], T]) -> None:
        self.fn = fn

    def __call__(self, core: Core) -> T:
        return self.fn(core)


def _run_owner(loop: asyncio.AbstractEventLoop) -> None:
    """The owner thread: run ``loop`` until the memory closes, then end what is left on it.

    Work still awaiting on the loop when it stops (the lanes of a turn
    recorder nobody closed) is cancelled and run to its end, so that it
    counts its turns as failed rather than vanishing.
    """
    asyncio.set_event_loop(loop)
    try:
        while True:
            try:
                loop.run_forever()
                break  # stopped by close()
            except BaseException as exc:  # SystemExit & co. from a task
                # The owner must outlive any one task: its callers would hang.
                logger.error("the store's owner loop went on after %r", exc, exc_info=exc)
        while asyncio.all_tasks(loop):
            loop.run_until_complete(asyncio.sleep(0))  # every task has taken its first step
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    """A memory collected without ``close()``: stop its owner loop (no-op once closed)."""
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(loop.stop)


def _close_at_exit(mem: OwnedCore, started: float) -> None:
    """A store never closed is closed at interpreter exit (see :mod:`helamem.core._exit`)."""
    mem.close()


def _open_at_exit(mem: OwnedCore, started: float) -> None:
    """A store not open yet is opened while thread pools still run, when the exit work
    waits for the program's threads (see :mod:`helamem.core._exit`)."""
    if not mem.closed and not mem._open_failed:  # a failed open was the program's error
        mem.open()


def _reopen_hint(what: str) -> str:
    """``what`` and how to go on: a new memory on the same store, made as this one was."""
    return (
        f"{what}; make a new one on the same store the way this one was made, with "
        "the same arguments: HelaMemory(old.config, embedder=..., ...), or "
        "HelaMemory.from_path(path, embedder=..., ...) / from_url(url, ...) for a store "
        "opened that way"
    )


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
        cfg = config or HelaMemConfig()
        # every file of the store (SQLite, Chroma, tantivy, locks) under one directory,
        # whatever the working directory when each is first opened
        self.config = (
            cfg if cfg.path.is_absolute() else cfg.model_copy(update={"path": cfg.path.absolute()})
        )
        self._reembed = reembed
        # fork() waits for the job in progress: a child copies no SQLite call half done
        self._fork_gate = ForkGate(self.config.busy_timeout_s, str(self.config.path))
        self._embedder_arg = embedder
        self._index_arg = vector_index
        self._llm = llm
        self._distiller = distiller
        self._core: Core | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: threading.Thread | None = None
        self._pid: int | None = None  # the process whose thread owns the store
        self._lock = threading.Lock()
        self._closed = False  # no new work accepted
        self._finished = False  # storage released (owner thread only)
        self._open_failed = False  # the last open raised (not retried at exit)
        _exit.install()
        self._exit_token: int | None = None  # closed at interpreter exit unless closed before
        self._exit_open = -1  # opened at exit while thread pools run (see _exit.OPEN)
        self._flush_timer: asyncio.TimerHandle | None = None  # writes pending vectors
        self._fold_timer: asyncio.TimerHandle | None = None  # folds the lexical tail
        # turn recorders with turns not yet stored (or failed): every call waits for them
        self._recorders: weakref.WeakSet[_Recorder] = weakref.WeakSet()  # under _lock

    @classmethod
    def from_path(
        cls, path: str | Path, config: HelaMemConfig | None = None, **kwargs: Any
    ) -> Self:
        """A memory stored in directory ``path`` (opened on first use or ``with``).

        ``kwargs`` are the constructor's (``embedder``, ``vector_index``, ``llm``,
        ``distiller``, ``reembed``). A ``postgresql://`` URL is :meth:`from_url`'s.

        Examples:
            >>> mem = HelaMemory.from_path("./helamem-data")   # no I/O yet

        Raises:
            InvalidInputError: ``path`` is empty (it would put the store's files in the
                working directory; ``"."`` says so on purpose).
        """
        if isinstance(path, str) and path.startswith(_PG_SCHEMES):
            return cls.from_url(path, config, **kwargs)
        if isinstance(path, str) and not path.strip():
            raise InvalidInputError(EMPTY_PATH)
        base = config or HelaMemConfig()
        return cls(base.model_copy(update={"path": Path(path)}), **kwargs)

    @classmethod
    def from_url(
        cls,
        url: str,
        config: HelaMemConfig | None = None,
        *,
        schema: str | None = None,
        **kwargs: Any,
    ) -> Self:
        """A memory at ``url`` (opened on first use or ``with``).

        ``postgresql://`` (or ``postgres://``): the graph store is that
        PostgreSQL database, in ``schema`` (default: ``config.store``'s, else
        ``"helamem"``); ``config.path`` still holds local files (embedded
        Chroma, locks). ``file://`` or a plain path: :meth:`from_path`.

        Examples:
            >>> mem = HelaMemory.from_url("postgresql://app@db.internal/agents")  # no I/O yet
            >>> mem.config.store.schema_name
            'helamem'

        Raises:
            InvalidInputError: another URL scheme, or a key=value DSN.
            ConfigError: ``schema`` is not a valid schema name.
        """
        base = config or HelaMemConfig()
        if url.startswith(_PG_SCHEMES):
            from .config import PostgresConfig

            fields = {} if base.store is None else base.store.model_dump()
            fields["dsn"] = url
            if schema is not None:
                fields["schema_name"] = schema
            try:
                store = PostgresConfig(**fields)
            except ValidationError as exc:  # the schema name (the URL is not parsed here)
                raise ConfigError(
                    f"schema {fields.get('schema_name')!r} is not a schema name HeLa-Mem "
                    f"creates: use 1-63 lower-case letters, digits and _, starting with a "
                    f"letter or _"
                ) from exc
            return cls(base.model_copy(update={"store": store}), **kwargs)
        if url.startswith("file://"):
            return cls.from_path(url.removeprefix("file://"), config, **kwargs)
        if "://" in url:
            raise InvalidInputError(
                f"cannot open {url.split('://')[0]}:// URLs; pass postgresql://..., "
                f"file://... or a directory path"
            )
        if is_dsn(url):
            raise InvalidInputError(
                "from_url takes a postgresql:// URL or a path; pass a key=value DSN as "
                "HelaMemConfig(store=PostgresConfig(dsn=...))"
            )
        return cls.from_path(url, config, **kwargs)

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

            index = make_index(
                self.config.chroma, self.config.path, embedder, store=self.config.store
            )
        core = Core(self.config, embedder, index, reembed=self._reembed)
        core.open()
        core.defer_index = self.config.chroma.upsert_batch > 1
        core.defer_learning = True  # written by _learn_after, before the next call
        return core

    def _on_owner(self) -> Core:
        if self._finished:
            raise StoreClosedError(_reopen_hint("this HelaMemory is closed"))
        if self._core is None:
            try:
                self._core = self._build_core()
            except BaseException:
                self._open_failed = True
                raise
            self._open_failed = False
        return self._core

    def _call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the owner thread's event loop (started on first use), in order.

        Nothing is accepted once :meth:`close` began, so everything accepted
        runs before the store closes.

        Raises:
            StoreClosedError: After :meth:`close` began, or in a forked child of
                the process that started the owner thread.
        """
        with self._lock:
            if self._closed:
                raise StoreClosedError(_reopen_hint("this HelaMemory is closed"))
            if self._pid is not None and self._pid != os.getpid():
                raise StoreClosedError(
                    "this HelaMemory was opened by the parent of this forked process and "
                    "its owner thread did not survive the fork; a SQLite store the parent "
                    "has open cannot be opened here either (ForkedStoreError): close it in "
                    "the parent before forking and open it anew here, or start workers "
                    "with multiprocessing's 'spawn' method "
                    "(multiprocessing.get_context('spawn')) and open the store in each"
                )
            if self._loop is None:
                self._pid = os.getpid()
                loop = asyncio.new_event_loop()
                # The thread holds the loop, never the memory: a memory nobody
                # closed can still be collected, and its loop stops with it.
                thread = threading.Thread(
                    target=_run_owner, args=(loop,), name="helamem-store", daemon=True
                )
                thread.start()
                self._loop, self._owner = loop, thread
                weakref.finalize(self, _stop_loop, loop)
                # after turn recorders flush, before Python stops thread pools
                self._exit_token = _exit.register(self, _close_at_exit, phase=_exit.CLOSE)
                self._exit_open = _exit.register(self, _open_at_exit, phase=_exit.OPEN)
            self._loop.call_soon_threadsafe(callback)

    def _add_recorder(self, recorder: _Recorder) -> None:
        """A turn recorder has turns for this memory not yet stored: calls wait."""
        with self._lock:
            self._recorders.add(recorder)

    def _remove_recorder(self, recorder: _Recorder) -> None:
        """It has none (any more)."""
        with self._lock:
            self._recorders.discard(recorder)

    def _recorders_to_wait_for(
        self, sees: Sequence[Sequence[str]] | None
    ) -> tuple[list[_Recorder], tuple[tuple[str, ...], ...]]:
        """The recorders a call seeing ``sees`` must wait for, and the prefixes: none on
        the owner thread or inside a recorder's lane (a thread its ``aadd_turns`` or
        ``aconsolidate`` started: waiting would wait for itself), once closed (the call
        raises), in a forked child (the recorders are the parent's), or for ``sees=None``."""
        if (
            sees is None
            or not self._recorders
            or self._closed
            or self._on_owner_thread()
            or IN_RECORDER_LANE.get()
            or self._pid not in (None, os.getpid())
        ):
            return [], ()
        prefixes = tuple(dict.fromkeys(normalize_prefix(s) for s in sees))
        if () in prefixes:
            prefixes = ((),)
        with self._lock:
            return list(self._recorders), prefixes

    def _wait_recorded(self, sees: Sequence[Sequence[str]] | None, what: str) -> None:
        """Before a call that reads the memories of the scopes ``sees`` (prefixes; ``()``:
        every scope): block until the turns every recorder accepted before it, in scopes
        under them, are stored or failed (each recorder's ``search_wait_timeout`` at most;
        it logs a WARNING naming ``what`` past that)."""
        recorders, prefixes = self._recorders_to_wait_for(sees)
        started = time.monotonic()
        for rec in recorders:
            rec._wait_settled_sync(prefixes, started, what)

    async def _await_recorded(self, sees: Sequence[Sequence[str]] | None, what: str) -> None:
        """:meth:`_wait_recorded` without blocking the running event loop."""
        recorders, prefixes = self._recorders_to_wait_for(sees)
        started = time.monotonic()
        for rec in recorders:
            await rec._wait_settled(prefixes, started, what)

    def _recorder_marks(self) -> list[tuple[_Recorder, int]]:
        """Each recorder with turns not stored yet, and the ``seq`` of its next turn: a
        ``delete_scope`` called now forgets the turns they accepted before
        (:meth:`_forget_recorded`); none once closed, or in a forked child."""
        recorders, _ = self._recorders_to_wait_for(EVERY_SCOPE)
        return [(rec, rec._accepted_upto()) for rec in recorders]

    def _forget_recorded(
        self, scope: Sequence[str], marks: list[tuple[_Recorder, int]], *, mark: bool = True
    ) -> bool:
        """On the owner thread, in a ``delete_scope``'s job: the turns ``marks`` name
        in scopes under ``scope`` that are still not stored are never stored (``mark``;
        else only counted). Whether there were any."""
        prefix = normalize_prefix(scope)
        return sum(rec._forget_before(prefix, upto, mark) for rec, upto in marks) > 0

    def _on_owner_thread(self) -> bool:
        return self._owner is not None and threading.current_thread() is self._owner

    def _run(self, fn: Callable[[Core], T]) -> T:
        # Storage runs as plain code, not inside the owner's loop: an embedder or
        # index whose sync API runs an event loop of its own (asyncio.run) works.
        loop = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            # every SQLite failure leaves as a typed StorageError (disk full, corrupt, ...)
            with self._fork_gate, sqlite_errors(self.config.path / "helamem.sqlite3"):
                core = self._on_owner()
                if core.pending_index and not isinstance(fn, KeepsPending):
                    core.flush_index()  # a delete, a check, an export... sees every vector
                return fn(core)
        finally:
            asyncio.events._set_running_loop(loop)

    def _schedule_flush(self) -> None:
        """After a call left vectors pending: write them ``upsert_delay_s`` later (owner)."""
        core, loop = self._core, self._loop
        if core is None or loop is None or not core.pending_index or self._flush_timer:
            return
        self._flush_timer = loop.call_later(self.config.chroma.upsert_delay_s, self._flush_due)

    def _schedule_fold(self) -> None:
        """Once no memory came for ``lexical_index_fold_s``: fold the newest memories
        into the lexical index (owner, between calls; see ``Core.fold_lexical``)."""
        core, loop = self._core, self._loop
        if core is None or loop is None or self._fold_timer or self._finished:
            return
        due = core.lexical_fold_in()
        if due is not None:
            self._fold_timer = loop.call_later(max(due, 0.0), self._fold_due)

    def _fold_due(self) -> None:
        self._fold_timer = None
        core = self._core
        if self._finished or core is None:
            return
        due = core.lexical_fold_in()
        if due is not None and due > 0:  # a memory came meanwhile: wait on
            self._schedule_fold()
        elif due is not None:
            try:
                self._run(KeepsPending(lambda c: c.fold_lexical()))
            except StorageError as exc:  # SQLite failed: FTS5 keeps serving the tail
                logger.warning("lexical index: the newest memories not folded in: %s", exc)

    def _flush_due(self) -> None:
        self._flush_timer = None
        if not self._finished and self._core is not None:
            try:
                self._run(KeepsPending(lambda core: core.flush_index()))
            except StorageError as exc:  # SQLite failed reading or marking them
                logger.warning("pending vectors not written, will re-index on next use: %s", exc)

    def _submit(self, fn: Callable[[Core], T]) -> Future[T]:
        fut: Future[T] = Future()

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                result = self._run(fn)
            except BaseException as exc:  # noqa: BLE001 (handed to the caller, as a pool does)
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            try:
                self._learn_after()
            finally:
                self._schedule_flush()
                self._schedule_fold()

        self._call_soon(job)
        return fut

    def _learn_after(self) -> None:
        """A search's learning write, once its caller has the results: here on the
        owner thread, before any later call (so every later call sees it)."""
        core = self._core
        if core is not None and core.pending_learning and not self._finished:
            self._run(KeepsPending(lambda c: c.apply_learning()))

    def _call(
        self,
        fn: Callable[[Core], T],
        sees: Sequence[Sequence[str]] | None = EVERY_SCOPE,
        what: str = "call",
    ) -> T:
        """Run ``fn`` on the owner thread once it sees what it must (read your writes).

        Every call first waits (:meth:`_wait_recorded`) for the turns the memory's
        turn recorders accepted before it in the scopes under ``sees`` (prefixes:
        by default every scope; ``None``: no wait, for calls that read no memory),
        so whatever it reads or changes includes them. ``what`` names the call in
        the WARNING logged when that wait reaches its bound.
        """
        if self._on_owner_thread():
            try:
                return self._run(fn)
            finally:
                self._learn_after()
                self._schedule_flush()
                self._schedule_fold()
        self._wait_recorded(sees, what)
        return self._submit(fn).result()

    async def _acall(
        self,
        fn: Callable[[Core], T],
        sees: Sequence[Sequence[str]] | None = EVERY_SCOPE,
        what: str = "call",
    ) -> T:
        """:meth:`_call` awaited: it waits without blocking the running event loop."""
        await self._await_recorded(sees, what)
        return await asyncio.wrap_future(self._submit(fn))

    def open(self) -> Self:
        """Open the store now (otherwise it opens on first use)."""
        self._call(lambda c: None, None)
        return self

    async def aopen(self) -> Self:
        await self._acall(lambda c: None, None)
        return self

    def close(self) -> None:
        """Flush and release the store. Idempotent; later calls raise StoreClosedError."""
        thread = self._begin_close()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    async def aclose(self) -> None:
        thread = self._begin_close()
        if thread is not None and thread is not threading.current_thread():
            await asyncio.to_thread(thread.join)

    def _begin_close(self) -> threading.Thread | None:
        """Refuse new work; the owner runs what was submitted before, then closes and stops."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            if self._exit_token is not None:
                _exit.unregister(self._exit_token)
                _exit.unregister(self._exit_open)
            if self._loop is None:
                return None
            self._loop.call_soon_threadsafe(self._close_core)
            self._loop.call_soon_threadsafe(self._loop.stop)
            return self._owner

    def _close_core(self) -> None:
        self._finished = True
        if self._core is not None:
            with self._fork_gate:
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

"""The :class:`HelaMemory` facade: sync and async twins over one implementation.

Every operation is implemented once in :mod:`helamem.core._core` and runs on
the store's single owner thread. Sync methods wait for it; async methods
await it, so storage and embedding never run on the event loop. Input is
validated in the caller's thread first, so bad input raises before anything
is queued or written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from . import _exit
from ._core import Core, Stats, prepare
from ._maintenance import (
    ConsolidationReport,
    ForgetReport,
    apply_consolidation,
    delete_scope,
    forget,
    plan_consolidation,
)
from ._portable import ExportReport, ImportReport, export_scope, import_scope
from .config import HelaMemConfig
from .context import note_used
from .distill import Distiller, ExtractiveDistiller, LLMDistiller
from .embeddings import Embedder, create_embedder
from .errors import InvalidInputError, StoreClosedError
from .llm import LLMClient
from .storage.base import VectorIndex
from .storage.sqlite import sqlite_errors
from .tokens import TokenCount
from .types import (
    Kind,
    Memory,
    NewMemory,
    NewTurn,
    Scope,
    SearchResult,
    TimeLike,
    normalize_prefix,
    normalize_scope,
)

__all__ = ["HelaMemory", "Stats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _close_at_exit(mem: HelaMemory, started: float) -> None:
    """A store never closed is closed at interpreter exit (see :mod:`helamem.core._exit`)."""
    mem.close()


def _ids(ids: str | Iterable[str], what: str = "ids") -> list[str]:
    if isinstance(ids, str):
        return [ids]
    out = list(ids)
    if not all(isinstance(i, str) for i in out):
        raise InvalidInputError(f"{what} must be strings")
    return out


class HelaMemory:
    """Long-term memory for LLM agents: a Hebbian episodic memory graph.

    The constructor does no I/O. The store opens on first use, on
    :meth:`open`, or when entered as a (sync or async) context manager;
    :meth:`close` releases it.

    Args:
        config: Every setting; defaults work offline (``./helamem-data``,
            the bundled MiniLM embedder, an embedded Chroma).
        embedder: An :class:`~helamem.core.embeddings.Embedder` or any Chroma
            embedding function, instead of the one ``config.embedder`` names.
        vector_index: A custom :class:`~helamem.core.storage.VectorIndex`.
        llm: An :class:`~helamem.core.llm.LLMClient` for distillation instead
            of one built from ``config.llm`` (when ``config.llm.model`` is set).
        distiller: A custom distiller; default: the LLM distiller when an LLM
            is configured, else the extractive one (no model).
        reembed: Switch a store built with another embedder to this one when
            it opens: every memory is re-embedded (in batches, resumable: a
            switch cut short by a kill or an embedder error resumes on the next
            open with ``reembed=True``, and the store refuses any other open
            until then), then the vector index is rebuilt. Close every other
            process using the store first. Without it, opening a store with
            another embedder raises :class:`~helamem.core.errors.ConfigError`.

    Examples:
        >>> with HelaMemory.from_path(tmp_path) as mem:   # doctest: +SKIP
        ...     mem.add_turn(("users", "alice"), "I adopted a cat named Miso",
        ...                  "Congratulations on Miso!")
        ...     hits = mem.search("what pet does alice have?", ("users", "alice"), k=3)
        ...     print(hits.to_text())

        Switch a store to another embedder (re-embeds every memory once)::

            >>> new = HelaMemConfig(embedder=EmbedderConfig(provider="litellm",
            ...     model="text-embedding-3-small", dimension=1536))  # doctest: +SKIP
            >>> HelaMemory.from_path(tmp_path, new, reembed=True).open()  # doctest: +SKIP
    """

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
    ) -> HelaMemory:
        """A memory stored in directory ``path`` (opened on first use or ``with``).

        ``kwargs`` are the constructor's (``embedder``, ``vector_index``, ``llm``,
        ``distiller``, ``reembed``).

        Examples:
            >>> mem = HelaMemory.from_path("./helamem-data")   # no I/O yet
        """
        base = config or HelaMemConfig()
        return cls(base.model_copy(update={"path": Path(path)}), **kwargs)

    # -- lifecycle -------------------------------------------------------

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

    # -- planning (pure, caller's thread) ----------------------------------

    @staticmethod
    def _plan_add(
        content: str,
        scope: Sequence[str],
        role: str | None,
        event_time: TimeLike | None,
        metadata: dict[str, Any] | None,
        keywords: Sequence[str] | None,
    ) -> Callable[[Core], Memory]:
        p = prepare(
            NewMemory(content, scope, role, event_time, metadata, keywords), now=time.time()
        )
        return lambda c: c.ingest([[p]])[0]

    @staticmethod
    def _plan_add_many(items: Iterable[NewMemory]) -> Callable[[Core], list[Memory]]:
        now = time.time()
        prepared = []
        for i, item in enumerate(items):
            if not isinstance(item, NewMemory):
                raise InvalidInputError(
                    f"add_many item {i} must be a NewMemory, got {type(item).__name__}"
                )
            prepared.append([prepare(item, now=now)])
        return lambda c: c.ingest(prepared)

    @staticmethod
    def _plan_add_turn(
        scope: Sequence[str],
        user: str,
        assistant: str,
        event_time: TimeLike | None,
        metadata: dict[str, Any] | None,
        used_ids: Iterable[str],
    ) -> Callable[[Core], tuple[Memory, Memory]]:
        many = HelaMemory._plan_add_turns(
            [NewTurn(scope, user, assistant, event_time, metadata, _ids(used_ids, "used_ids"))]
        )
        return lambda c: many(c)[0]

    @staticmethod
    def _plan_add_turns(
        turns: Iterable[NewTurn],
    ) -> Callable[[Core], list[tuple[Memory, Memory]]]:
        now = time.time()
        groups, used = [], []
        for i, t in enumerate(turns):
            if not isinstance(t, NewTurn):
                raise InvalidInputError(
                    f"add_turns item {i} must be a NewTurn, got {type(t).__name__}"
                )
            meta = dict(t.metadata) if t.metadata is not None else None
            groups.append(
                [
                    prepare(NewMemory(t.user, t.scope, "user", t.event_time, meta), now=now),
                    prepare(
                        NewMemory(t.assistant, t.scope, "assistant", t.event_time, meta), now=now
                    ),
                ]
            )
            used.append(_ids(t.used_ids, "used_ids"))

        def run(c: Core) -> list[tuple[Memory, Memory]]:
            m = c.ingest(groups, used_ids=used)
            return [(m[i], m[i + 1]) for i in range(0, len(m), 2)]

        return run

    @staticmethod
    def _plan_search(
        query: str,
        scope: Sequence[str],
        k: int | None,
        learn: bool,
        spread: bool,
        reference_time: TimeLike | None,
        kind: Kind,
        semantic_k: int | None = None,
        max_tokens: int | None = None,
        count_tokens: TokenCount | None = None,
    ) -> Callable[[Core], SearchResult]:
        normalize_prefix(scope)  # fail fast in the caller's thread

        def run(c: Core) -> SearchResult:
            if k is not None:
                kk = k
            elif max_tokens is not None:  # the budget decides: enough candidates to fill it
                kk = max(c.config.retrieval.default_k, c.config.retrieval.candidates)
            else:
                kk = c.config.retrieval.default_k
            return c.search(
                query,
                scope,
                kk,
                learn=learn,
                spread=spread,
                reference_time=reference_time,
                kind=kind,
                semantic_k=semantic_k,
                max_tokens=max_tokens,
                count_tokens=count_tokens,
            )

        return run

    # -- sync API ----------------------------------------------------------

    def add(
        self,
        content: str,
        scope: Sequence[str],
        *,
        role: str | None = None,
        event_time: TimeLike | None = None,
        metadata: dict[str, Any] | None = None,
        keywords: Sequence[str] | None = None,
    ) -> Memory:
        """Store one episodic memory and link it to the previous one of its scope.

        Args:
            content: The text (any Unicode; up to 16 M characters).
            scope: Namespace tuple, e.g. ``("users", "alice")``.
            role: Who said it (``"user"``, ``"assistant"``...).
            event_time: When it happened (datetime or POSIX seconds); default now.
            metadata: JSON-serialisable dict kept with the memory.
            keywords: Keywords; extracted from the content when omitted.

        Raises:
            InvalidInputError: On bad content, scope, time or metadata.
            StoreClosedError: After :meth:`close`.

        Examples:
            >>> m = mem.add("Alice adopted a cat", ("users", "alice"))  # doctest: +SKIP
        """
        return self._call(self._plan_add(content, scope, role, event_time, metadata, keywords))

    def add_many(self, items: Iterable[NewMemory]) -> list[Memory]:
        """Store many memories in one batch (one embedding pass, one transaction)."""
        return self._call(self._plan_add_many(items))

    def add_turn(
        self,
        scope: Sequence[str],
        user: str,
        assistant: str,
        *,
        event_time: TimeLike | None = None,
        metadata: dict[str, Any] | None = None,
        used_ids: Iterable[str] = (),
    ) -> tuple[Memory, Memory]:
        """Store one turn (user then assistant message) as one tick of its scope.

        ``used_ids``: memories used to produce this turn; they co-activate with
        the new episodes (same scope only).
        """
        return self._call(
            self._plan_add_turn(scope, user, assistant, event_time, metadata, used_ids)
        )

    def add_turns(self, turns: Iterable[NewTurn]) -> list[tuple[Memory, Memory]]:
        """Store many turns in one batch (one embedding pass, one transaction).

        Each turn is one tick of its scope and behaves as :meth:`add_turn`;
        turns of one scope are linked in the order given.

        Examples:
            >>> mem.add_turns([NewTurn(("u", "1"), "hi", "hello")])  # doctest: +SKIP
        """
        return self._call(self._plan_add_turns(turns))

    def get(self, id: str) -> Memory:
        """The memory with ``id``; raises MemoryNotFoundError if there is none."""
        return self._call(lambda c: c.get(id))

    def delete(self, ids: str | Iterable[str]) -> int:
        """Delete memories with their edges and vectors; all or nothing."""
        ids_ = _ids(ids)
        return self._call(lambda c: c.delete(ids_))

    def search(
        self,
        query: str,
        scope: Sequence[str],
        *,
        k: int | None = None,
        learn: bool = True,
        spread: bool = True,
        reference_time: TimeLike | None = None,
        kind: Kind = "episodic",
        semantic_k: int | None = None,
        max_tokens: int | None = None,
        count_tokens: TokenCount | None = None,
    ) -> SearchResult:
        """Dual-path retrieval with spreading activation over learned edges.

        Args:
            query: What to look for.
            scope: A scope or a prefix of scopes (whole segments match:
                ``("user", "1")`` never matches ``("user", "10")``); ``()``
                searches every scope as one candidate pool.
            k: At most this many episodic hits (default
                ``config.retrieval.default_k``, or ``retrieval.candidates`` when
                only ``max_tokens`` is given). Association hits compete for
                these slots (``retrieval.selection``); hits come sorted by
                ``score``, a relevance in [0, 1].
            learn: Reinforce the returned memories together (Hebbian
                learning); ``False`` is read-only.
            spread: Spread activation over learned edges.
            reference_time: "Now" for recency; default: the newest candidate.
            kind: ``"episodic"`` or ``"semantic"``.
            semantic_k: Distilled facts returned after the episodic hits
                (provenance ``"semantic"``); default ``config.retrieval.semantic_k``.
            max_tokens: A context budget: whole hits, in order, while
                :meth:`SearchResult.to_text` stays within this many tokens
                (what is cut is neither returned nor learned from).
            count_tokens: The tokenizer for ``max_tokens`` (default:
                cl100k_base offline, :func:`helamem.core.tokens.default_counter`).

        Raises:
            InvalidInputError: A bad query, scope, k, semantic_k or max_tokens.

        Examples:
            >>> res = mem.search("pets", ("users",), k=5)   # doctest: +SKIP
            >>> [h.provenance for h in res]                 # doctest: +SKIP
            ['base', 'base', 'association']
        """
        result = self._call(
            self._plan_search(
                query,
                scope,
                k,
                learn,
                spread,
                reference_time,
                kind,
                semantic_k,
                max_tokens,
                count_tokens,
            )
        )
        note_used(result.ids)
        return result

    def reinforce(self, ids: Iterable[str]) -> int:
        """Co-activate memories explicitly (e.g. the ones an agent used)."""
        ids_ = _ids(ids)
        return self._call(lambda c: c.reinforce(ids_))

    def list_scopes(self, prefix: Sequence[str] | None = None) -> list[Scope]:
        """Scopes that hold memories, optionally under ``prefix``."""
        return self._call(lambda c: c.list_scopes(prefix))

    def decay(self, scope: Sequence[str] | None = None) -> dict[str, int]:
        """Materialise lazy decay now and prune weak edges; returns counts."""
        return self._call(lambda c: c.decay(scope))

    def stats(self, scope: Sequence[str] | None = None) -> Stats:
        """Counts of memories, edges, scopes and index state, and LLM usage."""
        return self._with_usage(self._call(lambda c: c.stats(scope)))

    def _with_usage(self, st: Stats) -> Stats:
        if self._llm is None:
            return st
        u = self._llm.usage
        return replace(
            st,
            llm_calls=u.calls,
            llm_failed_calls=u.failed_calls,
            llm_prompt_tokens=u.prompt_tokens,
            llm_completion_tokens=u.completion_tokens,
            llm_cost_usd=u.cost_usd,
        )

    def _get_distiller(self) -> Distiller:
        if self._distiller is None:
            if self._llm is None and self.config.llm.model:
                self._llm = LLMClient(self.config.llm)
            self._distiller = (
                LLMDistiller(self._llm)
                if self._llm is not None
                else ExtractiveDistiller(self.config.consolidation.extractive_facts)
            )
        return self._distiller

    def consolidate(self, scope: Sequence[str]) -> ConsolidationReport:
        """Hebbian distillation of ``scope`` (and scopes under it) into semantic facts.

        Adds similarity edges for new episodes, finds densely connected hubs,
        distils each undistilled cluster (one LLM call in all, or extractive
        without an LLM), de-duplicates against existing facts and stores the
        rest with provenance. The store is not held during the LLM call.

        Raises:
            LLMUnavailableError, LLMResponseError: The LLM failed; no fact was
                written.

        Examples:
            >>> report = mem.consolidate(("users", "alice"))   # doctest: +SKIP
            >>> report.facts_added                              # doctest: +SKIP
            3
        """
        normalize_scope(scope)
        plan = self._call(lambda c: plan_consolidation(c, scope))
        drafts = self._get_distiller().distill(plan.clusters) if plan.clusters else []
        return self._call(lambda c: apply_consolidation(c, plan, drafts))

    def forget(
        self,
        scope: Sequence[str],
        *,
        dry_run: bool = True,
        older_than_s: float | None = None,
        below: float | None = None,
        limit: int = 1000,
    ) -> ForgetReport:
        """Adaptive forgetting: weak, old, never-used episodes that no fact cites.

        Dry run by default: returns the candidates; ``dry_run=False`` deletes
        them. Age is relative to the scope's newest event.
        """
        normalize_scope(scope)
        return self._call(
            lambda c: forget(
                c, scope, dry_run=dry_run, older_than_s=older_than_s, below=below, limit=limit
            )
        )

    def delete_scope(self, scope: Sequence[str]) -> int:
        """Delete everything of ``scope`` and the scopes under it; returns memories deleted."""
        normalize_scope(scope)
        return self._call(lambda c: delete_scope(c, scope))

    async def aconsolidate(self, scope: Sequence[str]) -> ConsolidationReport:
        """Async :meth:`consolidate` (the LLM call is awaited on the event loop)."""
        normalize_scope(scope)
        plan = await self._acall(lambda c: plan_consolidation(c, scope))
        drafts = await self._get_distiller().adistill(plan.clusters) if plan.clusters else []
        return await self._acall(lambda c: apply_consolidation(c, plan, drafts))

    async def aforget(
        self,
        scope: Sequence[str],
        *,
        dry_run: bool = True,
        older_than_s: float | None = None,
        below: float | None = None,
        limit: int = 1000,
    ) -> ForgetReport:
        """Async :meth:`forget`."""
        normalize_scope(scope)
        return await self._acall(
            lambda c: forget(
                c, scope, dry_run=dry_run, older_than_s=older_than_s, below=below, limit=limit
            )
        )

    async def adelete_scope(self, scope: Sequence[str]) -> int:
        """Async :meth:`delete_scope`."""
        normalize_scope(scope)
        return await self._acall(lambda c: delete_scope(c, scope))

    def export_scope(self, scope: Sequence[str], path: str | os.PathLike[str]) -> ExportReport:
        """Write ``scope`` and the scopes under it to a JSON-lines file (a backup).

        One consistent snapshot, streamed row by row: a header (format,
        schema version, embedder, scope), then memories (ids, exact content,
        times, access counts, metadata, provenance, float32 vectors), edges,
        per-scope state and distilled clusters, then an ``end`` line. Scopes
        in the file are relative to ``scope``. The file appears atomically.
        See :mod:`helamem.core._portable` for the format.

        Args:
            scope: The scope (prefix) to export.
            path: The file to write (replaced if it exists).

        Returns:
            What was written (counts of memories, edges, scopes, clusters).

        Raises:
            InvalidInputError: The scope is malformed or the path not writable.

        Examples:
            >>> mem.export_scope(("users", "alice"), "alice.jsonl")  # doctest: +SKIP
            ExportReport(path=PosixPath('alice.jsonl'), scope=('users', 'alice'), memories=42, ...)
        """
        normalize_scope(scope)
        return self._call(lambda c: export_scope(c, scope, path))

    async def aexport_scope(
        self, scope: Sequence[str], path: str | os.PathLike[str]
    ) -> ExportReport:
        """Async :meth:`export_scope`."""
        normalize_scope(scope)
        return await self._acall(lambda c: export_scope(c, scope, path))

    def import_scope(
        self, path: str | os.PathLike[str], *, scope: Sequence[str] | None = None
    ) -> ImportReport:
        """Load a file written by :meth:`export_scope`, in one transaction.

        Ids, times, access counts, edges, scope ticks and distilled clusters
        are kept, so export, :meth:`delete_scope` and import give back the
        same memory. Vectors are reused when the file's embedder (name and
        dimension) is this store's, else recomputed; then they are indexed.

        Args:
            path: A file written by :meth:`export_scope`.
            scope: Where to put the exported scope; default: where it came from.

        Returns:
            What was written (counts, and how many vectors were recomputed).

        Raises:
            ImportConflictError: The target scope holds memories, or an id of
                the file exists already; nothing was written.
            ExportFormatError: The file is not a complete export this version
                reads; nothing was written.
            InvalidInputError: The path cannot be read or the scope is malformed.

        Examples:
            >>> mem.delete_scope(("users", "alice"))                 # doctest: +SKIP
            >>> mem.import_scope("alice.jsonl").memories             # doctest: +SKIP
            42
        """
        if scope is not None:
            normalize_scope(scope)
        return self._call(lambda c: import_scope(c, path, scope))

    async def aimport_scope(
        self, path: str | os.PathLike[str], *, scope: Sequence[str] | None = None
    ) -> ImportReport:
        """Async :meth:`import_scope`."""
        if scope is not None:
            normalize_scope(scope)
        return await self._acall(lambda c: import_scope(c, path, scope))

    def reindex(self, *, reembed: bool = False) -> int:
        """Rebuild the vector index from SQLite; ``reembed`` recomputes every vector.

        Both use this store's own embedder; to switch to another embedder open
        the store with it and ``reembed=True`` (see the constructor).

        Returns:
            The memories indexed.
        """
        return self._call(lambda c: c.reindex(reembed))

    @property
    def reembedded(self) -> int | None:
        """Memories re-embedded when this store opened with ``reembed=True`` and
        switched embedders; ``None`` when nothing was switched (or not open yet)."""
        core = self._core
        return None if core is None else core.reembedded

    # -- async API ---------------------------------------------------------

    async def aadd(
        self,
        content: str,
        scope: Sequence[str],
        *,
        role: str | None = None,
        event_time: TimeLike | None = None,
        metadata: dict[str, Any] | None = None,
        keywords: Sequence[str] | None = None,
    ) -> Memory:
        """Async :meth:`add`."""
        return await self._acall(
            self._plan_add(content, scope, role, event_time, metadata, keywords)
        )

    async def aadd_many(self, items: Iterable[NewMemory]) -> list[Memory]:
        """Async :meth:`add_many`."""
        return await self._acall(self._plan_add_many(items))

    async def aadd_turn(
        self,
        scope: Sequence[str],
        user: str,
        assistant: str,
        *,
        event_time: TimeLike | None = None,
        metadata: dict[str, Any] | None = None,
        used_ids: Iterable[str] = (),
    ) -> tuple[Memory, Memory]:
        """Async :meth:`add_turn`."""
        return await self._acall(
            self._plan_add_turn(scope, user, assistant, event_time, metadata, used_ids)
        )

    async def aadd_turns(self, turns: Iterable[NewTurn]) -> list[tuple[Memory, Memory]]:
        """Async :meth:`add_turns`."""
        return await self._acall(self._plan_add_turns(turns))

    async def aget(self, id: str) -> Memory:
        """Async :meth:`get`."""
        return await self._acall(lambda c: c.get(id))

    async def adelete(self, ids: str | Iterable[str]) -> int:
        """Async :meth:`delete`."""
        ids_ = _ids(ids)
        return await self._acall(lambda c: c.delete(ids_))

    async def asearch(
        self,
        query: str,
        scope: Sequence[str],
        *,
        k: int | None = None,
        learn: bool = True,
        spread: bool = True,
        reference_time: TimeLike | None = None,
        kind: Kind = "episodic",
        semantic_k: int | None = None,
        max_tokens: int | None = None,
        count_tokens: TokenCount | None = None,
    ) -> SearchResult:
        """Async :meth:`search`."""
        result = await self._acall(
            self._plan_search(
                query,
                scope,
                k,
                learn,
                spread,
                reference_time,
                kind,
                semantic_k,
                max_tokens,
                count_tokens,
            )
        )
        note_used(result.ids)
        return result

    async def areinforce(self, ids: Iterable[str]) -> int:
        """Async :meth:`reinforce`."""
        ids_ = _ids(ids)
        return await self._acall(lambda c: c.reinforce(ids_))

    async def alist_scopes(self, prefix: Sequence[str] | None = None) -> list[Scope]:
        """Async :meth:`list_scopes`."""
        return await self._acall(lambda c: c.list_scopes(prefix))

    async def adecay(self, scope: Sequence[str] | None = None) -> dict[str, int]:
        """Async :meth:`decay`."""
        return await self._acall(lambda c: c.decay(scope))

    async def astats(self, scope: Sequence[str] | None = None) -> Stats:
        """Async :meth:`stats`."""
        return self._with_usage(await self._acall(lambda c: c.stats(scope)))

    async def areindex(self, *, reembed: bool = False) -> int:
        """Async :meth:`reindex`."""
        return await self._acall(lambda c: c.reindex(reembed))

"""The :class:`HelaMemory` facade: sync and async twins over one implementation.

Every operation is implemented once in :mod:`helamem.core._core` and runs on
the store's single owner thread (:mod:`._owner`); upkeep lives in
:mod:`._engine_upkeep`. Sync methods wait for it; async methods
await it, so storage and embedding never run on the event loop. Input is
validated in the caller's thread first, so bad input raises before anything
is queued or written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ._args import check_revive, ids_arg, limit_arg, metadata_fields, unique_fields
from ._core import Core, Stats, prepare
from ._engine_upkeep import UpkeepMethods
from ._owner import KeepsPending
from .context import note_used
from .errors import InvalidInputError
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
)

__all__ = ["HelaMemory", "Stats"]

logger = logging.getLogger(__name__)


def _under(scope: Sequence[str] | None) -> tuple[Sequence[str]]:
    """What a call of ``scope`` (``None`` or ``()``: every scope) sees of the recorded turns."""
    return (() if scope is None else scope,)


class HelaMemory(UpkeepMethods):
    """Long-term memory for LLM agents: a Hebbian episodic memory graph.

    The constructor does no I/O. The store opens on first use, on
    :meth:`open`, or when entered as a (sync or async) context manager;
    :meth:`close` releases it. A relative ``config.path`` is taken against
    the working directory at construction (``config.path`` then holds it made
    absolute): a later ``os.chdir`` moves no part of the store.

    Every call (reads, adds, deletes, upkeep; sync or async) sees the turns a
    :class:`~helamem.core.hooks.TurnRecorder` of this memory accepted before
    it in the scopes it touches (under a prefix; every scope for a call by
    id): it first waits until they are stored or failed (not for their
    consolidations), at most each recorder's ``search_wait_timeout``
    (default 10 s; past it, it logs a WARNING and goes on). A call on the
    owner thread (an overridden ``aconsolidate``) never waits.

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
        ...     hits = mem.search("what is the name of alice's kitten?", ("users", "alice"), k=3)
        ...     print(hits.to_text())

        Switch a store to another embedder (re-embeds every memory once)::

            >>> new = HelaMemConfig(embedder=EmbedderConfig(provider="litellm",
            ...     model="text-embedding-3-small", dimension=1536))  # doctest: +SKIP
            >>> HelaMemory.from_path(tmp_path, new, reembed=True).open()  # doctest: +SKIP
    """

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
        return KeepsPending(lambda c: c.ingest([[p]])[0])

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
        return KeepsPending(lambda c: c.ingest(prepared))

    @staticmethod
    def _plan_add_turn(
        scope: Sequence[str],
        user: str,
        assistant: str,
        event_time: TimeLike | None,
        metadata: dict[str, Any] | None,
        used_ids: Iterable[str],
        unique_on: Sequence[str] = (),
        revive: bool = False,
    ) -> Callable[[Core], tuple[Memory, Memory]]:
        ids = ids_arg(used_ids, "used_ids")
        many = HelaMemory._plan_add_turns(
            [NewTurn(scope, user, assistant, event_time, metadata, ids, unique_on, revive)]
        )
        return KeepsPending(lambda c: many(c)[0])

    @staticmethod
    def _plan_add_turns(
        turns: Iterable[NewTurn],
    ) -> Callable[[Core], list[tuple[Memory, Memory]]]:
        now = time.time()
        groups, used = [], []
        unique: list[dict[str, str] | None] = []
        revive: list[bool] = []
        for i, t in enumerate(turns):
            if not isinstance(t, NewTurn):
                raise InvalidInputError(
                    f"add_turns item {i} must be a NewTurn, got {type(t).__name__}"
                )
            revive.append(check_revive(t.revive))
            meta = dict(t.metadata) if t.metadata is not None else None
            unique.append(unique_fields(t.unique_on, meta))
            groups.append(
                [
                    prepare(NewMemory(t.user, t.scope, "user", t.event_time, meta), now=now),
                    prepare(
                        NewMemory(t.assistant, t.scope, "assistant", t.event_time, meta), now=now
                    ),
                ]
            )
            used.append(ids_arg(t.used_ids, "used_ids"))

        def run(c: Core) -> list[tuple[Memory, Memory]]:
            m = c.ingest(groups, used_ids=used, unique=unique, revive=revive, turns=True)
            return [(m[i], m[i + 1]) for i in range(0, len(m), 2)]

        return KeepsPending(run)

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

        return KeepsPending(run)

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
            metadata: JSON-serialisable dict kept with the memory (the keys
                ``"_helamem_clusters"`` and ``"_helamem_drawn"`` are reserved:
                InvalidInputError).
            keywords: Keywords; extracted from the content when omitted.

        Raises:
            InvalidInputError: On bad content, scope, time or metadata.
            StoreClosedError: After :meth:`close`.

        Examples:
            >>> m = mem.add("Alice adopted a cat", ("users", "alice"))  # doctest: +SKIP
        """
        plan = self._plan_add(content, scope, role, event_time, metadata, keywords)
        return self._call(plan, (scope,), "add")

    def add_many(self, items: Iterable[NewMemory]) -> list[Memory]:
        """Store many memories in one batch (one embedding pass, one transaction)."""
        items = list(items)
        plan = self._plan_add_many(items)
        return self._call(plan, [i.scope for i in items], "add_many")

    def add_turn(
        self,
        scope: Sequence[str],
        user: str,
        assistant: str,
        *,
        event_time: TimeLike | None = None,
        metadata: dict[str, Any] | None = None,
        used_ids: Iterable[str] = (),
        unique_on: Sequence[str] = (),
        revive: bool = False,
    ) -> tuple[Memory, Memory]:
        """Store one turn (user then assistant message) as one tick of its scope.

        ``used_ids``: memories used to produce this turn; they co-activate with
        the new episodes (same scope only).

        ``unique_on``: keys of ``metadata`` (plain identifiers with str values)
        that identify the turn, as an idempotency key stored with it: when a turn
        of this scope (not a sub-scope) was stored with the same ``unique_on``
        values, nothing is stored or learned and the stored pair is returned (the
        newest copy's); nor is a turn of a key deleted (forgotten, by any process:
        a deleted half is returned as given, never stored) unless ``revive``: a
        caller that knows the turn was just completed, not replayed from a saved
        history. The check is an index lookup in the write transaction, so racing
        processes store a turn once.

        Raises:
            InvalidInputError: bad text, scope, time or metadata, or a
                ``unique_on`` key missing from ``metadata`` or without a str value.
        """
        plan = self._plan_add_turn(
            scope, user, assistant, event_time, metadata, used_ids, unique_on, revive
        )
        return self._call(plan, (scope,), "add_turn")

    def add_turns(self, turns: Iterable[NewTurn]) -> list[tuple[Memory, Memory]]:
        """Store many turns in one batch (one embedding pass, one transaction).

        Each turn is one tick of its scope and behaves as :meth:`add_turn`;
        turns of one scope are linked in the order given.

        Examples:
            >>> mem.add_turns([NewTurn(("u", "1"), "hi", "hello")])  # doctest: +SKIP
        """
        turns = list(turns)
        plan = self._plan_add_turns(turns)
        return self._call(plan, [t.scope for t in turns], "add_turns")

    def get(self, id: str) -> Memory:
        """The memory with ``id``; raises MemoryNotFoundError if there is none."""
        return self._call(KeepsPending(lambda c: c.get(id)), what="get")

    def delete(self, ids: str | Iterable[str]) -> int:
        """Delete memories with their edges and vectors; all or nothing.

        The facts resting on a deleted episode (citing it, or written by a
        distiller that was shown it: they may repeat its content) are deleted with
        it, and their clusters distilled again later.

        Returns:
            The number of distinct ids deleted; the facts deleted along with them
            are not counted (``stats()`` shows them gone).

        Raises:
            MemoryNotFoundError: An id is not a memory (nothing was deleted).
        """
        ids_ = ids_arg(ids)
        return self._call(lambda c: c.delete(ids_), what="delete")

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

        It sees every turn a :class:`~helamem.core.hooks.TurnRecorder`
        accepted before the call in the scopes it searches (the scope, or
        every scope under the prefix), as every call does (see the class).

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
            learn: Reinforce the best ``retrieval.learn_top`` returned
                memories together (all of them when 0) and count their
                accesses (Hebbian learning); ``False`` is read-only. The
                write runs on the store's owner thread right after the hits
                are handed back, before any later call on this memory runs
                (each sees it; ``close()`` writes one still pending): a
                caller whose next call comes at once waits for it there (up
                to ``busy_timeout_s`` while another writer holds the store).
                Another ``HelaMemory`` or process sees it once written, a few
                milliseconds after the search returned. A write that fails (a
                full disk, a lock timeout) is logged and dropped, not
                retried: it never fails the search it came from.
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
            StorageError: The store could not be read (``CorruptStoreError``,
                ``IndexLockedError``, ... name their fix).
            StoreClosedError: After :meth:`close`.

        Examples:
            >>> res = mem.search("pets", ("users",), k=5)   # doctest: +SKIP
            >>> [h.provenance for h in res]                 # doctest: +SKIP
            ['base', 'base', 'association']
        """
        plan = self._plan_search(
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
        result = self._call(plan, (scope,), "search")
        note_used(result.ids)
        return result

    @staticmethod
    def _plan_find_ids(
        scope: Sequence[str], metadata: Mapping[str, str], limit: int | None
    ) -> Callable[[Core], list[str]]:
        normalize_prefix(scope)  # fail fast in the caller's thread
        fields, lim = metadata_fields(metadata), limit_arg(limit)
        return KeepsPending(lambda c: c.find_ids(scope, fields, lim))

    def find_ids(
        self, scope: Sequence[str], *, metadata: Mapping[str, str], limit: int | None = None
    ) -> list[str]:
        """Ids of the memories whose metadata holds every given key with that value.

        An exact match on top-level metadata keys (string values only: a
        number, boolean or nested value never equals a string), over episodes
        and facts alike. It sees the turns recorded before it (see the class).

        Args:
            scope: A scope or a prefix of scopes (whole segments; ``()``: every
                scope).
            metadata: At least one ``key: value`` pair; each key a plain
                identifier (letters, digits, ``_``), each value a ``str``.
            limit: At most this many ids (an int >= 1); ``None``: all.

        Returns:
            The matching ids, oldest first (insertion order); ``[]`` when
            none match or the scope holds nothing.

        Raises:
            InvalidInputError: A bad scope, metadata or limit.
            StorageError: The store could not be read.
            StoreClosedError: After :meth:`close`.

        Examples:
            >>> mem.add("hi", ("u",), metadata={"session": "s1"})   # doctest: +SKIP
            >>> mem.find_ids(("u",), metadata={"session": "s1"})    # doctest: +SKIP
            ['01J...']
        """
        return self._call(self._plan_find_ids(scope, metadata, limit), (scope,), "find_ids")

    def reinforce(self, ids: Iterable[str]) -> int:
        """Co-activate memories explicitly (e.g. the ones an agent used): every pair of
        ``ids`` within one scope; memories of different scopes are never linked.

        Returns:
            The number of pairs updated (0 when no two ids share a scope).

        Raises:
            MemoryNotFoundError: An id names no memory (deleted or never added);
                nothing is reinforced.
        """
        ids_ = ids_arg(ids)
        return self._call(KeepsPending(lambda c: c.reinforce(ids_)), what="reinforce")

    def list_scopes(self, prefix: Sequence[str] | None = None) -> list[Scope]:
        """Scopes that hold memories, optionally under ``prefix`` (``None`` or ``()``:
        every scope, as ``()`` is in :meth:`search`)."""
        return self._call(
            KeepsPending(lambda c: c.list_scopes(prefix)), _under(prefix), "list_scopes"
        )

    def decay(self, scope: Sequence[str] | None = None) -> dict[str, int]:
        """Materialise lazy decay now and prune weak edges (of ``scope`` and the scopes
        under it; ``None`` or ``()``: every scope); returns counts."""
        return self._call(lambda c: c.decay(scope), _under(scope), "decay")

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
        """Async :meth:`add`.

        Cancelling it (``asyncio.wait_for``, a cancelled task) before the owner
        thread starts the write stores nothing; once started, the write runs to
        the end and is stored, though the caller gets ``CancelledError`` (or
        ``TimeoutError``). To retry such a call safely, give memories their own
        ids (``NewMemory(id=...)``): a retry of a stored one raises
        ``InvalidInputError`` instead of storing it twice.
        """
        plan = self._plan_add(content, scope, role, event_time, metadata, keywords)
        return await self._acall(plan, (scope,), "aadd")

    async def aadd_many(self, items: Iterable[NewMemory]) -> list[Memory]:
        """Async :meth:`add_many`.

        Cancelled: as :meth:`aadd` (stored once the owner thread started it).
        """
        items = list(items)
        plan = self._plan_add_many(items)
        return await self._acall(plan, [i.scope for i in items], "aadd_many")

    async def aadd_turn(
        self,
        scope: Sequence[str],
        user: str,
        assistant: str,
        *,
        event_time: TimeLike | None = None,
        metadata: dict[str, Any] | None = None,
        used_ids: Iterable[str] = (),
        unique_on: Sequence[str] = (),
        revive: bool = False,
    ) -> tuple[Memory, Memory]:
        """Async :meth:`add_turn`.

        Cancelled: as :meth:`aadd` (stored once the owner thread started it).
        """
        plan = self._plan_add_turn(
            scope, user, assistant, event_time, metadata, used_ids, unique_on, revive
        )
        return await self._acall(plan, (scope,), "aadd_turn")

    async def aadd_turns(self, turns: Iterable[NewTurn]) -> list[tuple[Memory, Memory]]:
        """Async :meth:`add_turns`.

        Cancelled: as :meth:`aadd` (stored once the owner thread started it).
        """
        turns = list(turns)
        plan = self._plan_add_turns(turns)
        return await self._acall(plan, [t.scope for t in turns], "aadd_turns")

    async def aget(self, id: str) -> Memory:
        """Async :meth:`get`."""
        return await self._acall(KeepsPending(lambda c: c.get(id)), what="aget")

    async def adelete(self, ids: str | Iterable[str]) -> int:
        """Async :meth:`delete`."""
        ids_ = ids_arg(ids)
        return await self._acall(lambda c: c.delete(ids_), what="adelete")

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
        """Async :meth:`search`.

        Sees the turns recorded before it as :meth:`search` does, waiting
        for them without blocking the event loop (as every async twin does).

        Cancelling it (``asyncio.wait_for``, a cancelled task) before the owner
        thread starts the search cancels it; once started, the search runs to
        the end on the owner thread, and with ``learn=True`` it learns, though
        the caller never sees its hits.
        """
        plan = self._plan_search(
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
        result = await self._acall(plan, (scope,), "asearch")
        note_used(result.ids)
        return result

    async def afind_ids(
        self, scope: Sequence[str], *, metadata: Mapping[str, str], limit: int | None = None
    ) -> list[str]:
        """Async :meth:`find_ids` (waits for recorded turns without blocking the event loop)."""
        plan = self._plan_find_ids(scope, metadata, limit)
        return await self._acall(plan, (scope,), "afind_ids")

    async def areinforce(self, ids: Iterable[str]) -> int:
        """Async :meth:`reinforce`."""
        ids_ = ids_arg(ids)
        return await self._acall(KeepsPending(lambda c: c.reinforce(ids_)), what="areinforce")

    async def alist_scopes(self, prefix: Sequence[str] | None = None) -> list[Scope]:
        """Async :meth:`list_scopes`."""
        plan = KeepsPending(lambda c: c.list_scopes(prefix))
        return await self._acall(plan, _under(prefix), "alist_scopes")

    async def adecay(self, scope: Sequence[str] | None = None) -> dict[str, int]:
        """Async :meth:`decay`."""
        return await self._acall(lambda c: c.decay(scope), _under(scope), "adecay")

    async def areindex(self, *, reembed: bool = False) -> int:
        """Async :meth:`reindex`."""
        return await self._acall(lambda c: c.reindex(reembed), what="areindex")

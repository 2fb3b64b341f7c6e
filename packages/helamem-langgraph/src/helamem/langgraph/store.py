"""``HelaMemStore``: a LangGraph ``BaseStore`` whose ``search(query=...)`` is Hebbian retrieval.

Each item lives twice, by role:

* the **document** (namespace, key, JSON value, timestamps, TTL) is kept in a
  LangGraph document store, by default LangGraph's ``SqliteStore`` in the
  memory's data directory. It is the source of truth for gets, listings,
  namespaces and TTL, and it names, in a reserved field (never returned), the
  one memory that indexes it;
* the **memory** (the indexed text, in the HeLa-Mem scope equal to the
  namespace) answers natural-language search.

This module translates LangGraph operations into plans over the two; how
writes keep them in agreement under any interleaving or kill is in
:mod:`helamem.langgraph._writes`, filters and paging in
:mod:`helamem.langgraph._filters`, recorded memories (turns, facts) as items
in :mod:`helamem.langgraph._recorded`, the ranked items of a query search in
:mod:`helamem.langgraph._ranking`, and the TTL sweeper in
:mod:`helamem.langgraph._ttl`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from helamem.core import (
    HelaMemory,
    InvalidInputError,
    MemoryNotFoundError,
    StoreClosedError,
    is_blank,
)
from langgraph.config import get_config
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)
from langgraph.store.sqlite import SqliteStore

from ._filters import matches, select_namespaces
from ._index import index_fields
from ._journal import Journal
from ._ops import (
    Call,
    Docs,
    Forget,
    Learn,
    Plan,
    Req,
    Search,
    Write,
    check_op,
    deferred,
    item_at,
    public,
    searched,
)
from ._ranking import RankedSearch
from ._recorded import addressable, recorded_at, recorded_items, recorded_namespaces
from ._ttl import TTLSweeper
from ._writes import ID_FIELD, JOURNAL, JournaledWrites, RepairReport, named_id

__all__ = ["ID_FIELD", "HelaMemStore", "RepairReport"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_CHUNK = 256  # documents read per page while filtering a listing
_ALL = 2**62  # "no limit" for the document store's listings


class HelaMemStore(RankedSearch, JournaledWrites, TTLSweeper, BaseStore):
    """LangGraph long-term memory store backed by HeLa-Mem.

    Namespaces are HeLa-Mem scopes. ``put`` embeds the values at the item's
    ``index`` paths, else the store's (``index={"fields": [...]}`` or
    ``fields=``, default ``["$"]``: every value of the item, not its JSON);
    ``index=False`` stores the document only. ``search(ns, query=...)``
    returns, like LangGraph's stores, the items under the prefix that match
    the filter, best first: the indexed ones ranked by Hebbian retrieval with
    their relevance as ``score`` (in [0, 1], one absolute scale; see
    :attr:`helamem.core.Hit.score`), then the unindexed ones with
    ``score=None``; ``offset``/``limit`` page that sequence. Filters mean
    the same with and without a query (``InMemoryStore``'s semantics; see
    :mod:`helamem.langgraph._filters`). Puts create no temporal edges; the
    best ``config.retrieval.learn_top`` items of a page co-activate, and
    inside a graph the page's ids are kept for the running thread so
    :class:`~helamem.langgraph.HelaMemCheckpointer` records them with the
    turn.

    ``batch`` answers every read from the state before the batch and then
    applies its writes as one journaled write (the last write of a key wins),
    as LangGraph's stores do. With ``recorded=True`` (default), memories that
    are not documents (recorded turns, distilled facts) are items too: keyed
    by memory id in their scope, gettable, deletable and listed (see
    :mod:`helamem.langgraph._recorded`); ``recorded=False`` leaves them out of
    every read.

    Writes are serialised per memory path and journaled, so that no
    interleaving and no kill loses an acknowledged item or leaves an orphan
    memory (see :mod:`helamem.langgraph._writes`). The constructor does no
    I/O. After :meth:`close` every call raises ``StoreClosedError``.

    Args:
        memory: The HeLa-Mem memory holding the searchable memories.
        documents: Any LangGraph store to keep documents in (e.g.
            ``InMemoryStore()``); default a ``SqliteStore`` at
            ``<memory path>/langgraph-store.sqlite``. Every store object on
            one memory path must use the same one.
        index: LangGraph's index configuration; its ``fields`` (or
            ``text_fields``) are the default paths. ``embed``/``dims`` are
            not used: the memory's embedder embeds.
        fields: Default paths to embed (same as ``index={"fields": ...}``).
        ttl: LangGraph ``TTLConfig`` for the default document store.
        filter_overfetch: With a query and a ``filter``, how many times
            ``offset + limit`` memories to retrieve first (more are fetched
            until the page is full or the prefix is exhausted).
        recorded: Whether recorded memories are items (see above).
        spread: Whether query search spreads activation over learned edges.

    Examples:
        >>> store = HelaMemStore(HelaMemory.from_path("./helamem-data"))  # doctest: +SKIP
        >>> store.put(("users", "alice"), "pet", {"text": "Alice has a cat"})  # doctest: +SKIP
        >>> [i.key for i in store.search(("users",), query="alice's pet")]  # doctest: +SKIP
        ['pet']
    """

    def __init__(
        self,
        memory: HelaMemory,
        *,
        documents: BaseStore | None = None,
        index: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
        ttl: TTLConfig | None = None,
        filter_overfetch: int = 4,
        max_threads: int = 1024,
        recorded: bool = True,
        spread: bool = True,
    ) -> None:
        if documents is not None and ttl is not None:
            raise InvalidInputError("pass ttl to your documents store, not to HelaMemStore")
        if filter_overfetch < 1:
            raise InvalidInputError(f"filter_overfetch must be >= 1, got {filter_overfetch}")
        self.memory = memory
        self.fields = index_fields(fields, index)
        self.index_config = dict(index) if index else None
        self.filter_overfetch = filter_overfetch
        self.recorded = recorded
        self.spread = spread
        self._documents = documents
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self._stale_left = False  # swept documents whose memories are not deleted yet
        self._journal = Journal(Path(memory.config.path) / JOURNAL)
        self._settled_once = False
        self._closed = False
        self._busy = 0  # sections using the document store or the journal now
        self._idle = threading.Condition()
        self._used: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._max_threads = max_threads
        self.ttl_config = documents.ttl_config if documents is not None else ttl
        self.supports_ttl = documents.supports_ttl if documents is not None else True

    # -- lifecycle --------------------------------------------------------------

    @property
    def documents(self) -> BaseStore:
        """The document store (opened now if it is the default one).

        Raises:
            StoreClosedError: After :meth:`close`.
        """
        self._check_open()
        with self._lock:
            if self._documents is not None:
                return self._documents
        # SqliteStore's setup (its migrations) races with other connections: under the
        # writer lock (taken before self._lock, as everywhere)
        with self._journal.held(), self._lock:
            if self._documents is None:
                path = Path(self.memory.config.path)
                path.mkdir(parents=True, exist_ok=True)
                docs = self._stack.enter_context(
                    SqliteStore.from_conn_string(
                        str(path / "langgraph-store.sqlite"), ttl=self.ttl_config
                    )
                )
                docs.setup()
                self._documents = docs
            return self._documents

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(
                "this HelaMemStore is closed; use the store inside its `with` block, or open "
                "a new one: HelaMemStore(memory) (compile the graph with it again)"
            )

    @contextmanager
    def _section(self) -> Iterator[None]:
        """A blocking step that uses the document store or the journal (run on a
        thread, never awaiting the event loop): :meth:`close` waits for the sections
        under way before it closes them; one starting after ``close`` raises
        ``StoreClosedError``. (Closing SQLite's connection under another thread's
        statement crashed the process; a journal descriptor closed under a writer
        could be reused by another file.)"""
        with self._idle:
            self._check_open()
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` inside a :meth:`_section` (for ``asyncio.to_thread``)."""
        with self._section():
            return fn(*args)

    def close(self) -> None:
        """Stop the TTL sweeper, wait for the store's steps under way on other threads
        (a put's write, a read of the documents), then close the default document store
        and the journal (idempotent); the memory stays open. Later calls raise
        ``StoreClosedError``."""
        with self._idle:
            self._closed = True
        self._stop_sweeper(None)
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0)
        self._stack.close()
        self._journal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def repair(self) -> RepairReport:
        """See :meth:`JournaledWrites.repair <helamem.langgraph._writes.JournaledWrites.repair>`
        (``close`` waits for it).

        Raises:
            StoreClosedError: After :meth:`close`.
            StorageError: If the memory store cannot be read or written.
        """
        with self._section():
            return super().repair()

    def sweep_ttl(self) -> int:
        """Delete expired documents now, and then their memories (with the facts
        that cite them); returns how many documents.

        Raises:
            NotImplementedError: If the document store has no ``sweep_ttl``.
            StoreClosedError: After :meth:`close`.
        """
        return self._sweep_now()

    async def asweep_ttl(self) -> int:
        """Async :meth:`sweep_ttl` (``AsyncSqliteStore.sweep_ttl``)."""
        return await asyncio.to_thread(self._sweep_now)

    def _sweep_now(self) -> int:
        with self._section():
            sweep = getattr(self.documents, "sweep_ttl", None)
            if sweep is None:
                raise NotImplementedError(
                    f"{type(self.documents).__name__} cannot sweep TTLs; use the default "
                    "SqliteStore"
                )
            swept = int(sweep())
            if swept or self._stale_left:  # (a cleanup that failed is tried again)
                self._stale_left = True
                self.drop_stale()
                self._stale_left = False
            return swept

    # -- thread attribution ---------------------------------------------------

    def take_used(self, thread_id: str) -> list[str]:
        """Ids that searches in graph thread ``thread_id`` returned since the last call."""
        with self._lock:
            return list(self._used.pop(thread_id, {}))

    def _note_thread(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        try:
            config = get_config()
        except RuntimeError:  # not inside a graph run
            return
        thread = config.get("configurable", {}).get("thread_id")
        if thread is None:
            return
        with self._lock:
            used = self._used.setdefault(str(thread), {})
            self._used.move_to_end(str(thread))
            used.update(dict.fromkeys(ids))
            while len(self._used) > self._max_threads:
                self._used.popitem(last=False)

    # -- batch ------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Answer the reads from one state before the batch, then apply its writes.

        Results line up with ``ops``. The reads hold the writer lock shared (see
        :mod:`helamem.langgraph._journal`): no write of this path, from any thread,
        store object or process, lands between them.

        Raises:
            StoreClosedError: After :meth:`close`.
        """
        self._check_open()
        plan = self._plan(list(ops))
        self._guarded(self._before_reads)
        write, later, result = self._reads(plan)
        for req in later:
            self._guarded(self._run, req)
        if write is not None:
            try:
                plan.send(self._guarded(self._run, write))
            except StopIteration as done:
                result = done.value
        assert result is not None
        return result

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async :meth:`batch`: never blocks the event loop. The reads run on one thread
        (holding the read lock, they need no other: writers waiting for the lock may
        take every thread of the loop's executor)."""
        self._check_open()
        plan = self._plan(list(ops))
        await asyncio.to_thread(self._guarded, self._before_reads)
        write, later, result = await asyncio.to_thread(self._reads, plan)
        for req in later:
            await self._arun(req)
        if write is not None:
            try:
                plan.send(await self._arun(write))
            except StopIteration as done:
                result = done.value
        assert result is not None
        return result

    def _reads(
        self, plan: Plan[list[Result]]
    ) -> tuple[Write | None, list[Req], list[Result] | None]:
        """Run ``plan``'s reads under the read lock (blocking): its write, the requests
        left for after the reads, and its results when it writes nothing."""
        later: list[Req] = []
        with self._journal.reading():
            try:
                req = next(plan)
                while not isinstance(req, Write):
                    answer = None if deferred(req, later) else self._guarded(self._run, req)
                    req = plan.send(answer)
                return req, later, None
            except StopIteration as done:
                return None, later, done.value

    def _before_reads(self) -> None:
        """What takes the writer lock, done before the reads hold it shared: settling an
        interrupted writer's journal (first use), opening the default document store."""
        if not self._settled_once:
            self._settle_pending()
        self.documents  # noqa: B018 - its setup takes the writer lock

    def _run(self, req: Req) -> Any:
        m = self.memory
        if isinstance(req, Docs):
            return self.documents.batch(req.ops)
        if isinstance(req, Write):
            return self._write(req.ops)
        if isinstance(req, Call):
            return req.fn()
        if isinstance(req, Search):
            return list(m.search(req.query, req.prefix or (), **self._search_args(req)))
        if isinstance(req, Learn):
            try:
                m.reinforce(req.ids)
            except MemoryNotFoundError:
                logger.debug("skipped learning: a returned memory was deleted meanwhile")
            return None
        return self._forget_stale(req.stale)

    def _search_args(self, req: Search) -> dict[str, Any]:
        """The core search of one kind, read-only (the page learns); a prefix of ``()``
        ranks every scope in one pool. Facts are asked for on their own
        (``kind="semantic"``: as many as asked, no relevance floor), never beside episodes."""
        return {
            "k": req.k,
            "kind": req.kind,
            "semantic_k": 0,
            "learn": False,
            "spread": self.spread,
        }

    async def _arun(self, req: Req) -> Any:
        m = self.memory
        if isinstance(req, Docs):
            if self._documents is None or isinstance(self._documents, SqliteStore):
                # SqliteStore is sync-only
                return await asyncio.to_thread(self._guarded, lambda: self.documents.batch(req.ops))
            self._check_open()
            return await self._documents.abatch(req.ops)
        if isinstance(req, Write):  # blocks on the writer lock: off the event loop
            return await asyncio.to_thread(self._guarded, self._write, req.ops)
        if isinstance(req, Call):
            return await asyncio.to_thread(self._guarded, req.fn)
        if isinstance(req, Search):
            return list(await m.asearch(req.query, req.prefix or (), **self._search_args(req)))
        if isinstance(req, Learn):
            try:
                await m.areinforce(req.ids)
            except MemoryNotFoundError:
                logger.debug("skipped learning: a returned memory was deleted meanwhile")
            return None
        return await asyncio.to_thread(self._guarded, self._forget_stale, req.stale)

    # -- planning (pure translation; executors above do the I/O) -----------------

    def _plan(self, ops: list[Op]) -> Plan[list[Result]]:
        """Every read against the state before the batch, in order; then one write."""
        for op in ops:
            check_op(op, self.supports_ttl, self._documents)
        results: list[Result] = [None] * len(ops)
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            got = yield from self._get([op for _, op in gets])
            for (i, _), item in zip(gets, got, strict=True):
                results[i] = item
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp):
                # a query with nothing to search by (blank) lists, as no query does
                ranked = bool(op.query) and not is_blank(op.query or "")
                results[i] = yield from (self._query(op) if ranked else self._listing(op))
            elif isinstance(op, ListNamespacesOp):
                results[i] = yield from self._namespaces(op)
        puts = [op for op in ops if isinstance(op, PutOp)]
        if puts:
            yield Write(puts)
        return results

    def _get(self, ops: list[GetOp]) -> Plan[list[Item | None]]:
        got = yield Docs(list(ops))
        out: list[Item | None] = [public(d) if isinstance(d, Item) else None for d in got]
        if self.recorded:
            for n, op in enumerate(ops):
                if out[n] is None:
                    out[n] = yield Call(partial(recorded_at, self.memory, op.namespace, op.key))
        return out

    def _namespaces(self, op: ListNamespacesOp) -> Plan[list[tuple[str, ...]]]:
        """Sorted as tuples, then paged, as ``InMemoryStore``, whatever the document
        store's order (``SqliteStore`` sorts the dotted text: ``("a-1",)`` before
        ``("a", "x")``) and with or without recorded namespaces."""
        everything = ListNamespacesOp(match_conditions=op.match_conditions, limit=_ALL)
        docs: list[tuple[str, ...]] = (yield Docs([everything]))[0]
        mine: set[tuple[str, ...]] = set()
        if self.recorded:
            mine = yield Call(lambda: recorded_namespaces(self.memory))
        return select_namespaces(
            set(docs) | mine, op.match_conditions, op.max_depth, op.limit, op.offset
        )

    def _matching_docs(
        self, prefix: tuple[str, ...], flt: Mapping[str, Any] | None, n: int, scoreless: bool
    ) -> Plan[tuple[list[Item], bool]]:
        """The first ``n`` documents under ``prefix`` (the document store's order) that
        match ``flt`` (only unindexed ones if ``scoreless``), and whether those were all."""
        out: list[Item] = []
        offset = 0
        plain = not flt and not scoreless
        while len(out) < n:
            size = n - len(out) if plain else max(_CHUNK, n)
            op = SearchOp(prefix, None, limit=size, offset=offset, refresh_ttl=False)
            page: list[Item] = (yield Docs([op]))[0]
            offset += len(page)
            for d in page:
                if (not scoreless or named_id(d) is None) and matches(public(d).value, flt):
                    out.append(d)
            if len(page) < size:
                return out[:n], True
        return out[:n], False

    def _listing(self, op: SearchOp) -> Plan[list[SearchItem]]:
        """Search without a query: documents (the document store's order), then
        recorded memories (newest first), filtered, paged."""
        want = min(op.offset + op.limit, _ALL)  # sys.maxsize, "no limit", fits SQL
        if op.limit == 0:
            return []
        docs, complete = yield from self._matching_docs(op.namespace_prefix, op.filter, want, False)
        items: list[Item] = [public(d) for d in docs]
        if complete and len(items) < want and self.recorded:
            prefix = op.namespace_prefix
            most = None if op.filter else want - len(items)
            mine: list[Item] = yield Call(lambda: recorded_items(self.memory, prefix, most))
            mine = [r for r in mine if matches(r.value, op.filter)]
            while len(items) < want and mine:
                chunk, mine = mine[: want - len(items)], mine[want - len(items) :]
                where = [r for r in chunk if addressable(r.namespace)]
                got = yield Docs([GetOp(r.namespace, r.key, refresh_ttl=False) for r in where])
                # a document at its address (a replacing put killed mid-way) shadows it
                shadowed = {item_at(r) for r, d in zip(where, got, strict=True) if d is not None}
                items += [r for r in chunk if item_at(r) not in shadowed]
        page = items[op.offset : want]
        yield from self._refresh(page, op.refresh_ttl)
        return [searched(i) for i in page]

    def _refresh(self, items: Sequence[Item], refresh: bool) -> Plan[None]:
        """Refresh the TTL of items a read returned, when the store refreshes on read."""
        if refresh and items and (self.ttl_config or {}).get("refresh_on_read"):
            at = [i for i in items if addressable(i.namespace)]  # only there can a TTL be
            if at:
                yield Docs([GetOp(i.namespace, i.key, refresh_ttl=True) for i in at])

    def _query(self, op: SearchOp) -> Plan[list[SearchItem]]:
        """One page of query search: the ranked items, then the unindexed ones.

        ``offset=0``: the best ``limit`` of the core's best ``limit`` episodes and
        best ``limit`` facts, merged by score (see :meth:`_ranked`). ``offset=o``:
        the best ``limit`` items of the core's best ``o + limit`` (of each kind)
        that are not in the ``offset=0, limit=o`` result, so a
        page never repeats the items before it even though the core sorts its
        best k by relevance, not by the activation that chose them. When the
        core's best-k sets are nested in k (always without association hits),
        successive pages cover the best ``o + limit`` exactly once. Once the
        ranked items are exhausted, the page goes on with the unindexed
        documents that match (``score=None``), as LangGraph's stores do.
        """
        assert op.query
        offset, limit = op.offset, op.limit
        if limit == 0:
            return []
        found, stale, exhausted = yield from self._ranked(op, offset + limit)
        ranked = len(found)
        if offset:
            before, more, _ = yield from self._ranked(op, offset)
            shown = {item_at(item) for item, _ in before[:offset]}
            found = [(item, h) for item, h in found if item_at(item) not in shown]
            stale += [s for s in more if s not in stale]
        page = found[:limit]
        for group in self._coactive([h for _, h in page]):
            yield Learn(group)
        if stale:
            yield Forget(stale)
        self._note_thread([h.id for _, h in page])
        items = [item for item, _ in page]
        yield from self._refresh(items, op.refresh_ttl)  # only what the page returns
        if exhausted and len(items) < limit:
            skip = max(0, offset - ranked)
            rest, _ = yield from self._matching_docs(
                op.namespace_prefix, op.filter, skip + limit - len(items), True
            )
            unscored = [public(d, None, scored=True) for d in rest[skip:]]
            yield from self._refresh(unscored, op.refresh_ttl)
            items += unscored
        return items

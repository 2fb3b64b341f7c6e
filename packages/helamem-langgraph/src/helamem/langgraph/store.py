"""``HelaMemStore``: a LangGraph ``BaseStore`` whose ``search(query=...)`` is Hebbian retrieval.

Each item lives twice, by role:

* the **document** (namespace, key, JSON value, timestamps, TTL) is kept in a
  LangGraph document store, by default LangGraph's ``SqliteStore`` in the
  memory's data directory. It is the source of truth: it answers gets,
  listings, filters, namespaces and TTL exactly as LangGraph documents them,
  and it names, in a reserved field (never returned), the one memory that
  indexes it;
* the **memory** (the indexed text, in the HeLa-Mem scope equal to the
  namespace, with ``{"langgraph": {"namespace", "key"}}`` metadata) answers
  natural-language search: dense + lexical retrieval, spreading activation
  over learned edges, and Hebbian learning among the best items returned
  (``config.retrieval.learn_top`` of them, the core's own rule).

A memory is *live* when its document names it and *stale* otherwise. Memories
that are not documents (turns recorded by
:class:`~helamem.langgraph.HelaMemCheckpointer` or any other HeLa-Mem writer)
are returned by query search as read-only items keyed by memory id with value
``{"content", "role", "kind", "event_time"}``.

Why no interleaving loses or orphans an item
--------------------------------------------

The two stores cannot share a transaction, so the protocol makes every
intermediate state harmless and every interrupted one repairable:

1. **Fresh ids.** Each put that indexes a value draws a new memory id and
   passes it to the core (``NewMemory(id=...)``). A document names id ``X``
   only if the put that drew ``X`` wrote it; no later write ever names ``X``
   again. So once a document stops naming ``X``, ``X`` is stale for good.
2. **One writer at a time.** Every document write and every memory write or
   delete of the store runs under one lock: a thread lock per store object,
   then ``flock`` on ``<memory path>/langgraph-store.journal``, which
   serialises threads, store objects and processes on one path (the OS drops
   the lock of a killed process). ``sweep_ttl`` and TTL expiry only ever
   remove documents, which can only make a memory stale (rule 1).
3. **Intent first, memory before document.** Under the lock a put reads the
   current documents, appends ``{ns, key, new, old}`` per item to the journal
   (flushed to the OS), then (a) adds the new memories, (b) writes the
   documents naming them, (c) deletes the memories the old documents named,
   and truncates the journal. A delete is the same with no (a). Before (b)
   every reader still sees the old document and its live old memory; after
   (b) the new one. A put is acknowledged only after all three.
4. **Settling.** If a step fails, the writer settles its own intents at once
   and raises; if it is killed (or settling fails), its intents stay in the
   journal and the next lock holder settles them before it writes anything
   (also the first use of a store object and :meth:`HelaMemStore.repair`).
   Settling reads each intent's document as it is now and keeps exactly the
   memory it names (re-adding it from the document if it is missing) and
   deletes the other of ``new``/``old``. This is idempotent, so a kill during
   settling is settled again by the next holder. Whatever step the kill or
   failure hit, the result is one of: the old item with its old memory, or
   the new item with its new memory; never a document without its memory, or
   a memory without its document.
5. **Searches never delete on sight.** Searches take no lock. A memory met
   whose document does not name it (a put in flight between (a) and (b), a
   replacement or delete between (b) and (c), an expired document) is
   skipped. It is deleted only under the lock, after re-reading its document
   (searches try the lock without waiting and leave it when a writer holds
   it); under the lock no put is in flight, so a memory whose document does
   not name it is stale (rule 1).

Hence an acknowledged item keeps its document and its live memory until a
later put or delete of its key: only writers under the lock delete memories,
and only stale ones (their own ``old``, or what settling or a re-read under
the lock proves stale). And no memory stays orphaned: a writer deletes the
memory it replaces; an interrupted writer leaves a journal that the next
holder settles; what TTL leaves stale goes at the next search that meets it
(or :meth:`HelaMemStore.repair`). These hold for any number of threads, store
objects and processes on one path, as long as they all keep their documents
in the same document store (the default). Without ``fcntl`` (Windows) only
one process may write a path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from helamem.core import (
    HelaMemError,
    HelaMemory,
    Hit,
    InvalidInputError,
    MemoryNotFoundError,
    NewMemory,
)
from helamem.core.ids import new_id
from langgraph.config import get_config
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    get_text_at_path,
    validate_op_namespace,
)
from langgraph.store.sqlite import SqliteStore

from ._journal import Intent, Journal

__all__ = ["HelaMemStore", "RepairReport"]

logger = logging.getLogger(__name__)

ID_FIELD = "__helamem__"
"""Reserved value field, kept in the document store only: ``{"id", "index",
"created_at"}`` (the item's memory id or ``None``, the JSON paths its text was
taken from, and its creation time once it has been replaced)."""
JOURNAL = "langgraph-store.journal"
"""The writer lock and intent journal, in the memory's data directory."""

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
T = TypeVar("T")


# -- requests a plan makes of its executor (sync or async) ------------------


@dataclass(frozen=True)
class _Docs:
    ops: list[Op]


@dataclass(frozen=True)
class _Write:
    ops: list[PutOp]


@dataclass(frozen=True)
class _Search:
    query: str
    prefix: tuple[str, ...] | None  # None: every scope, one candidate pool
    k: int  # episodic hits
    semantic_k: int  # distilled facts


@dataclass(frozen=True)
class _Forget:
    stale: list[tuple[str, tuple[str, ...], str]]  # (memory id, namespace, key)


@dataclass(frozen=True)
class _Learn:
    ids: list[str]


_Req = _Docs | _Write | _Search | _Forget | _Learn
_Plan = Generator[_Req, Any, T]


def _check_namespace(op: Op) -> None:
    validate_op_namespace(op)  # labels: strings, non-empty, no "." or NUL
    if isinstance(op, PutOp):
        if not op.namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if op.namespace[0] == "langgraph":
            raise InvalidNamespaceError(
                f'Root label for namespace cannot be "langgraph". Got: {op.namespace}'
            )
        if op.value is not None and ID_FIELD in op.value:
            raise InvalidInputError(f"{ID_FIELD!r} is reserved by HelaMemStore; rename that field")


def _compare(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        if any(str(k).startswith("$") for k in expected):
            return all(_apply(actual, op, v) for op, v in expected.items())
        return isinstance(actual, dict) and all(
            _compare(actual.get(k), v) for k, v in expected.items()
        )
    return bool(actual == expected)


def _apply(actual: Any, op: str, value: Any) -> bool:
    if op == "$eq":
        return bool(actual == value)
    if op == "$ne":
        return bool(actual != value)
    if op not in _ORDER:
        raise InvalidInputError(
            f"unsupported filter operator {op!r}; use $eq, $ne, $gt, $gte, $lt or $lte"
        )
    try:
        return _ORDER[op](actual, value)
    except TypeError:  # None or mismatched types never match an order comparison
        return False


def _lookup(value: Any, key: str) -> Any:
    """``value[key]``, else the dotted path ``a.b`` (as SqliteStore filters read it)."""
    if not isinstance(value, Mapping):
        return None
    if key in value or "." not in key:
        return value.get(key)
    head, _, rest = key.partition(".")
    return _lookup(value.get(head), rest)


def _matches(value: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    return not flt or all(_compare(_lookup(value, k), v) for k, v in flt.items())


def _meta(item: Item | None) -> dict[str, Any]:
    meta = item.value.get(ID_FIELD) if item is not None else None
    return meta if isinstance(meta, dict) else {}


def _public(result: Any, score: float | None = None) -> Any:
    """Copies of the document store's items without the reserved field."""
    if isinstance(result, list):
        return [_public(r) for r in result]
    if not isinstance(result, Item) or ID_FIELD not in result.value:
        return result
    value = {k: v for k, v in result.value.items() if k != ID_FIELD}
    created = _meta(result).get("created_at") or result.created_at
    if isinstance(result, SearchItem):
        score = result.score if score is None else score
    if isinstance(result, SearchItem) or score is not None:
        return SearchItem(result.namespace, result.key, value, created, result.updated_at, score)
    return Item(
        value=value,
        key=result.key,
        namespace=result.namespace,
        created_at=created,
        updated_at=result.updated_at,
    )


@dataclass(frozen=True)
class RepairReport:
    """What :meth:`HelaMemStore.repair` did.

    Attributes:
        settled: Journal intents of an interrupted writer that it settled.
        stale_deleted: Memories with store metadata that their document did
            not name (expired, or left by a failure), deleted.
        readded: Documents naming a memory that was missing, re-indexed.
        unindexed: Documents whose memory could not be re-added (their text
            no longer embeds); they stay gettable and are marked unindexed.
    """

    settled: int
    stale_deleted: int
    readded: int
    unindexed: int


class HelaMemStore(BaseStore):
    """LangGraph long-term memory store backed by HeLa-Mem.

    Namespaces are HeLa-Mem scopes. ``put`` embeds the value (the ``index``
    fields, else the store's ``fields``, else the whole value as JSON;
    ``index=False`` stores the document only: it can be got and listed but
    never matches a query). ``search(ns, query=...)`` runs Hebbian retrieval
    over the namespace prefix and returns at most ``limit`` items, highest
    score first. The score is the core's relevance in [0, 1], on one absolute
    scale for every namespace and query (see :attr:`helamem.core.Hit.score`),
    so it can be thresholded. Distilled facts (read-only items) compete for
    the same ``limit`` slots: the core is asked for ``offset + limit``
    episodic hits and at most as many facts (``config.retrieval.semantic_k``
    at most), and the two are merged by score. The empty prefix ``()`` is one
    core search over every namespace (one candidate pool, one scale).
    ``offset=o`` returns the best ``limit`` items of
    the best ``o + limit`` that ``offset=0, limit=o`` does not return (see
    :meth:`_query` for when pages cover every item once). The best
    ``config.retrieval.learn_top`` items of the page co-activate (all of them
    when it is 0), and inside a graph the page's ids are kept for the running
    thread so :class:`~helamem.langgraph.HelaMemCheckpointer` can record them
    with the turn. ``search`` without a query is a filtered listing. Memories that are
    not store documents (e.g. recorded turns, facts) come back from query
    search keyed by memory id.

    Writes are serialised per memory path (threads, store objects and
    processes) and journaled, so that no interleaving and no kill loses an
    acknowledged item or leaves an orphan memory; see the module docstring.

    The constructor does no I/O; the default document store (a
    ``SqliteStore`` at ``<memory path>/langgraph-store.sqlite``) opens on
    first use, and the first operation settles what a killed writer left.
    :meth:`close` releases the document store and the journal (the memory
    stays open: you own it).

    Args:
        memory: The HeLa-Mem memory holding the searchable memories.
        documents: Any LangGraph store to keep documents in (e.g.
            ``InMemoryStore()``); default the SQLite store described above.
            Every store object on one memory path must use the same one.
        fields: Default JSON paths to embed (``None``/``["$"]``: the whole value).
        ttl: LangGraph ``TTLConfig`` for the default document store.
        filter_overfetch: With a query and a ``filter``, how many times
            ``offset + limit`` memories to retrieve before filtering.

    Examples:
        >>> store = HelaMemStore(HelaMemory.from_path("./helamem-data"))  # doctest: +SKIP
        >>> store.put(("users", "alice"), "pet", {"text": "Alice has a cat"})  # doctest: +SKIP
        >>> [i.key for i in store.search(("users",), query="alice's pet")]  # doctest: +SKIP
        ['pet']
        >>> graph = builder.compile(store=store, checkpointer=saver)  # doctest: +SKIP
    """

    def __init__(
        self,
        memory: HelaMemory,
        *,
        documents: BaseStore | None = None,
        fields: Sequence[str] | None = None,
        ttl: TTLConfig | None = None,
        filter_overfetch: int = 4,
        max_threads: int = 1024,
    ) -> None:
        if documents is not None and ttl is not None:
            raise InvalidInputError("pass ttl to your documents store, not to HelaMemStore")
        if filter_overfetch < 1:
            raise InvalidInputError(f"filter_overfetch must be >= 1, got {filter_overfetch}")
        self.memory = memory
        self.fields = list(fields) if fields else ["$"]
        self.filter_overfetch = filter_overfetch
        self._documents = documents
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self._journal = Journal(Path(memory.config.path) / JOURNAL)
        self._settled_once = False
        self._used: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._max_threads = max_threads
        self.ttl_config = documents.ttl_config if documents is not None else ttl
        self.supports_ttl = documents.supports_ttl if documents is not None else True

    # -- lifecycle --------------------------------------------------------------

    @property
    def documents(self) -> BaseStore:
        """The document store (opened now if it is the default one)."""
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

    def close(self) -> None:
        """Close the default document store and the journal (idempotent); the memory stays open."""
        self._stack.close()
        self._journal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def sweep_ttl(self) -> int:
        """Delete expired documents now; returns how many.

        Their memories are stale: query search skips them, and the next search
        that meets them (or :meth:`repair`) deletes them.

        Raises:
            NotImplementedError: If the document store has no ``sweep_ttl``.
        """
        sweep = getattr(self.documents, "sweep_ttl", None)
        if sweep is None:
            raise NotImplementedError(
                f"{type(self.documents).__name__} cannot sweep TTLs; use the default SqliteStore"
            )
        return int(sweep())

    def repair(self) -> RepairReport:
        """Settle the journal and make documents and memories agree, in full.

        Waits for the writer lock, settles what an interrupted writer left,
        deletes every memory with store metadata that its document does not
        name, and re-adds the memory of every document that names a missing
        one. Runs in time linear in the documents and store memories; normal
        operation never needs it (the journal is settled by the next write),
        it is for checks, after ``sweep_ttl`` or after deleting memories by
        hand.

        Raises:
            StorageError: If the memory store cannot be read or written.
        """
        docs = self.documents
        with self._journal.held() as pending:
            assert pending is not None
            if pending:
                self._settle(pending)
                self._journal.clear()
            mems = _store_memories(self.memory)
            got = self._docs_at([(ns, key) for _, ns, key in mems])
            stale = [mid for (mid, _, _), d in zip(mems, got, strict=True) if _id(d) != mid]
            self._drop(stale)
            have = {mid for mid, _, _ in mems}
            named: list[tuple[Item, str]] = []
            offset = 0
            while True:
                page = docs.search((), limit=500, offset=offset, refresh_ttl=False)
                named += [(d, mid) for d in page if (mid := _id(d)) and mid not in have]
                if len(page) < 500:
                    break
                offset += 500
            readded, unindexed = self._ensure(named, known_missing=True)
            return RepairReport(len(pending), len(stale), readded, unindexed)

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
        """Run ops in order; results line up with ``ops``."""
        plan = self._plan(list(ops))
        if not self._settled_once:
            self._settle_pending()
        try:
            req = next(plan)
            while True:
                req = plan.send(self._run(req))
        except StopIteration as done:
            result: list[Result] = done.value
            return result

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async :meth:`batch`: never blocks the event loop."""
        plan = self._plan(list(ops))
        if not self._settled_once:
            await asyncio.to_thread(self._settle_pending)
        try:
            req = next(plan)
            while True:
                req = plan.send(await self._arun(req))
        except StopIteration as done:
            result: list[Result] = done.value
            return result

    def _run(self, req: _Req) -> Any:
        m = self.memory
        if isinstance(req, _Docs):
            return self.documents.batch(req.ops)
        if isinstance(req, _Write):
            return self._write(req.ops)
        if isinstance(req, _Search):
            scope = req.prefix or ()  # (): the core ranks every scope in one pool
            return list(m.search(req.query, scope, k=req.k, semantic_k=req.semantic_k, learn=False))
        if isinstance(req, _Learn):
            try:
                m.reinforce(req.ids)
            except MemoryNotFoundError:
                logger.debug("skipped learning: a returned memory was deleted meanwhile")
            return None
        return self._forget_stale(req.stale)

    async def _arun(self, req: _Req) -> Any:
        m = self.memory
        if isinstance(req, _Docs):
            if self._documents is None or isinstance(self._documents, SqliteStore):
                docs = await asyncio.to_thread(lambda: self.documents)
                return await asyncio.to_thread(docs.batch, req.ops)  # SqliteStore is sync-only
            return await self._documents.abatch(req.ops)
        if isinstance(req, _Write):  # blocks on the writer lock: off the event loop
            return await asyncio.to_thread(self._write, req.ops)
        if isinstance(req, _Search):
            scope = req.prefix or ()
            res = await m.asearch(req.query, scope, k=req.k, semantic_k=req.semantic_k, learn=False)
            return list(res)
        if isinstance(req, _Learn):
            try:
                await m.areinforce(req.ids)
            except MemoryNotFoundError:
                logger.debug("skipped learning: a returned memory was deleted meanwhile")
            return None
        return await asyncio.to_thread(self._forget_stale, req.stale)

    # -- writes (under the writer lock; see the module docstring) -----------------

    def _write(self, ops: list[PutOp]) -> None:
        """Puts and deletes: journal, add memories, write documents, drop old memories."""
        last = {(op.namespace, op.key): op for op in ops}  # the last put of a key wins
        docs = self.documents
        with self._journal.held() as pending:
            assert pending is not None
            if pending:  # a writer was killed or failed to settle: settle it first
                self._settle(pending)
                self._journal.clear()
            olds = self._docs_at(list(last))
            intents: list[Intent] = []
            embed: list[NewMemory] = []
            writes: list[Op] = []
            for ((ns, key), op), old in zip(last.items(), olds, strict=True):
                new: str | None = None
                value = None if op.value is None else dict(op.value)
                if value is not None and op.value is not None:
                    meta: dict[str, Any] = {"id": None}
                    fields = op.index or self.fields
                    text = self._text(op.value, fields) if op.index is not False else ""
                    if text:
                        new = new_id()
                        embed.append(NewMemory(text, ns, metadata=_where(ns, key), id=new))
                        meta = {"id": new, "index": fields}
                    if old is not None:  # a replacement keeps the item's creation time
                        meta["created_at"] = (
                            _meta(old).get("created_at") or old.created_at.isoformat()
                        )
                    value[ID_FIELD] = meta
                intents.append(Intent(ns, key, new, _id(old)))
                writes.append(PutOp(ns, key, value, index=False, ttl=op.ttl))
            self._journal.log(intents)
            done = False
            try:
                if embed:
                    self.memory.add_many(embed)
                docs.batch(writes)
                self._drop([i.old for i in intents if i.old])
                done = True
            finally:
                if done:
                    self._journal.clear()
                else:
                    self._settle_after_failure(intents)

    def _docs_at(self, addresses: Sequence[tuple[tuple[str, ...], str]]) -> list[Item | None]:
        """The documents at ``(namespace, key)`` addresses (``None`` where there is none)."""
        if not addresses:
            return []
        got = self.documents.batch([GetOp(ns, k, refresh_ttl=False) for ns, k in addresses])
        return [d if isinstance(d, Item) else None for d in got]

    def _settle(self, intents: Sequence[Intent]) -> None:
        """Keep the memory each intent's document names now; delete the other one."""
        got = self._docs_at([(i.ns, i.key) for i in intents])
        drop: list[str] = []
        named: list[tuple[Item, str]] = []
        for intent, d in zip(intents, got, strict=True):
            current = _id(d)
            drop += [m for m in (intent.new, intent.old) if m and m != current]
            if d is not None and current and current in (intent.new, intent.old):
                named.append((d, current))
        self._drop(drop)
        self._ensure(named)

    def _settle_after_failure(self, intents: Sequence[Intent]) -> None:
        try:
            self._settle(intents)
            self._journal.clear()
        except (HelaMemError, OSError, sqlite3.Error) as exc:  # the next holder settles them
            logger.warning(
                "could not settle a failed store write now (%s); the next write or "
                "HelaMemStore.repair() settles it",
                exc,
            )

    def _ensure(
        self, named: Sequence[tuple[Item, str]], known_missing: bool = False
    ) -> tuple[int, int]:
        """Re-add the memory each document names where it is missing: ``(readded, unindexed)``.

        ``known_missing``: the caller knows they are missing; else each is looked up.
        """
        todo: list[tuple[Item, str]] = []
        for d, mid in named:
            if known_missing or not _exists(self.memory, mid):
                todo.append((d, mid))
        readded = unindexed = 0
        for d, mid in todo:
            meta = _meta(d)
            value = {k: v for k, v in d.value.items() if k != ID_FIELD}
            fields = meta.get("index") or self.fields
            text = self._text(value, list(fields))
            try:
                if not text:
                    raise InvalidInputError("the document has no text to index")
                self.memory.add_many(
                    [NewMemory(text, d.namespace, metadata=_where(d.namespace, d.key), id=mid)]
                )
                readded += 1
            except InvalidInputError as exc:
                if _exists(self.memory, mid):  # added meanwhile by another writer
                    continue
                logger.warning(
                    "document %s/%s cannot be re-indexed (%s); it stays gettable, unindexed",
                    "/".join(d.namespace),
                    d.key,
                    exc,
                )
                kept = dict(d.value)
                kept[ID_FIELD] = {**meta, "id": None}
                self.documents.batch([PutOp(d.namespace, d.key, kept, index=False)])
                unindexed += 1
        if readded:
            logger.warning("re-indexed %d store documents whose memory was missing", readded)
        return readded, unindexed

    def _drop(self, ids: Sequence[str]) -> None:
        """Delete memories, skipping the ones that are gone already."""
        if not ids:
            return
        try:
            self.memory.delete(ids)
        except MemoryNotFoundError:  # some went already: delete the rest one by one
            for i in ids:
                with suppress(MemoryNotFoundError):
                    self.memory.delete(i)

    def _settle_pending(self) -> None:
        """First use: settle what a killed writer left, unless a writer holds the lock
        (it settled the journal when it took the lock)."""
        self.documents  # noqa: B018 - opened first: it takes the lock itself
        try:
            with self._journal.held(wait=False) as pending:
                if pending:
                    self._settle(pending)
                    self._journal.clear()
        except (HelaMemError, OSError, sqlite3.Error) as exc:  # reads must not fail on it
            logger.warning(
                "could not settle an interrupted store write now (%s); the next write or "
                "HelaMemStore.repair() settles it",
                exc,
            )
            return
        self._settled_once = True

    def _forget_stale(self, stale: Sequence[tuple[str, tuple[str, ...], str]]) -> None:
        """Delete memories a search skipped if, under the lock, their document still
        does not name them; leave them when a writer holds the lock."""
        self.documents  # noqa: B018 - opened first: it takes the lock itself
        with self._journal.held(wait=False) as pending:
            if pending is None:
                return
            if pending:
                self._settle(pending)
                self._journal.clear()
            got = self._docs_at([(ns, k) for _, ns, k in stale])
            self._drop([mid for (mid, _, _), d in zip(stale, got, strict=True) if _id(d) != mid])

    # -- planning (pure translation; executors above do the I/O) -----------------

    def _plan(self, ops: list[Op]) -> _Plan[list[Result]]:
        for op in ops:
            if not isinstance(op, GetOp | PutOp | SearchOp | ListNamespacesOp):
                raise InvalidInputError(f"unknown store operation {type(op).__name__}")
            _check_namespace(op)
            if isinstance(op, PutOp) and op.ttl is not None and not self.supports_ttl:
                raise NotImplementedError(
                    f"TTL is not supported by {type(self._documents).__name__}; "
                    "use the default SqliteStore documents or ttl=None"
                )
        results: list[Result] = [None] * len(ops)
        i = 0
        while i < len(ops):
            j = i + 1
            op = ops[i]
            if isinstance(op, SearchOp) and op.query:
                results[i] = yield from self._query(op)
            elif isinstance(op, PutOp):
                while j < len(ops) and isinstance(ops[j], PutOp):
                    j += 1
                yield _Write([o for o in ops[i:j] if isinstance(o, PutOp)])
            else:
                while j < len(ops) and _is_read(ops[j]):
                    j += 1
                results[i:j] = _public((yield _Docs(ops[i:j])))
            i = j
        return results

    def _text(self, value: Mapping[str, Any], index: Sequence[str] | None) -> str:
        texts = [t for path in (index or self.fields) for t in get_text_at_path(value, path)]
        return "\n".join(t for t in texts if t.strip())

    def _query(self, op: SearchOp) -> _Plan[list[SearchItem]]:
        """One page of query search: at most ``limit`` items, highest score first.

        ``offset=0``: the core's ``search(k=limit)`` (facts merged in by score,
        then cut). ``offset=o``: the best ``limit`` items of the core's best
        ``o + limit`` that are not in the ``offset=0, limit=o`` result, so a
        page never repeats the items before it even though the core sorts its
        best k by relevance, not by the activation that chose them. When the
        core's best-k sets are nested in k (always without association hits,
        ``max_flipped=0``), successive pages cover the best ``o + limit``
        exactly once; an association hit that displaces a base hit at one k
        but not at another can make an item come back or be skipped.
        """
        assert op.query
        offset, limit = max(op.offset, 0), max(op.limit, 0)
        if limit == 0:
            return []
        found, stale = yield from self._ranked(op, offset + limit)
        if offset:
            before, more = yield from self._ranked(op, offset)
            shown = {h.id for _, h in before[:offset]}
            found = [(item, h) for item, h in found if h.id not in shown]
            stale += [s for s in more if s not in stale]
        page = found[:limit]
        for group in self._coactive([h for _, h in page]):
            yield _Learn(group)
        if stale:
            yield _Forget(stale)
        self._note_thread([h.id for _, h in page])
        return [item for item, _ in page]

    def _ranked(
        self, op: SearchOp, n: int
    ) -> _Plan[tuple[list[tuple[SearchItem, Hit]], list[tuple[str, tuple[str, ...], str]]]]:
        """The live items of the core's best ``n`` (facts included), filtered, highest
        score first; and the stale memories met."""
        assert op.query
        k = n * self.filter_overfetch if op.filter else n
        facts = min(self.memory.config.retrieval.semantic_k, k)
        hits: list[Hit] = yield _Search(op.query, op.namespace_prefix or None, k, facts)
        docs_of = [h for h in hits if "langgraph" in h.memory.metadata]
        got: list[Item | None] = (
            (yield _Docs([GetOp(*_address(h), refresh_ttl=op.refresh_ttl) for h in docs_of]))
            if docs_of
            else []
        )
        doc = {h.id: d for h, d in zip(docs_of, got, strict=True)}
        found: list[tuple[SearchItem, Hit]] = []
        stale: list[tuple[str, tuple[str, ...], str]] = []
        for h in sorted(hits, key=lambda h: -h.score):
            m = h.memory
            if h.id in doc:
                d = doc[h.id]
                if _id(d) != h.id:  # a write in flight, or stale: skip, never delete here
                    stale.append((h.id, *_address(h)))
                    continue
                item = _public(d, h.score)
            else:
                value = {
                    "content": m.content,
                    "role": m.role,
                    "kind": m.kind,
                    "event_time": m.event_time.isoformat(),
                }
                item = SearchItem(m.scope, m.id, value, m.created_at, m.created_at, h.score)
            if _matches(item.value, op.filter):
                found.append((item, h))
        return found, stale

    def _coactive(self, page: Sequence[Hit]) -> list[list[str]]:
        """The core's learning rule on the page: per kind, the best ``learn_top``
        by score (0: all) co-activate; association hits only if they rank among them."""
        top = self.memory.config.retrieval.learn_top
        groups: dict[bool, list[Hit]] = {}
        for h in page:
            groups.setdefault(h.provenance == "semantic", []).append(h)
        out = []
        for g in groups.values():
            best = sorted(g, key=lambda h: -h.score)
            ids = [h.id for h in (best[:top] if top else best)]
            if len(ids) > 1:
                out.append(ids)
        return out


def _id(item: Item | None) -> str | None:
    """The memory id a document names (``None``: no document, or not indexed)."""
    mid = _meta(item).get("id")
    return str(mid) if mid else None


def _exists(memory: HelaMemory, mid: str) -> bool:
    try:
        memory.get(mid)
    except MemoryNotFoundError:
        return False
    return True


def _where(ns: Sequence[str], key: str) -> dict[str, Any]:
    return {"langgraph": {"namespace": list(ns), "key": key}}


def _store_memories(memory: HelaMemory) -> list[tuple[str, tuple[str, ...], str]]:
    """``(id, namespace, key)`` of every memory with store metadata."""

    def rows(core: Any) -> list[tuple[str, str]]:
        return list(
            core.store.db.execute(
                "SELECT id, metadata FROM memories WHERE metadata LIKE ?", ('%"langgraph"%',)
            )
        )

    out = []
    for mid, raw in memory._call(rows):
        where = json.loads(raw).get("langgraph")
        if isinstance(where, dict) and "namespace" in where and "key" in where:
            out.append((str(mid), tuple(where["namespace"]), str(where["key"])))
    return out


def _address(hit: Any) -> tuple[tuple[str, ...], str]:
    meta = hit.memory.metadata["langgraph"]
    return tuple(meta["namespace"]), str(meta["key"])


def _is_read(op: Op) -> bool:
    return isinstance(op, GetOp | ListNamespacesOp) or (isinstance(op, SearchOp) and not op.query)

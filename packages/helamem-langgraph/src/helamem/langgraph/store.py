"""``HelaMemStore``: a LangGraph ``BaseStore`` whose ``search(query=...)`` is Hebbian retrieval.

Each item lives twice, by role:

* the **document** (namespace, key, JSON value, timestamps, TTL) is kept in a
  LangGraph document store, by default LangGraph's ``SqliteStore`` in the
  memory's data directory. It answers gets, listings, filters, namespaces
  and TTL exactly as LangGraph documents them;
* the **memory** (the indexed text, in the HeLa-Mem scope equal to the
  namespace, with ``{"langgraph": {"namespace", "key"}}`` metadata) answers
  natural-language search: dense + lexical retrieval, spreading activation
  over learned edges, and Hebbian learning among the items returned.

The document records its memory's id in a reserved field (never returned),
so replacing or deleting an item deletes its memory. A memory whose document
is gone (expired by TTL, or replaced concurrently) is dropped from results
and deleted when a search meets it. Memories that are not documents (turns
recorded by :class:`~helamem.langgraph.HelaMemCheckpointer` or any other
HeLa-Mem writer) are returned by query search as read-only items keyed by
memory id with value ``{"content", "role", "kind", "event_time"}``.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from helamem.core import HelaMemory, Hit, InvalidInputError, MemoryNotFoundError, NewMemory
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

__all__ = ["HelaMemStore"]

logger = logging.getLogger(__name__)

ID_FIELD = "__helamem__"
"""Reserved value field, kept in the document store only: ``{"id", "created_at"}``
(the item's memory id, and its creation time once it has been replaced)."""

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
class _Add:
    items: list[NewMemory]


@dataclass(frozen=True)
class _Search:
    query: str
    prefix: tuple[str, ...] | None  # None: every root scope
    k: int


@dataclass(frozen=True)
class _Forget:
    ids: list[str]


@dataclass(frozen=True)
class _Learn:
    ids: list[str]


_Req = _Docs | _Add | _Search | _Forget | _Learn
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


class HelaMemStore(BaseStore):
    """LangGraph long-term memory store backed by HeLa-Mem.

    Namespaces are HeLa-Mem scopes. ``put`` embeds the value (the ``index``
    fields, else the store's ``fields``, else the whole value as JSON;
    ``index=False`` stores the document only: it can be got and listed but
    never matches a query). ``search(ns, query=...)`` runs Hebbian retrieval
    over the namespace prefix: scores are HeLa-Mem activations, the items
    returned co-activate, and inside a graph their ids are kept for the
    running thread so :class:`~helamem.langgraph.HelaMemCheckpointer` can
    record them with the turn. ``search`` without a query is a filtered
    listing. Memories that are not store documents (e.g. recorded turns)
    come back from query search keyed by memory id.

    The constructor does no I/O; the default document store (a
    ``SqliteStore`` at ``<memory path>/langgraph-store.sqlite``) opens on
    first use. :meth:`close` releases it (the memory stays open: you own it).

    Args:
        memory: The HeLa-Mem memory holding the searchable memories.
        documents: Any LangGraph store to keep documents in (e.g.
            ``InMemoryStore()``); default the SQLite store described above.
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
        self._used: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._max_threads = max_threads
        self.ttl_config = documents.ttl_config if documents is not None else ttl
        self.supports_ttl = documents.supports_ttl if documents is not None else True

    # -- lifecycle --------------------------------------------------------------

    @property
    def documents(self) -> BaseStore:
        """The document store (opened now if it is the default one)."""
        with self._lock:
            if self._documents is None:
                path = Path(self.memory.config.path)
                path.mkdir(parents=True, exist_ok=True)
                self._documents = self._stack.enter_context(
                    SqliteStore.from_conn_string(
                        str(path / "langgraph-store.sqlite"), ttl=self.ttl_config
                    )
                )
            return self._documents

    def close(self) -> None:
        """Close the default document store (idempotent); the memory stays open."""
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def sweep_ttl(self) -> int:
        """Delete expired documents now (their memories go at the next search that meets them).

        Raises:
            NotImplementedError: If the document store has no ``sweep_ttl``.
        """
        sweep = getattr(self.documents, "sweep_ttl", None)
        if sweep is None:
            raise NotImplementedError(
                f"{type(self.documents).__name__} cannot sweep TTLs; use the default SqliteStore"
            )
        return int(sweep())

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
        if isinstance(req, _Add):
            return m.add_many(req.items)
        if isinstance(req, _Search):
            prefixes = [req.prefix] if req.prefix else m.list_scopes()
            roots = dict.fromkeys(p[:1] if req.prefix is None else p for p in prefixes)
            return [h for p in roots for h in m.search(req.query, p, k=req.k, learn=False)]
        if isinstance(req, _Learn):
            try:
                m.reinforce(req.ids)
            except MemoryNotFoundError:
                logger.debug("skipped learning: a returned memory was deleted meanwhile")
            return None
        try:
            m.delete(req.ids)
        except MemoryNotFoundError:  # some went already: delete the rest one by one
            for i in req.ids:
                with suppress(MemoryNotFoundError):
                    m.delete(i)
        return None

    async def _arun(self, req: _Req) -> Any:
        m = self.memory
        if isinstance(req, _Docs):
            if self._documents is None or isinstance(self._documents, SqliteStore):
                docs = await asyncio.to_thread(lambda: self.documents)
                return await asyncio.to_thread(docs.batch, req.ops)  # SqliteStore is sync-only
            return await self._documents.abatch(req.ops)
        if isinstance(req, _Add):
            return await m.aadd_many(req.items)
        if isinstance(req, _Search):
            prefixes = [req.prefix] if req.prefix else await m.alist_scopes()
            roots = dict.fromkeys(p[:1] if req.prefix is None else p for p in prefixes)
            hits: list[Hit] = []
            for p in roots:
                hits.extend(await m.asearch(req.query, p, k=req.k, learn=False))
            return hits
        if isinstance(req, _Learn):
            try:
                await m.areinforce(req.ids)
            except MemoryNotFoundError:
                logger.debug("skipped learning: a returned memory was deleted meanwhile")
            return None
        try:
            await m.adelete(req.ids)
        except MemoryNotFoundError:
            for i in req.ids:
                with suppress(MemoryNotFoundError):
                    await m.adelete(i)
        return None

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
                yield from self._puts([o for o in ops[i:j] if isinstance(o, PutOp)])
            else:
                while j < len(ops) and _is_read(ops[j]):
                    j += 1
                results[i:j] = _public((yield _Docs(ops[i:j])))
            i = j
        return results

    def _text(self, value: Mapping[str, Any], index: list[str] | None) -> str:
        texts = [t for path in (index or self.fields) for t in get_text_at_path(value, path)]
        return "\n".join(t for t in texts if t.strip())

    def _puts(self, ops: list[PutOp]) -> _Plan[None]:
        last = {(op.namespace, op.key): op for op in ops}  # the last put of a key wins
        olds: list[Item | None] = yield _Docs([GetOp(ns, k, refresh_ttl=False) for ns, k in last])
        embed: dict[tuple[tuple[str, ...], str], NewMemory] = {}
        for (ns, key), op in last.items():
            if op.value is not None and op.index is not False:
                text = self._text(op.value, op.index)
                if text:
                    where = {"namespace": list(ns), "key": key}
                    embed[(ns, key)] = NewMemory(text, ns, metadata={"langgraph": where})
        added = (yield _Add(list(embed.values()))) if embed else []
        ids = {address: m.id for address, m in zip(embed, added, strict=True)}
        writes: list[Op] = []
        for (address, op), old in zip(last.items(), olds, strict=True):
            value = None if op.value is None else dict(op.value)
            if value is not None:
                meta: dict[str, Any] = {"id": ids.get(address)}
                if old is not None:  # a replacement keeps the item's creation time
                    meta["created_at"] = _meta(old).get("created_at") or old.created_at.isoformat()
                value[ID_FIELD] = meta
            writes.append(PutOp(*address, value, index=False, ttl=op.ttl))
        yield _Docs(writes)
        stale = [str(_meta(o)["id"]) for o in olds if _meta(o).get("id")]
        if stale:
            yield _Forget(stale)

    def _query(self, op: SearchOp) -> _Plan[list[SearchItem]]:
        assert op.query
        want = max(op.offset, 0) + max(op.limit, 0)
        k = want * self.filter_overfetch if op.filter else want
        if k == 0:
            return []
        hits = yield _Search(op.query, op.namespace_prefix or None, k)
        docs_of = [h for h in hits if "langgraph" in h.memory.metadata]
        got: list[Item | None] = (
            (yield _Docs([GetOp(*_address(h), refresh_ttl=op.refresh_ttl) for h in docs_of]))
            if docs_of
            else []
        )
        doc = {h.id: d for h, d in zip(docs_of, got, strict=True)}
        found: list[tuple[SearchItem, str]] = []
        stale: list[str] = []
        for h in sorted(hits, key=lambda h: -h.score):
            m = h.memory
            if h.id in doc:
                d = doc[h.id]
                if _meta(d).get("id") != h.id:
                    stale.append(h.id)
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
                found.append((item, h.id))
        page = found[op.offset : op.offset + op.limit]
        ids = [i for _, i in page]
        if len(ids) > 1:
            yield _Learn(ids)
        if stale:
            yield _Forget(stale)
        self._note_thread(ids)
        return [item for item, _ in page]


def _address(hit: Any) -> tuple[tuple[str, ...], str]:
    meta = hit.memory.metadata["langgraph"]
    return tuple(meta["namespace"]), str(meta["key"])


def _is_read(op: Op) -> bool:
    return isinstance(op, GetOp | ListNamespacesOp) or (isinstance(op, SearchOp) and not op.query)

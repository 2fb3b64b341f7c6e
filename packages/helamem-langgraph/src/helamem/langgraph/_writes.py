"""The write protocol of :class:`~helamem.langgraph.HelaMemStore`: documents and memories agree.

Each item lives twice, by role:

* the **document** (namespace, key, JSON value, timestamps, TTL) is kept in a
  LangGraph document store, by default LangGraph's ``SqliteStore`` in the
  memory's data directory. It is the source of truth: it answers gets,
  listings, filters, namespaces and TTL exactly as LangGraph documents them,
  and it names, in a reserved field (never returned), the memory id ``X``
  that indexes it;
* the **memories** (the indexed text, one per indexed field, ids ``X``,
  ``X.1``, ``X.2``, ...: a *family*, added in one transaction and deleted in
  one; in the HeLa-Mem scope equal to the namespace, with
  ``{"langgraph": {"namespace", "key"}}`` metadata) answer natural-language
  search.

A family is *live* when its document names ``X`` and *stale* otherwise; every
step below that adds, keeps or deletes "the memory ``X``" acts on its whole
family. Memories that are not documents (turns recorded by
:class:`~helamem.langgraph.HelaMemCheckpointer` or any other HeLa-Mem writer)
are items of their own (see :mod:`helamem.langgraph._recorded`); a put to
one's address deletes it after writing its document (no journal: a failed
put never loses it; a kill in between leaves the document shadowing it).

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
   replacement or delete between (b) and (c), an expired document) does not
   stand for its item (a query search shows the item its document holds now, if
   any, with the score the met memory had: a search racing a write shows the old
   or the new value). It is deleted only under the lock, after re-reading its document
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

import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from helamem.core import (
    HelaMemError,
    HelaMemory,
    InvalidInputError,
    MemoryNotFoundError,
    NewMemory,
)
from helamem.core.ids import new_id
from langgraph.store.base import BaseStore, GetOp, Item, Op, PutOp

from ._index import value_texts
from ._journal import Intent, Journal
from ._recorded import address_in, recorded_at, store_address

__all__ = [
    "ID_FIELD",
    "JOURNAL",
    "JournaledWrites",
    "RepairReport",
    "doc_meta",
    "family_base",
    "named_id",
]

logger = logging.getLogger(__name__)

ID_FIELD = "__helamem__"
"""Reserved value field, kept in the document store only: ``{"id", "index",
"created_at", "ttl"}`` (the item's memory id or ``None``, the JSON paths its
text was taken from, its creation time once it has been replaced, and the TTL
in minutes it was put with, if any)."""
JOURNAL = "langgraph-store.journal"
"""The writer lock and intent journal, in the memory's data directory."""


def doc_meta(item: Item | None) -> dict[str, Any]:
    meta = item.value.get(ID_FIELD) if item is not None else None
    return meta if isinstance(meta, dict) else {}


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


class JournaledWrites:
    """The writer side of :class:`~helamem.langgraph.HelaMemStore` (see the module docstring)."""

    memory: HelaMemory
    fields: list[str]
    recorded: bool
    _journal: Journal
    _settled_once: bool

    @property
    def documents(self) -> BaseStore:  # provided by the store
        raise NotImplementedError

    @contextmanager
    def _writer(self) -> Iterator[int]:
        """The writer lock, what an interrupted writer left settled first; yields how
        many of its intents were settled."""
        with self._journal.held() as pending:
            assert pending is not None
            if pending:  # a writer was killed or failed to settle: settle it first
                self._settle(pending)
                self._journal.clear()
            yield len(pending)

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
        with self._writer() as settled:
            mems = _store_memories(self.memory)
            stale = self._drop_stale(mems)
            have = {mid for mid, _, _ in mems if family_base(mid) == mid}  # primaries
            named: list[tuple[Item, str]] = []
            offset = 0
            while True:
                page = docs.search((), limit=500, offset=offset, refresh_ttl=False)
                named += [(d, mid) for d in page if (mid := named_id(d)) and mid not in have]
                if len(page) < 500:
                    break
                offset += 500
            readded, unindexed = self._ensure(named, known_missing=True)
            return RepairReport(settled, len(stale), readded, unindexed)

    def drop_stale(self) -> int:
        """Delete every memory with store metadata that its document does not name
        (after ``sweep_ttl``: the expired documents' memories, with the facts citing
        them, so their content comes back through no search, listing or fact). Returns
        how many.

        The scan (time linear in the store memories) takes no lock: a memory it finds
        unnamed may be a put in flight, so only those are read again, under the
        writer lock, and deleted if still unnamed (rule 5). Writers wait only for that.

        Raises:
            StorageError: If the memory store cannot be read or written.
        """
        maybe = self._unnamed(_store_memories(self.memory))
        if not maybe:
            return 0
        with self._writer():
            return len(self._drop_stale(maybe))

    def _unnamed(
        self, mems: list[tuple[str, tuple[str, ...], str]]
    ) -> list[tuple[str, tuple[str, ...], str]]:
        """Of ``mems`` (id, namespace, key), those their document does not name now."""
        got = self._docs_at([(ns, key) for _, ns, key in mems])
        return [m for m, d in zip(mems, got, strict=True) if named_id(d) != family_base(m[0])]

    def _drop_stale(self, mems: list[tuple[str, tuple[str, ...], str]]) -> list[str]:
        """Of ``mems`` (id, namespace, key), delete those their document does not name."""
        stale = [mid for mid, _, _ in self._unnamed(mems)]
        self._drop(stale, family=False)
        return stale

    # -- writes (under the writer lock; see the module docstring) -----------------

    def _write(self, ops: list[PutOp]) -> None:
        """Puts and deletes: journal, add memories, write documents, drop old memories."""
        last = {(op.namespace, op.key): op for op in ops}  # the last put of a key wins
        docs = self.documents
        with self._writer():
            olds = self._docs_at(list(last))
            intents: list[Intent] = []
            embed: list[NewMemory] = []
            writes: list[Op] = []
            for ((ns, key), op), old in zip(last.items(), olds, strict=True):
                new: str | None = None
                value = None if op.value is None else dict(op.value)
                if value is not None and op.value is not None:
                    meta: dict[str, Any] = {"id": None}
                    # index=None: the store's fields; a list (even []) names the paths
                    paths = op.index if isinstance(op.index, list | tuple) else self.fields
                    fields = list(paths)
                    texts = value_texts(op.value, fields) if op.index is not False else []
                    if texts:
                        new = new_id()
                        embed += _document_memories(texts, ns, key, new)
                        meta = {"id": new, "index": fields}
                    if old is not None:  # a replacement keeps the item's creation time
                        meta["created_at"] = (
                            doc_meta(old).get("created_at") or old.created_at.isoformat()
                        )
                    if op.ttl is not None:  # kept by a rewrite of the document (_ensure)
                        meta["ttl"] = op.ttl
                    value[ID_FIELD] = meta
                intents.append(Intent(ns, key, new, named_id(old)))
                writes.append(PutOp(ns, key, value, index=False, ttl=op.ttl))
            self._journal.log(intents)
            done = False
            try:
                if embed:
                    self.memory.add_many(embed)
                docs.batch(writes)
                self._drop([i.old for i in intents if i.old])
                done = True
                if self.recorded:  # a write to a recorded memory's address replaces it
                    self._drop(
                        family=False,
                        ids=[
                            i.key
                            for i, d in zip(intents, olds, strict=True)
                            if d is None and recorded_at(self.memory, i.ns, i.key)
                        ],
                    )
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
            current = named_id(d)
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
            meta = doc_meta(d)
            value = {k: v for k, v in d.value.items() if k != ID_FIELD}
            fields = meta.get("index") or self.fields
            texts = value_texts(value, list(fields))
            try:
                if not texts:
                    raise InvalidInputError("the document has no text to index")
                self._drop([mid])  # field memories left of a partly deleted family
                self.memory.add_many(_document_memories(texts, d.namespace, d.key, mid))
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
                # its TTL as put (the clock restarts, as a refresh on read restarts it)
                ttl = meta.get("ttl")
                ttl = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else None
                self.documents.batch([PutOp(d.namespace, d.key, kept, index=False, ttl=ttl)])
                unindexed += 1
        if readded:
            logger.warning("re-indexed %d store documents whose memory was missing", readded)
        return readded, unindexed

    def _drop(self, ids: Sequence[str], family: bool = True) -> None:
        """Delete memories (with ``family``: each with its field memories), skipping
        the ones that are gone already."""
        if family and ids:
            ids = _families(self.memory, ids)
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
            self._drop(
                [
                    family_base(mid)
                    for (mid, _, _), d in zip(stale, got, strict=True)
                    if named_id(d) != family_base(mid)
                ]
            )


def named_id(item: Item | None) -> str | None:
    """The memory id a document names (``None``: no document, or not indexed)."""
    mid = doc_meta(item).get("id")
    return str(mid) if mid else None


def _exists(memory: HelaMemory, mid: str) -> bool:
    try:
        memory.get(mid)
    except MemoryNotFoundError:
        return False
    return True


def _document_memories(
    texts: Sequence[str], ns: Sequence[str], key: str, mid: str
) -> list[NewMemory]:
    """The memories indexing a document: one per text (field), ids ``mid``,
    ``mid.1``, ``mid.2``, ...; standalone (``linked=False``), so a put creates no
    temporal edge: documents are not a conversation."""
    meta = {"langgraph": {"namespace": list(ns), "key": key}}
    ids = [mid] + [f"{mid}.{i}" for i in range(1, len(texts))]
    return [
        NewMemory(t, tuple(ns), metadata=meta, id=i, linked=False)
        for t, i in zip(texts, ids, strict=True)
    ]


def family_base(mid: str) -> str:
    """The id a document names for one of its field memories (``X.2`` -> ``X``)."""
    return mid.split(".", 1)[0]


def _families(memory: HelaMemory, ids: Sequence[str]) -> list[str]:
    """``ids`` with every field memory of theirs that exists (``X`` -> ``X``, ``X.1``, ...).

    A field memory is its base's only when it indexes the same document (a store memory
    of its own scope, the base's document if the base still exists): a caller-chosen id
    ``X.1`` of another writer or tenant is not. One read on the owner thread."""

    def read(core: Any) -> tuple[list[str], dict[str, tuple[tuple[str, ...], str] | None]]:
        found: list[str] = core.store.ids_under(list(ids))
        rows = core.store.rows_by_id([*ids, *found])
        return found, {i: store_address(core._memory(r)) for i, r in rows.items()}

    found, home = memory._call(read)
    fields = [
        f
        for f in found
        if (at := home.get(f)) is not None and home.get(family_base(f)) in (None, at)
    ]
    return list(dict.fromkeys([*ids, *fields]))


def _store_memories(memory: HelaMemory) -> list[tuple[str, tuple[str, ...], str]]:
    """``(id, namespace, key)`` of every memory with store metadata."""

    def rows(core: Any) -> list[tuple[str, str, str]]:
        return list(
            core.store.db.execute(
                "SELECT m.id, m.metadata, s.path FROM memories m JOIN scopes s ON s.id = m.scope_id"
                " WHERE m.metadata LIKE ?",
                ('%"langgraph"%',),
            )
        )

    out = []
    for mid, raw, path in memory._call(rows):
        # the store's own: it names a document of the memory's own scope
        if (at := address_in(json.loads(raw).get("langgraph"), json.loads(path))) is not None:
            out.append((str(mid), *at))
    return out

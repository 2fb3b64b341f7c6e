"""Ingest: validation of new memories, and their insertion with vectors and a turn's edges."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _turn_count, dynamics, retrieval
from ._base import scope_tag
from ._inputs import check_content
from ._learning import LearningOps
from ._reembed import refuse_switched
from .distill import refuse_reserved
from .errors import (
    IndexLockedError,
    InvalidInputError,
    StorageError,
)
from .ids import new_id
from .storage.base import EdgeRow, MemoryRow
from .storage.unique import unique_key
from .text import keywords, safe_text
from .types import (
    Kind,
    Memory,
    NewMemory,
    Scope,
    check_id,
    check_role,
    dump_json,
    normalize_scope,
    to_timestamp,
)

__all__ = ["IngestOps", "Prepared", "prepare"]


def _complete(group: Sequence[Prepared], rows: Sequence[MemoryRow]) -> bool:
    """Whether ``rows`` (stored with ``group``'s idempotency key) hold a memory of each
    role of ``group``: only then is it stored already (a deleted half is stored again)."""
    have = Counter(r.role for r in rows)
    return bool(rows) and all(have[role] >= n for role, n in Counter(p.role for p in group).items())


def _stored_in_place(
    group: Sequence[Prepared], rows: Sequence[MemoryRow], unstored: Callable[[int], MemoryRow]
) -> list[MemoryRow]:
    """For each memory of a skipped ``group``, the stored one of ``rows`` (oldest first)
    that takes its place: of its role, the newest copy's (a turn's user and assistant
    messages map to the pair stored last, so a turn stored again after a half of it
    was deleted, before deleted keys were kept, answers with the new pair); where none
    of its role is left (a forgotten turn's deleted half), ``unstored(j)``: the group's
    ``j``-th memory as given, never stored (no memory has its id)."""
    out: list[MemoryRow] = []
    taken: set[int] = set()
    for j in range(len(group) - 1, -1, -1):  # the group's last memory of a role takes the newest
        role = group[j].role
        pick = next((r for r in reversed(rows) if r.role == role and r.n not in taken), None)
        if pick is None:
            out.append(unstored(j))
            continue
        taken.add(pick.n)
        out.append(pick)
    return out[::-1]


def _unstored(
    group: Sequence[Prepared], ids: Sequence[str], sid: int, now: float
) -> Callable[[int], MemoryRow]:
    """The row of ``group``'s ``j``-th memory as given (id ``ids[j]``), never stored."""

    def row(j: int) -> MemoryRow:
        p = group[j]
        return MemoryRow(
            0, ids[j], sid, p.kind, p.content, p.role, p.event_time, now,
            p.keywords, 0, None, p.metadata, p.provenance, None,
        )  # fmt: skip

    return row


logger = logging.getLogger(__name__)

FORGOTTEN = (
    "a turn of scope %s was not stored: a turn of its unique_on key was deleted (forgotten) "
    "there; pass revive=True to store it again"
)


@dataclass(frozen=True, slots=True)
class Prepared:
    id: str | None
    content: str
    search_text: str
    scope: Scope
    kind: Kind
    role: str | None
    event_time: float
    metadata: str
    keywords: str
    provenance: str
    linked: bool = True


def prepare(
    item: NewMemory, *, now: float, kind: Kind = "episodic", provenance: Sequence[str] = ()
) -> Prepared:
    """Validate one new memory (pure; raises before anything is written)."""
    content = check_content(item.content)
    scope = normalize_scope(item.scope)
    role = check_role(item.role)
    meta = item.metadata if item.metadata is not None else {}
    if not isinstance(meta, dict):
        raise InvalidInputError(f"metadata must be a dict, got {type(meta).__name__}")
    if kind == "episodic":  # a fact's carries its clusters
        refuse_reserved(meta)
    search_text = safe_text(content)
    kws = list(item.keywords) if item.keywords is not None else keywords(search_text)
    if not all(isinstance(w, str) for w in kws):
        raise InvalidInputError("keywords must be strings")
    return Prepared(
        id=check_id(item.id),
        content=content,
        search_text=search_text,
        scope=scope,
        kind=kind,
        role=role,
        event_time=to_timestamp(item.event_time, default=now),
        metadata=dump_json(meta, "metadata"),
        keywords=dump_json(kws, "keywords"),
        provenance=dump_json(list(provenance), "provenance"),
        linked=bool(item.linked),
    )


class IngestOps(LearningOps):
    """Writes: insert new memories (with vectors, full-text rows and a turn's edges)."""

    def ingest(
        self,
        groups: Sequence[Sequence[Prepared]],
        used_ids: Sequence[Sequence[str]] = (),
        unique: Sequence[Mapping[str, str] | None] = (),
        *,
        revive: Sequence[bool] = (),
        turns: bool = False,
    ) -> list[Memory]:
        """Store groups of memories; each group is one tick of its scope.

        Inside a group, memories are linked in order to the scope's previous
        episode (temporal edges); ``used_ids[i]`` co-activate with group
        ``i``'s memories (same scope only; unknown ids are ignored).
        ``unique[i]`` (metadata ``key: value`` pairs): group ``i`` is not stored
        when a memory of its first memory's scope node was stored with the same pairs
        as its ``unique_on`` (a group before it in this call included: the stored
        idempotency key, :func:`~.storage.unique.unique_key`, found through an
        index); the check and the insert share the write transaction, so of processes
        racing with one group, one stores it.
        Nor is it stored when such a memory was deleted (its key forgotten), unless
        ``revive[i]``. The skipped group's place in the result holds the stored memories
        (:func:`_stored_in_place`).
        ``turns``: each group is a turn; each one stored counts toward its scope's
        next consolidation (:mod:`._turn_count`), in the same transaction.
        """
        flat = [p for g in groups for p in g]
        if not flat:
            return []
        ids = [p.id or new_id() for p in flat]
        chosen = [p.id for p in flat if p.id is not None]
        if chosen:
            self._check_new_ids(chosen)
        vecs, toks = self._embed_tokens([p.search_text for p in flat])
        now = time.time()
        d = self.config.dynamics
        rows_n: list[int] = []
        scope_ids: list[int] = []
        wanted = {i for ids_ in used_ids for i in ids_}
        made: list[MemoryRow] = []  # the rows as inserted (nothing in the tx changes them)
        with self.store.tx() as db:
            refuse_switched(self)  # another process switched embedders since the open
            # read under the writer lock: a used id another writer deleted meanwhile is
            # unknown (ignored), one it deleted and added again is the new memory
            known = self.store.rows_by_id(wanted) if wanted else {}
            if len(known) < len(wanted):
                logger.debug("ignoring %d unknown used_ids", len(wanted) - len(known))
            state: dict[int, tuple[int, int | None]] = {}
            # per batch: a scope's node, and its tags per kind (one lookup each)
            sids: dict[tuple[str, ...], int] = {}
            tags_of: dict[tuple[int, str], str] = {}
            i = 0
            found: dict[int, list[MemoryRow]] = {}  # skipped group -> its stored memories
            counted: dict[int, int] = defaultdict(int)  # scope node -> turns stored
            keep: list[int] = []  # flat positions inserted
            for gi, group in enumerate(groups):
                fields = unique[gi] if gi < len(unique) else None
                ukey = unique_key(fields) if fields else None
                if ukey is not None and group:
                    key = tuple(group[0].scope)
                    if key not in sids:
                        sids[key] = self.store.ensure_scope(db, group[0].scope)
                    sid = sids[key]
                    stored = self.store.ids_with_unique_key(sid, ukey)
                    rows = sorted(self.store.rows_by_id(stored).values(), key=lambda r: r.n)
                    # a turn forgotten (deleted, wholly or a half) is not stored again
                    revived = gi < len(revive) and revive[gi]
                    complete = _complete(group, rows)
                    if complete or (not revived and self.store.key_forgotten(sid, ukey)):
                        if not complete:  # visible: a deliberate write again is dropped too
                            logger.warning(FORGOTTEN, "/".join(group[0].scope))
                        found[gi] = _stored_in_place(
                            group, rows, _unstored(group, ids[i:], sid, now)
                        )
                        i += len(group)
                        continue
                used = {
                    i: known[i] for i in (used_ids[gi] if gi < len(used_ids) else ()) if i in known
                }
                edges: list[EdgeRow] = []
                group_ns: dict[int, list[int]] = defaultdict(list)
                reply: dict[int, np.ndarray] = {}
                ticked: set[int] = set()
                for p in group:
                    key = tuple(p.scope)
                    if key not in sids:
                        sids[key] = self.store.ensure_scope(db, p.scope)
                    sid = sids[key]
                    if sid not in state:
                        state[sid] = self.store.scope_state(sid)
                    tick, last = state[sid]
                    if sid not in ticked:
                        tick += 1
                        ticked.add(sid)
                    tick_now = self._now_tick(tick)
                    if (sid, p.kind) not in tags_of:
                        tags_of[(sid, p.kind)] = " ".join(
                            scope_tag(a, p.kind) for a in self.store.ancestors(sid)
                        )
                    tags = tags_of[(sid, p.kind)]
                    blob = vecs[i].tobytes()
                    n = self.store.insert_memory(
                        db,
                        id=ids[i],
                        scope_id=sid,
                        tags=tags,
                        kind=p.kind,
                        content=p.content,
                        search_text=p.search_text,
                        role=p.role,
                        event_time=p.event_time,
                        created_at=now,
                        keywords=p.keywords,
                        metadata=p.metadata,
                        provenance=p.provenance,
                        embedding=blob,
                        generated_id=p.id is None,
                        unique_key=ukey,
                    )
                    made.append(
                        MemoryRow(
                            n, ids[i], sid, p.kind, p.content, p.role, p.event_time, now,
                            p.keywords, 0, None, p.metadata, p.provenance, blob,
                        )
                    )  # fmt: skip
                    if p.kind == "episodic" and p.linked:
                        if last is not None:
                            a, b = dynamics.edge_key(last, n)
                            edges.append(EdgeRow(a, b, sid, d.temporal_weight, tick_now))
                        last = n
                    state[sid] = (tick, last)
                    rows_n.append(n)
                    keep.append(i)
                    scope_ids.append(sid)
                    if self._holding is not None:
                        self._holding.setdefault(p.kind, set()).add(sid)
                    group_ns[sid].append(n)
                    reply[sid] = vecs[i]  # the group's last message in the scope: the reply
                    i += 1
                self.store.upsert_edges(db, edges)
                if turns and group:
                    counted[sids[tuple(group[0].scope)]] += 1
                foreign = [r.id for r in used.values() if r.scope_id not in group_ns]
                if foreign:  # edges never cross scopes
                    logger.debug("ignoring %d used_ids of other scopes", len(foreign))
                for sid, ns in group_ns.items():
                    extra = [r for r in used.values() if r.scope_id == sid]
                    if extra:
                        self._learn_turn(db, sid, ns, extra, reply[sid], state[sid][0])
            for sid, (tick, last) in state.items():
                self.store.set_scope_state(db, sid, tick, last)
            _turn_count.count_turns(self.store, db, counted)
            if toks is not None and keep:
                packed = retrieval.pack_tokens_many(
                    toks if len(keep) == len(flat) else [toks[j] for j in keep]
                )
                self.store.put_token_vectors(db, list(zip(rows_n, packed, strict=True)))
        if len(keep) == len(flat):
            self.index_new(rows_n, ids, vecs, scope_ids, [p.kind for p in flat])
        elif keep:  # some groups were stored already (``unique``)
            kinds = [flat[j].kind for j in keep]
            self.index_new(rows_n, [ids[j] for j in keep], vecs[keep], scope_ids, kinds)
        if self.lexical_index is not None:  # keep a large store's BM25 index near the head
            try:
                self.lexical_index.prepare(self.sqlite_store)
            except StorageError as exc:  # derived: the next search tries again
                logger.warning("lexical index update failed, FTS5 serves meanwhile: %s", exc)
        # as inserted, not read back: after the commit another process may already have
        # deleted a row, and nothing in the transaction changed them (test_add_returns_as_stored)
        if not found:
            return [self._memory(r) for r in made]
        out: list[Memory] = []
        inserted = iter(made)
        for gi, group in enumerate(groups):
            if gi in found:
                out += [self._memory(r) for r in found[gi]]
            else:
                out += [self._memory(next(inserted)) for _ in group]
        return out

    def _check_new_ids(self, chosen: Sequence[str]) -> None:
        """Refuse caller-chosen ids that repeat or exist; settle their pending tombstones.

        Raises:
            InvalidInputError: an id appears twice in the batch or names a stored memory.
        """
        if len(set(chosen)) < len(chosen):
            dup = next(i for i in chosen if chosen.count(i) > 1)
            raise InvalidInputError(f"id {dup!r} appears twice in one add; ids must be unique")
        taken = self.store.rows_by_id(chosen)
        if taken:
            raise InvalidInputError(
                f"a memory with id {next(iter(taken))!r} exists (a retry of an add that "
                f"was stored needs nothing more: get({next(iter(taken))!r}) reads it); "
                f"delete it first or choose another id"
            )
        # a deleted memory of the same id may still have its vector in the index:
        # remove it now. A process that does not hold the index leaves the tombstone
        # to the holder, whose delete re-indexes an id that was added again (the new
        # row is stored all the same)
        gone = [t for t in self.store.tombstones(chosen)]
        if gone:
            try:
                self.index.delete(gone)
            except IndexLockedError as exc:
                logger.debug("re-added ids' old vectors left for the index's holder: %s", exc)
            else:
                self.store.clear_tombstones([g[0] for g in gone])

    def _insert_fact(self, db: Any, scope_id: int, p: Prepared, vec: np.ndarray) -> int:
        """Insert one semantic memory (no tick, no temporal edge); indexed on reconcile."""
        tags = " ".join(scope_tag(a, "semantic") for a in self.store.ancestors(scope_id))
        if self._holding is not None:
            self._holding.setdefault("semantic", set()).add(scope_id)
        return self.store.insert_memory(
            db,
            id=new_id(),
            scope_id=scope_id,
            tags=tags,
            kind="semantic",
            content=p.content,
            search_text=p.search_text,
            role=p.role,
            event_time=p.event_time,
            created_at=time.time(),
            keywords=p.keywords,
            metadata=p.metadata,
            provenance=p.provenance,
            embedding=vec.astype(np.float32).tobytes(),
            generated_id=True,
        )

"""The engine's operations, written once, run on the store's owner thread.

:class:`helamem.core.engine.HelaMemory` is the public facade; it runs every
method here on one dedicated thread (sync callers wait on a future, async
callers await it), so SQLite and Chroma have a single owner and nothing
blocks an event loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from . import dynamics, retrieval
from .config import HelaMemConfig
from .embeddings import Embedder, check_vectors, token_embedder
from .errors import (
    EmbeddingError,
    InvalidInputError,
    MemoryNotFoundError,
    StorageError,
)
from .ids import new_id
from .storage.base import EdgeRow, IndexLockedError, MemoryRow, RankRow, VectorIndex
from .storage.sqlite import SQLiteStore, sqlite_errors
from .text import drop_common, fts_match, fts_terms, is_blank, keywords, safe_text
from .tokens import TokenCount
from .types import (
    Hit,
    Kind,
    Memory,
    NewMemory,
    Scope,
    SearchResult,
    TimeLike,
    dump_json,
    fit_tokens,
    normalize_prefix,
    normalize_scope,
    to_timestamp,
)

__all__ = ["Core", "Stats"]

logger = logging.getLogger(__name__)

_KIND_CODE = {"episodic": 1, "semantic": 2}
MAX_CONTENT_CHARS = 16_000_000


def _tag(node: int, kind: str) -> str:
    return f"s{node}k{_KIND_CODE[kind]}"


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts for the whole store or one scope prefix."""

    memories: int
    episodic: int
    semantic: int
    edges: int
    mean_edge_weight: float
    scopes: int
    unindexed: int
    vectors: int
    embedder: str
    schema_version: int
    llm_calls: int = 0
    llm_failed_calls: int = 0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    llm_cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class _Prepared:
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


def _check_content(content: object, what: str = "content") -> str:
    if not isinstance(content, str):
        raise InvalidInputError(f"{what} must be a str, got {type(content).__name__}")
    if is_blank(content):
        raise InvalidInputError(
            f"{what} is empty or holds only whitespace, control or zero-width characters; "
            f"pass some visible text"
        )
    if len(content) > MAX_CONTENT_CHARS:
        raise InvalidInputError(
            f"{what} has {len(content)} characters, over the {MAX_CONTENT_CHARS} limit; split it"
        )
    return content


def _check_id(id: object) -> str | None:
    """A caller-chosen memory id: 1-128 printable ASCII characters (or ``None``)."""
    if id is None:
        return None
    if (
        not isinstance(id, str)
        or not 0 < len(id) <= 128
        or not id.isascii()
        or not id.isprintable()
        or id != id.strip()
    ):
        raise InvalidInputError(
            f"id must be 1-128 printable ASCII characters without surrounding spaces, "
            f"got {id!r}; or pass id=None for a generated one"
        )
    return id


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise InvalidInputError(f"k must be a positive int, got {k!r}")
    return k


def prepare(
    item: NewMemory, *, now: float, kind: Kind = "episodic", provenance: Sequence[str] = ()
) -> _Prepared:
    """Validate one new memory (pure; raises before anything is written)."""
    content = _check_content(item.content)
    scope = normalize_scope(item.scope)
    if item.role is not None and not isinstance(item.role, str):
        raise InvalidInputError(f"role must be a str or None, got {type(item.role).__name__}")
    meta = item.metadata if item.metadata is not None else {}
    if not isinstance(meta, dict):
        raise InvalidInputError(f"metadata must be a dict, got {type(meta).__name__}")
    search_text = safe_text(content)
    kws = list(item.keywords) if item.keywords is not None else keywords(search_text)
    if not all(isinstance(w, str) for w in kws):
        raise InvalidInputError("keywords must be strings")
    return _Prepared(
        id=_check_id(item.id),
        content=content,
        search_text=search_text,
        scope=scope,
        kind=kind,
        role=item.role,
        event_time=to_timestamp(item.event_time, default=now),
        metadata=dump_json(meta, "metadata"),
        keywords=dump_json(kws, "keywords"),
        provenance=dump_json(list(provenance), "provenance"),
        linked=bool(item.linked),
    )


class Core:
    """Storage-owning implementation of every operation (one thread at a time)."""

    def __init__(
        self,
        config: HelaMemConfig,
        embedder: Embedder,
        index: VectorIndex,
        *,
        reembed: bool = False,
    ) -> None:
        self.config = config
        # on open, switch a store built with another embedder to this one (see _reembed)
        self.reembed = reembed
        self.reembedded: int | None = None
        self.embedder = embedder
        # late interaction (MaxSim) when configured and the embedder gives token vectors
        self._tokens = token_embedder(embedder) if config.retrieval.late_weight > 0 else None
        self.index = index
        self.store = SQLiteStore(config.path / "helamem.sqlite3", config.busy_timeout_s)
        self._scopes: dict[int, Scope] = {}
        self._needs_reconcile = False
        self._aux_pool: ThreadPoolExecutor | None = None
        # kind -> scope nodes holding it, to skip the lexical scope filter when a
        # prefix covers them all; only grows (a stale entry keeps the filter on;
        # another process's new scope only costs recall: rows are filtered anyway)
        self._holding: dict[str, set[int]] | None = None

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        self.store.open()
        try:
            self._check_embedder()
            self.index.open(self.embedder.dimension)
            self.reconcile()
        except BaseException:
            self.store.close()
            raise

    def close(self) -> None:
        if self._aux_pool is not None:
            self._aux_pool.shutdown(wait=True)
            self._aux_pool = None
        self.index.close()
        self.store.close()

    def _check_embedder(self) -> None:
        """Refuse vectors of another embedder, or (``reembed``) switch to this one."""
        from ._reembed import ensure_embedder

        self.reembedded = ensure_embedder(self, self.reembed)

    def reconcile(self) -> int:
        """Bring the vector index up to date with SQLite; returns rows re-indexed.

        What the index cannot take now (a large scope's HNSW collection while
        another process holds the embedded index) stays pending: those rows stay
        unindexed and the tombstones stay, for the process holding the index.
        """
        if hasattr(self.index, "wants_reconcile"):
            self.index.wants_reconcile = False
        gone = self.store.tombstones()
        if gone:
            try:
                self.index.delete(gone)
                self.store.clear_tombstones([g[0] for g in gone])
            except IndexLockedError as exc:
                logger.debug("vector deletes left for the index's holder: %s", exc)
        total = after = 0
        while True:
            with sqlite_errors(self.config.path / "helamem.sqlite3", "reading unindexed failed"):
                ns = [
                    int(r[0])
                    for r in self.store.db.execute(
                        "SELECT n FROM memories WHERE indexed = 0 AND n > ? ORDER BY n LIMIT 2048",
                        (after,),
                    )
                ]
            if not ns:
                break
            after = ns[-1]
            rows = self.store.rows_by_n(ns)
            total += self._index_rows([rows[n] for n in ns if n in rows])
        if total:
            logger.info("re-indexed %d memories that had not reached the vector index", total)
        self._needs_reconcile = False
        return total

    def _index_rows(self, rows: Sequence[MemoryRow], reembed: bool = False) -> int:
        """Embed rows that lack a vector, index them, mark them; returns rows indexed
        (a scope whose index another process holds is skipped, its rows stay unindexed)."""
        if not rows:
            return 0
        dim = self.embedder.dimension
        missing = [r for r in rows if reembed or r.embedding is None or len(r.embedding) != 4 * dim]
        fresh: dict[int, np.ndarray] = {}
        if missing:
            vecs = self._embed([r.content for r in missing])
            fresh = {r.n: v for r, v in zip(missing, vecs, strict=True)}
            self.store.set_embeddings([(n, v.tobytes()) for n, v in fresh.items()])
        groups: dict[tuple[int, str], list[MemoryRow]] = defaultdict(list)
        for r in rows:
            groups[(r.scope_id, r.kind)].append(r)
        done: list[MemoryRow] = []
        for (scope_id, kind), part in groups.items():
            vectors = np.stack(
                [fresh[r.n] if r.n in fresh else r.vector() for r in part]  # type: ignore[misc]
            ).astype(np.float32)
            try:
                self.index.upsert(
                    [r.id for r in part], vectors, [scope_id] * len(part), [kind] * len(part)
                )
            except IndexLockedError as exc:
                logger.debug("scope %d left unindexed for the index's holder: %s", scope_id, exc)
                continue
            done.extend(part)
        if done:
            self.store.mark_indexed([(r.n, r.id) for r in done])
        return len(done)

    def reindex(self, reembed: bool = False) -> int:
        """Rebuild the vector index from SQLite (re-embedding when asked); returns rows.

        Raises:
            IndexLockedError: Another process holds the embedded index.
        """
        dim = self.embedder.dimension
        if reembed:
            with self.store.tx() as db:
                self.store.set_meta(
                    db, "embedder", json.dumps({"name": self.embedder.name, "dimension": dim})
                )
            for rows in self.store.all_rows():
                vecs = self._embed([r.content for r in rows])
                self.store.set_embeddings(
                    [(r.n, v.astype(np.float32).tobytes()) for r, v in zip(rows, vecs, strict=True)]
                )
        rebuild = getattr(self.index, "rebuild", None)
        total = 0
        if rebuild is None:  # a custom VectorIndex: reset, then upsert everything
            self.index.reset()
            for rows in self.store.all_rows():
                self._index_rows(rows)
                total += len(rows)
            return total
        rebuild()  # small scopes need nothing; large ones are copied from SQLite
        for rows in self.store.all_rows():
            bad = [r for r in rows if r.embedding is None or len(r.embedding) != 4 * dim]
            if bad:
                self._index_rows(bad)
            skip = {r.n for r in bad}
            self.store.mark_indexed([(r.n, r.id) for r in rows if r.n not in skip])
            total += len(rows)
        return total

    # -- helpers ---------------------------------------------------------

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed_tokens(texts, tokens=False)[0]

    def _embed_tokens(
        self, texts: Sequence[str], tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Pooled vectors, and token vectors when late interaction is on (one model pass)."""
        try:
            if tokens and self._tokens is not None:
                vecs, toks = self._tokens.embed_with_tokens(texts)
                if len(toks) != len(texts) or any(t.ndim != 2 or not len(t) for t in toks):
                    raise EmbeddingError(
                        f"embedder {self.embedder.name!r} gave malformed token vectors; "
                        f"check the embedder or set RetrievalConfig(late_weight=0)"
                    )
                return check_vectors(
                    vecs, len(texts), self.embedder.dimension, self.embedder.name
                ), list(toks)
            return self.embedder.embed(texts), None
        except EmbeddingError:
            raise
        except Exception as exc:  # the embedder is caller code: any failure of it is its error
            raise EmbeddingError(
                f"embedder {self.embedder.name!r} failed: {type(exc).__name__}: {exc}; "
                f"check the embedder"
            ) from exc

    def _late(self, qtok: np.ndarray | None, ns: Sequence[int]) -> np.ndarray | None:
        """MaxSim of each memory to the query's tokens; token vectors a memory lacks
        (older stores, facts, imports) are computed now and stored."""
        if qtok is None or not ns:
            return None
        dim = self.embedder.dimension
        stored = self.store.token_vectors(list(ns))
        lacking = [n for n in ns if n not in stored or len(stored[n]) % (4 + dim)]
        docs = {n: retrieval.unpack_tokens(stored[n], dim) for n in ns if n not in lacking}
        if lacking:
            rows = self.store.rows_by_n(lacking)
            todo = [n for n in lacking if n in rows]
            if todo:
                _, toks = self._embed_tokens([rows[n].content for n in todo])
                assert toks is not None
                packed = [(n, retrieval.pack_tokens(t)) for n, t in zip(todo, toks, strict=True)]
                with self.store.tx() as db:
                    self.store.put_token_vectors(db, packed)
                docs.update((n, retrieval.unpack_tokens(b, dim)) for n, b in packed)
        if len(docs) < len(ns):
            return None  # a memory vanished mid-search: rank this pool without MaxSim
        return retrieval.maxsim(qtok, [docs[n] for n in ns])

    def _now_tick(self, stored: int) -> int:
        if self.config.dynamics.clock == "wall":
            return int(time.time() // self.config.dynamics.tick_seconds)
        return stored

    def _scope(self, scope_id: int) -> Scope:
        s = self._scopes.get(scope_id)
        if s is None:
            s = self._scopes[scope_id] = self.store.scope_of(scope_id)
        return s

    def _memory(self, r: MemoryRow) -> Memory:
        return Memory(
            id=r.id,
            scope=self._scope(r.scope_id),
            kind="semantic" if r.kind == "semantic" else "episodic",
            content=r.content,
            role=r.role,
            event_time=datetime.fromtimestamp(r.event_time, tz=UTC),
            created_at=datetime.fromtimestamp(r.created_at, tz=UTC),
            keywords=tuple(json.loads(r.keywords)),
            access_count=r.access_count,
            last_access=(
                None if r.last_access is None else datetime.fromtimestamp(r.last_access, tz=UTC)
            ),
            metadata=json.loads(r.metadata),
            provenance=tuple(json.loads(r.provenance)),
        )

    def _decayed(self, e: EdgeRow, tick_now: int) -> float:
        d = self.config.dynamics
        return dynamics.decayed(e.weight, tick_now - e.tick, d.decay_rate)

    def _ticks(self, scope_ids: Sequence[int]) -> dict[int, int]:
        return {s: self._now_tick(self.store.scope_state(s)[0]) for s in set(scope_ids)}

    # -- writes ----------------------------------------------------------

    def ingest(
        self,
        groups: Sequence[Sequence[_Prepared]],
        used_ids: Sequence[Sequence[str]] = (),
    ) -> list[Memory]:
        """Store groups of memories; each group is one tick of its scope.

        Inside a group, memories are linked in order to the scope's previous
        episode (temporal edges); ``used_ids[i]`` co-activate with group
        ``i``'s memories (same scope only; unknown ids are ignored).
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
        known = self.store.rows_by_id(wanted) if wanted else {}
        if len(known) < len(wanted):
            logger.debug("ignoring %d unknown used_ids", len(wanted) - len(known))
        packed: list[tuple[int, bytes]] = []
        with self.store.tx() as db:
            state: dict[int, tuple[int, int | None]] = {}
            i = 0
            for gi, group in enumerate(groups):
                used = {
                    i: known[i] for i in (used_ids[gi] if gi < len(used_ids) else ()) if i in known
                }
                edges: list[EdgeRow] = []
                group_ns: dict[int, list[int]] = defaultdict(list)
                reply: dict[int, np.ndarray] = {}
                ticked: set[int] = set()
                for p in group:
                    sid = self.store.ensure_scope(db, p.scope)
                    if sid not in state:
                        state[sid] = self.store.scope_state(sid)
                    tick, last = state[sid]
                    if sid not in ticked:
                        tick += 1
                        ticked.add(sid)
                    tick_now = self._now_tick(tick)
                    tags = " ".join(_tag(a, p.kind) for a in self.store.ancestors(sid))
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
                        embedding=vecs[i].tobytes(),
                    )
                    if toks is not None:
                        packed.append((n, retrieval.pack_tokens(toks[i])))
                    if p.kind == "episodic" and p.linked:
                        if last is not None:
                            a, b = dynamics.edge_key(last, n)
                            edges.append(EdgeRow(a, b, sid, d.temporal_weight, tick_now))
                        last = n
                    state[sid] = (tick, last)
                    rows_n.append(n)
                    scope_ids.append(sid)
                    if self._holding is not None:
                        self._holding.setdefault(p.kind, set()).add(sid)
                    group_ns[sid].append(n)
                    reply[sid] = vecs[i]  # the group's last message in the scope: the reply
                    i += 1
                self.store.upsert_edges(db, edges)
                foreign = [r.id for r in used.values() if r.scope_id not in group_ns]
                if foreign:  # edges never cross scopes
                    logger.debug("ignoring %d used_ids of other scopes", len(foreign))
                for sid, ns in group_ns.items():
                    extra = [r for r in used.values() if r.scope_id == sid]
                    if extra:
                        self._learn_turn(db, sid, ns, extra, reply[sid], state[sid][0])
            for sid, (tick, last) in state.items():
                self.store.set_scope_state(db, sid, tick, last)
            if packed:
                self.store.put_token_vectors(db, packed)
            # read back inside the transaction, by id: after the commit another
            # process may already have deleted a row
            rows = self.store.rows_by_id(ids)
        try:
            self.index.upsert(ids, vecs, scope_ids, [p.kind for p in flat])
            self.store.mark_indexed(list(zip(rows_n, ids, strict=True)))
        except StorageError as exc:
            self._needs_reconcile = True
            logger.warning("vector index update failed, will re-index on next use: %s", exc)
        return [self._memory(rows[i]) for i in ids]

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
                f"a memory with id {next(iter(taken))!r} exists; delete it first or choose "
                f"another id"
            )
        # a deleted memory of the same id may still have its vector in the index:
        # remove it now, so the tombstone cannot later delete the new vector
        gone = [t for t in self.store.tombstones(chosen)]
        if gone:
            self.index.delete(gone)
            self.store.clear_tombstones([g[0] for g in gone])

    def _insert_fact(self, db: Any, scope_id: int, p: _Prepared, vec: np.ndarray) -> int:
        """Insert one semantic memory (no tick, no temporal edge); indexed on reconcile."""
        tags = " ".join(_tag(a, "semantic") for a in self.store.ancestors(scope_id))
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
        )

    def _learn_turn(
        self,
        db: Any,
        scope_id: int,
        new: Sequence[int],
        used: Sequence[MemoryRow],
        reply: np.ndarray,
        tick: int,
    ) -> None:
        """What one recorded turn learns: the one place that decides "what was used".

        Of the memories the caller passed as used, the ones the turn's reply
        (its last message in the scope) is close to co-activate with its new
        messages (:func:`dynamics.attributed`, ``attribution_margin`` and
        ``attribution_floor``; a used memory without a vector of this
        embedder counts as close); the pairs are ``used_pairs``
        (:func:`dynamics.recorded_pairs`); edges between the used memories
        the reply did not draw on and those it did are weakened
        (``unused_weakening``); then the strength of every memory touched is
        bounded (``strength_budget``).
        """
        d = self.config.dynamics
        tick_now = self._now_tick(tick)
        dim = reply.shape[0]
        sims = []
        for r in used:
            v = r.vector()
            sims.append(float(v @ reply) if v is not None and v.shape[0] == dim else 1.0)
        keep = dynamics.attributed(sims, d.attribution_margin, d.attribution_floor)
        chosen = [used[i].n for i in keep]
        if not chosen:
            return
        pairs = dynamics.recorded_pairs(new, chosen, d.used_pairs)
        self._reinforce_tx(db, [*new, *chosen], scope_id, tick_now, pairs)
        unused = [r.n for r in used if r.n not in set(chosen)]
        if d.unused_weakening > 0 and unused:
            among = self.store.edges_among(sorted({*unused, *chosen}))
            weak = [
                EdgeRow(
                    e.a,
                    e.b,
                    e.scope_id,
                    dynamics.weakened(self._decayed(e, tick_now), d.unused_weakening),
                    tick_now,
                )
                for (a, b), e in among.items()
                if (a in unused) != (b in unused)
            ]
            self._keep_or_prune(db, weak)
        if d.strength_budget > 0:
            touched = sorted({*new, *chosen})
            edges = [e for e in self.store.edges_of(touched) if e.scope_id == scope_id]
            w = {(e.a, e.b): self._decayed(e, tick_now) for e in edges}
            strength = dynamics.strengths((a, b, x) for (a, b), x in w.items())
            scaled = dynamics.scaled_to_budget(w, strength, d.strength_budget)
            self._keep_or_prune(
                db,
                [
                    EdgeRow(a, b, scope_id, x, tick_now)
                    for (a, b), x in scaled.items()
                    if x < w[(a, b)]
                ],
            )

    def _keep_or_prune(self, db: Any, edges: Sequence[EdgeRow]) -> None:
        """Write weakened edges; drop those under ``prune_below``."""
        floor = self.config.dynamics.prune_below
        keep = [e for e in edges if dynamics.survives(e.weight, floor)]
        drop = [(e.a, e.b) for e in edges if not dynamics.survives(e.weight, floor)]
        if drop:
            self.store.delete_edges(db, drop)
        if keep:
            self.store.upsert_edges(db, keep)

    def _reinforce_tx(
        self,
        db: Any,
        ns: Sequence[int],
        scope_id: int,
        tick_now: int,
        pairs: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """Reinforce ``pairs`` (default: every pair of ``ns``) among the live memories."""
        d = self.config.dynamics
        # memories deleted since they were read (by another process or object)
        # get no edges: an edge to a missing memory would be an orphan
        alive = self.store.existing(db, ns)
        if pairs is None:
            pairs = dynamics.co_activation_pairs([n for n in ns if n in alive])
        else:
            pairs = [(a, b) for a, b in pairs if a in alive and b in alive]
        if not pairs:
            return
        existing = self.store.edges_among(sorted(set(ns)))
        updated = []
        for a, b in pairs:
            e = existing.get((a, b))
            w = 0.0 if e is None else self._decayed(e, tick_now)
            updated.append(
                EdgeRow(a, b, scope_id, dynamics.reinforced(w, d.learning_rate), tick_now)
            )
        self.store.upsert_edges(db, updated)

    def reinforce(self, ids: Sequence[str]) -> int:
        """Co-activate memories (pairs within one scope); returns pairs updated."""
        rows = self.store.rows_by_id(ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise MemoryNotFoundError(f"no memory with id {missing[0]!r}")
        by_scope: dict[int, list[int]] = defaultdict(list)
        for r in rows.values():
            by_scope[r.scope_id].append(r.n)
        ticks = self._ticks(list(by_scope))
        with self.store.tx() as db:
            for sid, ns in by_scope.items():
                self._reinforce_tx(db, ns, sid, ticks[sid])
        return sum(len(dynamics.co_activation_pairs(ns)) for ns in by_scope.values())

    def get(self, id: str) -> Memory:
        if not isinstance(id, str):
            raise InvalidInputError(f"id must be a str, got {type(id).__name__}")
        row = self.store.rows_by_id([id]).get(id)
        if row is None:
            raise MemoryNotFoundError(f"no memory with id {id!r}; it was deleted or never added")
        return self._memory(row)

    def delete(self, ids: Sequence[str]) -> int:
        rows = self.store.rows_by_id(ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise MemoryNotFoundError(f"no memory with id {missing[0]!r}; nothing was deleted")
        with self.store.tx() as db:
            self.store.delete_memories(db, list(rows.values()))
        try:
            self.index.delete([(r.id, r.scope_id, r.kind) for r in rows.values()])
            self.store.clear_tombstones(list(rows))
        except StorageError as exc:
            self._needs_reconcile = True
            logger.warning("vector delete failed, will retry on next use: %s", exc)
        return len(rows)

    # -- search ----------------------------------------------------------

    def search(
        self,
        query: str,
        scope: Sequence[str],
        k: int,
        *,
        learn: bool = True,
        spread: bool = True,
        reference_time: TimeLike | None = None,
        kind: Kind = "episodic",
        semantic_k: int | None = None,
        max_tokens: int | None = None,
        count_tokens: TokenCount | None = None,
    ) -> SearchResult:
        query = _check_content(query, "query")
        prefix = normalize_prefix(scope)
        k = _check_k(k)
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0
        ):
            raise InvalidInputError(f"max_tokens must be an int >= 0 or None, got {max_tokens!r}")
        if max_tokens is not None:
            return self._search_budget(
                query,
                scope,
                k,
                max_tokens,
                count_tokens,
                learn=learn,
                spread=spread,
                reference_time=reference_time,
                kind=kind,
                semantic_k=semantic_k,
            )
        sem_k = self.config.retrieval.semantic_k if semantic_k is None else semantic_k
        if isinstance(sem_k, bool) or not isinstance(sem_k, int) or sem_k < 0:
            raise InvalidInputError(f"semantic_k must be an int >= 0, got {semantic_k!r}")
        ref_given = None if reference_time is None else to_timestamp(reference_time, default=0.0)
        if self._needs_reconcile:
            self.reconcile()
        node: int | None
        if prefix:
            node = self.store.find_scope(prefix)
            if node is None:
                return SearchResult(query, ())
            nodes = self.store.descendants(node)
        else:  # (): every scope, one candidate pool
            node, nodes = None, self.store.all_scope_ids()
        paths: list[tuple[Kind, int]] = [(kind, k)]
        if kind == "episodic" and sem_k > 0:
            paths.append(("semantic", sem_k))
        hits: list[Hit] = []
        learned: list[list[int]] = []
        rows: dict[int, RankRow] = {}
        prunable: list[tuple[int, int]] = []
        holding = {pk: self.store.nodes_holding(nodes, pk) for pk, _ in paths}
        # the query embedding (ONNX) and the dense queries (GIL released) overlap
        # the FTS5 queries below
        pending = self._aux().submit(self._dense, query, paths, holding)
        lexical = {
            pk: self._lexical(query, node, nodes, pk, pkk) if holding[pk] else {}
            for pk, pkk in paths
        }
        mass = self._lexical_mass(query)
        # while the dense query runs: the ranking columns of the lexical candidates
        known = {pk: self.store.rank_rows((), lex) if lex else {} for pk, lex in lexical.items()}
        qv, qtok, dense = pending.result()
        for path_kind, path_k in paths:
            if not holding[path_kind]:
                continue
            found = self._search_kind(
                qv,
                qtok,
                dense[path_kind],
                nodes,
                path_kind,
                path_k,
                spread,
                ref_given,
                lexical[path_kind],
                known[path_kind],
                mass,
            )
            if found is None:
                continue
            ranking, path_rows, path_hits, path_prunable = found
            if path_kind == "semantic":
                # facts beside episodes only when they match; a semantic search is as asked
                floor = self.config.retrieval.semantic_min_relevance if kind == "episodic" else 0
                path_hits = [
                    replace(h, provenance="semantic") for h in path_hits if h.score >= floor
                ]
                if kind == "episodic":  # only the facts returned co-activate
                    shown = {h.memory.id for h in path_hits}
                    ranking = replace(
                        ranking,
                        base_top=[n for n in ranking.base_top if path_rows[n].id in shown],
                        associations=[n for n in ranking.associations if path_rows[n].id in shown],
                    )
            hits.extend(path_hits)
            learned.append(self._coactive(ranking))
            rows.update(path_rows)
            prunable.extend(path_prunable)
        if learn and learned:
            self._learn(learned, rows, prunable)
        return SearchResult(query, tuple(hits))

    def _search_budget(
        self,
        query: str,
        scope: Sequence[str],
        k: int,
        max_tokens: int,
        count_tokens: TokenCount | None,
        **opts: Any,
    ) -> SearchResult:
        """``search(k*)`` for the largest ``k* <= k`` whose hits fit ``max_tokens``.

        A budget means what ``k`` means: the hits of one ``search(k*)`` (the
        same base and association hits), never a longer ranking cut short. The
        first pass (read-only, ``k``) estimates ``k*`` from whole hits in
        :func:`~helamem.core.types.ranking_order`; ``k*`` then shrinks until its
        hits fit, or grows while the next one's do (so a budget costs about
        three to four searches); the final search learns (when asked) from
        exactly what is returned. Facts then fill what is left, in their order.
        """
        share = self.config.retrieval.association_share
        learn = bool(opts.pop("learn", True))
        wide = self.search(query, scope, k, learn=False, **opts)
        episodes = [h for h in wide if h.provenance != "semantic"]
        n = len(fit_tokens(episodes, max_tokens, count_tokens, share))

        def fits(m: int) -> SearchResult | None:
            res = self.search(query, scope, m, learn=False, **opts)
            eps = [h for h in res if h.provenance != "semantic"]
            kept = fit_tokens(eps, max_tokens, count_tokens, share)
            return res if len(kept) == len(eps) else None

        found = fits(n) if n else None
        while n > 0 and found is None:  # the estimate was too long: shrink
            n -= 1
            found = fits(n) if n else None
        while found is not None and n < min(k, len(episodes)):  # or too short: grow
            bigger = fits(n + 1)
            if bigger is None:
                break
            n, found = n + 1, bigger
        res = found if found is not None else wide
        if n == 0:
            facts = [h for h in wide if h.provenance == "semantic"]
            return SearchResult(query, tuple(fit_tokens(facts, max_tokens, count_tokens, share)))
        if learn:
            res = self.search(query, scope, n, learn=True, **opts)
        return SearchResult(query, tuple(fit_tokens(list(res), max_tokens, count_tokens, share)))

    def _coactive(self, ranking: retrieval.Ranking) -> list[int]:
        """The returned memories that co-activate: all, or the best ``learn_top``."""
        top = self.config.retrieval.learn_top
        if not top:
            return ranking.returned
        final = {n: ranking.base[n] + ranking.boost.get(n, 0.0) for n in ranking.returned}
        return sorted(final, key=lambda n: (-final[n], n))[:top]

    def _dense(
        self, query: str, paths: list[tuple[Kind, int]], holding: dict[Kind, list[int]]
    ) -> tuple[np.ndarray, np.ndarray | None, dict[Kind, list[tuple[str, float]]]]:
        """The query vector, its token vectors (late interaction on) and each path's
        dense candidates (runs on the aux thread)."""
        vecs, toks = self._embed_tokens([query])
        qv, qtok = vecs[0], (toks[0] if toks else None)
        m = self.config.retrieval.candidates
        dense = {
            pk: self.index.query(qv, max(m, pkk), holding[pk], pk)
            for pk, pkk in paths
            if holding[pk]
        }
        if getattr(self.index, "wants_reconcile", False):
            # the index met vectors not yet in HNSW (another process's): fold them in
            self._needs_reconcile = True
        return qv, qtok, dense

    def _lexical_mass(self, query: str) -> float:
        """The sum of BM25 idf over the query's words (see :func:`retrieval.relevance`)."""
        terms = fts_terms(query)
        if not terms:
            return 0.0
        rows, df = self.store.term_stats(terms)
        return sum(retrieval.bm25_idf(d, rows) for d in df)

    def _lexical(
        self, query: str, node: int | None, nodes: list[int], kind: Kind, k: int
    ) -> dict[int, float]:
        terms = fts_terms(query)
        max_df = self.config.retrieval.lexical_max_df
        max_terms = self.config.retrieval.lexical_max_terms
        if len(terms) > 1 and (max_df < 1.0 or 0 < max_terms < len(terms)):
            rows, df = self.store.term_stats(terms)
            terms = drop_common(terms, df, rows, max_df, max_terms=max_terms)
        match = fts_match(terms)
        if not match:
            return {}
        m = max(self.config.retrieval.candidates, k)
        if self._holding is None:
            self._holding = self.store.holding()
        if node is None or self._holding.get(kind, set()) <= set(nodes):
            # Everything of this kind lies under the prefix (single-tenant stores):
            # skip the scope filter (an AND with every posting of the scope) and
            # over-fetch; rows of another scope or kind are dropped by the caller.
            return dict(self.store.lexical(match, None, 2 * m))
        return dict(self.store.lexical(match, _tag(node, kind), m))

    def _aux(self) -> ThreadPoolExecutor:
        if self._aux_pool is None:
            self._aux_pool = ThreadPoolExecutor(1, thread_name_prefix="helamem-embed")
        return self._aux_pool

    def _search_kind(
        self,
        qv: np.ndarray,
        qtok: np.ndarray | None,
        dense_ids: list[tuple[str, float]],
        nodes: list[int],
        kind: Kind,
        k: int,
        spread: bool,
        ref_given: float | None,
        lex: dict[int, float],
        lex_rows: dict[int, RankRow],
        mass: float,
    ) -> tuple[retrieval.Ranking, dict[int, RankRow], list[Hit], list[tuple[int, int]]] | None:
        cfg = self.config.retrieval
        allowed = set(nodes)
        # ranking columns only; _hits loads the full rows of the returned memories
        have = {r.id for r in lex_rows.values()}
        fetched = self.store.rank_rows([i for i, _ in dense_ids if i not in have], ())
        rows = {
            n: r
            for n, r in (lex_rows | fetched).items()
            if r.scope_id in allowed and r.kind == kind
        }
        if not rows:
            return None
        pool = self._pool(rows, qv, lex, qtok)
        ref = retrieval.reference_time(pool, ref_given)
        ranking = retrieval.rank(pool, k=k, config=cfg, ref_time=ref, lexical_mass=mass)
        prunable: list[tuple[int, int]] = []
        if spread and cfg.activation_alpha > 0 and cfg.max_flipped > 0:
            seeds = retrieval.seeds(ranking.base, cfg)
            triples, prunable = self._seed_edges(seeds, rows)
            if triples:
                extra_ns = {j for _, j, _ in triples if j not in rows}
                extra = {
                    n: r
                    for n, r in self.store.rank_rows((), extra_ns).items()
                    if r.scope_id in allowed and r.kind == kind
                }
                rows.update(extra)
                ranking = retrieval.rank(
                    pool,
                    k=k,
                    config=cfg,
                    ref_time=ref,
                    edges=triples,
                    neighbours=self._pool(extra, qv, {}, qtok),
                    lexical_mass=mass,
                )
        return ranking, rows, self._hits(ranking, rows, pool, qv, lex), prunable

    def _pool(
        self,
        rows: dict[int, RankRow],
        qv: np.ndarray,
        lex: dict[int, float],
        qtok: np.ndarray | None = None,
    ) -> retrieval.Pool:
        ns = tuple(sorted(rows))
        if not ns:
            return retrieval.Pool((), np.zeros(0), np.zeros(0), np.zeros(0))
        dim = qv.shape[0]
        embs = [rows[n].embedding for n in ns]
        size = 4 * dim
        if all(e is not None and len(e) == size for e in embs):
            # one buffer, one float32 matrix (the same values np.stack gives)
            mat = np.frombuffer(b"".join(embs), dtype=np.float32).reshape(len(ns), dim)  # type: ignore[arg-type]
        else:
            mat = np.stack(
                [
                    v
                    if (v := rows[n].vector()) is not None and v.shape[0] == dim
                    else np.zeros(dim)
                    for n in ns
                ]
            )
        return retrieval.Pool(
            ns,
            np.asarray(mat @ qv, dtype=np.float64),
            np.array([lex.get(n, 0.0) for n in ns], dtype=np.float64),
            np.array([rows[n].event_time for n in ns], dtype=np.float64),
            self._late(qtok, ns),
        )

    def _seed_edges(
        self, seeds: dict[int, float], rows: dict[int, RankRow]
    ) -> tuple[list[tuple[int, int, float]], list[tuple[int, int]]]:
        if not seeds:
            return [], []
        prunable: list[tuple[int, int]] = []
        triples = [(s, j, w) for s, lst in self._strongest(seeds, prunable).items() for w, j in lst]
        if self.config.retrieval.spread_hops > 1 and triples:
            triples.extend(self._second_hop(seeds, triples, prunable))
        cfg = self.config.retrieval
        if cfg.fan_power > 0 and triples:  # hub-resistant: scale by both ends' strength
            strength = self._strength({n for s, j, _ in triples for n in (s, j)})
            triples = [
                (
                    s,
                    j,
                    dynamics.fan_scaled(
                        w,
                        strength.get(s, 0.0),
                        strength.get(j, 0.0),
                        cfg.fan_reference,
                        cfg.fan_power,
                    ),
                )
                for s, j, w in triples
            ]
        return triples, prunable

    def _strength(self, nodes: Collection[int]) -> dict[int, float]:
        """Each node's strength: the sum of its edges' decayed weights."""
        edges = self.store.edges_of(list(nodes))
        ticks = self._ticks([e.scope_id for e in edges])
        return dynamics.strengths((e.a, e.b, self._decayed(e, ticks[e.scope_id])) for e in edges)

    def _strongest(
        self,
        nodes: Collection[int],
        prunable: list[tuple[int, int]],
        exclude: Collection[int] = (),
    ) -> dict[int, list[tuple[float, int]]]:
        """Each node's strongest surviving neighbours ``(decayed weight, n)``, best
        first, at most ``neighbors_per_seed``; edges that decayed away go to ``prunable``."""
        edges = self.store.edges_of(list(nodes))
        ticks = self._ticks([e.scope_id for e in edges])
        floor = self.config.dynamics.prune_below
        per: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for e in edges:
            w = self._decayed(e, ticks[e.scope_id])
            if not dynamics.survives(w, floor):
                prunable.append((e.a, e.b))
                continue
            for a, b in ((e.a, e.b), (e.b, e.a)):
                if a in nodes and b not in exclude:
                    per[a].append((w, b))
        limit = self.config.retrieval.neighbors_per_seed
        for lst in per.values():
            lst.sort(key=lambda p: (-p[0], p[1]))
            del lst[limit:]
        return per

    def _second_hop(
        self,
        seeds: dict[int, float],
        first: Sequence[tuple[int, int, float]],
        prunable: list[tuple[int, int]],
    ) -> list[tuple[int, int, float]]:
        """``(seed, k, w_sj * w_jk)`` for the first-hop neighbours' strongest edges."""
        via: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for s, j, w in first:
            via[j].append((s, w))
        best: dict[tuple[int, int], float] = {}
        for j, lst in self._strongest(via, prunable, exclude=seeds).items():
            for w_jk, k in lst:
                for s, w_sj in via[j]:
                    if k != s:
                        best[(s, k)] = max(best.get((s, k), 0.0), w_sj * w_jk)
        return [(s, k, w) for (s, k), w in sorted(best.items())]

    def _hits(
        self,
        ranking: retrieval.Ranking,
        rows: dict[int, RankRow],
        pool: retrieval.Pool,
        qv: np.ndarray,
        lex: dict[int, float],
    ) -> list[Hit]:
        dense = dict(zip(pool.ns, pool.dense.tolist(), strict=True))
        full = self.store.rows_by_n([*ranking.base_top, *ranking.associations])
        hits = []

        for prov, ns in (("base", ranking.base_top), ("association", ranking.associations)):
            for n in ns:
                if n not in full:  # deleted by another process or object during the search
                    continue
                r = rows[n]
                if n not in dense:
                    v = r.vector()
                    dense[n] = float(v @ qv) if v is not None and v.shape == qv.shape else 0.0
                b = ranking.boost.get(n, 0.0)
                base = ranking.base[n]
                hits.append(
                    Hit(
                        memory=self._memory(full[n]),
                        score=ranking.relevance.get(n, 0.0),
                        activation=base + b,
                        base=base,
                        boost=b,
                        dense=dense[n],
                        lexical=lex.get(n, 0.0),
                        provenance=prov,  # type: ignore[arg-type]
                        via=tuple(
                            (rows[s].id, round(w, 6))
                            for s, w in ranking.via.get(n, [])
                            if s in rows
                        ),
                    )
                )
        hits.sort(key=lambda h: -h.score)  # best first (stable: base before association on ties)
        return hits

    def _learn(
        self,
        groups: Sequence[Sequence[int]],
        rows: dict[int, RankRow],
        prunable: Sequence[tuple[int, int]],
    ) -> None:
        """Co-activate each group's memories (per scope), count the accesses: one tx."""
        by_scope: list[tuple[int, list[int]]] = []
        for group in groups:
            per: dict[int, list[int]] = defaultdict(list)
            for n in group:
                per[rows[n].scope_id].append(n)
            by_scope.extend(per.items())
        ticks = self._ticks([sid for sid, _ in by_scope])
        with self.store.tx() as db:
            if prunable:
                self.store.delete_edges(db, prunable)
            for sid, ns in by_scope:
                self._reinforce_tx(db, ns, sid, ticks[sid])
            self.store.touch(db, [n for g in groups for n in g], time.time())

    # -- maintenance -----------------------------------------------------

    def list_scopes(self, prefix: Sequence[str] | None) -> list[Scope]:
        if prefix is None:
            return self.store.scopes_with_memories(None)
        node = self.store.find_scope(normalize_scope(prefix))
        if node is None:
            return []
        return self.store.scopes_with_memories(self.store.descendants(node))

    def _nodes(self, scope: Sequence[str] | None) -> list[int] | None:
        if scope is None:
            return None
        node = self.store.find_scope(normalize_scope(scope))
        return [] if node is None else self.store.descendants(node)

    def decay(self, scope: Sequence[str] | None) -> dict[str, int]:
        """Apply lazy decay to every edge now; prune those under the threshold."""
        nodes = self._nodes(scope)
        if nodes == []:
            return {"pruned": 0, "edges": 0}
        if nodes is None:
            nodes = [int(r[0]) for r in self.store.db.execute("SELECT id FROM scopes")]
        edges = self.store.edges_in_scopes(nodes) if nodes else []
        ticks = self._ticks([e.scope_id for e in edges])
        d = self.config.dynamics
        keep, drop = [], []
        for e in edges:
            t = ticks[e.scope_id]
            w = self._decayed(e, t)
            if dynamics.survives(w, d.prune_below):
                keep.append(EdgeRow(e.a, e.b, e.scope_id, w, max(t, e.tick)))
            else:
                drop.append((e.a, e.b))
        with self.store.tx() as db:
            self.store.delete_edges(db, drop)
            self.store.upsert_edges(db, keep)
        return {"pruned": len(drop), "edges": len(keep)}

    def stats(self, scope: Sequence[str] | None) -> Stats:
        nodes = self._nodes(scope)
        empty = nodes == []
        c = self.store.counts(nodes) if not empty else {}
        ep, se = int(c.get("episodic", 0)), int(c.get("semantic", 0))
        return Stats(
            memories=ep + se,
            episodic=ep,
            semantic=se,
            edges=int(c.get("edges", 0)),
            mean_edge_weight=float(c.get("mean_edge_weight", 0.0)),
            scopes=0 if empty else len(self.store.scopes_with_memories(nodes)),
            unindexed=int(c.get("unindexed", 0)),
            vectors=self.index.count(),
            embedder=self.embedder.name,
            schema_version=self.store.schema_version(),
        )

"""Consolidation (Hebbian distillation), forgetting and scope deletion.

Like :mod:`helamem.core._core`, these run on the store's owner thread. A
consolidation is three steps so that no LLM call holds the store:
:func:`plan_consolidation` (owner thread: similarity edges, hubs, clusters),
the distiller (caller's thread or event loop), :func:`apply_consolidation`
(owner thread: de-duplicate and write facts, one transaction).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _turn_count, dynamics
from ._core import MISSING_OK_HINT, Core, known_scope, prepare, scope_tag
from ._inputs import check_content
from ._reembed import refuse_switched
from .distill import (
    DISTILLED_FROM,
    ClusterPlan,
    FactDraft,
    build_cluster,
    distilled_from,
    find_hubs,
    signature,
    similarity_edges,
)
from .errors import InvalidInputError, StorageError
from .jsontext import load_metadata
from .storage.base import DRAWN_FROM, EdgeRow, MemoryRow
from .text import keywords, safe_text
from .types import Memory, NewMemory, dump_json, normalize_scope

__all__ = [
    "ConsolidationReport",
    "ForgetReport",
    "apply_consolidation",
    "delete_scope",
    "forget",
    "plan_consolidation",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConsolidationReport:
    """What one consolidation changed (a consolidation with nothing new changes nothing
    and reports zeros, except ``hubs`` and ``skipped_unchanged``, what it examined).

    Attributes:
        scopes: Scopes whose clusters it distilled.
        similarity_edges: Similarity edges it added or strengthened.
        hubs: Hubs it found in the scopes' graphs (examined, changed or not).
        clusters: Clusters it distilled (and recorded as distilled).
        skipped_unchanged: Clusters it met already distilled, left alone.
        facts_added: Facts it stored.
        facts_updated: Facts stored before that it changed (a near-identical new
            fact rewrote their text, provenance or time); each counts once.
        facts_dropped: Drafts not stored (citing nothing known, mixing scopes,
            or of a cluster that changed or was distilled meanwhile).
        fact_ids: The facts it added or changed, each once.
        failed_scopes: Scopes whose LLM call failed (after retries): none of their
            clusters was recorded, so the next consolidation sends them again; the
            other scopes' facts are stored (when every call fails, ``consolidate``
            raises instead).
    """

    scopes: int = 0
    similarity_edges: int = 0
    hubs: int = 0
    clusters: int = 0
    skipped_unchanged: int = 0
    facts_added: int = 0
    facts_updated: int = 0
    facts_dropped: int = 0
    fact_ids: tuple[str, ...] = ()
    failed_scopes: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class ConsolidationPlan:
    """Clusters to distil, per scope node, and counts from the planning step.

    ``turns_seen``: each scope node's stored-turn count (:mod:`._turn_count`) read
    before its episodes; applying the plan counts those turns as consolidated.
    """

    clusters: tuple[ClusterPlan, ...]
    similarity_edges: int
    hubs: int
    skipped_unchanged: int
    turns_seen: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """Forgetting candidates (and whether they were deleted)."""

    candidates: tuple[Memory, ...] = field(default_factory=tuple)
    deleted: int = 0
    dry_run: bool = True


def _mark_key(node: int) -> str:
    return f"consolidated_upto:{node}"


def _tried_key(node: int) -> str:
    """Meta key: when a consolidation last sent this scope node's clusters to distil."""
    return f"distill_tried:{node}"


def _note_tried(core: Core, clusters: Sequence[ClusterPlan]) -> None:
    """Record that these clusters' scopes are sent to distil now (whether their calls
    succeed or not), so that the next plan fills ``max_clusters`` from the scopes tried
    longest ago first: a tenant whose calls keep failing never holds the others back."""
    if not clusters:
        return
    now = repr(time.time())
    with core.store.tx() as db:
        for sid in sorted({c.scope_id for c in clusters}):
            core.store.set_meta(db, _tried_key(sid), now)


def _matrix(embs: Sequence[bytes | None], dim: int) -> np.ndarray:
    return (
        np.stack(
            [
                np.frombuffer(e, dtype=np.float32)
                if e is not None and len(e) == 4 * dim
                else np.zeros(dim, dtype=np.float32)
                for e in embs
            ]
        )
        if embs
        else np.zeros((0, dim), dtype=np.float32)
    )


def plan_consolidation(core: Core, scope: Sequence[str]) -> ConsolidationPlan:
    """Add similarity edges for new episodes, find hubs, pick undistilled clusters: at
    most ``max_clusters``, one per scope in turn, the scopes tried longest ago first."""
    cfg = core.config.consolidation
    store = core.store
    node = store.find_scope(normalize_scope(scope))
    if node is None:
        return ConsolidationPlan((), 0, 0, 0)
    dim = core.embedder.dimension
    per_scope: dict[int, list[ClusterPlan]] = {}
    sim_total = hubs_total = skipped = 0
    nodes = store.nodes_holding(store.descendants(node), "episodic")
    seen = _turn_count.turns_seen(store, nodes)  # before the episodes: each is among them
    for sid in nodes:
        clusters = per_scope.setdefault(sid, [])
        ns, ids, embs = store.vectors_of(sid, "episodic")
        mat = _matrix(embs, dim)
        mark = int(store.get_meta(_mark_key(sid)) or 0)
        new_idx = [i for i, n in enumerate(ns) if n > mark]
        with store.tx() as db:
            # read under the writer lock: a turn another writer stored meanwhile moved
            # it on, and an edge it co-activated then must not get an older tick back
            tick = core._ticks([sid])[sid]
            if new_idx:
                sims = similarity_edges(
                    [ns[i] for i in new_idx],
                    mat[new_idx],
                    ns,
                    mat,
                    cfg.similarity_neighbors,
                    cfg.similarity_min_cos,
                    cfg.similarity_weight,
                )
                # ns was read before this transaction: another writer may have deleted
                # some since, and they get no edge (checked under the writer lock)
                alive = store.existing(db, {n for a, b, _ in sims for n in (a, b)})
                sims = [t for t in sims if t[0] in alive and t[1] in alive]
                existing = store.edges_among(sorted({n for a, b, _ in sims for n in (a, b)}))
                upd = []
                for a, b, w in sims:
                    e = existing.get((a, b))
                    cur = 0.0 if e is None else core._decayed(e, tick)
                    if w > cur:
                        upd.append(EdgeRow(a, b, sid, w, tick if e is None else max(tick, e.tick)))
                store.upsert_edges(db, upd)
                sim_total += len(upd)
                store.set_meta(db, _mark_key(sid), str(ns[-1]))
        live = []
        for e in store.edges_in_scopes([sid]):
            w = core._decayed(e, tick)
            if dynamics.survives(w, core.config.dynamics.prune_below):
                live.append((e.a, e.b, w))
        position = {n: i for i, n in enumerate(ns)}
        live = [t for t in live if t[0] in position and t[1] in position]
        hubs = find_hubs(live, cfg.hub_min_degree)
        rows = store.rows_by_n(ns) if hubs else {}
        if len(rows) < len(ns) and hubs:  # deleted since ns was read: never a member
            live = [t for t in live if t[0] in rows and t[1] in rows]
            hubs = find_hubs(live, cfg.hub_min_degree)
        hubs_total += len(hubs)
        taken: set[int] = set()
        for hub in hubs:
            if len(clusters) >= cfg.max_clusters:
                break
            if hub in taken:
                continue
            members = build_cluster(hub, live, cfg.cluster_size)
            member_ids = [ids[position[n]] for n in members]
            sig = signature(member_ids)
            # a known cluster takes its members as it did when it was distilled, so the
            # hubs inside it never seed overlapping clusters of the same episodes
            taken.update(members)
            if store.cluster_known(sid, sig, max(rows[n].created_at for n in members)):
                skipped += 1
                continue
            clusters.append(
                ClusterPlan(
                    scope_id=sid,
                    hub=hub,
                    members=tuple(members),
                    ids=tuple(member_ids),
                    texts=tuple(
                        f"{rows[n].role}: {rows[n].content}" if rows[n].role else rows[n].content
                        for n in members
                    ),
                    contents=tuple(rows[n].content for n in members),
                    vectors=mat[[position[n] for n in members]],
                    signature=sig,
                )
            )
    chosen = _fair(core, per_scope, cfg.max_clusters)
    _note_tried(core, chosen)
    # a scope some of whose clusters max_clusters left for later is not done: its turns
    # stay due (a recorder consolidates it again after fewer new turns)
    chosen_per = Counter(c.scope_id for c in chosen)
    seen = tuple((sid, t) for sid, t in seen if chosen_per[sid] == len(per_scope.get(sid, ())))
    return ConsolidationPlan(chosen, sim_total, hubs_total, skipped, seen)


def _fair(core: Core, per_scope: dict[int, list[ClusterPlan]], cap: int) -> tuple[ClusterPlan, ...]:
    """At most ``cap`` clusters, one per scope in turn (the scope tried longest ago
    first: :func:`_note_tried`), so that every tenant under a prefix gets its share."""
    now = time.time()
    order = sorted(
        (sid for sid, found in per_scope.items() if found),
        key=lambda sid: (_tried_at(core.store.get_meta(_tried_key(sid)), now), sid),
    )
    out: list[ClusterPlan] = []
    for rank in range(cap):
        for sid in order:
            if len(out) < cap and rank < len(per_scope[sid]):
                out.append(per_scope[sid][rank])
    return tuple(out)


def _tried_at(raw: str | None, now: float) -> float:
    """A scope's last distil attempt (Unix seconds), read leniently: missing, unreadable
    or not finite is never (0), and so is a time later than ``now`` (a clock set back):
    such a scope goes first and is noted afresh, rather than last for good."""
    try:
        at = float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0
    return at if math.isfinite(at) and at <= now else 0.0


def apply_consolidation(
    core: Core, plan: ConsolidationPlan, drafts: Sequence[FactDraft]
) -> ConsolidationReport:
    """De-duplicate and store facts with provenance; mark the clusters distilled.

    A cluster one of whose members is gone by the write (deleted while the
    distiller read it) contributes no fact and is not recorded: a fact must not
    repeat a deleted episode; the survivors are distilled again later. A draft
    whose distiller was shown such an episode is dropped too (``FactDraft.seen``:
    a fact rests on every episode shown), and the clusters it was shown are not
    recorded. A cluster another consolidation recorded meanwhile (two over one
    scope at once) contributes no fact either: its facts are stored once.
    """
    cfg = core.config.consolidation
    store = core.store
    owners: dict[str, list[tuple[int, str]]] = {}  # episode id -> its clusters' keys
    members: dict[tuple[int, str], tuple[str, ...]] = {}  # cluster key -> its episode ids
    for c in plan.clusters:
        members[c.scope_id, c.signature] = c.ids
        for i in c.ids:
            owners.setdefault(i, []).append((c.scope_id, c.signature))
    present = store.rows_by_id(list(owners))
    kept: list[tuple[FactDraft, int, tuple[str, ...]]] = []
    dropped = 0
    for d in drafts:
        src = tuple(i for i in dict.fromkeys(d.source_ids) if i in present)
        scopes = {present[i].scope_id for i in src}
        if not src or len(scopes) != 1 or not _storable(d.text):
            dropped += 1  # cites nothing known, mixes scopes, or no text add() takes
            continue
        kept.append((d, scopes.pop(), src))
    vecs = core._embed([d.text for d, _, _ in kept]) if kept else np.zeros((0, 1))
    dim = core.embedder.dimension
    existing: dict[int, tuple[list[MemoryRow], np.ndarray]] = {}
    added: list[tuple[int, str]] = []
    updated: set[str] = set()  # facts this run changed that it did not add
    produced: dict[tuple[int, str], int] = {}  # cluster -> drafts stored (added or merged)
    fact_ids: list[str] = []  # facts added or changed
    now = time.time()
    with store.tx() as db:
        refuse_switched(core)  # the facts' vectors: of the store's embedder
        # under the writer lock: which clusters lost a member since the distiller saw
        # it, and which another consolidation distilled (and recorded) meanwhile
        alive = store.existing(db, {n for c in plan.clusters for n in c.members})
        newest = {
            (c.scope_id, c.signature): max(present[i].created_at for i in c.ids if i in present)
            for c in plan.clusters
            if any(i in present for i in c.ids)
        }
        lost = {(c.scope_id, c.signature) for c in plan.clusters if not alive >= set(c.members)}
        stale = lost | {
            (c.scope_id, c.signature)
            for c in plan.clusters
            if (c.scope_id, c.signature) not in lost
            and store.cluster_known(c.scope_id, c.signature, newest[c.scope_id, c.signature])
        }
        spoiled: set[tuple[int, str]] = set()  # clusters of a draft shown a lost episode
        for (draft, sid, src), vec in zip(kept, vecs, strict=True):
            if any(k in stale for i in draft.source_ids for k in owners.get(i, ())):
                dropped += 1  # its cluster lost an episode, or was distilled meanwhile
                continue
            shown = {k for i in draft.seen for k in owners.get(i, ())}
            if shown & lost:  # its distiller was shown an episode deleted since: it rests
                dropped += 1  # on it, so it goes as it would with it (and its clusters
                spoiled |= shown | {k for i in src for k in owners.get(i, ())}  # come again)
                continue
            if sid not in existing:
                fns, _, fembs = store.vectors_of(sid, "semantic")
                frows = store.rows_by_n(fns)
                existing[sid] = ([frows[n] for n in fns], _matrix(fembs, dim))
            facts, mat = existing[sid]
            event_time = max(present[i].event_time for i in src)
            mine = {k for i in src for k in owners.get(i, ())}  # the clusters it comes from
            for k in mine:
                produced[k] = produced.get(k, 0) + 1
            # recorded on its fact: distilled again if the fact goes (see Core._delete_tx)
            came = {sig for s, sig in mine if s == sid}
            # the episodes it was written from, cited or not (all its distiller saw, else
            # the clusters of its sources): it goes with any of them
            drawn = {i for k in mine if k[0] == sid for i in members[k]}
            drawn.update(i for i in draft.seen if i in present and present[i].scope_id == sid)
            best = int(np.argmax(mat @ vec)) if len(facts) else -1
            if best >= 0 and float(mat[best] @ vec) >= cfg.dedup_cos:
                old = facts[best]
                prov = list(dict.fromkeys([*json.loads(old.provenance), *src]))
                when = max(event_time, old.event_time)
                meta = load_metadata(old.metadata)
                clusters = sorted(came.union(distilled_from(old.metadata)))
                drew = sorted(drawn.union(meta.get(DRAWN_FROM) or ()))
                new_meta = {**meta, DISTILLED_FROM: clusters, DRAWN_FROM: drew}
                meta_json = dump_json(new_meta, "metadata")
                same = draft.text == old.content and prov == json.loads(old.provenance)
                if same and when == old.event_time:  # it restates the fact: no change
                    if new_meta != meta:  # bookkeeping only
                        store.set_metadata(db, old.n, meta_json)
                        facts[best] = store.rows_by_n([old.n])[old.n]
                    continue
                tags = " ".join(scope_tag(a, "semantic") for a in store.ancestors(sid))
                store.update_fact(
                    db,
                    old,
                    content=draft.text,
                    search_text=safe_text(draft.text),
                    tags=tags,
                    keywords=dump_json(keywords(safe_text(draft.text)), "keywords"),
                    provenance=dump_json(prov, "provenance"),
                    event_time=when,
                    embedding=vec.tobytes(),
                    metadata=meta_json,
                )
                mat[best] = vec
                facts[best] = store.rows_by_n([old.n])[old.n]  # a later draft merges into this
                if old.id not in fact_ids:  # one fact added or updated counts once
                    updated.add(old.id)
                    fact_ids.append(old.id)
                continue
            p = prepare(
                NewMemory(
                    draft.text,
                    core._scope(sid),
                    None,
                    event_time,
                    {DISTILLED_FROM: sorted(came), DRAWN_FROM: sorted(drawn)},
                ),
                now=now,
                kind="semantic",
                provenance=src,
            )
            n = core._insert_fact(db, sid, p, vec)
            added.append((n, p.content))
            facts.append(store.rows_by_n([n])[n])
            existing[sid] = (facts, np.vstack([mat, vec[None, :]]) if len(mat) else vec[None, :])
            fact_ids.append(facts[-1].id)
        # facts distilled together start with an edge of their own graph
        by_scope: dict[int, list[int]] = {}
        for n, _ in added:
            by_scope.setdefault(store.rows_by_n([n])[n].scope_id, []).append(n)
        for sid, ns in by_scope.items():
            core._reinforce_tx(db, ns, sid, core._ticks([sid])[sid])
        cut: set[int] = getattr(drafts, "cut", set())  # scopes whose answer was cut short
        failed: dict[int, object] = getattr(drafts, "failed", {})  # scopes not answered
        # each fact is about the first cluster holding an episode it cites (clusters
        # overlap: a shared episode must not mark a cluster the answer never reached)
        reached: set[tuple[int, str]] = set()
        for d in drafts if cut else ():
            hit = next((c for c in plan.clusters if set(d.source_ids) & set(c.ids)), None)
            if hit is not None:
                reached.add((hit.scope_id, hit.signature))
        recorded = [
            c
            for c in plan.clusters
            if (c.scope_id, c.signature) not in stale | spoiled
            and c.scope_id not in failed
            and (c.scope_id not in cut or (c.scope_id, c.signature) in reached)
        ]
        for c in recorded:
            key = (c.scope_id, c.signature)
            store.record_cluster(db, *key, c.ids[0], produced.get(key, 0), newest[key])
        # the turns it saw of the scopes it finished are consolidated (a recorder's count
        # starts again); a scope whose call failed or was cut short, or with a cluster
        # changed since the plan, keeps them due
        finished = {(c.scope_id, c.signature) for c in recorded}
        left = {c.scope_id for c in plan.clusters if (c.scope_id, c.signature) not in finished}
        done = [(sid, t) for sid, t in plan.turns_seen if sid not in left]
        _turn_count.mark_consolidated(store, db, done)
    try:  # index new and updated facts
        core.reconcile()
    except StorageError as exc:  # stored: as an add's, their vectors wait for the re-index
        core._needs_reconcile = True
        logger.warning("vector index update failed, will re-index on next use: %s", exc)
    return ConsolidationReport(
        scopes=len({c.scope_id for c in recorded}),
        similarity_edges=plan.similarity_edges,
        hubs=plan.hubs,
        clusters=len(recorded),
        skipped_unchanged=plan.skipped_unchanged,
        facts_added=len(added),
        facts_updated=len(updated),
        facts_dropped=dropped,
        fact_ids=tuple(fact_ids),
        failed_scopes=tuple(core._scope(sid) for sid in failed),
    )


def _storable(text: str) -> bool:
    """Whether a draft's text is one ``add()`` stores (some visible text, not too long):
    a model's fact of zero-width or control characters alone is dropped, not raised
    from the write (which would lose the call's other facts)."""
    try:
        check_content(text)
    except InvalidInputError:
        return False
    return True


def forget(
    core: Core,
    scope: Sequence[str],
    *,
    dry_run: bool,
    older_than_s: float | None,
    below: float | None,
    limit: int,
) -> ForgetReport:
    """Weak, old, never-used episodes no fact rests on; delete unless ``dry_run``.

    The candidates are chosen inside the transaction that deletes them (under the
    store's writer lock): an episode another writer deleted, used, reinforced or
    cited in a fact just before is judged as it is then, and a caller-chosen id
    added again since names the new memory, never deleted by the old one's judgement.

    Raises:
        InvalidInputError: ``dry_run`` is not a bool, ``older_than_s`` not a finite
            number >= 0, ``below`` not a finite weight >= 0, or ``limit`` not an int >= 0
            (nothing is read or deleted).
    """
    _check_forget(dry_run, older_than_s, below, limit)
    if dry_run:
        return ForgetReport(_forgettable(core, scope, older_than_s, below, limit), 0, True)
    with core.store.tx() as db:
        memories = _forgettable(core, scope, older_than_s, below, limit)
        gone = core._delete_tx(db, [m.id for m in memories]) if memories else []
    if gone:
        core._drop_vectors(gone)
    return ForgetReport(memories, len(memories), False)


def _check_forget(dry_run: object, older_than_s: object, below: object, limit: object) -> None:
    """:func:`forget`'s arguments, or :class:`InvalidInputError` naming the one refused."""
    if not isinstance(dry_run, bool):
        raise InvalidInputError(f"dry_run must be True or False, got {dry_run!r}")
    if older_than_s is not None and not _finite_in(older_than_s, 0.0, math.inf):
        raise InvalidInputError(
            f"older_than_s must be seconds >= 0 or None, got {older_than_s!r}; pass e.g. "
            f"older_than_s=30 * 86400"
        )
    if below is not None and not _finite_in(below, 0.0, math.inf):
        raise InvalidInputError(
            f"below must be an edge weight >= 0 or None (over 1: any episode), got {below!r}"
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInputError(f"limit must be an int >= 0, got {limit!r}; pass e.g. limit=1000")


def _finite_in(x: object, lo: float, hi: float) -> bool:
    return (
        isinstance(x, int | float)
        and not isinstance(x, bool)
        and math.isfinite(x)
        and lo <= x <= hi
    )


def _forgettable(
    core: Core,
    scope: Sequence[str],
    older_than_s: float | None,
    below: float | None,
    limit: int,
) -> tuple[Memory, ...]:
    """The episodes :func:`forget` deletes now (read in the caller's transaction)."""
    cfg = core.config.consolidation
    store = core.store
    node = store.find_scope(normalize_scope(scope))
    if node is None:
        return ()
    nodes = store.descendants(node)
    age = cfg.forget_after_s if older_than_s is None else older_than_s
    threshold = cfg.forget_below if below is None else below
    # each scope's age is against its own newest event: a prefix (every tenant) never
    # measures a dormant tenant against an active one's clock
    cited = store.cited_ids(nodes)
    rows = [r for r in store.forget_candidates(nodes, age, limit) if r.id not in cited]
    strongest: dict[int, float] = {r.n: 0.0 for r in rows}
    edges = store.edges_of([r.n for r in rows])
    ticks = core._ticks([e.scope_id for e in edges])
    for e in edges:
        w = core._decayed(e, ticks[e.scope_id])
        for n in (e.a, e.b):
            if n in strongest:
                strongest[n] = max(strongest[n], w)
    return tuple(core._memory(r) for r in rows if strongest[r.n] < threshold)


def delete_scope(core: Core, scope: Sequence[str], missing_ok: bool = False) -> int:
    """Delete everything under ``scope`` (episodes, facts, edges, vectors, clusters).

    Raises:
        UnknownScopeError: The store never held ``scope`` nor any scope under it, and
            not ``missing_ok`` (which returns 0).
    """
    store = core.store
    node = store.find_scope(normalize_scope(scope))
    if node is None:
        if missing_ok:
            return 0
        node = known_scope(core, scope, "nothing was deleted", MISSING_OK_HINT)
    with store.tx() as db:
        # read under the writer lock: a fact another writer just distilled goes too, and
        # so does a scope it just made under this one (nodes are never deleted: ``node``
        # read before the lock is still this scope's)
        nodes = store.descendants(node)
        rows = store.rows_in_scopes(nodes)
        store.delete_memories(db, rows)
        store.delete_clusters(db, nodes)
        store.delete_meta(db, [k(sid) for sid in nodes for k in (_mark_key, _tried_key)])
        _turn_count.forget_due(store, db, nodes)  # counts only grow: nothing is due now
    try:  # removes the vectors (tombstones)
        core.reconcile()
    except StorageError as exc:  # deleted already: the vectors go at a later reconcile
        core._needs_reconcile = True
        logger.warning("vector delete failed, will retry on next use: %s", exc)
    return len(rows)

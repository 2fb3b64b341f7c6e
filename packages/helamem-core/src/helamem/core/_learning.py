"""Learning and maintenance: a turn's Hebbian edges, reinforcement, search learning, decay."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import dynamics
from ._base import CoreBase
from .errors import (
    MemoryNotFoundError,
    StorageError,
)
from .storage.base import EdgeRow, MemoryRow, RankRow
from .storage.sqlite import sqlite_errors

__all__ = ["LearningOps"]

logger = logging.getLogger(__name__)


class LearningOps(CoreBase):
    """Operations that change edge weights: learn a turn, reinforce, learn a search, decay."""

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
        # one atomic upsert per edge (decay to now, add the learning rate, cap):
        # concurrent writers of one edge never lose a co-activation
        self.store.co_activate(db, pairs, scope_id, tick_now, d.learning_rate, d.decay_rate)

    def reinforce(self, ids: Sequence[str]) -> int:
        """Co-activate memories (pairs within one scope); returns pairs updated."""
        with self.store.tx() as db:
            # read under the writer lock: a memory another writer deleted meanwhile (its
            # caller-chosen id perhaps added again) is missing, or the new memory
            rows = self.store.rows_by_id(ids)
            missing = [i for i in ids if i not in rows]
            if missing:
                raise MemoryNotFoundError(
                    f"no memory with id {missing[0]!r} ({len(missing)} of {len(ids)} ids "
                    "unknown); it was deleted or never added; nothing was reinforced"
                )
            by_scope: dict[int, list[int]] = defaultdict(list)
            for r in rows.values():
                by_scope[r.scope_id].append(r.n)
            ticks = self._ticks(list(by_scope))
            for sid, ns in by_scope.items():
                self._reinforce_tx(db, ns, sid, ticks[sid])
        return sum(len(dynamics.co_activation_pairs(ns)) for ns in by_scope.values())

    def close(self) -> None:
        try:
            self.apply_learning()
        finally:
            super().close()

    def learn_later(
        self,
        groups: list[list[int]],
        rows: dict[int, RankRow],
        prunable: list[tuple[int, int]],
    ) -> None:
        """A search's learning step: now, or (``defer_learning``) at :meth:`apply_learning`."""
        if not self.defer_learning:
            self._learn(groups, rows, prunable)
            return
        needed = {n for g in groups for n in g}
        self._pending_learning.append((groups, {n: rows[n] for n in needed}, prunable))

    @property
    def pending_learning(self) -> int:
        """Searches whose learning write waits for :meth:`apply_learning`."""
        return len(self._pending_learning)

    def apply_learning(self) -> int:
        """Write the learning steps that searches left (the owner runs this right after
        each call, before the next one, and on close); returns the steps written.

        A step whose write fails (a full disk, a lock held past ``busy_timeout`` or
        ``lock_timeout_s``, a scope another process deleted meanwhile) is dropped and
        logged: the search it came from has already returned, and the memories
        themselves are untouched. Never raises.
        """
        todo, self._pending_learning = self._pending_learning, []
        done = 0
        for groups, rows, prunable in todo:
            try:
                with sqlite_errors(self.config.path / "helamem.sqlite3"):
                    self._learn(groups, rows, prunable)
                done += 1
            except StorageError as exc:
                logger.warning(
                    "a search's co-activation was dropped, not stored (the memories are "
                    "unchanged; later searches learn as usual): %s: %s",
                    type(exc).__name__,
                    exc,
                )
            # the search returned already: nothing can reach its caller, and the
            # owner's loop must go on; a bug shows here with its traceback
            except Exception:
                logger.exception("a search's co-activation was dropped, not stored")
        return done

    def _learn(
        self,
        groups: Sequence[Sequence[int]],
        rows: dict[int, RankRow],
        prunable: Sequence[tuple[int, int]],
    ) -> None:
        """Co-activate each group's memories (per scope), count the accesses: one tx.

        The edges the search saw decayed away (``prunable``) are read again inside
        the transaction, and only those still under ``prune_below`` are deleted: an
        edge another writer reinforced since the search read it keeps that weight.
        """
        by_scope: list[tuple[int, list[int]]] = []
        for group in groups:
            per: dict[int, list[int]] = defaultdict(list)
            for n in group:
                per[rows[n].scope_id].append(n)
            by_scope.extend(per.items())
        ticks = self._ticks([sid for sid, _ in by_scope])
        with self.store.tx() as db:
            if prunable:
                self.store.delete_edges(db, self._still_prunable(prunable))
            for sid, ns in by_scope:
                self._reinforce_tx(db, ns, sid, ticks[sid])
            self.store.touch(db, [n for g in groups for n in g], time.time())

    def _still_prunable(self, keys: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Of edges ``keys``, those that exist and are under ``prune_below`` now: read
        (with their scopes' ticks) inside the caller's write transaction."""
        wanted = sorted(set(keys))
        edges: list[EdgeRow] = []
        for i in range(0, len(wanted), 500):  # at most 1000 ends (2000 parameters) a query
            part = set(wanted[i : i + 500])
            among = self.store.edges_among(sorted({n for k in part for n in k}))
            edges += [e for k, e in among.items() if k in part]
        ticks = self._ticks([e.scope_id for e in edges])
        floor = self.config.dynamics.prune_below
        return [
            (e.a, e.b)
            for e in edges
            if not dynamics.survives(self._decayed(e, ticks[e.scope_id]), floor)
        ]

    # -- maintenance -----------------------------------------------------
    def decay(self, scope: Sequence[str] | None) -> dict[str, int]:
        """Apply lazy decay to every edge now; prune those under the threshold.

        The edges are read inside the write transaction that rewrites them (the
        store's single writer), so whatever another writer committed before it
        holds: an edge deleted with its memory stays deleted, and a co-activation
        is decayed from its new weight, never overwritten by an older one.
        """
        d = self.config.dynamics
        keep, drop = [], []
        with self.store.tx() as db:
            # read under the writer lock: a scope another writer just made under
            # ``scope`` (adding memories there) has its edges decayed too
            nodes = self._nodes(scope)
            if nodes is None:
                nodes = [int(r[0]) for r in db.execute("SELECT id FROM scopes")]
            edges = self.store.edges_in_scopes(nodes) if nodes else []
            ticks = self._ticks([e.scope_id for e in edges])
            for e in edges:
                t = ticks[e.scope_id]
                w = self._decayed(e, t)
                if dynamics.survives(w, d.prune_below):
                    keep.append(EdgeRow(e.a, e.b, e.scope_id, w, max(t, e.tick)))
                else:
                    drop.append((e.a, e.b))
            self.store.delete_edges(db, drop)
            self.store.upsert_edges(db, keep)
        return {"pruned": len(drop), "edges": len(keep)}

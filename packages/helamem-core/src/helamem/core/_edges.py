"""Spreading's reads: the seeds' strongest edges and hops (each node's edges and each
scope's tick read once per search)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence

from . import dynamics, retrieval
from ._base import CoreBase
from .storage.base import EdgeRow

__all__ = ["EdgeReader", "SpreadOps"]


class EdgeReader:
    """The edges spreading reads in one search: each node's edges and each scope's
    tick are read from the store once (the seeds', then the hops' and the fan's)."""

    def __init__(self, ops: CoreBase) -> None:
        self._ops = ops
        self._by_node: dict[int, dict[tuple[int, int], EdgeRow]] = {}
        self._ticks: dict[int, int] = {}
        self._weights: dict[EdgeRow, float] = {}  # decayed once per search, not per call

    def decayed(self, nodes: Collection[int]) -> list[tuple[EdgeRow, float]]:
        """Every edge touching ``nodes`` (once each), with its weight decayed to now."""
        todo = [n for n in nodes if n not in self._by_node]
        if todo:
            for n in todo:
                self._by_node[n] = {}
            for e in self._ops.store.edges_of(todo):
                for end in (e.a, e.b):
                    if end in self._by_node:
                        self._by_node[end][(e.a, e.b)] = e
        found: dict[tuple[int, int], EdgeRow] = {}
        for n in nodes:
            found.update(self._by_node[n])
        new = {e.scope_id for e in found.values()} - self._ticks.keys()
        if new:
            self._ticks.update(self._ops._ticks(list(new)))
        # in (a, b) order, as the store's UNION returned them: the same float sums
        out = []
        weights = self._weights
        for key in sorted(found):
            e = found[key]
            w = weights.get(e)
            if w is None:
                w = weights[e] = self._ops._decayed(e, self._ticks[e.scope_id])
            out.append((e, w))
        return out


class SpreadOps(CoreBase):
    """The edges a search spreads over (a part of :class:`~helamem.core._search.SearchOps`)."""

    def _edges_ahead(
        self, pool: retrieval.Pool, ref_given: float | None, edges: EdgeReader
    ) -> None:
        """Read, while the ANN query runs, the edges spreading will likely follow: those
        of the seeds the lexical candidates alone would give (about 6 of a search's 8
        seeds on the 100k benchmark store), and their neighbours'. ``edges`` keeps
        them; spreading reads only what this missed (same values: nothing writes
        between, the search runs on the owner thread)."""
        cfg = self.config.retrieval
        if not pool.ns or cfg.activation_alpha <= 0 or cfg.max_flipped <= 0:
            return
        ref = retrieval.reference_time(pool, ref_given)
        self._seed_edges(retrieval.seeds(retrieval.base_activations(pool, cfg, ref), cfg), edges)

    def _seed_edges(
        self, seeds: dict[int, float], edges: EdgeReader
    ) -> tuple[list[tuple[int, int, float]], list[tuple[int, int]], set[tuple[int, int]]]:
        """``(seed, neighbour, weight)`` to spread over, the edges to prune and the
        ``(seed, neighbour)`` pairs one edge apart (``edges``: each node's edges and
        each scope's tick read once per search)."""
        if not seeds:
            return [], [], set()
        prunable: list[tuple[int, int]] = []
        triples = [
            (s, j, w) for s, lst in self._strongest(seeds, prunable, edges).items() for w, j in lst
        ]
        first = {(s, j) for s, j, _ in triples}
        if self.config.retrieval.spread_hops > 1 and triples:
            triples.extend(self._second_hop(seeds, triples, prunable, edges))
        cfg = self.config.retrieval
        if cfg.fan_power > 0 and triples:  # hub-resistant: scale by both ends' strength
            strength = self._strength({n for s, j, _ in triples for n in (s, j)}, edges)
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
        return triples, prunable, first

    def _strength(self, nodes: Collection[int], edges: EdgeReader) -> dict[int, float]:
        """Each node's strength: the sum of its edges' decayed weights."""
        return dynamics.strengths((e.a, e.b, w) for e, w in edges.decayed(nodes))

    def _strongest(
        self,
        nodes: Collection[int],
        prunable: list[tuple[int, int]],
        edges: EdgeReader,
        exclude: Collection[int] = (),
    ) -> dict[int, list[tuple[float, int]]]:
        """Each node's strongest surviving neighbours ``(decayed weight, n)``, best
        first, at most ``neighbors_per_seed``; edges that decayed away go to ``prunable``."""
        floor = self.config.dynamics.prune_below
        per: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for e, w in edges.decayed(nodes):
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
        edges: EdgeReader,
    ) -> list[tuple[int, int, float]]:
        """``(seed, k, w_sj * w_jk)`` for the first-hop neighbours' strongest edges."""
        via: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for s, j, w in first:
            via[j].append((s, w))
        best: dict[tuple[int, int], float] = {}
        for j, lst in self._strongest(via, prunable, edges, exclude=seeds).items():
            for w_jk, k in lst:
                for s, w_sj in via[j]:
                    if k != s:
                        best[(s, k)] = max(best.get((s, k), 0.0), w_sj * w_jk)
        return [(s, k, w) for (s, k), w in sorted(best.items())]

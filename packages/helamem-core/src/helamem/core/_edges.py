"""The edges spreading reads in one search (each node's and each scope's tick once)."""

from __future__ import annotations

from collections.abc import Collection

from ._base import CoreBase
from .storage.base import EdgeRow

__all__ = ["EdgeReader"]


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

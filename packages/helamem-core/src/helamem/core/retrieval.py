"""The dual-path retrieval pipeline as pure planning over candidate arrays.

The engine fetches candidates (dense top-M from the vector index, BM25 top-M
from FTS5), their stored vectors and the learned edges around the seeds;
everything in this module is a pure function of those inputs, so the
ranking is the same whichever executor (sync or async) runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from . import dynamics
from .config import RetrievalConfig

__all__ = ["Pool", "Ranking", "base_activation", "rank", "seeds"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Pool:
    """Candidates of one query: parallel arrays keyed by memory number ``ns``."""

    ns: tuple[int, ...]
    dense: FloatArray
    lexical: FloatArray
    event_times: FloatArray


@dataclass(frozen=True, slots=True)
class _Norm:
    dense_mean: float
    dense_sd: float
    lex_mean: float
    lex_sd: float


@dataclass(frozen=True, slots=True)
class Ranking:
    """The outcome of one ranking."""

    base_top: list[int]
    associations: list[int]
    base: dict[int, float]
    boost: dict[int, float]
    via: dict[int, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def returned(self) -> list[int]:
        return self.base_top + self.associations


def _norm(pool: Pool) -> _Norm:
    def ms(x: FloatArray) -> tuple[float, float]:
        if x.size == 0:
            return 0.0, 0.0
        return float(x.mean()), float(x.std())

    dm, ds = ms(pool.dense)
    lm, ls = ms(pool.lexical)
    return _Norm(dm, ds, lm, ls)


def _z(x: FloatArray, mean: float, sd: float) -> FloatArray:
    if sd < 1e-12:
        return np.zeros_like(x)
    return (x - mean) / sd


def base_activation(
    dense: FloatArray,
    lexical: FloatArray,
    event_times: FloatArray,
    norm: _Norm,
    reference_time: float,
    config: RetrievalConfig,
) -> FloatArray:
    """Base activation of memories, z-scored against the candidate pool's statistics."""
    fused = config.keyword_weight * _z(lexical, norm.lex_mean, norm.lex_sd) + (
        1.0 - config.keyword_weight
    ) * _z(dense, norm.dense_mean, norm.dense_sd)
    rec = dynamics.recency(event_times, reference_time, config.recency_tau)
    return dynamics.activation(fused, rec, config.recency_weight)


def seeds(base: Mapping[int, float], config: RetrievalConfig) -> dict[int, float]:
    """The few query-dependent seeds: top ``spread_seeds`` with activation above θ."""
    top = sorted(base, key=lambda n: (-base[n], n))[: config.spread_seeds]
    return {n: base[n] for n in top if base[n] > config.spreading_threshold}


def reference_time(pool: Pool, given: float | None) -> float:
    """The query's reference time: as given, else the newest candidate event."""
    if given is not None:
        return given
    return float(pool.event_times.max()) if pool.event_times.size else 0.0


def rank(
    pool: Pool,
    *,
    k: int,
    config: RetrievalConfig,
    ref_time: float,
    edges: Sequence[tuple[int, int, float]] = (),
    neighbours: Pool | None = None,
) -> Ranking:
    """Rank a candidate pool, spreading activation over ``edges``.

    Args:
        pool: The candidates (dense ∪ lexical).
        k: Top-k by base activation.
        config: Retrieval parameters.
        ref_time: Reference time for recency.
        edges: ``(seed, neighbour, decayed weight)`` for the seeds' strongest
            edges; empty disables spreading.
        neighbours: Neighbours outside the pool (their lexical score is 0);
            they are scored against the pool's statistics.
    """
    norm = _norm(pool)
    a = base_activation(pool.dense, pool.lexical, pool.event_times, norm, ref_time, config)
    base = {n: float(v) for n, v in zip(pool.ns, a, strict=True)}
    boost: dict[int, float] = {}
    via: dict[int, list[tuple[int, float]]] = {}
    final = dict(base)
    if edges:
        if neighbours is not None and neighbours.ns:
            extra = base_activation(
                neighbours.dense,
                neighbours.lexical,
                neighbours.event_times,
                norm,
                ref_time,
                config,
            )
            final.update({n: float(v) for n, v in zip(neighbours.ns, extra, strict=True)})
        known = {n for n in final}
        edges = [e for e in edges if e[1] in known]
        boost, via = dynamics.spread(
            seeds(base, config), edges, config.activation_alpha, config.max_boost
        )
        for n, b in boost.items():
            final[n] = final[n] + b
    base_top, assoc = dynamics.select(
        {n: base[n] for n in pool.ns}, final, k, config.max_flipped if edges else 0
    )
    base_all = dict(base)
    if neighbours is not None:
        for n in assoc:
            base_all.setdefault(n, final[n] - boost.get(n, 0.0))
    return Ranking(base_top, assoc, base_all, boost, via)

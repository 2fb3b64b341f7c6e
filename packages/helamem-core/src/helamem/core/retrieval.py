"""The dual-path retrieval pipeline as pure planning over candidate arrays.

The engine fetches candidates (dense top-M from the vector index, BM25 top-M
from FTS5), their stored vectors and the learned edges around the seeds;
everything in this module is a pure function of those inputs, so the
ranking is the same whichever executor (sync or async) runs it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from . import association, dynamics
from .config import RetrievalConfig
from .maxsim import (
    maxsim,
    maxsim_packed,
    pack_tokens,
    pack_tokens_many,
    unpack_tokens,
)

__all__ = [
    "Pool",
    "Ranking",
    "base_activation",
    "bm25_idf",
    "join_pools",
    "maxsim",
    "maxsim_packed",
    "pack_tokens",
    "pack_tokens_many",
    "propagated_relevance",
    "rank",
    "relevance",
    "seeds",
    "unpack_tokens",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Pool:
    """Candidates of one query: parallel arrays keyed by memory number ``ns``."""

    ns: tuple[int, ...]
    dense: FloatArray
    lexical: FloatArray
    event_times: FloatArray
    late: FloatArray | None = None
    """MaxSim late-interaction scores (:func:`maxsim`), or ``None`` without them."""
    chars: FloatArray | None = None
    """Each memory's length in characters (``None``: unknown, read as 0)."""
    question: FloatArray | None = None
    """1 where a memory's text ends with "?" (``None``: unknown, read as 0)."""
    named: FloatArray | None = None
    """1 where the query names a memory's role (:func:`helamem.core.text.named`;
    ``None``: unknown, read as 0)."""


def join_pools(a: Pool, b: Pool) -> Pool:
    """Two pools of disjoint memories as one, keyed in order as :class:`Pool` is.

    An optional array missing from either (``None``) is missing from the join:
    a pool without MaxSim scores ranks without them (``late``).

    Examples:
        >>> one = Pool((3,), np.array([0.3]), np.zeros(1), np.zeros(1))
        >>> two = Pool((1,), np.array([0.1]), np.zeros(1), np.zeros(1))
        >>> join_pools(one, two).ns, join_pools(one, two).dense.tolist()
        ((1, 3), [0.1, 0.3])
    """
    if not b.ns:
        return a
    if not a.ns:
        return b
    ns = a.ns + b.ns
    order = np.argsort(np.array(ns, dtype=np.int64), kind="stable")

    def cat(x: FloatArray | None, y: FloatArray | None) -> FloatArray | None:
        return None if x is None or y is None else np.concatenate([x, y])[order]

    return Pool(
        tuple(ns[i] for i in order.tolist()),
        np.concatenate([a.dense, b.dense])[order],
        np.concatenate([a.lexical, b.lexical])[order],
        np.concatenate([a.event_times, b.event_times])[order],
        cat(a.late, b.late),
        cat(a.chars, b.chars),
        cat(a.question, b.question),
        cat(a.named, b.named),
    )


@dataclass(frozen=True, slots=True)
class _Norm:
    dense_mean: float
    dense_sd: float
    lex_mean: float
    lex_sd: float
    late_mean: float = 0.0
    late_sd: float = 0.0


@dataclass(frozen=True, slots=True)
class Ranking:
    """The outcome of one ranking."""

    base_top: list[int]
    associations: list[int]
    base: dict[int, float]
    boost: dict[int, float]
    via: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    relevance: dict[int, float] = field(default_factory=dict)
    """Absolute relevance in [0, 1] of every ranked memory (see :func:`relevance`)."""
    candidates: association.Candidates | None = None
    """With ``selection="learned"``, the features the model scored (for explanation
    and for fitting it: ``benchmarks/association_reranker.py``)."""

    @property
    def returned(self) -> list[int]:
        return self.base_top + self.associations


def _mean_sd(x: FloatArray) -> tuple[float, float]:
    """``(x.mean(), x.std())`` of a float64 vector, as numpy computes them (the same
    pairwise sums, bit for bit) without its generic reduction's overhead (about a
    quarter of the time on a pool)."""
    if x.size == 0:
        return 0.0, 0.0
    if x.dtype != np.float64 or x.ndim != 1:
        return float(x.mean()), float(x.std())
    mean = np.add.reduce(x) / x.size
    d = x - mean
    return float(mean), float(np.sqrt(np.add.reduce(d * d) / x.size))


def _norm(pool: Pool) -> _Norm:
    dm, ds = _mean_sd(pool.dense)
    lm, ls = _mean_sd(pool.lexical)
    if pool.late is None:
        return _Norm(dm, ds, lm, ls)
    tm, ts = _mean_sd(pool.late)
    return _Norm(dm, ds, lm, ls, tm, ts)


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
    late: FloatArray | None = None,
) -> FloatArray:
    r"""Base activation of memories, z-scored against the candidate pool's statistics.

    .. math:: z = w_k z_{\mathrm{bm25}} + (1 - w_k)\,[\lambda z_{\mathrm{maxsim}}
              + (1 - \lambda) z_{\cos}]

    with :math:`w_k` ``keyword_weight`` and λ ``late_weight`` (λ counts only
    when ``late`` scores are given), then recency as in
    :func:`helamem.core.dynamics.activation`.
    """
    semantic = _z(dense, norm.dense_mean, norm.dense_sd)
    lam = config.late_weight
    if late is not None and lam > 0:
        semantic = lam * _z(late, norm.late_mean, norm.late_sd) + (1.0 - lam) * semantic
    fused = (
        config.keyword_weight * _z(lexical, norm.lex_mean, norm.lex_sd)
        + (1.0 - config.keyword_weight) * semantic
    )
    rec = dynamics.recency(event_times, reference_time, config.recency_tau)
    return dynamics.activation(fused, rec, config.recency_weight)


def base_activations(
    pool: Pool, config: RetrievalConfig, ref_time: float, norm: _Norm | None = None
) -> dict[int, float]:
    """Every pool member's :func:`base_activation` (z-scored within the pool), by key:
    the ``base`` of :func:`rank` over the same pool, without ranking it.

    Examples:
        >>> pool = Pool((1, 2), np.array([0.9, 0.1]), np.array([0.0, 0.0]), np.zeros(2))
        >>> cfg = RetrievalConfig(keyword_weight=0.0, late_weight=0.0, recency_weight=0.0)
        >>> base_activations(pool, cfg, 0.0) == rank(pool, k=2, config=cfg, ref_time=0.0).base
        True
    """
    a = base_activation(
        pool.dense,
        pool.lexical,
        pool.event_times,
        _norm(pool) if norm is None else norm,
        ref_time,
        config,
        pool.late,
    )
    return {n: float(v) for n, v in zip(pool.ns, a, strict=True)}


def bm25_idf(df: int, rows: int) -> float:
    r"""The information of one query word, for the denominator of :func:`relevance`.

    :math:`\mathrm{idf} = \ln\left(1 + \frac{N - n + 0.5}{n + 0.5}\right)` for a
    word in :math:`n` of :math:`N` rows: the smoothed BM25 idf (Robertson and
    Spärck Jones with Lucene's +1), always positive. FTS5's own idf,
    :math:`\ln\frac{N - n + 0.5}{n + 0.5}` floored at :math:`10^{-6}`, drives
    the numerator; the two agree for rare words (4.20 against 4.21 at 1 in
    100), while a word in half the rows or more, which FTS5 scores near 0,
    keeps a share here, so a query of common words cannot claim full lexical
    coverage from a score near 0 divided by a sum near 0.

    Examples:
        >>> round(bm25_idf(1, 100), 3), round(bm25_idf(0, 100), 3), round(bm25_idf(2, 4), 3)
        (4.21, 5.308, 0.693)
    """
    n, big = max(0, df), max(rows, df)
    return float(np.log1p((big - n + 0.5) / (n + 0.5)))


def relevance(dense: FloatArray, lexical: FloatArray, lexical_mass: float) -> FloatArray:
    r"""Query relevance in [0, 1], on one absolute scale for every scope and query.

    :math:`r = 1 - (1 - c)(1 - \ell)`, the probabilistic OR of

    * :math:`c = \max(0, \cos(q, m))`, the embedding similarity, and
    * :math:`\ell = \min(1, \mathrm{bm25}(q, m) / \sum_{t \in q} \mathrm{idf}(t))`,
      the share of the query's BM25 information that the memory matches (a
      memory holding every query word once at average length scores about
      :math:`\sum \mathrm{idf}`). Words in no memory count in the sum, so a
      query of unknown words matches little.

    Unlike the fused activation (z-scores within one candidate pool), this
    does not depend on the other candidates: a query that matches nothing
    scores low everywhere, and a threshold means the same in every search.

    Args:
        dense: Cosine similarities, shape (n,).
        lexical: BM25 scores (higher is better, 0 without a match), shape (n,).
        lexical_mass: :math:`\sum_t \mathrm{idf}(t)` over the query's words
            (0: no lexical evidence).

    Examples:
        >>> relevance(np.array([1.0, 0.2, -0.3]), np.array([0.0, 0.0, 3.0]), 6.0).round(2)
        array([1. , 0.2, 0.5])
    """
    c = np.clip(np.asarray(dense, dtype=np.float64), 0.0, 1.0)
    if lexical_mass > 0:
        lex = np.clip(np.asarray(lexical, dtype=np.float64) / lexical_mass, 0.0, 1.0)
    else:
        lex = np.zeros_like(c)
    return np.asarray(1.0 - (1.0 - c) * (1.0 - lex), dtype=np.float64)


def propagated_relevance(own: float, via: Sequence[tuple[float, float]]) -> float:
    r"""Relevance of a memory that spreading reached: :math:`\max(r_j, \max_i r_i w_{ij})`.

    ``via`` holds ``(seed relevance, path weight)``; path weights are decayed
    edge weights in [0, 1] (two hops multiply), so an association is never more
    relevant than the seed it came from.

    Examples:
        >>> propagated_relevance(0.1, [(0.9, 0.5), (0.6, 1.0)])
        0.6
    """
    return max([own, *(min(1.0, r * w) for r, w in via)])


def seeds(base: Mapping[int, float], config: RetrievalConfig) -> dict[int, float]:
    """The few query-dependent seeds: top ``spread_seeds`` with activation above θ."""
    return _seeds_of(dynamics.best_first(base), base, config)


def _seeds_of(
    order: Sequence[int], base: Mapping[int, float], config: RetrievalConfig
) -> dict[int, float]:
    """:func:`seeds` from ``base``'s keys already in order (best first, then key)."""
    top = order[: config.spread_seeds]
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
    lexical_mass: float = 0.0,
    first_hop: Collection[tuple[int, int]] = (),
    learned: bool = True,
    base: Mapping[int, float] | None = None,
) -> Ranking:
    """Rank a candidate pool, spreading activation over ``edges``.

    Besides the activations that rank, every memory gets its absolute
    :func:`relevance` (spread memories :func:`propagated_relevance`), which
    orders the hits and, with ``config.association_gate``, decides whether an
    association hit may displace a base hit.

    Args:
        pool: The candidates (dense ∪ lexical).
        k: Top-k by base activation.
        config: Retrieval parameters.
        ref_time: Reference time for recency.
        edges: ``(seed, neighbour, decayed weight)`` for the seeds' strongest
            edges; empty disables spreading.
        neighbours: Neighbours outside the pool (their lexical score is 0);
            they are scored against the pool's statistics.
        lexical_mass: The sum of BM25 idf over the query's words (0: no
            lexical evidence), for :func:`relevance`.
        first_hop: The ``(seed, neighbour)`` pairs of ``edges`` that are one
            edge (the others took two hops), for ``selection="learned"``.
        learned: ``False`` ranks as ``selection="final"`` even when the
            config says ``"learned"`` (the model is fitted on episodes; facts
            use the final rule).
        base: The pool's :func:`base_activations` (same ``config`` and
            ``ref_time``) when the caller has them already (its seeds came
            from them); computed here otherwise.
    """
    norm = _norm(pool)
    if base is None:
        base = base_activations(pool, config, ref_time, norm)
    order = dynamics.best_first(base, pool.ns)
    rel = dict(
        zip(pool.ns, relevance(pool.dense, pool.lexical, lexical_mass).tolist(), strict=True)
    )
    boost: dict[int, float] = {}
    via: dict[int, list[tuple[int, float]]] = {}
    final = dict(base)
    own_activation = final  # before boosts: pool and reached neighbours
    if edges:
        if neighbours is not None and neighbours.ns:
            extra = base_activation(
                neighbours.dense,
                neighbours.lexical,
                neighbours.event_times,
                norm,
                ref_time,
                config,
                neighbours.late if pool.late is not None else None,
            )
            final.update({n: float(v) for n, v in zip(neighbours.ns, extra, strict=True)})
            own = relevance(neighbours.dense, neighbours.lexical, lexical_mass).tolist()
            rel.update(zip(neighbours.ns, own, strict=True))
        edges = [e for e in edges if e[1] in final]
        boost, via = dynamics.spread(
            _seeds_of(order, base, config), edges, config.activation_alpha, config.max_boost
        )
        own_activation = dict(final)
        for n, b in boost.items():
            final[n] = final[n] + b
    # an association hit's relevance comes from its seeds' own; a base hit keeps its own
    lifted_rel = dict(rel)
    for n, paths in via.items():
        lifted_rel[n] = propagated_relevance(rel.get(n, 0.0), [(rel[s], w) for s, w in paths])
    top_by_base = order[:k]
    mode = config.selection
    candidates = None
    if mode == "learned":
        mode = "final"
        if edges and learned:
            # a weak path is an edge learned from co-retrieval (η per co-activation),
            # not a step along the temporal chain the model was fitted on
            chain = {
                n: strong
                for n, paths in via.items()
                if (strong := [p for p in paths if p[1] >= config.association_min_path])
            }
            candidates = _candidates(
                pool, neighbours, own_activation, order, k, chain, first_hop, norm
            )
            final = association.scores(candidates, config.association_model)
    base_top, assoc = dynamics.select(
        {n: base[n] for n in pool.ns},
        final,
        k,
        config.max_flipped if edges else 0,
        mode,
        config.association_share,
        {**lifted_rel, **{n: rel[n] for n in top_by_base}},  # victims: their own
        config.association_gate,
        config.association_keep,
        config.association_min_relevance,
    )
    for n in assoc:
        rel[n] = lifted_rel.get(n, rel.get(n, 0.0))
    # the learned selection may rank in a pool member spreading did not reach: a
    # base candidate, reranked, not an association
    base_top += [n for n in assoc if n not in via]
    assoc = [n for n in assoc if n in via]
    base_all = dict(base)
    if neighbours is not None:
        for n in assoc:
            base_all.setdefault(n, own_activation[n])
    return Ranking(base_top, assoc, base_all, boost, via, rel, candidates)


def _candidates(
    pool: Pool,
    neighbours: Pool | None,
    activation: Mapping[int, float],
    order: Sequence[int],
    k: int,
    via: Mapping[int, Sequence[tuple[int, float]]],
    first_hop: Collection[tuple[int, int]],
    norm: _Norm,
) -> association.Candidates:
    """The pool's and the reached neighbours' :func:`association.features`."""
    parts = [pool] if neighbours is None or not neighbours.ns else [pool, neighbours]

    def column(name: str) -> FloatArray:
        return np.concatenate(
            [
                np.zeros(len(p.ns)) if (v := getattr(p, name)) is None else np.asarray(v)
                for p in parts
            ]
        )

    ns = [n for p in parts for n in p.ns]
    times = np.concatenate([p.event_times for p in parts]).tolist()
    cosine = _z(column("dense"), norm.dense_mean, norm.dense_sd)
    # without token vectors the pooled cosine stands in for MaxSim, as in the base
    # activation, so a model fitted with late interaction still ranks sensibly
    late = cosine if pool.late is None else _z(column("late"), norm.late_mean, norm.late_sd)
    own = {
        "maxsim": late,
        "cosine": cosine,
        "bm25": column("lexical"),
        "question": column("question"),
        "chars": column("chars"),
        "named": column("named"),
    }
    order_key = {n: (t, n) for n, t in zip(ns, times, strict=True)}
    return association.features(own, ns, activation, order, k, via, first_hop, order_key)

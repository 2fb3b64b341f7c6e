r"""Pure Hebbian math: no I/O, no state. Every function is property tested.

Notation: an edge between memories *i* and *j* of one scope stores a weight
:math:`w \in (0, 1]` and the tick :math:`t_0` of its last update.

Decay (lazy):
    :math:`w(t) = w \cdot \delta^{\,t - t_0}` for :math:`t \ge t_0`.
Reinforcement (co-activation):
    :math:`w' = \min(1,\; w(t) + \eta)`.
Pruning:
    an edge is dropped when :math:`w(t) < p` (``prune_below``).
Base activation:
    :math:`s_i = \lambda\, z(\ell)_i + (1-\lambda)\, z(c)_i`,
    :math:`a_i = \sigma(s_i) \cdot (1 - \rho + \rho\, e^{-\max(0,\, t_{ref} - t_i)/\tau})`
    with *c* cosine, :math:`\ell` BM25, *z* the z-score over the candidate
    pool, λ ``keyword_weight``, ρ ``recency_weight``.
Spreading (one hop):
    for seeds *i* (top ``spread_seeds`` with :math:`a_i > \theta`),
    :math:`b_j = \min(\beta,\; \sum_i \alpha\, a_i\, w_{ij})`;
    final score :math:`f_j = a_j + b_j`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "EdgeKey",
    "activation",
    "co_activation_pairs",
    "decayed",
    "edge_key",
    "fuse",
    "recency",
    "reinforced",
    "select",
    "spread",
    "survives",
    "zscore",
]

FloatArray = npt.NDArray[np.float64]
EdgeKey = tuple[int, int]


def edge_key(a: int, b: int) -> EdgeKey:
    """The canonical (unordered) key of the edge between ``a`` and ``b``.

    Examples:
        >>> edge_key(7, 3)
        (3, 7)
    """
    if a == b:
        raise ValueError("a memory has no edge to itself")
    return (a, b) if a < b else (b, a)


def decayed(weight: float, ticks: float, decay_rate: float) -> float:
    r"""Weight after ``ticks`` ticks of decay: :math:`w \cdot \delta^{ticks}`.

    Negative ``ticks`` (clock skew) count as zero, so decay never increases
    a weight.

    Examples:
        >>> round(decayed(0.5, 2, 0.5), 3)
        0.125
    """
    if ticks <= 0:
        return weight
    return float(weight * decay_rate**ticks)


def reinforced(weight: float, learning_rate: float) -> float:
    r"""Co-activation update :math:`\min(1, w + \eta)`.

    Examples:
        >>> reinforced(0.99, 0.02)
        1.0
    """
    return min(1.0, weight + learning_rate)


def survives(weight: float, prune_below: float) -> bool:
    """True unless the edge must be pruned (``weight < prune_below``)."""
    return weight >= prune_below and weight > 0.0


def co_activation_pairs(ids: Iterable[int]) -> list[EdgeKey]:
    """Every unordered pair of distinct ids, each once.

    Examples:
        >>> co_activation_pairs([3, 1, 2, 1])
        [(1, 2), (1, 3), (2, 3)]
    """
    uniq = sorted(set(ids))
    return [(a, b) for i, a in enumerate(uniq) for b in uniq[i + 1 :]]


def zscore(x: Sequence[float] | FloatArray) -> FloatArray:
    r"""Centre and scale: :math:`(x - \bar x) / \mathrm{sd}(x)`; all zeros if sd is 0.

    Examples:
        >>> zscore([1.0, 3.0]).tolist()
        [-1.0, 1.0]
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return arr
    sd = float(arr.std())
    if sd < 1e-12 or not math.isfinite(sd):
        return np.zeros_like(arr)
    return np.asarray((arr - arr.mean()) / sd, dtype=np.float64)


def fuse(dense: FloatArray, lexical: FloatArray, keyword_weight: float) -> FloatArray:
    r"""Fused base score :math:`\lambda z(\ell) + (1-\lambda) z(c)`."""
    return keyword_weight * zscore(lexical) + (1.0 - keyword_weight) * zscore(dense)


def recency(event_times: FloatArray, reference_time: float, tau: float) -> FloatArray:
    r"""Recency :math:`e^{-\max(0, t_{ref} - t)/\tau}` in (0, 1].

    Events after the reference time count as fully recent.
    """
    age = np.maximum(0.0, reference_time - np.asarray(event_times, dtype=np.float64))
    return np.exp(-age / tau)


def activation(fused: FloatArray, rec: FloatArray, recency_weight: float) -> FloatArray:
    r"""Base activation :math:`\sigma(s) \cdot (1 - \rho + \rho r)` in (0, 1)."""
    sig = 1.0 / (1.0 + np.exp(-np.clip(fused, -50.0, 50.0)))
    return np.asarray(sig * (1.0 - recency_weight + recency_weight * rec), dtype=np.float64)


def spread(
    seeds: Mapping[int, float],
    edges: Iterable[tuple[int, int, float]],
    alpha: float,
    max_boost: float,
) -> tuple[dict[int, float], dict[int, list[tuple[int, float]]]]:
    r"""One hop of spreading activation.

    Args:
        seeds: Seed id → activation :math:`a_i` (already thresholded).
        edges: ``(seed, neighbour, weight)`` triples with decayed weights.
        alpha: α.
        max_boost: β, the cap on what one neighbour receives in total.

    Returns:
        ``(boost, via)``: :math:`b_j = \min(\beta, \sum_i \alpha a_i w_{ij})`
        for every neighbour *j*, and for each the ``(seed, weight)`` pairs it
        came through, strongest first.

    Examples:
        >>> spread({1: 0.8}, [(1, 2, 0.5)], alpha=0.5, max_boost=1.0)[0]
        {2: 0.2}
    """
    boost: dict[int, float] = {}
    via: dict[int, list[tuple[int, float]]] = {}
    for i, j, w in edges:
        a_i = seeds.get(i)
        if a_i is None or i == j:
            continue
        boost[j] = boost.get(j, 0.0) + alpha * a_i * w
        via.setdefault(j, []).append((i, w))
    for j in boost:
        boost[j] = min(max_boost, boost[j])
        via[j].sort(key=lambda p: -p[1])
    return boost, via


def select(
    base: Mapping[int, float],
    final: Mapping[int, float],
    k: int,
    max_flipped: int,
    mode: str = "final",
    share: float = 1.0,
    relevance: Mapping[int, float] | None = None,
    gate: float = 1.0,
) -> tuple[list[int], list[int]]:
    r"""Choose the returned memories: base hits and association hits.

    Association hits are the ids that the final (spread) ranking places in
    its top-k but the base ranking does not, best final score first, at most
    ``max_flipped`` of them. Ties break on id for determinism.

    ``mode`` says where association hits go:

    * ``"final"`` (default): within the k slots. Each association hit
      displaces the base hit with the lowest *final* score, so the result is
      the top-k by final score with at most ``max_flipped`` memories from
      outside the base top-k: :math:`|\text{base\_top}| + |\text{assoc}| \le k`.
    * ``"base"``: within the k slots, displacing the lowest *base* hits (the
      base top :math:`k - m` for :math:`m` association hits).
    * ``"append"``: the reference behaviour, the base top-k plus the
      association hits on top (up to :math:`k + \text{max\_flipped}`).

    In the two modes within k, association hits take at most
    :math:`\lfloor \text{share} \cdot k \rfloor` slots, so the best base hits
    always stay (with ``share`` 0.5, ``k = 1`` returns the best base hit).
    With ``relevance`` given, an association hit displaces a base hit only if
    :math:`r_a \ge r_b - \text{gate}` (``gate`` 0: never a more relevant
    memory; 1: always); one that may not is skipped.

    Returns:
        ``(base_top, associations)``, disjoint; ``base_top`` in base order,
        ``associations`` in final order.

    Raises:
        ValueError: ``mode`` is not one of the three.

    Examples:
        >>> select({1: .9, 2: .5, 3: .1}, {1: .9, 2: .5, 3: .7}, k=2, max_flipped=1)
        ([1], [3])
        >>> select({1: .9, 2: .5, 3: .1}, {1: .9, 2: .5, 3: .7}, 2, 1, mode="append")
        ([1, 2], [3])
    """
    if mode not in ("final", "base", "append"):
        raise ValueError(f"unknown selection mode {mode!r}; use 'final', 'base' or 'append'")
    base_top = sorted(base, key=lambda i: (-base[i], i))[:k]
    chosen = set(base_top)
    final_top = sorted(final, key=lambda i: (-final[i], i))[:k]
    cap = max_flipped if mode == "append" else min(max_flipped, int(share * k + 1e-9))
    lifted = [i for i in final_top if i not in chosen]
    if mode == "append":
        return base_top, lifted[:cap]
    # the base hits that may make room, the first to go first
    if mode == "final":
        order = sorted(base_top, key=lambda i: (final.get(i, base[i]), -base[i], -i))
    else:
        order = base_top[::-1]
    free = k - len(base_top)  # empty slots (a pool smaller than k) take no displacement
    assoc: list[int] = []
    dropped: set[int] = set()
    for a in lifted:
        if len(assoc) == cap:
            break
        if free > 0:
            free -= 1
            assoc.append(a)
            continue
        victim = order[len(dropped)]
        if relevance is not None and relevance.get(a, 0.0) < relevance.get(victim, 0.0) - gate:
            continue
        dropped.add(victim)
        assoc.append(a)
    return [i for i in base_top if i not in dropped], assoc

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

Learning in the agent loop (what a recorded turn co-activates):
    use attribution (:func:`attributed`), which pairs form
    (:func:`recorded_pairs`), anti-Hebbian weakening of what was retrieved but
    not used (:func:`weakened`), a bound on a node's total strength
    (:func:`scaled_to_budget`) and hub-resistant spreading
    (:func:`fan_scaled`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "EdgeKey",
    "activation",
    "attributed",
    "best_first",
    "co_activation_pairs",
    "decayed",
    "edge_key",
    "fan_scaled",
    "fuse",
    "recorded_pairs",
    "recency",
    "reinforced",
    "scaled_to_budget",
    "select",
    "spread",
    "strengths",
    "survives",
    "weakened",
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


def best_first(scores: Mapping[int, float], keys: Iterable[int] | None = None) -> list[int]:
    """``keys`` (default: every key of ``scores``) by score, best first, ties by key:
    ``sorted(keys, key=lambda n: (-scores[n], n))`` without a tuple per key (two
    stable sorts: by key, then by score in reverse, which keeps ties in key order).

    Examples:
        >>> best_first({3: 0.5, 1: 0.5, 2: 0.9})
        [2, 1, 3]
    """
    return sorted(sorted(scores if keys is None else keys), key=scores.__getitem__, reverse=True)


def select(
    base: Mapping[int, float],
    final: Mapping[int, float],
    k: int,
    max_flipped: int,
    mode: str = "final",
    share: float = 1.0,
    relevance: Mapping[int, float] | None = None,
    gate: float = 1.0,
    keep: float = math.inf,
    floor: float = 0.0,
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
    memory; 1: always); one that may not is skipped, and its slot goes to
    the next association hit of the final top-k that passes. A base hit whose
    relevance is ``keep`` or more (an exact match) is never displaced, and a
    memory below ``floor`` relevance never becomes an association hit (its
    slot goes to the next of the final ranking).

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
    base_top = best_first(base)[:k]
    chosen = set(base_top)
    eligible = [
        i for i in final if i in chosen or relevance is None or relevance.get(i, 0.0) >= floor
    ]
    final_top = best_first(final, eligible)[:k]
    cap = max_flipped if mode == "append" else min(max_flipped, int(share * k + 1e-9))
    lifted = [i for i in final_top if i not in chosen]
    if mode == "append":
        return base_top, lifted[:cap]
    # the base hits that may make room, the first to go first
    if mode == "final":
        order = sorted(base_top, key=lambda i: (final.get(i, base[i]), -base[i], -i))
    else:
        order = base_top[::-1]
    if relevance is not None:
        order = [i for i in order if relevance.get(i, 0.0) < keep]
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
        if len(dropped) == len(order):  # every base hit left is kept
            break
        victim = order[len(dropped)]
        if relevance is not None and relevance.get(a, 0.0) < relevance.get(victim, 0.0) - gate:
            continue
        dropped.add(victim)
        assoc.append(a)
    return [i for i in base_top if i not in dropped], assoc


def attributed(similarities: Sequence[float], margin: float, floor: float) -> list[int]:
    r"""Which retrieved memories a turn drew on: positions, best first.

    Use attribution by closeness: with :math:`s_i` the cosine between the
    turn (its reply, or its messages) and retrieved memory *i*,

    .. math:: U = \{\, i : s_i \ge \max_j s_j - \mu \ \wedge\ s_i \ge \theta \,\}

    with μ ``margin`` (relative to the other hits; μ ≥ 2 keeps every hit) and
    θ ``floor`` (a relevance gate: a memory the turn is not close to never
    co-activates; θ = -1 keeps every hit). This is the post-hoc citation of
    retrieved passages by similarity to the generated text (Gao et al.,
    2023, "Enabling LLMs to generate text with citations", score each
    passage against the answer; the cosine of the same embedder is the
    cheap proxy here), with the relevance gate of learning rules that only
    strengthen synapses of sufficiently active inputs (BCM threshold,
    Bienenstock, Cooper & Munro, 1982).

    Examples:
        >>> attributed([0.9, 0.2, 0.85, 0.5], margin=0.1, floor=0.0)
        [0, 2]
        >>> attributed([0.3, 0.2], margin=1.0, floor=0.25)
        [0]
        >>> attributed([], margin=0.1, floor=0.0)
        []
    """
    if not similarities:
        return []
    top = max(similarities)
    keep = [
        i for i, s in enumerate(similarities) if s >= top - margin - 1e-12 and s >= floor - 1e-12
    ]
    return sorted(keep, key=lambda i: (-similarities[i], i))


def recorded_pairs(new: Sequence[int], used: Sequence[int], mode: str) -> list[EdgeKey]:
    """The pairs a recorded turn co-activates, each once.

    ``mode`` ``"all"``: every pair among the turn's new memories and the used
    ones (a clique: the reference behaviour; memories retrieved together get
    linked to each other, which is how generic ones become hubs);
    ``"new"``: every pair among the new memories plus each new memory with
    each used one (a star: a used memory is linked to the turn it served,
    never to the other memories retrieved beside it).

    Raises:
        ValueError: ``mode`` is not ``"all"`` or ``"new"``.

    Examples:
        >>> recorded_pairs([10, 11], [1, 2], "new")
        [(1, 10), (1, 11), (2, 10), (2, 11), (10, 11)]
        >>> len(recorded_pairs([10, 11], [1, 2], "all"))
        6
    """
    if mode == "all":
        return co_activation_pairs([*new, *used])
    if mode != "new":
        raise ValueError(f"unknown pairing {mode!r}; use 'all' or 'new'")
    out = set(co_activation_pairs(new))
    out.update(edge_key(a, u) for a in set(new) for u in set(used) if a != u)
    return sorted(out)


def weakened(weight: float, rate: float) -> float:
    r"""Anti-Hebbian weakening :math:`w' = (1 - \kappa)\, w`, κ = ``rate`` in [0, 1].

    Applied to the edges between a memory that was retrieved but not used
    and the memories that were used with it: the covariance rule's
    depression when one side is active and the other is not (Sejnowski,
    1977; Dayan & Abbott, 2001, ch. 8). It never increases a weight and
    keeps it in [0, w].

    Examples:
        >>> weakened(0.5, 0.2)
        0.4
    """
    return max(0.0, weight * (1.0 - rate))


def strengths(edges: Iterable[tuple[int, int, float]]) -> dict[int, float]:
    r"""Node strength :math:`S_i = \sum_j w_{ij}` over undirected ``(a, b, w)`` edges.

    Examples:
        >>> strengths([(1, 2, 0.5), (2, 3, 0.25)])
        {1: 0.5, 2: 0.75, 3: 0.25}
    """
    out: dict[int, float] = {}
    for a, b, w in edges:
        out[a] = out.get(a, 0.0) + w
        out[b] = out.get(b, 0.0) + w
    return out


def scaled_to_budget(
    weights: Mapping[EdgeKey, float], strength: Mapping[int, float], budget: float
) -> dict[EdgeKey, float]:
    r"""Synaptic scaling: bound every node's total strength by ``budget`` (B).

    With :math:`S_i` the strength of node *i* over *all* its edges
    (``strength``; at least the sum of the given edges of *i*),
    :math:`f_i = \min(1, B / S_i)` and every given edge becomes

    .. math:: w'_{ij} = w_{ij} \cdot \min(f_i, f_j)

    so no weight grows, weights stay in [0, 1], and a node whose edges are
    all given ends with :math:`S'_i \le B`. Multiplicative scaling of all of
    a neuron's synapses towards a target total is homeostatic synaptic
    scaling (Turrigiano, 2008, Cell 135:422); bounding the total is what
    Oja's rule does for the weight norm (Oja, 1982). ``budget`` ≤ 0: off.

    Examples:
        >>> scaled_to_budget({(1, 2): 0.8, (1, 3): 0.8}, {1: 1.6, 2: 0.8, 3: 0.8}, 1.0)
        {(1, 2): 0.5, (1, 3): 0.5}
    """
    if budget <= 0:
        return dict(weights)
    factor = {n: min(1.0, budget / s) if s > budget else 1.0 for n, s in strength.items()}
    return {
        (a, b): w * min(factor.get(a, 1.0), factor.get(b, 1.0)) for (a, b), w in weights.items()
    }


def fan_scaled(
    weight: float, strength_i: float, strength_j: float, reference: float, power: float
) -> float:
    r"""Hub-resistant spreading weight: the fan effect on an edge.

    .. math::
        \tilde w_{ij} = w_{ij}\,
        \min\!\Big(1, \frac{R}{S_i}\Big)^{p}\, \min\!\Big(1, \frac{R}{S_j}\Big)^{p}

    with :math:`S` node strengths, R ``reference`` (a node at or under R,
    such as a plain episode with its two temporal edges, spreads as before)
    and p ``power`` (0: off; 0.5 with both ends is the symmetric
    normalisation :math:`D^{-1/2} W D^{-1/2}` of spectral graph methods;
    p = 1 on the source is the random walk's :math:`D^{-1} W`). In ACT-R the
    associative strength from a source falls with its fan,
    :math:`S_{ji} = S - \ln(\mathrm{fan}_j)` (Anderson & Reder, 1999); here
    the fan is the node's total learned strength, on both ends, so a hub
    neither floods its neighbours nor collects from every seed. Never more
    than :math:`w_{ij}`.

    Examples:
        >>> fan_scaled(0.5, 1.0, 4.0, reference=1.0, power=0.5)
        0.25
        >>> fan_scaled(0.5, 0.9, 1.0, reference=1.0, power=1.0)
        0.5
    """
    if power <= 0:
        return weight
    fi = min(1.0, reference / strength_i) if strength_i > 0 else 1.0
    fj = min(1.0, reference / strength_j) if strength_j > 0 else 1.0
    return float(weight * (fi * fj) ** power)

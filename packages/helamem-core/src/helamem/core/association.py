"""Learned selection: which candidates, base or association, fill a search's k slots.

Spreading reaches memories the query does not match by itself (a question's
reply, the turn after the one that names the topic). Whether such a memory
deserves a slot depends on more than its boost: how strongly the query
matches the seed it came from, how far it lies from that seed and in which
direction, whether the seed asks a question it answers. This module scores
every candidate (the pool and the memories spreading reached) with a
linear model over those signals (a logit), fitted pairwise on the LoCoMo dev
split and chosen by leave-one-conversation-out
(``benchmarks/association_reranker.py``), and the usual
:func:`helamem.core.dynamics.select` then keeps the base top-k except for
at most ``max_flipped`` (and ``association_share``) candidates the model
ranks above base hits, each passing ``association_gate``.

Everything here is a pure function of the arrays the engine already read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt

__all__ = ["ASSOCIATION_MODEL", "FEATURES", "Candidates", "features", "scores"]

FloatArray = npt.NDArray[np.float64]

LENGTH_CAP = 600.0
"""Characters beyond this add nothing to ``length`` (LoCoMo's turns, which the
default model was fitted on, are shorter; a longer memory must not outrank an
exact match on its length alone)."""

FEATURES: tuple[str, ...] = (
    "maxsim",
    "cosine",
    "bm25_share",
    "bm25_match",
    "question",
    "base",
    "base_rank",
    "top_k",
    "length",
    "neighbour",
    "seed_maxsim",
    "seed_base",
    "seed_rank",
    "before_2",
    "before_1",
    "after_1",
    "after_2",
    "answer",
    "named",
)
"""A candidate's features, in the model's column order.

Own signals: ``maxsim`` (late interaction) and ``cosine`` (pooled), each as
a z-score against the candidate pool (the pool's cosine z-score stands in for
MaxSim without token vectors, as in the base activation), ``bm25_share``
(its BM25 over the pool's best), ``bm25_match`` (1 if BM25 matched it),
``question`` (1 if its text ends with "?"), ``base`` (its base activation),
``base_rank`` (``1 / (1 + rank)`` in the base ranking, 0 outside the pool),
``top_k`` (1 in the base top-k), ``length`` (characters / 200),
``named`` (1 if the query names the memory's role, its speaker: "What did
Sam try?" for a memory of role ``"Sam"``; see :func:`helamem.core.text.named`).
Association, from the best-ranked seed that reaches it (all 0 for a memory
spreading did not reach): ``neighbour`` (1),
``seed_maxsim``, ``seed_base``, ``seed_rank`` (the seed's ``base_rank``),
``before_2``/``before_1``/``after_1``/``after_2`` (two or one hops, earlier or
later than the seed by event time, then key) and ``answer`` (one hop after a
seed that asks a question). The path's weight is left out on purpose: on
LoCoMo it changed held-out R@10 by +0.002 with a negative weight, which would
make an edge that learning strengthened count against its memory.
"""

_COL = {f: i for i, f in enumerate(FEATURES)}

ASSOCIATION_MODEL: tuple[tuple[str, float], ...] = (
    ("bias", 0.0),
    ("maxsim", 1.7562),
    ("cosine", -0.279),
    ("bm25_share", 3.0164),
    ("bm25_match", -0.3917),
    ("question", -1.0425),
    ("base", -4.7566),
    ("base_rank", 0.048),
    ("top_k", 0.3123),
    ("length", 0.8272),
    ("neighbour", -3.9187),
    ("seed_maxsim", 0.036),
    ("seed_base", 10.501),
    ("seed_rank", -0.0373),
    ("before_2", -2.7576),
    ("before_1", -2.9963),
    ("after_1", -3.0466),
    ("after_2", -2.1568),
    ("answer", 1.5348),
    ("named", 1.4095),
)
"""The default ``RetrievalConfig.association_model``: weights over
:data:`FEATURES` (raw feature units), fitted on all seven conversations of
the LoCoMo dev split with MiniLM (``benchmarks/association_reranker.py
--fit``; the benchmarks store each turn with its speaker as ``role``) by a
pairwise objective: every evidence turn should outscore every other candidate
of its question (the selection only compares candidates of one search, so the
bias is 0 and plays no part). ``named`` is fitted last with the other weights
frozen at their fit without it, so a store whose roles no query names ranks
exactly as without the feature. Held out, each conversation scored by weights
fitted on the other six, R@10 at 10 hits is 0.835 against 0.785 for
``selection="final"`` and 0.750 for fusion (README, Benchmarks)."""


@dataclass(frozen=True, slots=True)
class Candidates:
    """Every candidate's features: ``x[i]`` belongs to memory ``ns[i]``.

    Attributes:
        ns: Memory keys, shape ``(n,)``.
        x: Shape ``(n, len(FEATURES))``, columns in :data:`FEATURES` order.
    """

    ns: tuple[int, ...]
    x: FloatArray


def features(
    own: Mapping[str, Sequence[float] | FloatArray],
    ns: Sequence[int],
    base: Mapping[int, float],
    pool_order: Sequence[int],
    k: int,
    via: Mapping[int, Sequence[tuple[int, float]]],
    first_hop: Collection[tuple[int, int]],
    order_key: Mapping[int, tuple[float, int]],
) -> Candidates:
    """The :data:`FEATURES` of every candidate.

    Args:
        own: Per-candidate arrays aligned with ``ns``: ``"maxsim"``,
            ``"cosine"`` (as the model takes them: pool z-scores),
            ``"bm25"``, ``"question"`` (0/1), ``"chars"``, and optionally
            ``"named"`` (0/1; absent: 0).
        ns: Candidate keys (the pool, then the memories spreading reached).
        base: Base activation of every candidate (outside the pool: scored
            against the pool's statistics, with BM25 0).
        pool_order: The pool's keys, best base activation first.
        k: The search's k (for ``top_k``).
        via: For a reached memory, its ``(seed, path weight)`` paths.
        first_hop: ``(seed, memory)`` pairs joined by an edge (others in
            ``via`` took two hops).
        order_key: ``(event time, key)`` of every candidate: "before" and
            "after" compare them.

    Returns:
        The candidates' feature matrix.

    Examples:
        >>> own = {"maxsim": [0.5, 0.2], "cosine": [0.4, 0.1], "bm25": [2.0, 0.0],
        ...        "question": [1, 0], "chars": [40, 20]}
        >>> c = features(own, [1, 2], {1: 0.9, 2: 0.3}, [1], 10, {2: [(1, 0.5)]},
        ...              {(1, 2)}, {1: (0.0, 1), 2: (1.0, 2)})
        >>> row = dict(zip(FEATURES, c.x[1].tolist()))
        >>> row["neighbour"], row["after_1"], row["answer"]
        (1.0, 1.0, 1.0)
    """
    n = len(ns)
    x = np.zeros((n, len(FEATURES)))
    bm25 = np.asarray(own["bm25"], dtype=np.float64)
    best = float(bm25.max()) if n else 0.0
    x[:, _COL["maxsim"]] = np.asarray(own["maxsim"], dtype=np.float64)
    x[:, _COL["cosine"]] = np.asarray(own["cosine"], dtype=np.float64)
    x[:, _COL["bm25_share"]] = bm25 / best if best > 0 else 0.0
    x[:, _COL["bm25_match"]] = bm25 > 0
    x[:, _COL["question"]] = np.asarray(own["question"], dtype=np.float64)
    chars = np.asarray(own["chars"], dtype=np.float64)
    x[:, _COL["length"]] = np.minimum(chars, LENGTH_CAP) / 200.0
    if "named" in own:
        x[:, _COL["named"]] = np.asarray(own["named"], dtype=np.float64)
    rank = dict(zip(pool_order, range(len(pool_order)), strict=True))
    x[:, _COL["base"]] = list(map(base.get, ns, repeat(0.0, n)))
    at = np.array(list(map(rank.get, ns, repeat(-1, n))), dtype=np.int64)
    inside = np.flatnonzero(at >= 0)
    x[inside, _COL["base_rank"]] = 1.0 / (1 + at[inside])
    x[inside, _COL["top_k"]] = at[inside] < k
    row = dict(zip(ns, range(n), strict=True)) if via else {}
    for m, paths in via.items():
        i = row.get(m)
        reaching = [(rank[s], s) for s, _ in paths if s in rank and s != m]
        if i is None or not reaching:
            continue
        r, s = min(reaching)
        later = order_key[m] > order_key[s]
        hop1 = (s, m) in first_hop
        j = row.get(s)
        x[i, _COL["neighbour"]] = 1.0
        x[i, _COL["seed_maxsim"]] = x[j, _COL["maxsim"]] if j is not None else 0.0
        x[i, _COL["seed_base"]] = base.get(s, 0.0)
        x[i, _COL["seed_rank"]] = 1.0 / (1 + r)
        x[i, _COL[("after_" if later else "before_") + ("1" if hop1 else "2")]] = 1.0
        seed_asks = j is not None and x[j, _COL["question"]] > 0
        x[i, _COL["answer"]] = float(hop1 and later and seed_asks)
    return Candidates(tuple(ns), x)


def scores(candidates: Candidates, model: Sequence[tuple[str, float]]) -> dict[int, float]:
    r"""The model's logit for every candidate: :math:`b + \sum_f w_f x_f`.

    Args:
        candidates: From :func:`features`.
        model: ``(feature, weight)`` pairs, ``"bias"`` for :math:`b`; features
            left out weigh 0.

    Raises:
        ValueError: A name is neither ``"bias"`` nor in :data:`FEATURES`.

    Examples:
        >>> c = Candidates((7, 8), np.eye(2, len(FEATURES)))
        >>> scores(c, [("bias", 0.5), ("maxsim", 2.0)])
        {7: 2.5, 8: 0.5}
    """
    w = np.zeros(len(FEATURES))
    bias = 0.0
    for name, value in model:
        if name == "bias":
            bias = float(value)
        elif name in _COL:
            w[_COL[name]] = float(value)
        else:
            raise ValueError(f"unknown association feature {name!r}; use one of {FEATURES}")
    logit = candidates.x @ w + bias
    return dict(zip(candidates.ns, logit.tolist(), strict=True))

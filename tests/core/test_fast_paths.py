"""The search's faster code paths give what the simple ones gave, bit for bit.

Each reference below is the implementation a fast path replaced, kept here (and
only here) so that a ranking can never move by a rounding: the features the
learned selection scores, the ranking itself, MaxSim over packed token vectors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from helamem.core import RetrievalConfig, association, dynamics, retrieval
from helamem.core.association import FEATURES, LENGTH_CAP
from helamem.core.retrieval import Pool

FloatArray = np.ndarray


def _features_reference(
    own: Mapping[str, Sequence[float] | FloatArray],
    ns: Sequence[int],
    base: Mapping[int, float],
    pool_order: Sequence[int],
    k: int,
    via: Mapping[int, Sequence[tuple[int, float]]],
    first_hop: Collection[tuple[int, int]],
    order_key: Mapping[int, tuple[float, int]],
) -> association.Candidates:
    """``association.features`` as it was: a Python loop per candidate."""
    n = len(ns)
    x = np.zeros((n, len(FEATURES)))
    col = {f: i for i, f in enumerate(FEATURES)}
    bm25 = np.asarray(own["bm25"], dtype=np.float64)
    best = float(bm25.max()) if n else 0.0
    x[:, col["maxsim"]] = np.asarray(own["maxsim"], dtype=np.float64)
    x[:, col["cosine"]] = np.asarray(own["cosine"], dtype=np.float64)
    x[:, col["bm25_share"]] = bm25 / best if best > 0 else 0.0
    x[:, col["bm25_match"]] = bm25 > 0
    x[:, col["question"]] = np.asarray(own["question"], dtype=np.float64)
    x[:, col["length"]] = np.minimum(np.asarray(own["chars"], dtype=np.float64), LENGTH_CAP) / 200.0
    rank = {m: r for r, m in enumerate(pool_order)}
    row = {m: i for i, m in enumerate(ns)}
    for i, m in enumerate(ns):
        x[i, col["base"]] = base.get(m, 0.0)
        at = rank.get(m)
        if at is not None:
            x[i, col["base_rank"]] = 1.0 / (1 + at)
            x[i, col["top_k"]] = float(at < k)
    for m, paths in via.items():
        j = row.get(m)
        reaching = [(rank[s], s) for s, _ in paths if s in rank and s != m]
        if j is None or not reaching:
            continue
        i = j
        r, s = min(reaching)
        later = order_key[m] > order_key[s]
        hop1 = (s, m) in first_hop
        x[i, col["neighbour"]] = 1.0
        x[i, col["seed_maxsim"]] = x[row[s], col["maxsim"]] if s in row else 0.0
        x[i, col["seed_base"]] = base.get(s, 0.0)
        x[i, col["seed_rank"]] = 1.0 / (1 + r)
        name = ("after_" if later else "before_") + ("1" if hop1 else "2")
        x[i, col[name]] = 1.0
        seed_asks = s in row and x[row[s], col["question"]] > 0
        x[i, col["answer"]] = float(hop1 and later and seed_asks)
    return association.Candidates(tuple(ns), x)


def _random_features_args(rng: np.random.Generator) -> tuple:  # type: ignore[type-arg]
    """A pool (the first ``p`` keys) and neighbours, with seeds, paths and hops."""
    n = int(rng.integers(0, 60))
    p = int(rng.integers(0, n + 1))
    ns = [int(v) for v in rng.choice(10_000, size=n, replace=False)]
    pool = ns[:p]
    order = [pool[i] for i in rng.permutation(p)]
    own = {
        "maxsim": rng.normal(size=n),
        "cosine": rng.normal(size=n).tolist(),
        "bm25": np.where(rng.random(n) < 0.5, 0.0, rng.exponential(3.0, n)),
        "question": (rng.random(n) < 0.2).astype(np.float64),
        "chars": rng.integers(0, 1500, n).astype(np.float64),
    }
    base = {m: float(v) for m, v in zip(ns, rng.random(n), strict=True) if rng.random() < 0.9}
    outside = [int(v) for v in rng.choice(np.arange(10_000, 10_050), size=3, replace=False)]
    via: dict[int, list[tuple[int, float]]] = {}
    first: set[tuple[int, int]] = set()
    for m in [*ns, *outside]:
        if rng.random() < 0.4:
            seeds = [*order[:5], *outside[:1]] if order else outside[:1]
            picked = rng.choice(len(seeds), size=int(rng.integers(1, 4)))
            via[m] = [(seeds[i], float(rng.random())) for i in picked]
            for s, _ in via[m]:
                if rng.random() < 0.5:
                    first.add((s, m))
    times = rng.integers(0, 5, n + len(outside)).astype(np.float64)
    order_key = {m: (float(t), m) for m, t in zip([*ns, *outside], times, strict=True)}
    k = int(rng.integers(1, 12))
    return own, ns, base, order, k, via, first, order_key


@pytest.mark.parametrize("seed", range(200))
def test_features_match_the_per_candidate_loop(seed: int) -> None:
    args = _random_features_args(np.random.default_rng(seed))
    fast, slow = association.features(*args), _features_reference(*args)
    assert fast.ns == slow.ns
    assert fast.x.dtype == slow.x.dtype and fast.x.shape == slow.x.shape
    assert np.array_equal(fast.x, slow.x)  # bit for bit: no tolerance


def _random_pool(rng: np.random.Generator, ns: Sequence[int], late: bool) -> Pool:
    n = len(ns)
    return Pool(
        tuple(ns),
        rng.uniform(-0.2, 0.9, n),
        np.where(rng.random(n) < 0.5, 0.0, rng.exponential(3.0, n)),
        rng.integers(0, 1000, n).astype(np.float64),
        rng.uniform(-0.2, 0.9, n) if late else None,
        rng.integers(1, 1500, n).astype(np.float64),
        (rng.random(n) < 0.2).astype(np.float64),
    )


def _random_rank_args(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n, extra = int(rng.integers(1, 80)), int(rng.integers(0, 20))
    keys = [int(v) for v in rng.choice(5000, size=n + extra, replace=False)]
    late = bool(rng.random() < 0.7)
    pool = _random_pool(rng, sorted(keys[:n]), late)
    neighbours = _random_pool(rng, sorted(keys[n:]), late)
    edges = [
        (int(rng.choice(pool.ns)), int(rng.choice(keys)), float(rng.random()))
        for _ in range(int(rng.integers(0, 40)))
    ]
    edges = [e for e in edges if e[0] != e[1]]
    config = RetrievalConfig(
        spreading_threshold=float(rng.uniform(0.0, 0.6)),
        selection=str(rng.choice(["learned", "final", "base"])),  # type: ignore[arg-type]
    )
    return {
        "pool": pool,
        "k": int(rng.integers(1, 15)),
        "config": config,
        "ref_time": 1000.0,
        "edges": edges,
        "neighbours": neighbours,
        "lexical_mass": float(rng.uniform(0.0, 10.0)),
        "first_hop": {(s, j) for s, j, _ in edges if rng.random() < 0.6},
    }


@pytest.mark.parametrize("seed", range(100))
def test_rank_with_the_callers_base_activations_is_the_same_ranking(seed: int) -> None:
    """The search computes the pool's base activations for its seeds and hands them
    to ``rank``: the ranking is the one ``rank`` computes by itself."""
    args = _random_rank_args(seed)
    base = retrieval.base_activations(args["pool"], args["config"], args["ref_time"])
    assert retrieval.seeds(base, args["config"]) == retrieval._seeds_of(
        sorted(base, key=lambda n: (-base[n], n)), base, args["config"]
    )
    fast, slow = retrieval.rank(**args, base=base), retrieval.rank(**args)
    assert (fast.base_top, fast.associations) == (slow.base_top, slow.associations)
    assert (fast.base, fast.boost, fast.via, fast.relevance) == (
        slow.base,
        slow.boost,
        slow.via,
        slow.relevance,
    )
    if slow.candidates is not None:
        assert fast.candidates is not None and fast.candidates.ns == slow.candidates.ns
        assert np.array_equal(fast.candidates.x, slow.candidates.x)


@pytest.mark.parametrize("seed", range(100))
def test_best_first_is_the_sort_by_score_then_key(seed: int) -> None:
    """Two stable sorts order as one by ``(-score, key)``, ties (frequent here:
    scores from a few values, signed zeros, infinities) included."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 200))
    keys = [int(v) for v in rng.choice(100_000, size=n, replace=False)]
    values = [0.0, -0.0, 0.5, -1.0, float("inf"), float("-inf"), 1e-300]
    scores = {
        m: float(rng.choice(values)) if rng.random() < 0.5 else float(rng.normal()) for m in keys
    }
    assert dynamics.best_first(scores) == sorted(scores, key=lambda m: (-scores[m], m))
    some = keys[: n // 2]
    assert dynamics.best_first(scores, some) == sorted(some, key=lambda m: (-scores[m], m))


@pytest.mark.parametrize("seed", range(50))
def test_pool_statistics_are_numpys_mean_and_std(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (0, 1, 2, 7, 8, 9, 127, 128, 129, 150, 513):
        for x in (
            rng.normal(size=n) * 10 ** rng.uniform(-5, 5),
            rng.exponential(3.0, n) * (rng.random(n) < 0.5),
            np.full(n, rng.normal()),
            rng.normal(size=n).astype(np.float32),  # not float64: numpy's own
        ):
            want = (float(x.mean()), float(x.std())) if n else (0.0, 0.0)
            assert retrieval._mean_sd(x) == want


def _maxsim_packed_reference(
    query: np.ndarray, packed: Sequence[bytes], dimension: int
) -> np.ndarray:
    """``retrieval.maxsim_packed`` as it was (each document's bytes sliced twice)."""
    width = 4 + dimension
    lengths = [len(b) // width for b in packed]
    if any(t * width != len(b) for t, b in zip(lengths, packed, strict=True)):
        raise ValueError(f"packed token vectors are not whole tokens of dimension {dimension}")
    out = np.zeros(len(packed))
    some = [i for i, t in enumerate(lengths) if t]
    if not some:
        return out
    docs, counts = [packed[i] for i in some], [lengths[i] for i in some]
    scales = np.frombuffer(
        b"".join(b[: 4 * t] for b, t in zip(docs, counts, strict=True)), dtype=np.float32
    )
    rows = np.frombuffer(
        b"".join(b[4 * t :] for b, t in zip(docs, counts, strict=True)), dtype=np.int8
    ).reshape(-1, dimension)
    sims = (rows.astype(np.float32) @ np.asarray(query, dtype=np.float32).T) * scales[:, None]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out[some] = np.maximum.reduceat(sims, starts, axis=0).mean(axis=1)
    return out


@pytest.mark.parametrize("seed", range(60))
def test_maxsim_packed_matches_the_former_slicing(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = int(rng.choice([2, 8, 384]))
    query = rng.normal(size=(int(rng.integers(1, 20)), d)).astype(np.float32)
    docs = [
        retrieval.pack_tokens(rng.normal(size=(t, d)).astype(np.float32)) if t else b""
        for t in rng.integers(0, 30, int(rng.integers(0, 80)))
    ]
    fast = retrieval.maxsim_packed(query, docs, d)
    # up to float32 rounding: the product runs in row blocks (no threaded BLAS), and the
    # order in which BLAS sums d = 384 float32 products depends on the CPU's kernel
    # (a relative 2.4e-6 seen on an AVX-512 machine); a wrong row, scale or document
    # is off by far more than 1e-5
    np.testing.assert_allclose(fast, _maxsim_packed_reference(query, docs, d), rtol=1e-5, atol=1e-5)
    if docs:
        with pytest.raises(ValueError, match="whole tokens"):
            retrieval.maxsim_packed(query, [*docs, b"\x00"], d)

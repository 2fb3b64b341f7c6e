"""Property tests of the pure Hebbian math."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helamem.core import dynamics

weights = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)
rates = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
decays = st.floats(min_value=1e-3, max_value=1.0, allow_nan=False)
ticks = st.integers(min_value=-10, max_value=10_000)


@given(weights, rates, st.integers(1, 200))
def test_reinforcement_keeps_weights_in_unit_interval(w: float, eta: float, times: int) -> None:
    for _ in range(times):
        w = dynamics.reinforced(w, eta)
        assert 0.0 < w <= 1.0


@given(weights, ticks, decays)
def test_decay_never_increases_a_weight(w: float, t: int, delta: float) -> None:
    d = dynamics.decayed(w, t, delta)
    assert 0.0 <= d <= w


@given(weights, st.integers(0, 500), st.integers(0, 500), decays)
def test_decay_is_monotone_in_time(w: float, t1: int, t2: int, delta: float) -> None:
    lo, hi = sorted((t1, t2))
    assert dynamics.decayed(w, hi, delta) <= dynamics.decayed(w, lo, delta)


@given(weights, st.integers(0, 300), st.integers(0, 300), decays)
def test_lazy_decay_composes(w: float, t1: int, t2: int, delta: float) -> None:
    once = dynamics.decayed(w, t1 + t2, delta)
    twice = dynamics.decayed(dynamics.decayed(w, t1, delta), t2, delta)
    assert abs(once - twice) <= 1e-9


@given(st.lists(st.floats(0.0, 1.0, allow_nan=False), max_size=60), st.floats(0.0, 0.9))
def test_pruning_removes_exactly_the_edges_below_threshold(ws: list[float], p: float) -> None:
    kept = [w for w in ws if dynamics.survives(w, p)]
    dropped = [w for w in ws if not dynamics.survives(w, p)]
    assert all(w >= p and w > 0 for w in kept)
    assert all(w < p or w == 0 for w in dropped)
    assert len(kept) + len(dropped) == len(ws)


@given(st.lists(st.integers(0, 50), max_size=20))
def test_co_activation_pairs_are_symmetric_and_unique(ids: list[int]) -> None:
    pairs = dynamics.co_activation_pairs(ids)
    assert pairs == dynamics.co_activation_pairs(list(reversed(ids)))
    assert len(pairs) == len(set(pairs))
    n = len(set(ids))
    assert len(pairs) == n * (n - 1) // 2
    assert all(a < b for a, b in pairs)
    for a, b in pairs:
        assert dynamics.edge_key(b, a) == (a, b)


@given(
    st.dictionaries(st.integers(0, 20), st.floats(0.0, 1.0), max_size=10),
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 40), st.floats(0.0, 1.0)), max_size=60),
    st.floats(0.0, 2.0),
    st.floats(0.0, 1.0),
)
def test_spreading_boost_is_bounded_and_nonnegative(
    seeds: dict[int, float], edges: list[tuple[int, int, float]], alpha: float, cap: float
) -> None:
    boost, via = dynamics.spread(seeds, edges, alpha, cap)
    for j, b in boost.items():
        assert 0.0 <= b <= cap
        assert via[j]
        assert all(s in seeds for s, _ in via[j])


@settings(max_examples=50)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=50))
def test_zscore_is_centred(xs: list[float]) -> None:
    z = dynamics.zscore(xs)
    assert abs(float(z.mean())) < 1e-6
    assert np.isfinite(z).all()


@example({0: 0.0, 1: 0.0}, {3: 0.5, 2: 0.25}, 2, 1)  # a gated hit's slot goes to the next
@given(
    st.dictionaries(st.integers(0, 30), st.floats(0, 1), min_size=1, max_size=30),
    st.dictionaries(st.integers(0, 40), st.floats(0, 0.5), max_size=30),
    st.integers(1, 10),
    st.integers(0, 5),
)
def test_select_returns_topk_plus_bounded_associations(
    base: dict[int, float], boost: dict[int, float], k: int, flips: int
) -> None:
    final = dict(base)
    for j, b in boost.items():
        final[j] = final.get(j, 0.0) + b
    base_top = sorted(base, key=lambda i: (-base[i], i))[:k]
    final_top = sorted(final, key=lambda i: (-final[i], i))[:k]
    top, assoc = dynamics.select(base, final, k, flips, mode="append")
    assert top == base_top
    assert len(assoc) <= flips
    assert not set(top) & set(assoc)
    assert assoc == [i for i in final_top if i not in base_top][:flips]
    if not boost:
        assert assoc == []
    for mode in ("final", "base"):
        kept, lifted = dynamics.select(base, final, k, flips, mode=mode)
        assert lifted == assoc  # the same association hits ...
        half, few = dynamics.select(base, final, k, flips, mode=mode, share=0.5)
        assert len(few) <= k // 2 and len(half) >= min(len(base_top), k - k // 2)
        if mode == "base":
            assert half[: k - k // 2] == base_top[: k - k // 2]  # the best base hits stay
        # gate 0: an association never displaces a more relevant base hit
        rel = {i: (i * 7919 % 101) / 100 for i in final}
        gated, through = dynamics.select(base, final, k, flips, mode=mode, relevance=rel, gate=0.0)
        # a skipped association hit leaves its slot to the next one, still from the final top-k
        lifted_all = [i for i in final_top if i not in base_top]
        assert set(through) <= set(lifted_all) and len(through) <= len(assoc)
        assert through == [i for i in lifted_all if i in through]  # final order kept
        assert len(gated) + len(through) <= k
        free = k - len(base_top)
        if mode == "final":
            order = sorted(base_top, key=lambda i: (final.get(i, base[i]), -base[i], -i))
        else:
            order = base_top[::-1]
        gone = [i for i in base_top if i not in gated]
        assert set(gone) == set(order[: len(gone)])  # the first to go went first
        for a, victim in zip(through[free:], order, strict=False):
            assert rel[a] >= rel[victim]
        assert len(kept) + len(lifted) == min(k, len(base_top) + len(assoc))  # within k slots
        assert set(kept) <= set(base_top) and not set(kept) & set(lifted)
        assert kept == [i for i in base_top if i in kept]  # base order kept
        if mode == "base":
            assert kept == base_top[: len(kept)]  # the lowest base hits made room
        else:  # the base hits with the lowest final score made room
            dropped = [i for i in base_top if i not in kept]
            assert all(final[d] <= final[i] for d in dropped for i in kept)


def test_select_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown selection mode"):
        dynamics.select({1: 1.0}, {1: 1.0}, 1, 1, mode="sideways")


def test_recency_is_relative_to_reference_time() -> None:
    # Events of 2023 queried against a 2023 reference do not decay to zero.
    t2023 = 1_688_169_600.0
    r = dynamics.recency(np.array([t2023 - 86_400, t2023]), t2023, 1e7)
    assert r[1] == 1.0
    assert r[0] > 0.99

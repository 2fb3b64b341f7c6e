"""The agent loop's learning rules: pure invariants (hypothesis) and the core's wiring."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helamem.core import (
    DynamicsConfig,
    HelaMemConfig,
    HelaMemory,
    PostgresConfig,
    RetrievalConfig,
    dynamics,
)
from helamem.core.embeddings import Embedder

weights = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
sims = st.lists(st.floats(min_value=-1.0, max_value=1.0, allow_nan=False), max_size=12)


@given(sims, st.floats(0.0, 2.0), st.floats(-1.0, 1.0))
def test_attribution_keeps_the_closest_and_never_one_below_the_gate(
    s: list[float], margin: float, floor: float
) -> None:
    keep = dynamics.attributed(s, margin, floor)
    assert len(set(keep)) == len(keep)
    assert all(s[i] >= floor - 1e-9 and s[i] >= max(s) - margin - 1e-9 for i in keep)
    assert [s[i] for i in keep] == sorted((s[i] for i in keep), reverse=True)
    if s and max(s) >= floor:
        assert s.index(max(s)) in keep or max(s) in [s[i] for i in keep]
    # margin 2 and floor -1 keep every hit
    assert sorted(dynamics.attributed(s, 2.0, -1.0)) == list(range(len(s)))


def test_attribution_cases() -> None:
    assert dynamics.attributed([0.9, 0.2, 0.85, 0.5], margin=0.1, floor=0.0) == [0, 2]
    assert dynamics.attributed([0.3, 0.2], margin=1.0, floor=0.25) == [0]
    assert dynamics.attributed([0.1, 0.2], margin=1.0, floor=0.5) == []


@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=4, unique=True),
    st.lists(st.integers(31, 60), max_size=6, unique=True),
)
def test_star_pairs_never_link_two_used_memories(new: list[int], used: list[int]) -> None:
    star = set(dynamics.recorded_pairs(new, used, "new"))
    clique = set(dynamics.recorded_pairs(new, used, "all"))
    assert star <= clique
    assert not any(a in used and b in used for a, b in star)
    assert len(star) == len(new) * (len(new) - 1) // 2 + len(new) * len(used)


def test_unknown_pairing_is_refused() -> None:
    with pytest.raises(ValueError, match="'all' or 'new'"):
        dynamics.recorded_pairs([1], [2], "clique")


@given(weights, st.floats(0.0, 1.0))
def test_weakening_never_increases_a_weight(w: float, rate: float) -> None:
    assert 0.0 <= dynamics.weakened(w, rate) <= w


@given(weights, st.floats(0.0, 50.0), st.floats(0.0, 50.0), st.floats(0.1, 5.0), st.floats(0, 2))
def test_fan_scaling_never_increases_a_weight(
    w: float, si: float, sj: float, ref: float, p: float
) -> None:
    out = dynamics.fan_scaled(w, si, sj, ref, p)
    assert 0.0 <= out <= w + 1e-12
    if si <= ref and sj <= ref:  # ordinary memories spread exactly as before
        assert out == pytest.approx(w)


def test_fan_scaling_cases() -> None:
    assert dynamics.fan_scaled(0.5, 1.0, 4.0, reference=1.0, power=0.5) == pytest.approx(0.25)
    assert dynamics.fan_scaled(0.5, 9.0, 9.0, reference=1.0, power=0.0) == 0.5


edge_lists = st.lists(
    st.tuples(st.integers(0, 12), st.integers(0, 12), st.floats(0.0, 1.0)), max_size=40
)


@given(edge_lists, st.floats(0.05, 5.0))
def test_synaptic_scaling_bounds_every_nodes_strength(
    raw: list[tuple[int, int, float]], budget: float
) -> None:
    w: dict[tuple[int, int], float] = {}
    for a, b, x in raw:
        if a != b:
            w[dynamics.edge_key(a, b)] = x
    strength = dynamics.strengths((a, b, x) for (a, b), x in w.items())
    out = dynamics.scaled_to_budget(w, strength, budget)
    assert out.keys() == w.keys()
    assert all(0.0 <= out[e] <= w[e] for e in w)  # bounded weights, never grown
    after = dynamics.strengths((a, b, x) for (a, b), x in out.items())
    assert all(s <= budget + 1e-9 for s in after.values())
    # nodes already within the budget keep every edge whose other end is within it too
    for (a, b), x in w.items():
        if strength[a] <= budget and strength[b] <= budget:
            assert out[(a, b)] == x


def test_synaptic_scaling_off_changes_nothing() -> None:
    w = {(1, 2): 0.9, (1, 3): 0.9}
    assert dynamics.scaled_to_budget(w, {1: 1.8, 2: 0.9, 3: 0.9}, 0.0) == w


# -- the core: one recorded turn ------------------------------------------------


class _Table:
    """Fixed unit vectors per text (first word picks the direction)."""

    name = "table"
    dimension = 4

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        dirs = {
            "cats": [1.0, 0.0, 0.0, 0.0],
            "kitten": [0.96, 0.28, 0.0, 0.0],
            "weather": [0.0, 1.0, 0.0, 0.0],
            "generic": [0.0, 0.0, 1.0, 0.0],
            "tax": [0.0, 0.0, 0.0, 1.0],
        }
        out = [dirs[t.split()[0]] for t in texts]
        return np.asarray(out, dtype=np.float32)


def _edges(db: Any) -> dict[frozenset[str], float]:
    """The learned graph, read from the closed store's graph store (white-box)."""
    try:
        rows = db.execute("SELECT a, b, weight FROM edges").fetchall()
        ids = {int(n): str(i) for n, i in db.execute("SELECT n, id FROM memories").fetchall()}
    finally:
        db.close()
    return {frozenset((ids[int(a)], ids[int(b)])): float(w) for a, b, w in rows}


def _memory(
    tmp_path: Path, store: Callable[[Path], PostgresConfig | None], **dyn: object
) -> HelaMemory:
    cfg = HelaMemConfig(
        path=tmp_path,
        store=store(tmp_path),
        dynamics=DynamicsConfig(temporal_weight=0.5, learning_rate=0.1, decay_rate=1.0, **dyn),
        retrieval=RetrievalConfig(),
    )
    embedder: Embedder = _Table()
    return HelaMemory(cfg, embedder=embedder)


def test_defaults_are_the_measured_rule() -> None:
    d, r = DynamicsConfig(), RetrievalConfig()
    assert (d.used_pairs, d.attribution_margin, d.attribution_floor) == ("new", 0.1, -1.0)
    assert (d.unused_weakening, d.strength_budget, r.fan_power, r.fan_reference) == (
        0.0,
        0.0,
        0.5,
        1.0,
    )


def test_default_turn_links_the_reply_to_what_it_drew_on_only(
    tmp_path: Path, store_config: Any, store_db: Any
) -> None:
    s = ("u",)
    with _memory(tmp_path, store_config) as mem:
        a, b, c = (mem.add(t, s).id for t in ("cats one", "weather two", "generic three"))
        u, r = mem.add_turn(s, "tax question", "kitten reply", used_ids=[a, b, c])
    e = _edges(store_db(tmp_path))
    assert e[frozenset((r.id, a))] == pytest.approx(0.1)
    assert e[frozenset((u.id, a))] == pytest.approx(0.1)
    assert e[frozenset((a, b))] == pytest.approx(0.5)  # used memories are not linked together
    assert frozenset((a, c)) not in e and frozenset((r.id, b)) not in e


def test_reference_clique_links_every_used_memory(
    tmp_path: Path, store_config: Any, store_db: Any
) -> None:
    s = ("u",)
    with _memory(tmp_path, store_config, used_pairs="all", attribution_margin=2.0) as mem:
        a, b, c = (mem.add(t, s).id for t in ("cats one", "weather two", "generic three"))
        _u, r = mem.add_turn(s, "tax question", "kitten reply", used_ids=[a, b, c])
    e = _edges(store_db(tmp_path))
    assert e[frozenset((a, b))] == pytest.approx(0.5 + 0.1)  # temporal + co-activation
    assert e[frozenset((a, c))] == pytest.approx(0.1)
    assert e[frozenset((r.id, a))] == pytest.approx(0.1)


def test_attribution_star_and_weakening_in_one_turn(
    tmp_path: Path, store_config: Any, store_db: Any
) -> None:
    s = ("u",)
    rules = {
        "used_pairs": "new",
        "attribution_margin": 0.3,
        "attribution_floor": 0.5,
        "unused_weakening": 0.5,
    }
    with _memory(tmp_path, store_config, **rules) as mem:
        a, b, c = (mem.add(t, s).id for t in ("cats one", "weather two", "generic three"))
        u, r = mem.add_turn(s, "tax question", "kitten reply", used_ids=[a, b, c])
    e = _edges(store_db(tmp_path))
    # the reply (kitten) is close to cats only: only cats co-activates, with both messages
    assert e[frozenset((r.id, a))] == pytest.approx(0.1)
    assert e[frozenset((u.id, a))] == pytest.approx(0.1)
    assert frozenset((r.id, b)) not in e and frozenset((r.id, c)) not in e
    # the temporal edge cats-weather (used vs retrieved-but-unused) is halved
    assert e[frozenset((a, b))] == pytest.approx(0.25)
    # weather-generic: both unused, untouched
    assert e[frozenset((b, c))] == pytest.approx(0.5)


def test_strength_budget_bounds_the_touched_memories(
    tmp_path: Path, store_config: Any, store_db: Any
) -> None:
    s = ("u",)
    with _memory(
        tmp_path, store_config, strength_budget=0.6, used_pairs="all", attribution_margin=2.0
    ) as mem:
        a, b, c = (mem.add(t, s).id for t in ("cats one", "weather two", "generic three"))
        for _ in range(5):
            u, r = mem.add_turn(s, "tax question", "kitten reply", used_ids=[a, b, c])
    e = _edges(store_db(tmp_path))
    strength: dict[str, float] = {}
    for pair, w in e.items():
        for i in pair:
            strength[i] = strength.get(i, 0.0) + w
    # without the budget: b alone holds two temporal edges (1.0) plus 5 turns of learning
    for i in (a, b, c, u.id, r.id):
        assert 0.0 < strength[i] <= 0.6 + 1e-6

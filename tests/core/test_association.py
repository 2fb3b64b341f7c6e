"""``selection="learned"``: the association model's features and what it may select."""

from __future__ import annotations

import doctest
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from helamem.core import (
    HelaMemConfig,
    HelaMemory,
    MiniLMEmbedder,
    NewMemory,
    RetrievalConfig,
    association,
    dynamics,
)
from helamem.core.config import ASSOCIATION_MODEL
from helamem.core.retrieval import Pool, rank

F = {f: i for i, f in enumerate(association.FEATURES)}


def test_doctests() -> None:
    assert doctest.testmod(association).failed == 0


def _own(n: int) -> dict[str, list[float]]:
    return {
        "maxsim": [0.1 * i for i in range(n)],
        "cosine": [0.0] * n,
        "bm25": [float(i % 2) for i in range(n)],
        "question": [float(i == 0) for i in range(n)],
        "chars": [200.0] * n,
    }


def test_features_of_a_seed_and_its_neighbours() -> None:
    # pool 1 (a question), 2, 3; 4 one edge after 1, 5 two hops before 1, 6 unreached
    ns = [1, 2, 3, 4, 5, 6]
    base = {1: 0.9, 2: 0.5, 3: 0.4, 4: 0.2, 5: 0.1, 6: 0.0}
    times = {1: (10.0, 1), 2: (20.0, 2), 3: (30.0, 3), 4: (11.0, 4), 5: (5.0, 5), 6: (1.0, 6)}
    c = association.features(
        _own(6), ns, base, [1, 2, 3], 2, {4: [(1, 0.5)], 5: [(1, 0.25)]}, {(1, 4)}, times
    )
    row = dict(zip(c.ns, c.x, strict=True))
    assert row[1][F["base_rank"]] == 1.0 and row[1][F["top_k"]] == 1.0
    assert row[3][F["base_rank"]] == pytest.approx(1 / 3) and row[3][F["top_k"]] == 0.0
    assert row[2][F["bm25_share"]] == 1.0 and row[3][F["bm25_match"]] == 0.0
    assert row[1][F["length"]] == 1.0 and row[1][F["question"]] == 1.0
    four, five, six = row[4], row[5], row[6]
    assert four[F["neighbour"]] == 1.0 and four[F["after_1"]] == 1.0
    assert four[F["answer"]] == 1.0  # one edge after a question
    assert four[F["seed_base"]] == 0.9 and four[F["seed_rank"]] == 1.0
    assert four[F["seed_maxsim"]] == 0.0
    assert four[F["base_rank"]] == 0.0 and four[F["base"]] == 0.2  # outside the pool
    assert five[F["before_2"]] == 1.0 and five[F["answer"]] == 0.0
    assert five[F["after_1"]] == five[F["before_1"]] == 0.0
    assert not six[F["neighbour"] :].any()  # unreached: no association features


def test_the_best_ranked_seed_describes_a_neighbour_reached_twice() -> None:
    times = {n: (float(n), n) for n in range(1, 5)}
    c = association.features(
        _own(4), [1, 2, 3, 4], {1: 0.9, 2: 0.8, 3: 0.1, 4: 0.0}, [1, 2, 3], 3,
        {4: [(2, 0.9), (1, 0.1)]}, {(2, 4)}, times,
    )  # fmt: skip
    x = c.x[3]
    assert x[F["seed_rank"]] == 1.0 and x[F["seed_base"]] == 0.9  # seed 1, two hops
    assert x[F["after_2"]] == 1.0 and x[F["after_1"]] == 0.0


def test_scores_and_unknown_features() -> None:
    c = association.Candidates((5,), np.ones((1, len(association.FEATURES))))
    assert association.scores(c, [("bias", -1.0), ("base", 2.0)]) == {5: 1.0}
    with pytest.raises(ValueError, match="unknown association feature 'nope'"):
        association.scores(c, [("nope", 1.0)])
    with pytest.raises(ValidationError, match="association_model names unknown features"):
        RetrievalConfig(association_model=(("nope", 1.0),))
    assert {f for f, _ in ASSOCIATION_MODEL} <= {"bias", *association.FEATURES}


def _pool(n: int, seed: int) -> Pool:
    rng = np.random.default_rng(seed)
    return Pool(
        tuple(range(n)),
        rng.uniform(-0.2, 0.9, n),
        np.where(rng.random(n) < 0.5, rng.uniform(0, 8, n), 0.0),
        np.arange(n, dtype=np.float64),
        rng.uniform(0, 0.9, n),
        rng.uniform(10, 300, n),
        (rng.random(n) < 0.2).astype(np.float64),
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 12),
    max_flipped=st.integers(0, 6),
    share=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
)
def test_learned_selection_keeps_k_and_the_caps(
    seed: int, k: int, max_flipped: int, share: float
) -> None:
    """At most k hits, at most min(max_flipped, share * k) outside the base top-k,
    and the base hits kept are the best of the base top-k by the model."""
    pool = _pool(20, seed)
    extra = Pool(
        (100, 101, 102), np.full(3, 0.1), np.zeros(3), np.array([0.5, 1.5, 2.5]),
        np.full(3, 0.1), np.full(3, 50.0), np.zeros(3),
    )  # fmt: skip
    rng = np.random.default_rng(seed + 1)
    model = tuple((f, float(rng.normal(0, 3))) for f in association.FEATURES)
    cfg = RetrievalConfig(
        spreading_threshold=0.0,
        max_flipped=max_flipped,
        association_share=share,
        association_gate=1.0,
        association_model=model,
    )
    edges = [(s, j, 0.5) for s in range(4) for j in (100, 101, 102)]
    r = rank(pool, k=k, config=cfg, ref_time=20.0, edges=edges, neighbours=extra,
             first_hop={(s, 100) for s in range(4)})  # fmt: skip
    assert r.candidates is not None and set(r.candidates.ns) == {*pool.ns, *extra.ns}
    base_top = sorted(pool.ns, key=lambda n: (-r.base[n], n))[:k]
    assert len(r.returned) == len(set(r.returned)) <= k
    kept = [n for n in r.base_top if n in base_top]
    lifted = [n for n in r.returned if n not in base_top]  # associations, reranked pool
    assert set(r.base_top) - set(kept) <= set(pool.ns) - set(r.via)  # reranked: unreached
    assert set(r.associations) <= set(r.via)
    assert len(lifted) <= min(max_flipped, int(share * k + 1e-9))
    assert not set(r.associations) & set(base_top)
    score = association.scores(r.candidates, model)
    dropped = set(base_top) - set(kept)
    if dropped and kept:  # the lowest-scored base hits made room
        assert max(score[n] for n in dropped) <= min(score[n] for n in kept) + 1e-12


def test_without_edges_or_for_facts_the_final_rule_ranks() -> None:
    pool = _pool(12, 3)
    cfg = RetrievalConfig(spreading_threshold=0.0)
    plain = rank(pool, k=5, config=cfg, ref_time=12.0)
    assert plain.candidates is None and plain.associations == []
    edges = [(0, 5, 0.5)]
    final = rank(pool, k=5, config=cfg.model_copy(update={"selection": "final"}), ref_time=12.0,
                 edges=edges)  # fmt: skip
    facts = rank(pool, k=5, config=cfg, ref_time=12.0, edges=edges, learned=False)
    assert facts.candidates is None
    assert (facts.base_top, facts.associations) == (final.base_top, final.associations)


def test_a_search_answers_with_the_reply_to_the_question_it_matches(tmp_path: Path) -> None:
    """End to end: the question a query matches and the turn after it that answers
    (linked by the temporal chain), with the default model and embedder."""
    with HelaMemory(HelaMemConfig(path=tmp_path), embedder=MiniLMEmbedder()) as mem:
        scope = ("users", "ann")
        for i in range(30):
            mem.add(f"filler remark number {i} about the garden hose", scope)
        q = mem.add("What breed is the new puppy Pixel?", scope).id
        a = mem.add("A beagle, three months old.", scope).id
        for i in range(30):
            mem.add(f"puppy toys list entry {i}", scope)
        res = mem.search("Pixel puppy breed", scope, k=5, learn=False)
        assert len(res) <= 5 and res.ids[0] == q
        assert a in res.ids  # no query word in it: only the association finds it
        assert next(h for h in res if h.id == a).provenance == "association"


def test_an_exact_match_is_never_displaced() -> None:
    """A short memory holding every query word (relevance 1.0), then long ones: the
    model's length signal is capped, and a base hit at ``association_keep`` stays
    even under a model that only likes long memories."""
    pool = Pool(
        tuple(range(6)),
        np.array([0.8, 0.5, 0.45, 0.4, 0.35, 0.4]),
        np.array([6.0, 3.0, 1.5, 1.0, 0.5, 2.0]),
        np.arange(6, dtype=np.float64),
        None,
        np.array([40, 3000, 60, 60, 60, 30_000.0]),
        np.zeros(6),
    )
    x = association.features(
        {"maxsim": [0.0] * 6, "cosine": [0.0] * 6, "bm25": [1.0] * 6, "question": [0.0] * 6,
         "chars": pool.chars}, pool.ns, {}, pool.ns, 2, {}, (), {n: (0.0, n) for n in pool.ns},
    ).x  # fmt: skip
    assert x[5, F["length"]] == x[1, F["length"]] == association.LENGTH_CAP / 200
    spread = {"ref_time": 6.0, "edges": [(0, 2, 0.5)], "first_hop": {(0, 2)}, "lexical_mass": 6.0}
    r = rank(pool, k=2, config=RetrievalConfig(), **spread)  # type: ignore[arg-type]
    assert r.relevance[0] == 1.0 and 0 in r.returned  # base rank 0
    hostile = (("bias", 0.0), ("length", 100.0))
    cfg = RetrievalConfig(association_model=hostile, association_gate=1.0)
    kept = rank(pool, k=2, config=cfg, **spread)  # type: ignore[arg-type]
    assert 0 in kept.returned and set(kept.returned) - {0, 1}  # something else made room
    assert kept.candidates is not None
    scores = association.scores(kept.candidates, hostile)
    base = {n: kept.base[n] for n in pool.ns}
    rel = {n: kept.relevance[n] for n in kept.returned} | {0: 1.0, 1: 0.75}
    unkept = dynamics.select(base, scores, 2, 5, "final", 0.5, rel, 1.0)  # no keep
    assert 0 not in unkept[0]  # without it the exact match would have gone


def test_a_pool_member_spreading_did_not_reach_comes_back_as_base(tmp_path: Path) -> None:
    """With a model that prefers a long pool member outside the base top-k and no edge
    to it, that member is returned as ``"base"`` (a reranked base candidate); every
    association hit came by spreading."""
    model = (("bias", 0.0), ("length", 10.0), ("top_k", -1.0))
    retrieval = RetrievalConfig(
        association_model=model,
        association_keep=1.0,
        association_gate=1.0,
        spreading_threshold=0.0,
    )
    cfg = HelaMemConfig(path=tmp_path, retrieval=retrieval)
    with HelaMemory(cfg, embedder=MiniLMEmbedder()) as mem:
        scope = ("users", "ann")
        for i in range(12):
            mem.add(f"note {i} about the tram timetable", scope)
        text = "tram " + "and then we talked about many other things " * 20
        # no temporal edge: spreading cannot reach it
        (long,) = [m.id for m in mem.add_many([NewMemory(text, scope, linked=False)])]
        res = mem.search("tram timetable", scope, k=4, learn=False)
        assert len(res) <= 4
        for h in res:
            assert h.provenance == "base" or h.via, h  # association hits came by spreading
        assert long in res.ids and next(h for h in res if h.id == long).provenance == "base"


def test_a_weak_learned_path_gives_no_association_signals() -> None:
    """A memory reached only over an edge learned from co-retrieval (weight under
    ``association_min_path``) is no chain step to the model: no association features;
    the same memory reached over a temporal-strength edge has them."""
    pool = _pool(12, 5)
    extra = Pool(
        (100,), np.full(1, 0.1), np.zeros(1), np.array([3.5]), np.full(1, 0.1),
        np.full(1, 50.0), np.zeros(1),
    )  # fmt: skip
    cfg = RetrievalConfig(spreading_threshold=0.0)
    seed = max(pool.ns, key=lambda n: rank(pool, k=3, config=cfg, ref_time=12.0).base[n])
    for weight, reached in ((0.05, False), (0.5, True)):
        r = rank(pool, k=3, config=cfg, ref_time=12.0, edges=[(seed, 100, weight)],
                 neighbours=extra, first_hop={(seed, 100)})  # fmt: skip
        assert r.candidates is not None and 100 in r.via
        x = dict(zip(r.candidates.ns, r.candidates.x, strict=True))[100]
        assert bool(x[F["neighbour"]]) == reached
        assert bool(x[F["before_1"]] or x[F["after_1"]]) == reached


def test_named_marks_candidates_whose_role_the_query_names() -> None:
    own = {**_own(3), "named": [1.0, 0.0, 1.0]}
    c = association.features(own, [1, 2, 3], {1: 0.5, 2: 0.4, 3: 0.3}, [1, 2, 3], 2, {}, (), {})
    assert c.x[:, F["named"]].tolist() == [1.0, 0.0, 1.0]
    # without the signal (a pool built by hand, an older caller) it reads 0
    assert association.features(_own(2), [1, 2], {}, [1, 2], 2, {}, (), {}).x[
        :, F["named"]
    ].tolist() == [0.0, 0.0]


def test_a_search_tells_the_model_which_memories_the_query_names(
    tmp_path: Path, store_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The role is read with the ranking columns and compared with the query's
    words, case-insensitively and word by word ("Sam" is not "Samantha")."""
    from helamem.core import HashingEmbedder, retrieval

    cfg = HelaMemConfig(path=tmp_path, store=store_config(tmp_path))
    seen: list[Pool] = []
    real = retrieval.rank

    def keep(pool: Pool, **kw: object) -> retrieval.Ranking:
        seen.append(pool)
        return real(pool, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(retrieval, "rank", keep)
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        scope = ("chat", "1")
        ids = {
            who: mem.add(f"{who}: I tried seltzer water instead of soda", scope, role=who).id
            for who in ("Sam", "Evan", "Samantha")
        }
        mem.add("no speaker given: seltzer water instead of soda", scope)
        res = mem.search("what did SAM try instead of soda?", scope, k=4, learn=False)
        assert set(ids.values()) <= set(res.ids)
        pool = seen[-1]
        assert pool.named is not None
        named = dict(zip(pool.ns, pool.named.tolist(), strict=True))
        assert sum(named.values()) == 1.0  # Sam only: not Evan, Samantha or no role
        keys = mem._call(lambda c: c.store.rows_by_id([ids["Sam"]]))
        assert named[keys[ids["Sam"]].n] == 1.0


def test_a_transcript_line_is_not_prefixed_with_its_role_twice() -> None:
    from datetime import UTC, datetime

    from helamem.core import Hit, Memory
    from helamem.core.types import context_line

    def line(content: str, role: str | None) -> str:
        when = datetime(2024, 5, 1, tzinfo=UTC)
        m = Memory("01X", ("s",), "episodic", content, role, when, when)
        return context_line(Hit(m, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, "base"))

    assert line("Sam: I'll give it a try.", "Sam") == "- [2024-05-01] Sam: I'll give it a try."
    assert line("I'll give it a try.", "Sam") == "- [2024-05-01] Sam: I'll give it a try."
    assert line("Samantha: hi", "Sam") == "- [2024-05-01] Sam: Samantha: hi"
    assert line("hi", None) == "- [2024-05-01] hi"
    assert line("sam: hi", "Sam") == "- [2024-05-01] sam: hi"  # case aside
    assert line("hi", " Sam ") == "- [2024-05-01] Sam: hi"
    assert line("hi", "  ") == "- [2024-05-01] hi"


def test_context_budget_helpers_default_to_the_configs_association_share() -> None:
    """to_text(max_tokens=) and search(max_tokens=) fill a budget alike by default."""
    import inspect

    from helamem.core import SearchResult
    from helamem.core.types import fit_tokens, ranking_order

    want = RetrievalConfig().association_share
    for fn in (SearchResult.to_text, fit_tokens, ranking_order):
        assert inspect.signature(fn).parameters["association_share"].default == want

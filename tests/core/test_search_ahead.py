"""Work a search does while its ANN query runs (the lexical candidates' pool, the edges
of the seeds they suggest) changes no hit: the same memories, order, provenance,
scores and spreading paths as a search that does all of it after the ANN query."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HelaMemory, _search, retrieval
from helamem.core._core import Core
from helamem.core._edges import SpreadOps

ALICE = ("users", "alice")
TOPICS = [
    "Miso the cat chased a laser",
    "the garden needs tomatoes and basil",
    "the marathon training plan for spring",
    "a trip to Lisbon with the kids",
    "the quarterly budget review meeting",
    "learning to play the cello",
]
QUERIES = [
    "what did Miso chase?",
    "tomatoes basil garden",
    "spring marathon",
    "Lisbon kids trip",
    "budget review",
    "cello lessons",
    "cat laser garden",
    "training for the trip",
]


def _conversation(mem: HelaMemory) -> None:
    """Turns on a few topics (each linked to the one before it) and learned edges."""
    rng = random.Random(7)
    for i in range(90):
        topic = rng.choice(TOPICS)
        filler = " ".join(
            rng.choice(["today", "again", "maybe", "later", "soon"]) for _ in range(3)
        )
        mem.add(f"turn {i}: {topic} {filler}", ALICE, role=rng.choice(["user", "assistant"]))
    for q in QUERIES * 2:  # co-activation: edges beyond the temporal chain
        mem.search(q, ALICE, k=5)


def _hits(res: Any) -> list[tuple[str, str, tuple[tuple[str, float], ...]]]:
    return [(h.memory.id, h.provenance, h.via) for h in res]


def _scores(res: Any) -> list[float]:
    return [h.score for h in res]


def _search_all(mem: HelaMemory) -> list[Any]:
    return [mem.search(q, ALICE, k=6, learn=False) for q in QUERIES]


def _wrong_guess(self: SpreadOps, pool: retrieval.Pool, ref: float | None, edges: Any) -> None:
    """Edges read ahead for the pool's weakest members: seeds the search will not use."""
    weakest = sorted(pool.ns, key=lambda n: pool.dense[pool.ns.index(n)])[:8]
    self._seed_edges(dict.fromkeys(weakest, 1.0), edges)


@pytest.mark.parametrize("guess", ["lexical seeds", "wrong seeds", "none"])
def test_work_done_while_the_ann_query_runs_changes_no_hit(
    tmp_path: Path, make_mem: Any, monkeypatch: pytest.MonkeyPatch, guess: str
) -> None:
    ahead_pools: list[int] = []
    real_ahead = SpreadOps._edges_ahead

    def spy(self: SpreadOps, pool: retrieval.Pool, ref: float | None, edges: Any) -> None:
        ahead_pools.append(len(pool.ns))
        if guess == "lexical seeds":
            real_ahead(self, pool, ref, edges)
        elif guess == "wrong seeds":
            _wrong_guess(self, pool, ref, edges)

    with make_mem(tmp_path / "store", query_cache=0) as mem:
        _conversation(mem)
        # the query embedded on the aux thread, the ANN query after the lexical leg:
        # every candidate's row, the pool and the edges read after it
        monkeypatch.setattr(_search, "INLINE_EMBED_S", 0.0)
        after = _search_all(mem)
    monkeypatch.setattr(SpreadOps, "_edges_ahead", spy)
    real_dense = Core._dense

    def slow_dense(self: Core, *args: Any) -> Any:  # an ANN query slower than the lexical leg
        time.sleep(0.05)
        return real_dense(self, *args)

    monkeypatch.setattr(Core, "_dense", slow_dense)
    monkeypatch.setattr(_search, "INLINE_EMBED_S", math.inf)  # vectors known: ANN ahead
    with make_mem(tmp_path / "store", query_cache=0) as mem:
        ahead = _search_all(mem)
    assert ahead_pools and max(ahead_pools) > 0  # the lexical pool was made ahead
    assert any(h.provenance == "association" for r in after for h in r)  # spreading counted
    assert [_hits(r) for r in ahead] == [_hits(r) for r in after]
    for a, b in zip(ahead, after, strict=True):
        assert _scores(a) == pytest.approx(_scores(b), rel=1e-9, abs=1e-12)

"""``search(max_tokens=)`` fills a token budget with whole hits, best first, and
``to_text(max_tokens=)`` agrees with it (issue 15, item 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helamem.core import HelaMemory, InvalidInputError
from helamem.core.tokens import default_counter, estimate_tokens
from helamem.core.types import context_line, ranking_order

ALICE = ("users", "alice")

# token budgets are the engine's, the same on both graph stores (the suite's time)
pytestmark = pytest.mark.sqlite_only


def _fill(mem: HelaMemory) -> None:
    for i in range(30):
        mem.add(f"garden note {i}: " + "tomatoes and basil " * (1 + i % 5), ALICE)


def test_default_counter_is_cl100k_offline() -> None:
    c = default_counter()
    assert c.exact and "cl100k_base" in c.name
    assert c.count("Hello world") == 2  # tiktoken's cl100k_base gives [9906, 1917]
    assert c.count("Emma's violin recital on Saturday! 😀") == 9  # as tiktoken counts it


@pytest.mark.parametrize("budget", [0, 1, 40, 100, 256, 512])
def test_budget_means_the_largest_k_that_fits(mem: HelaMemory, budget: int) -> None:
    _fill(mem)
    q = "garden tomatoes basil"
    res = mem.search(q, ALICE, k=30, max_tokens=budget, learn=False)
    count = default_counter().count

    def cost(hits: Any) -> int:
        return sum(count(context_line(h) + "\n") for h in hits)

    assert cost(res) <= budget
    n = len(res)
    if n:  # exactly the hits of search(k=n) ...
        assert res.ids == mem.search(q, ALICE, k=n, learn=False).ids
    if n < 30:  # ... and search(k=n+1) would not fit
        assert cost(mem.search(q, ALICE, k=n + 1, learn=False)) > budget
    # to_text counts the same way: the budget's own result shows whole
    assert res.to_text(max_tokens=budget) == res.to_text()
    assert count(res.to_text()) <= budget


def test_budget_alone_takes_enough_candidates(mem: HelaMemory) -> None:
    _fill(mem)
    res = mem.search("garden tomatoes basil", ALICE, max_tokens=1024, learn=False)
    assert len(res) > mem.config.retrieval.default_k  # not cut at the default k


def test_caller_counter_and_learning_only_what_is_returned(mem: HelaMemory) -> None:
    _fill(mem)
    calls: list[str] = []

    def words(text: str) -> int:
        calls.append(text)
        return len(text.split())

    res = mem.search("garden tomatoes basil", ALICE, k=10, max_tokens=40, count_tokens=words)
    assert calls and 1 <= len(res) < 10
    assert sum(len((context_line(h) + "\n").split()) for h in res) <= 40
    returned = set(res.ids)
    touched = {
        i
        for i in (h.id for h in mem.search("garden", ALICE, k=30, learn=False))
        if mem.get(i).access_count > 0
    }
    assert touched <= returned  # what was cut was not learned from


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_bad_budget_is_refused(mem: HelaMemory, bad: Any) -> None:
    mem.add("x", ALICE)
    with pytest.raises(InvalidInputError, match="max_tokens"):
        mem.search("x", ALICE, max_tokens=bad)


def test_estimate() -> None:
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1


def test_async_budget(tmp_path: Path, make_mem: Any) -> None:
    import asyncio

    async def go() -> int:
        async with make_mem(tmp_path / "s") as mem:
            _fill(mem)
            res = await mem.asearch("garden", ALICE, max_tokens=50, learn=False)
            return len(res)

    assert 0 < asyncio.run(go()) < 30


def _hit(i: int, activation: float, provenance: str) -> Any:
    from datetime import UTC, datetime

    from helamem.core import Hit, Memory

    t = datetime(2024, 1, 1, tzinfo=UTC)
    m = Memory(f"m{i}", ("s",), "episodic", f"memory {i}", None, t, t, (), 0, None, {}, ())
    base = activation if provenance == "base" else activation / 4
    return Hit(m, 0.5, activation, base, 0.0, 0.0, 0.0, provenance)  # type: ignore[arg-type]


def test_ranking_order_keeps_associations_within_their_share() -> None:
    # associations with the highest activation still wait for their share of the slots
    hits = [_hit(i, 2.0 - i / 10, "association") for i in range(3)] + [
        _hit(10 + i, 1.0 - i / 10, "base") for i in range(7)
    ]
    order = [h.memory.id for h in ranking_order(hits, 0.2)]
    assert order[:4] == ["m10", "m11", "m12", "m13"]  # 4 base hits before the first
    assert order[4] == "m0"
    for n in range(1, len(order) + 1):  # never more than a fifth of the first n
        assert sum(o in ("m0", "m1", "m2") for o in order[:n]) <= max(int(0.2 * n), 0) or (
            n > 7  # only associations were left
        )
    assert [h.memory.id for h in ranking_order(hits, 1.0)][:3] == ["m0", "m1", "m2"]
    # base hits in base order (the fused ranking), whatever their boosts
    boosted = [_hit(1, 0.5, "base"), _hit(2, 0.9, "base")]
    boosted[0] = type(boosted[0])(
        *[getattr(boosted[0], f) for f in ("memory", "score")],
        activation=3.0,
        base=0.5,
        boost=2.5,
        dense=0.0,
        lexical=0.0,
        provenance="base",
    )
    assert [h.memory.id for h in ranking_order(boosted)] == ["m2", "m1"]


def test_a_fact_the_budget_cuts_is_not_learned_from(mem: HelaMemory) -> None:
    """What a budget cuts is neither returned nor learned from: facts too (the final,
    learning search asks only for the facts that fit)."""
    scope = ("users", "bob")
    for i in range(4):
        mem.add_turn(scope, f"I walked my dog Rex in the park, day {i}", "Nice walk!")
    mem.consolidate(scope)
    query = "walked my dog Rex in the park"
    full = mem.search(query, scope, k=2, learn=False)
    episodes = [h for h in full if h.provenance != "semantic"]
    facts = [h for h in full if h.provenance == "semantic"]
    assert len(episodes) == 2 and facts  # the case: facts that would come back
    counter = default_counter()
    room = sum(counter.count(context_line(h) + "\n") for h in episodes)  # none for a fact
    before = {h.id: mem.get(h.id).access_count for h in full}
    got = mem.search(query, scope, k=2, max_tokens=room)
    assert [h.id for h in got] == [h.id for h in episodes]
    mem.flush()  # the learning step is written
    for h in facts:
        assert mem.get(h.id).access_count == before[h.id]  # cut: not learned from
    assert all(mem.get(h.id).access_count == before[h.id] + 1 for h in episodes)

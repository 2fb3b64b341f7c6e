"""HelaMemMemory returns at most ``k`` results, highest score first, on the core's
absolute relevance scale (issue 15: ``k`` means k; a threshold that filters)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from autogen_core.memory import MemoryContent, MemoryMimeType
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import SystemMessage, UserMessage
from pydantic import ValidationError

from helamem.autogen import HelaMemMemory, HelaMemMemoryConfig
from helamem.core import HashingEmbedder, HelaMemory, InvalidInputError

ALICE = ("users", "alice")
WORDS = [
    "tea",
    "cat",
    "violin",
    "recital",
    "marathon",
    "knee",
    "physio",
    "garden",
    "tomato",
    "river",
    "book",
    "moon",
]


def config(path: Path, **kw: Any) -> HelaMemMemoryConfig:
    return HelaMemMemoryConfig(scope=ALICE, path=str(path), embedder="hashing", **kw)


def text(value: str) -> MemoryContent:
    return MemoryContent(content=value, mime_type=MemoryMimeType.TEXT)


def scores(results: list[MemoryContent]) -> list[float]:
    return [float(r.metadata["score"]) for r in results]  # type: ignore[index]


@pytest.fixture
async def store(tmp_path: Path, hela_config: Any) -> AsyncIterator[HelaMemory]:
    mem = HelaMemory(hela_config(tmp_path / "store"), embedder=HashingEmbedder(256))
    yield mem
    await mem.aclose()


async def _story(mem: HelaMemory) -> None:
    """Episodes with learned edges and distilled facts: the core returns more than k."""
    for i in range(6):
        await mem.aadd_turn(ALICE, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
    for i in range(4):
        await mem.aadd(f"the cat food order number {i} arrived", ALICE)
    for _ in range(3):
        await mem.asearch("cat miso mouse", ALICE, k=4)
    assert (await mem.aconsolidate(ALICE)).facts_added > 0


async def test_query_k3_returns_at_most_three_in_score_order(
    store: HelaMemory, tmp_path: Path
) -> None:
    """Issue case: ``query(k=3)`` returned 5 results, not in score order."""
    await _story(store)
    raw = await store.asearch("cat miso", ALICE, k=3, learn=False)
    assert len(raw) > 3  # the core adds facts beside the 3 episodes: the adapter must cut
    memory = HelaMemMemory(config(tmp_path, learn=False), memory=store)
    got = (await memory.query("cat miso", k=3)).results
    assert len(got) == 3
    s = scores(got)
    assert s == sorted(s, reverse=True)
    assert all(0.0 <= x <= 1.0 for x in s)
    # facts compete on the same scale: the 3 are the best 3 of episodes and facts
    assert s[-1] >= sorted((h.score for h in raw), reverse=True)[2]
    for k in (1, 2, 5):
        s = scores((await memory.query("cat miso", k=k)).results)
        assert len(s) == k and s == sorted(s, reverse=True)


async def test_threshold_filters_nonsense_and_keeps_an_exact_match(
    tmp_path: Path, hela_config: Any
) -> None:
    """Issue case: a nonsense query scored 0.68-1.33, so 0.99 filtered nothing.

    With the real (offline MiniLM) embedder: nonsense returns nothing at 0.99, the
    exact content of a memory still returns it.
    """
    async with HelaMemory(hela_config(tmp_path / "m")) as mem:
        memory = HelaMemMemory(config(tmp_path, learn=False), memory=mem)
        facts = [
            "The violin recital is on Saturday",
            "Tax forms are due in April",
            "Alice runs a marathon in October",
            "The tomato seedlings need water daily",
        ]
        for fact in facts:
            await memory.add(text(fact))
        nonsense = (await memory.query("xq zzkv blorf qwpt", k=5)).results
        assert nonsense and max(scores(nonsense)) < 0.5  # scored, and clearly low
        assert (await memory.query("xq zzkv blorf qwpt", score_threshold=0.99)).results == []
        exact = (await memory.query(facts[0], score_threshold=0.99)).results
        assert [r.content for r in exact] == [facts[0]]
        strict = HelaMemMemory(config(tmp_path, score_threshold=0.99), memory=mem)
        assert (await strict.query("xq zzkv blorf qwpt")).results == []


async def test_random_stores_queries_and_limits(store: HelaMemory, tmp_path: Path) -> None:
    """Seeded property: len <= k, descending scores in [0, 1], none below the threshold."""
    rng = random.Random(15)
    for trial in range(12):
        scope = ("p", str(trial))
        for _ in range(rng.randint(1, 25)):
            await store.aadd(" ".join(rng.choices(WORDS, k=rng.randint(2, 6))), scope)
        if rng.random() < 0.5:
            await store.aconsolidate(scope)
        memory = HelaMemMemory(
            HelaMemMemoryConfig(scope=scope, path=str(tmp_path), embedder="hashing"), memory=store
        )
        for _ in range(4):
            k = rng.randint(1, 12)
            threshold = rng.choice([None, 0.0, 0.3, 0.6, 0.9])
            q = " ".join(rng.choices(WORDS, k=rng.randint(1, 3)))
            got = scores((await memory.query(q, k=k, score_threshold=threshold)).results)
            assert len(got) <= k
            assert got == sorted(got, reverse=True)
            assert all(0.0 <= s <= 1.0 for s in got)
            assert threshold is None or all(s >= threshold for s in got)
            ids = [r.metadata["id"] for r in (await memory.query(q, k=k)).results]  # type: ignore[index]
            assert len(ids) == len(set(ids))


async def test_update_context_reports_only_what_it_injected(
    store: HelaMemory, tmp_path: Path
) -> None:
    """``max_tokens`` cuts whole memories, and the result and used ids match the text."""
    memory = HelaMemMemory(config(tmp_path, k=3, max_tokens=20), memory=store)
    for fact in (
        "Alice's cat is called Miso",
        "Alice's cat Miso likes tuna and sleeps all day long on the sofa",
        "Alice's cat Miso was adopted from the shelter in Lyon last spring",
    ):
        await memory.add(text(fact))
    context = UnboundedChatCompletionContext()
    await context.add_message(UserMessage(content="Alice's cat Miso", source="user"))
    result = await memory.update_context(context)
    shown = result.memories.results
    message = next(m for m in await context.get_messages() if isinstance(m, SystemMessage))
    body = message.content.split("\n")[1:]
    assert 1 <= len(shown) < 3  # the budget cut whole memories
    assert len(body) == len(shown)
    assert all(str(r.content) in line for r, line in zip(shown, body, strict=True))
    s = scores(shown)
    assert s == sorted(s, reverse=True)
    served = memory._served[context]  # what it will record as used for this turn
    assert served.ids == tuple(r.metadata["id"] for r in shown)  # type: ignore[index]


async def test_bad_k_and_threshold_are_rejected(store: HelaMemory, tmp_path: Path) -> None:
    memory = HelaMemMemory(config(tmp_path), memory=store)
    for k in (0, -1, 2.5, True, "3"):
        with pytest.raises(InvalidInputError, match="k must be an int >= 1"):
            await memory.query("x", k=k)
    for t in (1.5, -0.1, float("nan"), "0.5"):
        with pytest.raises(InvalidInputError, match=r"score_threshold must be a relevance"):
            await memory.query("x", score_threshold=t)
    with pytest.raises(ValidationError):
        config(tmp_path, score_threshold=2.0)

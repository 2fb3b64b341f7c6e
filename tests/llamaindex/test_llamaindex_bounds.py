"""The LlamaIndex block and chat memory inject at most ``k`` hits, highest score first,
whole lines within their token budgets (issue 15: ``k`` means k)."""

from __future__ import annotations

import random

from llama_index.core.llms import ChatMessage

from helamem.core import HelaMemory, Hit, SearchResult
from helamem.llamaindex import HelaMemChatMemory, HelaMemMemoryBlock
from helamem.llamaindex._shared import count_tokens

ALICE = ("users", "alice")
WORDS = ["tea", "cat", "violin", "recital", "marathon", "knee", "physio", "garden", "tomato"]


def _story(store: HelaMemory, scope: tuple[str, ...] = ALICE) -> None:
    """Episodes with learned edges and distilled facts: the core returns more than k."""
    for i in range(6):
        store.add_turn(scope, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
    for _ in range(3):
        store.search("cat miso mouse", scope, k=4)
    assert store.consolidate(scope).facts_added > 0


def _expected(store: HelaMemory, query: str, scope: tuple[str, ...], k: int) -> list[Hit]:
    """What the adapters must return, before the token budget: the best k of the
    core's k episodes and min(semantic_k, k) facts, by score, those of relevance 0 left out."""
    res = store.search(query, scope, k=k, semantic_k=min(3, k), learn=False)
    return [h for h in sorted(res, key=lambda h: -h.score)[:k] if h.score > 0]


async def test_block_returns_at_most_k_in_score_order(store: HelaMemory) -> None:
    _story(store)
    raw = store.search("cat miso", ALICE, k=3, learn=False)
    assert len(raw) > 3  # 3 episodes and the facts beside them: the block must cut
    want = _expected(store, "cat miso", ALICE, 3)
    block = HelaMemMemoryBlock.from_memory(store, scope=ALICE, k=3, max_tokens=10_000)
    text = await block.aget([ChatMessage(role="user", content="cat miso")])
    assert [line.id for line in block._shown] == [h.id for h in want]
    assert len(text.splitlines()) == 3
    # facts compete for the same slots (on ties, episodes first)
    assert "semantic" in {h.provenance for h in _expected(store, "cat miso", ALICE, 8)}
    await block.aclose()


async def test_block_text_fits_max_tokens_with_llamaindex_tokens(store: HelaMemory) -> None:
    _story(store)
    full = HelaMemMemoryBlock.from_memory(store, scope=ALICE, k=8, max_tokens=10_000)
    every = (await full.aget([ChatMessage(role="user", content="cat miso")])).splitlines()
    assert len(every) == 8
    budget = count_tokens("\n".join(every[:3]))  # room for exactly the best 3 lines
    block = HelaMemMemoryBlock.from_memory(store, scope=ALICE, k=8, max_tokens=budget)
    text = await block.aget([ChatMessage(role="user", content="cat miso")])
    assert text.splitlines() == every[:3]
    assert count_tokens(text) <= budget


async def test_block_random_stores_queries_and_limits(store: HelaMemory) -> None:
    """Seeded property: <= k lines, the best by score of those the messages do not hold,
    within max_tokens, a tight cut."""
    rng = random.Random(15)
    for trial in range(10):
        scope = ("p", str(trial))
        for _ in range(rng.randint(1, 20)):
            store.add(" ".join(rng.choices(WORDS, k=rng.randint(2, 8))), scope)
        if rng.random() < 0.5:
            store.consolidate(scope)
        for _ in range(3):
            k, budget = rng.randint(1, 8), rng.randint(5, 120)
            q = " ".join(rng.choices(WORDS, k=rng.randint(1, 3)))
            want = _expected(store, q, scope, k)
            block = HelaMemMemoryBlock.from_memory(store, scope=scope, k=k, max_tokens=budget)
            text = await block.aget([ChatMessage(role="user", content=q)])
            held = sum(h.content.strip() == q for h in want)  # the window holds these
            if held:  # their slots go to the next best (a read-only second search)
                more = _expected(store, q, scope, k + held)
                want = [h for h in more if h.content.strip() != q][:k]
            ids = [line.id for line in block._shown]
            assert len(ids) <= k
            assert ids == [h.id for h in want[: len(ids)]]  # the best, best first
            assert count_tokens(text) <= budget
            if len(ids) < len(want):  # a tight cut: the next whole line would not fit
                lines = [line.text for line in block._shown]
                nxt = SearchResult(q, (want[len(ids)],)).to_text()
                assert count_tokens("\n".join([*lines, nxt])) > budget


def test_chat_memory_returns_at_most_k_in_score_order(store: HelaMemory) -> None:
    _story(store)
    want = _expected(store, "cat miso", ALICE, 4)
    memory = HelaMemChatMemory.from_defaults(
        memory=store, session_id="c", scope=ALICE, k=4, memory_tokens=10_000, token_limit=10_000
    )
    got = memory.get("cat miso")
    lines = (got[0].content or "").splitlines()[1:]
    assert len(lines) == 4
    assert all(h.content in line for h, line in zip(want, lines, strict=True))
    assert [line.id for line in memory._shown] == [h.id for h in want]


def test_chat_memory_respects_memory_tokens_and_token_limit(store: HelaMemory) -> None:
    """Whole lines within ``memory_tokens`` and within what ``token_limit`` leaves, counted
    with the memory's own ``tokenizer_fn``; the used ids are the lines shown."""
    _story(store)

    def words(text: str) -> list[str]:
        return text.split()

    roomy = HelaMemChatMemory.from_defaults(
        memory=store, scope=ALICE, k=8, memory_tokens=10_000, token_limit=10_000, tokenizer_fn=words
    )
    every = (roomy.get("cat miso")[0].content or "").splitlines()[1:]
    assert len(every) == 8
    header = len(words(roomy.memory_header))
    three = len(words("\n".join(every[:3])))
    by_memory = HelaMemChatMemory.from_defaults(
        memory=store, scope=ALICE, k=8, memory_tokens=three, token_limit=10_000, tokenizer_fn=words
    )
    got = by_memory.get("cat miso")
    assert (got[0].content or "").splitlines()[1:] == every[:3]
    # after the current turn (2 words), token_limit leaves room for the header and two
    # lines: the third goes
    two = header + len(words("\n".join(every[:2])))
    by_limit = HelaMemChatMemory.from_defaults(
        memory=store,
        scope=ALICE,
        k=8,
        memory_tokens=10_000,
        token_limit=two + 3 + 2,
        tokenizer_fn=words,
    )
    by_limit.put(ChatMessage(role="user", content="cat miso"))
    got = by_limit.get(initial_token_count=3)
    assert (got[0].content or "").splitlines()[1:] == every[:2]
    assert len(words(got[0].content or "")) <= two
    assert got[1:] == by_limit.get_all()
    assert len(by_limit.pending_used_ids) == 2  # only what reached the prompt counts as used

"""The query-embedding cache (``RetrievalConfig.query_cache``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
    PostgresConfig,
    RetrievalConfig,
)

SCOPE = ("u",)
StoreConfig = Callable[[Path], PostgresConfig | None]


class CountingEmbedder(HashingEmbedder):
    """A hashing embedder with token vectors that counts each text it embeds."""

    def __init__(self) -> None:
        super().__init__(64, token_vectors=True)
        self.seen: Counter[str] = Counter()

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        self.seen.update(texts)
        return super().embed_with_tokens(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.update(texts)
        return super().embed(texts)


def _mem(
    path: Path, store: StoreConfig, emb: CountingEmbedder, size: int | None = None
) -> HelaMemory:
    retrieval = RetrievalConfig() if size is None else RetrievalConfig(query_cache=size)
    cfg = HelaMemConfig(path=path, retrieval=retrieval, store=store(path))
    m = HelaMemory(cfg, embedder=emb).open()
    m.add_many([NewMemory(f"note {i} about topic{i % 5} and more words", SCOPE) for i in range(30)])
    return m


def test_a_repeated_query_is_embedded_once_with_the_same_hits(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    emb = CountingEmbedder()
    with _mem(tmp_path, store_config, emb) as m:
        first = m.search("topic3 words", SCOPE, k=5, learn=False)
        again = m.search("topic3 words", SCOPE, k=5, learn=False)
        assert emb.seen["topic3 words"] == 1
        assert [(h.memory.id, h.score) for h in first] == [(h.memory.id, h.score) for h in again]


def test_a_token_budget_embeds_its_query_once(tmp_path: Path, store_config: StoreConfig) -> None:
    emb = CountingEmbedder()
    with _mem(tmp_path, store_config, emb) as m:
        res = m.search("topic1 note", SCOPE, k=10, max_tokens=40)
        assert res.hits and emb.seen["topic1 note"] == 1


def test_query_cache_0_embeds_every_time(tmp_path: Path, store_config: StoreConfig) -> None:
    emb = CountingEmbedder()
    with _mem(tmp_path, store_config, emb, size=0) as m:
        for _ in range(3):
            m.search("topic2", SCOPE, k=3, learn=False)
        assert emb.seen["topic2"] == 3


def test_the_cache_keeps_the_most_recent_queries(tmp_path: Path, store_config: StoreConfig) -> None:
    emb = CountingEmbedder()
    with _mem(tmp_path, store_config, emb, size=2) as m:
        for q in ["topic0", "topic1", "topic0", "topic2", "topic0", "topic1"]:
            m.search(q, SCOPE, k=3, learn=False)
        # topic0 stays (used again before each eviction); topic1 was evicted by topic2
        assert {t: emb.seen[t] for t in ("topic0", "topic1", "topic2")} == {
            "topic0": 1,
            "topic1": 2,
            "topic2": 1,
        }

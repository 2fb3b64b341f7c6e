"""The real offline MiniLM embedder (no fake): quality, batching, Chroma registration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    MiniLMEmbedder,
    NewMemory,
    RetrievalConfig,
)

pytestmark = pytest.mark.embedder


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(batch_size=4)


def test_vectors_are_normalised_and_semantic(minilm: MiniLMEmbedder) -> None:
    v = minilm.embed(["I adopted a kitten", "We got a new cat", "The stock market fell"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_batching_with_dynamic_padding_matches_single_runs(minilm: MiniLMEmbedder) -> None:
    texts = ["short", "a much longer sentence " * 10, "medium sized text here", "x"] * 3
    batched = minilm.embed(texts)
    single = np.stack([minilm.embed([t])[0] for t in texts])
    assert np.abs(batched - single).max() < 2e-2
    assert (batched * single).sum(axis=1).min() > 0.999


def test_registered_chroma_embedding_function() -> None:
    from chromadb.utils.embedding_functions import known_embedding_functions

    from helamem.core.storage.chroma import HelaMemMiniLMEmbeddingFunction

    ef = known_embedding_functions[HelaMemMiniLMEmbeddingFunction.name()]
    built = ef.build_from_config({"batch_size": 8, "max_length": 128})
    assert len(built(["hello world"])[0]) == 384


def test_default_store_uses_minilm_end_to_end(tmp_path: Path) -> None:
    scope = ("users", "alice")
    with HelaMemory(HelaMemConfig(path=tmp_path / "s")) as mem:
        mem.add_many(
            [
                NewMemory("I adopted a kitten named Miso last week", scope),
                NewMemory("My favourite food is spicy ramen", scope),
                NewMemory("I work as a nurse at the city hospital", scope),
            ]
        )
        res = mem.search("what pet do I have?", scope, k=1)
        assert "kitten" in res[0].content
        assert mem.stats().embedder == "all-MiniLM-L6-v2-onnx-int8"


class _Float64(HashingEmbedder):
    """A custom embedder that returns float64 (numpy's default), unnormalised."""

    def embed(self, texts: Sequence[str]) -> Any:  # type: ignore[override]
        return np.asarray(super().embed(texts), dtype=np.float64) * 3.0


def test_a_float64_custom_embedder_is_stored_and_indexed_as_float32(
    tmp_path: Path, store_config: Any
) -> None:
    """Its vectors pass the check every embedder output passes (float32, unit length),
    so the index takes them: none stays unindexed (mark_indexed compares the bytes it
    wrote with the bytes stored)."""
    cfg = HelaMemConfig(
        path=tmp_path,
        store=store_config(tmp_path),
        retrieval=RetrievalConfig(late_weight=0.0),  # the pooled-only path
    )
    with HelaMemory(cfg, embedder=_Float64(64)) as mem:
        a = mem.add("the violin recital is on saturday", ("u",)).id
        mem.add("buy milk and bread", ("u",))
        assert mem.search("violin recital", ("u",), k=1, learn=False).ids == [a]
        st = mem.stats()
        assert (st.unindexed, st.memories) == (0, 2)

"""The vector index on a Chroma server (``chromadb.HttpClient``) through the same config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chroma_server import CHROMA, chroma_server
from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not Path(CHROMA).exists():
        pytest.skip("the chroma CLI is not installed")
    try:
        with chroma_server(tmp_path_factory.mktemp("chroma-server")) as port:
            yield port
    except RuntimeError as exc:  # it exited or never answered
        pytest.fail(str(exc))


def test_http_chroma_is_a_drop_in_vector_index(tmp_path: Path, chroma_port: int) -> None:
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        chroma=ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, collection="t-http"),
    )
    scope = ("tenants", "acme")
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        a = mem.add("the invoice is due on friday", scope).id
        mem.add("lunch with the design team", scope)
        assert mem.search("when is the invoice due", scope, k=1).ids == [a]
        assert mem.stats().vectors == 2
        mem.delete(a)
        assert mem.stats().vectors == 1
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as again:  # persisted on the server
        assert again.stats().vectors == 1

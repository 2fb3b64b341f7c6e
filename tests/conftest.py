"""Shared fixtures: hermetic stores in tmp paths with a deterministic embedder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, RetrievalConfig


def make_memory(path: Path, **retrieval: object) -> HelaMemory:
    cfg = HelaMemConfig(path=path, retrieval=RetrievalConfig(**retrieval))  # type: ignore[arg-type]
    return HelaMemory(cfg, embedder=HashingEmbedder(256))


@pytest.fixture
def mem(tmp_path: Path) -> Iterator[HelaMemory]:
    m = make_memory(tmp_path / "store")
    yield m
    m.close()


@pytest.fixture
def make_mem() -> object:
    """Factory: ``make_mem(path, **retrieval_overrides)`` → an unopened HelaMemory."""
    return make_memory


# Property tests are derandomized by default so that CI is reproducible; explore
# new examples locally with ``pytest --hypothesis-profile=explore``.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("ci")

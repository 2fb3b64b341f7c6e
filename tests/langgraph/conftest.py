"""Fixtures for the LangGraph adapter: its memory on each graph store (``backend``).

Only the :class:`~helamem.core.HelaMemory` behind the adapters is parametrised:
the LangGraph document store (``langgraph-store.sqlite``) and the default
checkpoint saver (``checkpoints.sqlite``) are LangGraph's own SQLite files on
both backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, PostgresConfig


@pytest.fixture
def hela_config(store_config: Callable[[Path], PostgresConfig | None]) -> Callable[..., Any]:
    """``hela_config(path, **fields)`` → a :class:`HelaMemConfig` at ``path`` whose graph
    store is this test's backend (reopening ``path`` finds the same memories)."""

    def make(path: Path, **fields: Any) -> HelaMemConfig:
        return HelaMemConfig(path=path, store=store_config(path), **fields)

    return make


@pytest.fixture
def new_memory(hela_config: Callable[..., HelaMemConfig]) -> Callable[..., HelaMemory]:
    """``new_memory(path, dim=256, **fields)`` → an unopened :class:`HelaMemory` on this
    test's backend, with the deterministic hashing embedder."""

    def make(path: Path, dim: int = 256, **fields: Any) -> HelaMemory:
        return HelaMemory(hela_config(path, **fields), embedder=HashingEmbedder(dim))

    return make


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """The memory's directory (a module's own ``path`` fixture overrides it)."""
    return tmp_path / "mem"


@pytest.fixture
def memory(path: Path, new_memory: Callable[..., HelaMemory]) -> Iterator[HelaMemory]:
    """An unopened memory at ``path`` on this test's backend, closed after the test."""
    m = new_memory(path)
    yield m
    m.close()

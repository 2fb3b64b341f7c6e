"""Fixtures for the LlamaIndex adapter: hermetic, serializable stores on each graph store
(the ``backend`` fixture: SQLite and PostgreSQL) and a spy recorder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from li_fakes import SpyRecorder, hashing_config

from helamem.core import HelaMemConfig, HelaMemory, PostgresConfig


@pytest.fixture
def config_at(
    store_config: Callable[[Path], PostgresConfig | None],
) -> Callable[[Path], HelaMemConfig]:
    """``config_at(path)`` → :func:`hashing_config` at ``path`` on this test's backend
    (reopening ``path`` finds the same memories)."""
    return lambda path: hashing_config(path, store_config(path))


@pytest.fixture
def store(tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]) -> Iterator[HelaMemory]:
    mem = HelaMemory(config_at(tmp_path / "store"))
    yield mem
    mem.close()


@pytest.fixture
def spy(store: HelaMemory) -> Iterator[SpyRecorder]:
    rec = SpyRecorder(store)
    yield rec
    rec.close_sync()

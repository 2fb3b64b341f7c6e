"""Fixtures for the AutoGen adapter: its memory on each graph store (``backend``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helamem.autogen import HelaMemMemoryConfig
from helamem.core import HelaMemConfig, PostgresConfig


@pytest.fixture
def hela_config(store_config: Callable[[Path], PostgresConfig | None]) -> Callable[..., Any]:
    """``hela_config(path, **fields)`` → a :class:`HelaMemConfig` at ``path`` whose graph
    store is this test's backend (reopening ``path`` finds the same memories)."""

    def make(path: Path, **fields: Any) -> HelaMemConfig:
        return HelaMemConfig(path=path, store=store_config(path), **fields)

    return make


@pytest.fixture
def own_store(
    backend: str,
    store_config: Callable[[Path], PostgresConfig | None],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """Puts the store a ``HelaMemMemory`` builds from its config alone (no ``memory=``) on
    this test's backend; returns the backend.

    ``HelaMemMemoryConfig`` has no PostgreSQL setting (a PostgreSQL store is passed
    as ``memory=``), so on ``postgres`` its ``to_helamem_config`` gains
    ``store=store_config(path)``: the adapter's own-store paths (open on first use,
    close, ``dump_component``/``load_component``, ``embedder=``) then run unchanged
    against PostgreSQL, and the same ``path`` finds the same memories.
    """
    if backend == "postgres":
        plain = HelaMemMemoryConfig.to_helamem_config

        def on_postgres(self: HelaMemMemoryConfig) -> HelaMemConfig:
            cfg = plain(self)
            return cfg.model_copy(update={"store": store_config(Path(self.path))})

        monkeypatch.setattr(HelaMemMemoryConfig, "to_helamem_config", on_postgres)
    return backend

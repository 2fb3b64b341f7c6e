"""Fakes for the LlamaIndex adapter tests: a serializable hermetic config and a spy recorder."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from helamem.core import EmbedderConfig, HelaMemConfig, HelaMemory, PostgresConfig, TurnRecorder


def hashing_config(path: Path, store: PostgresConfig | None = None) -> HelaMemConfig:
    """A config that rebuilds the same deterministic embedder after a round trip (its graph
    in ``store``: the ``store_config(path)`` of the test's backend)."""
    return HelaMemConfig(
        path=path, embedder=EmbedderConfig(provider="hashing", dimension=256), store=store
    )


class SpyRecorder(TurnRecorder):
    """A real recorder that also keeps what it was asked to record."""

    def __init__(self, memory: HelaMemory) -> None:
        super().__init__(memory)
        self.turns: list[tuple[tuple[str, ...], str, str, list[str]]] = []

    def _keep(self, scope: Sequence[str], user: str, assistant: str, ids: Iterable[str]) -> None:
        self.turns.append((tuple(scope), user, assistant, list(ids)))

    async def record_turn(  # type: ignore[override]
        self, scope: Sequence[str], user: str, assistant: str, **kw: Any
    ) -> None:
        self._keep(scope, user, assistant, kw.get("used_ids", ()))
        await super().record_turn(scope, user, assistant, **kw)

    def record_turn_sync(  # type: ignore[override]
        self, scope: Sequence[str], user: str, assistant: str, **kw: Any
    ) -> None:
        self._keep(scope, user, assistant, kw.get("used_ids", ()))
        super().record_turn_sync(scope, user, assistant, **kw)

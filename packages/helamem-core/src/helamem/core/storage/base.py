"""Storage protocols and row types shared by the engine and the backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..errors import IndexLockedError

__all__ = ["EdgeRow", "IndexLockedError", "MemoryRow", "RankRow", "VectorIndex"]
# IndexLockedError lives in helamem.core.errors; re-exported here for the backends


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """A memory as stored (``n`` is the integer key edges refer to)."""

    n: int
    id: str
    scope_id: int
    kind: str
    content: str
    role: str | None
    event_time: float
    created_at: float
    keywords: str
    access_count: int
    last_access: float | None
    metadata: str
    provenance: str
    embedding: bytes | None

    def vector(self) -> npt.NDArray[np.float32] | None:
        if self.embedding is None:
            return None
        return np.frombuffer(self.embedding, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class RankRow:
    """The columns ranking and spreading read (a search loads full rows only for its hits)."""

    n: int
    id: str
    scope_id: int
    kind: str
    event_time: float
    embedding: bytes | None

    def vector(self) -> npt.NDArray[np.float32] | None:
        if self.embedding is None:
            return None
        return np.frombuffer(self.embedding, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """An edge as stored: weight as of ``tick`` (decay is applied on read)."""

    a: int
    b: int
    scope_id: int
    weight: float
    tick: int


class VectorIndex(Protocol):
    """A derived index of embeddings keyed by memory id."""

    def open(self, dimension: int) -> None: ...

    def close(self) -> None: ...

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        scope_ids: Sequence[int],
        kinds: Sequence[str],
    ) -> None: ...

    def delete(self, items: Sequence[tuple[str, int, str]]) -> None:
        """Delete ``(id, scope_id, kind)`` entries; unknown ones are ignored."""
        ...

    def query(
        self,
        vector: npt.NDArray[np.float32],
        n: int,
        scope_ids: Sequence[int],
        kind: str,
    ) -> list[tuple[str, float]]:
        """Nearest ids with cosine distance, restricted to scopes and kind."""
        ...

    def count(self) -> int:
        """Vectors the index can return."""
        ...

    def reset(self) -> None:
        """Drop every vector (before a full reindex)."""
        ...

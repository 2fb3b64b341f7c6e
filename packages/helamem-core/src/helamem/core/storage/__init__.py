"""Storage: the SQLite graph store (source of truth) and the vector index."""

from .base import EdgeRow, MemoryRow, VectorIndex

__all__ = ["EdgeRow", "MemoryRow", "VectorIndex"]

"""Vectors: the float32 array type embedders return, and the check every embedder output passes.

Shared by the embedders (:mod:`.embeddings`), the LiteLLM embedder
(:mod:`.llm`) and the stores, so that none of them imports another for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import EmbeddingError

__all__ = ["Vectors", "check_vectors"]

Vectors = npt.NDArray[np.float32]
"""Rows of L2-normalised float32 vectors, shape ``(texts, dimension)``."""


def check_vectors(vectors: Any, n: int, dimension: int, name: str) -> Vectors:
    """Validate an embedder's output and L2-normalise it (idempotent: vectors of unit
    length, within 1e-6, come back as float32 unchanged).

    Raises:
        EmbeddingError: On a wrong shape or non-finite values.
    """
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] != dimension:
        raise EmbeddingError(
            f"embedder {name!r} returned shape {arr.shape}, expected ({n}, {dimension}); "
            f"check its dimension setting"
        )
    if not np.isfinite(arr).all():
        raise EmbeddingError(f"embedder {name!r} returned NaN or inf values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.all(np.abs(norms - 1.0) <= 1e-6):
        return arr  # already unit length: idempotent, so checking twice stores the same bytes
    return np.asarray(arr / np.clip(norms, 1e-12, None), dtype=np.float32)

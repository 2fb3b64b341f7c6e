"""``check_vectors``: the check every embedder output passes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from helamem.core import EmbeddingError
from helamem.core.vectors import check_vectors

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64).filter(lambda v: abs(v) > 1e-3)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, (3, 8), elements=finite))
def test_unit_float32_and_idempotent(x: np.ndarray) -> None:
    """Any float dtype comes back float32 of unit length, and checking again changes no
    byte (a pooled vector checked by the embedder and again by the store is stored as
    the embedder gave it: mark_indexed and re-embedding compare bytes)."""
    once = check_vectors(x, 3, 8, "t")
    assert once.dtype == np.float32
    assert np.allclose(np.linalg.norm(once, axis=1), 1.0, atol=1e-6)
    assert check_vectors(once, 3, 8, "t").tobytes() == once.tobytes()


def test_wrong_shape_or_values_are_refused() -> None:
    with pytest.raises(EmbeddingError, match="expected"):
        check_vectors(np.ones((2, 4)), 3, 4, "t")
    with pytest.raises(EmbeddingError, match="NaN"):
        check_vectors(np.array([[np.nan, 1.0]]), 1, 2, "t")

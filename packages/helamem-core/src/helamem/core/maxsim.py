"""Late interaction as pure math: MaxSim over token vectors (ColBERT) and their int8
storage format (:func:`pack_tokens`); re-exported by :mod:`helamem.core.retrieval`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["maxsim", "maxsim_packed", "pack_tokens", "pack_tokens_many", "unpack_tokens"]

FloatArray = npt.NDArray[np.float64]


def maxsim_packed(
    query: npt.NDArray[np.float32], packed: Sequence[bytes], dimension: int
) -> FloatArray:
    r""":func:`maxsim` over token vectors as :func:`pack_tokens` stored them.

    With per-token scale :math:`s_j` and int8 row :math:`z_j` (:math:`d_j = s_j z_j`),

    .. math:: q_i \cdot d_j = s_j \, (q_i \cdot z_j)

    so all documents' int8 rows are joined into one matrix, multiplied once and
    scaled per column: no per-document dequantisation (about half the time of
    unpacking each document and calling :func:`maxsim`; equal up to float32
    rounding).

    Args:
        query: ``(m, dimension)`` query token vectors.
        packed: Per document, its :func:`pack_tokens` bytes; a document without
            tokens scores 0.
        dimension: ``d``, the token vectors' width.

    Returns:
        Shape ``(len(packed),)``.

    Raises:
        ValueError: a document's bytes are not whole tokens of ``dimension``.

    Examples:
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
        >>> maxsim_packed(q, [pack_tokens(q), pack_tokens(q[:1])], 2).round(2)
        array([1. , 0.5])
    """
    width = 4 + dimension
    # plain Python over the few hundred documents: numpy's per-call overhead
    # dominated this for a search's ~5-document second round (0.10 -> 0.06 ms)
    if any(len(b) % width for b in packed):
        raise ValueError(f"packed token vectors are not whole tokens of dimension {dimension}")
    counts = [len(b) // width for b in packed]
    some: list[int] | None = None  # documents with tokens, when some have none
    docs: Sequence[bytes] = packed
    if not packed:
        return np.zeros(0)
    if not all(counts):
        some = [i for i, t in enumerate(counts) if t]
        if not some:
            return np.zeros(len(packed))  # a document without tokens: 0, as an orthogonal one
        docs, counts = [packed[i] for i in some], [counts[i] for i in some]
    # slices of a memoryview copy nothing: each byte is copied once, by join
    views = [memoryview(b) for b in docs]
    scales = np.frombuffer(
        b"".join([v[: 4 * t] for v, t in zip(views, counts, strict=True)]), dtype=np.float32
    )
    rows = np.frombuffer(
        b"".join([v[4 * t :] for v, t in zip(views, counts, strict=True)]), dtype=np.int8
    ).reshape(-1, dimension)
    # (tokens, d) @ (d, m): the tall product is about a third faster than (m, d) @ (d, tokens)
    sims = _single_threaded_product(rows, np.asarray(query, dtype=np.float32).T) * scales[:, None]
    starts = [0, *itertools.accumulate(counts[:-1])]
    best = np.maximum.reduceat(sims, starts, axis=0).mean(axis=1)  # (tokens, m) -> (n,)
    if some is None:
        return np.asarray(best, dtype=np.float64)
    out = np.zeros(len(packed))
    out[some] = best
    return out


_PRODUCT_BUDGET = 262_144
"""Multiply-adds per matrix product in :func:`maxsim_packed`: OpenBLAS's threshold for
threading one (65,536 × ``GEMM_MULTITHREAD_THRESHOLD``, 4 by default; a product of at
most this many runs on the calling thread). Measured with numpy's OpenBLAS 0.3.31 on
2 cores: one thread up to 921,600 (CPU time / wall 1.00), two from 1,044,480; a
search's MaxSim over 843 token rows took 183 µs at half this budget, 159 µs at it."""


def _single_threaded_product(
    rows: npt.NDArray[np.int8], right: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``rows @ right`` (int8 rows as float32), in row blocks small enough that OpenBLAS
    computes each on this thread: a threaded product leaves its worker threads
    spinning after it, a whole core busy between searches (measured: a search's
    600 x 384 x 3 product kept one of 2 cores at 100 %), which the ANN query beside
    the lexical leg needs. The same values as one product up to float32 rounding
    (a block's height can change which kernel sums an element; the 192 products
    of 100 searches on the 100k benchmark store were bitwise equal)."""
    width = max(1, _PRODUCT_BUDGET // (16 * max(1, rows.shape[1])))
    if right.shape[1] > width:  # a long query: its tokens in column blocks too
        return np.hstack(
            [
                _single_threaded_product(rows, right[:, j : j + width])
                for j in range(0, right.shape[1], width)
            ]
        )
    n = rows.shape[0]
    # at least 16 rows a block (a one-row product is numpy's matrix-vector path, whose
    # sums round differently), and blocks of equal height
    step = max(16, _PRODUCT_BUDGET // max(1, rows.shape[1] * right.shape[1]))
    if n <= step:
        return rows.astype(np.float32) @ right
    blocks = -(-n // step)
    height = -(-n // blocks)
    return np.concatenate(
        [rows[i : i + height].astype(np.float32) @ right for i in range(0, n, height)]
    )


def pack_tokens(tokens: npt.NDArray[np.float32]) -> bytes:
    """Token vectors ``(t, d)`` as bytes: per-token float32 scales, then int8 rows.

    Symmetric int8 quantisation per token (scale = max |x| / 127), about a
    quarter of float32; cosines move by under 0.01. Inverse: :func:`unpack_tokens`.

    Examples:
        >>> x = np.array([[0.6, -0.8], [1.0, 0.0]], dtype=np.float32)
        >>> np.abs(unpack_tokens(pack_tokens(x), 2) - x).max() < 0.01
        np.True_
    """
    return pack_tokens_many([tokens])[0]


def pack_tokens_many(tokens: Sequence[npt.NDArray[np.float32]]) -> list[bytes]:
    """:func:`pack_tokens` of each ``(t_i, d)`` matrix, quantised in one pass.

    Layout per matrix: its ``t_i`` float32 scales, then its ``(t_i, d)`` int8 rows.

    Examples:
        >>> x = [np.array([[0.6, -0.8]], dtype=np.float32), np.eye(2, dtype=np.float32)]
        >>> pack_tokens_many(x) == [pack_tokens(t) for t in x]
        True
    """
    if not tokens:
        return []
    lengths = [len(t) for t in tokens]
    x = np.concatenate([np.asarray(t, dtype=np.float32) for t in tokens])
    scale = (np.maximum(np.abs(x).max(axis=1), 1e-12) / 127.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    scale_bytes, q_bytes, row = scale.tobytes(), q.tobytes(), q.shape[1]
    out: list[bytes] = []
    start = 0
    for t in lengths:
        end = start + t
        out.append(scale_bytes[4 * start : 4 * end] + q_bytes[row * start : row * end])
        start = end
    return out


def unpack_tokens(data: bytes, dimension: int) -> npt.NDArray[np.float32]:
    """The ``(t, dimension)`` float32 token vectors that :func:`pack_tokens` stored."""
    t = len(data) // (4 + dimension)
    scale = np.frombuffer(data, dtype=np.float32, count=t)
    q = np.frombuffer(data, dtype=np.int8, offset=4 * t).reshape(t, dimension)
    return np.asarray(q.astype(np.float32) * scale[:, None], dtype=np.float32)


def maxsim(query: npt.NDArray[np.float32], docs: Sequence[npt.NDArray[np.float32]]) -> FloatArray:
    r"""Late-interaction relevance of each document to the query (ColBERT's MaxSim).

    .. math:: s(q, d) = \frac{1}{|q|} \sum_{i \in q} \max_{j \in d} \cos(q_i, d_j)

    over L2-normalised contextual token vectors (Khattab & Zaharia, 2020,
    "ColBERT", eq. 3, averaged over the query's tokens so it lies in [-1, 1]).
    Each query token finds its best match anywhere in the memory, so one
    specific word is not averaged away as in a pooled vector: on the LoCoMo
    dev split MaxSim alone finds an evidence turn in the top 10 for 0.737 of
    questions against 0.506 for pooled MiniLM cosine.

    Args:
        query: ``(m, d)`` query token vectors.
        docs: Per document, ``(t_i, d)`` token vectors (``t_i >= 1``).

    Returns:
        Shape ``(len(docs),)``.

    Examples:
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
        >>> maxsim(q, [q, q[:1], -q]).round(2)
        array([1. , 0.5, 0. ])
    """
    if not docs:
        return np.zeros(0)
    lengths = np.array([d.shape[0] for d in docs])
    sims = np.asarray(query, dtype=np.float32) @ np.concatenate(docs).T  # (m, sum t_i)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    best = np.maximum.reduceat(sims, starts, axis=1)  # (m, n)
    return np.asarray(best.mean(axis=0), dtype=np.float64)

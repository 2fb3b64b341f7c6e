"""Whether a collection's HNSW graph still reaches its vectors, after an unclean exit.

chromadb writes a collection's HNSW files in place (``data_level0.bin``,
``header.bin``, ``index_metadata.pickle``, ...): a process killed while it wrote
them can leave a graph that opens, counts every vector (the count comes from
Chroma's SQLite) and silently misses some in every query (measured: the 14
newest of 710 after a SIGKILL; half of 1,500 with ``data_level0.bin`` cut in
half). So when the index was not closed cleanly, each large scope is asked for
a sample of its own stored vectors; one it does not return is a damaged graph,
rebuilt from SQLite by the caller.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["PROBE_K", "PROBE_NEWEST", "PROBE_SPREAD", "left_open", "unreachable"]

PROBE_NEWEST = 32
"""The newest memories of a scope probed (those a kill during a write leaves out)."""
PROBE_SPREAD = 32
"""Memories probed spread evenly over a scope's keys (a truncated file loses a range)."""
PROBE_K = 10
"""Neighbours asked for per probe: a memory absent from its own vector's ``PROBE_K``
nearest, while they are not all exact duplicates of it, is unreachable."""
SAME = 1e-6
"""A cosine distance under this is the same vector (duplicates: the probe is moot)."""


def unreachable(col: Any, ids: list[str], vectors: npt.NDArray[np.float32]) -> list[str]:
    """The ``ids`` that a query of ``col`` by their own ``vectors`` (``(n, d)``) does not
    return among ``PROBE_K`` neighbours, leaving out those with ``PROBE_K`` exact duplicates
    (every neighbour at distance 0: no way to tell). Raises what chromadb raises."""
    if not ids:
        return []
    res = col.query(
        query_embeddings=np.asarray(vectors, dtype=np.float32),
        n_results=PROBE_K,
        include=["distances"],
    )
    out = []
    for want, got, dist in zip(ids, res["ids"], res["distances"], strict=True):
        if want in got:
            continue
        if len(dist) >= PROBE_K and max(dist) < SAME:
            continue  # PROBE_K copies of its vector came first
        out.append(want)
    return out


def left_open(marker: Path) -> bool:
    """Whether the index ``marker`` (``helamem-index.json``) says a process held the
    embedded index and did not close it (a kill); an unreadable marker says so too."""
    if not marker.exists():
        return False
    try:
        return bool(json.loads(marker.read_text("utf-8")).get("open", False))
    except (OSError, ValueError, AttributeError):
        return True

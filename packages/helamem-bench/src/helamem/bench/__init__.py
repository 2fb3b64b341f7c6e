"""Benchmarks of HeLa-Mem (run them with ``helamem bench ...``).

- :mod:`helamem.bench.locomo`: LoCoMo retrieval, HeLa-Mem beside dense,
  BM25 and fusion baselines and its own ablations.
- :mod:`helamem.bench.scale`: ingest, search, ``record_turn``, RSS and
  disk at 1k-100k synthetic memories, beside a plain Chroma query.
"""

from ._common import CachingEmbedder, Progress, TokenCounter, token_counter
from .locomo import METHODS, load_locomo, run_locomo

__all__ = [
    "METHODS",
    "CachingEmbedder",
    "Progress",
    "TokenCounter",
    "load_locomo",
    "run_locomo",
    "token_counter",
]

"""The BM25 leg's candidates as a search sees them, for the tantivy index tests."""

from __future__ import annotations

from collections.abc import Sequence

from helamem.core import HelaMemory
from helamem.core._core import Core


def lexical(mem: HelaMemory, scope: Sequence[str], query: str, k: int = 500) -> dict[str, float]:
    """The lexical leg's candidates under ``scope`` (content -> BM25); a deleted
    memory among them fails the calling test."""

    def run(c: Core) -> dict[str, float]:
        node = c.store.find_scope(scope)
        assert node is not None
        stats = c._term_stats(query)
        found = c._lexical(query, node, c.store.descendants(node), "episodic", k, stats)
        rows = c.store.rows_by_n(list(found))
        assert set(found) <= set(rows), "a deleted memory is still a candidate"
        return {rows[n].content: s for n, s in found.items()}

    return mem._call(run)


def serving(mem: HelaMemory) -> bool:
    """Whether the last lexical query was answered by tantivy (it holds the writer)."""
    return mem._call(lambda c: c.lexical_index is not None and c.lexical_index._writer is not None)

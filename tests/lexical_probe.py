"""The BM25 leg's candidates as a search sees them, for the tantivy index tests."""

from __future__ import annotations

from collections.abc import Sequence

from helamem.core import HelaMemory
from helamem.core._core import Core
from helamem.core.types import Kind


def lexical(
    mem: HelaMemory,
    scope: Sequence[str],
    query: str,
    k: int = 500,
    kind: Kind = "episodic",
) -> dict[str, float]:
    """The lexical leg's candidates of ``kind`` under ``scope`` (``()``: every scope;
    content -> BM25); a deleted memory, or one of another kind or scope, among them
    fails the calling test."""

    def run(c: Core) -> dict[str, float]:
        if scope:
            node = c.store.find_scope(scope)
            assert node is not None
            nodes = c.store.descendants(node)
        else:
            node, nodes = None, c.store.all_scope_ids()
        found = c._lexical(query, node, nodes, kind, k, c._term_stats(query))
        rows = c.store.rows_by_n(list(found))
        assert set(found) <= set(rows), "a deleted memory is still a candidate"
        assert all(r.kind == kind and r.scope_id in nodes for r in rows.values())
        return {rows[n].content: s for n, s in found.items()}

    return mem._call(run)


def serving(mem: HelaMemory) -> bool:
    """Whether the last lexical query was answered by tantivy (it holds the writer)."""
    return mem._call(lambda c: c.lexical_index is not None and c.lexical_index._writer is not None)

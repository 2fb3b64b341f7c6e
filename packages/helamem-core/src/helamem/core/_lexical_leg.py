"""A search's lexical leg: the query's words, their statistics and BM25 candidates
(tantivy up to its mark and FTS5 above it on large SQLite stores, else the store's own)."""

from __future__ import annotations

import logging

from . import retrieval
from ._base import CoreBase, scope_tag
from .errors import StorageError
from .text import drop_common, fts_match, fts_terms
from .types import Kind

__all__ = ["LexicalLegOps"]

logger = logging.getLogger("helamem.core._search")


class LexicalLegOps(CoreBase):
    """The lexical leg of :class:`~helamem.core._search.SearchOps`."""

    def _term_stats(self, query: str) -> tuple[list[str], int, list[int]]:
        """The query's words, the rows of the FTS index and each word's document
        frequency (read once per search: both the word filter and the mass use them)."""
        terms = fts_terms(query)
        if not terms:
            return terms, 0, []
        rows, df = self.store.term_stats(terms)
        return terms, rows, df

    @staticmethod
    def _lexical_mass(stats: tuple[list[str], int, list[int]]) -> float:
        """The sum of BM25 idf over the query's words (see :func:`retrieval.relevance`)."""
        _, rows, df = stats
        return sum(retrieval.bm25_idf(d, rows) for d in df)

    def _lexical_terms(self, stats: tuple[list[str], int, list[int]]) -> list[str]:
        """The query's words that go into BM25 (``lexical_max_df``, ``_max_terms``,
        ``_max_postings`` applied; see :func:`~helamem.core.text.drop_common`)."""
        cfg = self.config.retrieval
        terms, rows, df = stats
        if len(terms) > 1 and (
            cfg.lexical_max_df < 1.0
            or 0 < cfg.lexical_max_terms < len(terms)
            or cfg.lexical_max_postings
        ):
            terms = drop_common(
                terms,
                df,
                rows,
                cfg.lexical_max_df,
                max_terms=cfg.lexical_max_terms,
                max_postings=cfg.lexical_max_postings,
            )
        return terms

    def _lexical(
        self,
        query: str,
        node: int | None,
        nodes: list[int],
        kind: Kind,
        k: int,
        stats: tuple[list[str], int, list[int]],
    ) -> dict[int, float]:
        terms = self._lexical_terms(stats)
        match = fts_match(terms)
        if not match:
            return {}
        m = max(self.config.retrieval.candidates, k)
        if self._holding is None:
            self._holding = self.store.holding()
        tag = None if node is None else scope_tag(node, kind)
        # Everything of this kind lies under the prefix (single-tenant stores): FTS5
        # skips the scope filter (an AND with every posting of the scope) and
        # over-fetches; rows of another scope or kind are dropped by the caller.
        covers = tag is None or self._holding.get(kind, set()) <= set(nodes)
        lx = self.lexical_index
        if lx is not None:
            try:
                mark = lx.prepare(self.sqlite_store)
                if mark is not None:
                    # tantivy up to its mark (its scope filter costs little: no
                    # over-fetch), FTS5 above it (the newest few): the best of both
                    # (the tail, unfiltered where the prefix covers every scope, may
                    # hold rows the caller drops: it is kept whole, not cut to m)
                    limit = m if tag is not None else 2 * m
                    found = (
                        dict(self.store.lexical(match, None if covers else tag, limit, after=mark))
                        if lx.head > mark  # else no row above the mark (the tail folded in)
                        else {}
                    )
                    if lx.head > mark:
                        lx.note_tail_search()
                    found.update(lx.search(terms, tag, limit))
                    return found
            except StorageError as exc:  # derived: FTS5 answers, the next search tries again
                logger.warning("lexical index failed, FTS5 answers: %s", exc)
        if covers:
            return dict(self.store.lexical(match, None, 2 * m))
        return dict(self.store.lexical(match, tag, m))

"""A search's lexical leg: the query's words, their statistics and BM25 candidates
(tantivy up to its mark and FTS5 above it on large SQLite stores, else the store's own)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import retrieval
from ._base import CoreBase, scope_tag
from .errors import StorageError
from .text import drop_common, fts_match, fts_terms
from .types import Kind

__all__ = ["LexicalLegOps"]

logger = logging.getLogger("helamem.core._search")

#: Over every scope (no tag to filter on), how many times a lexical query whose
#: rows of the searched kind fall short is repeated with 4 times the limit.
DEEPEN_ROUNDS = 2


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
        scopes = None if node is None else nodes
        # Everything of this kind lies under the prefix (single-tenant stores, as this
        # process last saw them): FTS5 skips the scope filter (an AND with every
        # posting of the scope) and over-fetches. An unfiltered query is checked
        # (_kept): rows of another kind or scope never crowd out the best m.
        covers = tag is None or self._holding.get(kind, set()) <= set(nodes)
        lx = self.lexical_index
        if lx is not None:
            try:
                mark = lx.prepare(self.sqlite_store)
                if mark is not None:
                    # tantivy up to its mark (its scope filter costs little: no
                    # over-fetch), FTS5 above it (the newest few): the best of both
                    limit = m if tag is not None else 2 * m
                    found: dict[int, float] = {}
                    if lx.head > mark:  # else no row above the mark (the tail folded in)
                        if covers:
                            found = self._kept(
                                lambda lim: self.store.lexical(match, None, lim, after=mark),
                                limit, m, kind, scopes,
                                None if tag is None
                                else lambda: self.store.lexical(match, tag, m, after=mark),
                            )  # fmt: skip
                        else:
                            found = dict(self.store.lexical(match, tag, limit, after=mark))
                        lx.note_tail_search()
                    if tag is None:  # no scope, so no kind filter either: checked
                        found.update(
                            self._kept(
                                lambda lim: lx.search(terms, None, lim), limit, m, kind, None, None
                            )
                        )
                    else:
                        found.update(lx.search(terms, tag, limit))
                    return found
            except StorageError as exc:  # derived: FTS5 answers, the next search tries again
                logger.warning("lexical index failed, FTS5 answers: %s", exc)
        if covers:
            return self._kept(
                lambda lim: self.store.lexical(match, None, lim), 2 * m, m, kind, scopes,
                None if tag is None else lambda: self.store.lexical(match, tag, m),
            )  # fmt: skip
        return dict(self.store.lexical(match, tag, m))

    def _kept(
        self,
        search: Callable[[int], list[tuple[int, float]]],
        limit: int,
        m: int,
        kind: Kind,
        scopes: list[int] | None,
        filtered: Callable[[], list[tuple[int, float]]] | None,
    ) -> dict[int, float]:
        """The rows of ``kind`` in ``scopes`` (any scope if None) of an unfiltered BM25
        top-``limit`` ``search``, with the best ``m`` of them.

        When the cut top (``limit`` rows returned) holds fewer than ``m`` such rows,
        rows of another kind or scope (facts beside episodes, a tenant another
        process added) may have crowded better ones out, or there are fewer than
        ``m``: the ``filtered`` query (the scope's tag: exact, at most ``m`` rows)
        adds them. Over every scope there is no tag to filter on: searched again
        with 4 times the limit, at most :data:`DEEPEN_ROUNDS` times (so a kind rare
        among the matches of a large store can still miss candidates there). Rows
        the caller would drop are dropped here (their ranking rows are not read).
        """
        for round_ in range(DEEPEN_ROUNDS + 1):
            rows = search(limit)
            keep = self.store.of_kind([n for n, _ in rows], kind, scopes)
            found = {n: s for n, s in rows if n in keep}
            if len(keep) >= m or len(rows) < limit:
                break
            if filtered is not None:
                found.update(filtered())
                break
            if round_ < DEEPEN_ROUNDS:
                limit *= 4
        return found

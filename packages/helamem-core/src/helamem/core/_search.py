"""Search: candidates (dense, lexical), the pool, spreading from seeds, selection and hits."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

import numpy as np

from . import dynamics, retrieval
from ._base import SearchTiming
from ._edges import EdgeReader, SpreadOps
from ._inputs import MAX_K, check_content, check_k
from ._late import late_scores
from ._learning import LearningOps
from ._lexical_leg import LexicalLegOps
from ._reembed import refuse_switched_search
from .errors import InvalidInputError, StorageError
from .storage.base import RankRow
from .text import named, tokens
from .tokens import TokenCount
from .types import (
    Hit,
    Kind,
    SearchResult,
    TimeLike,
    fit_tokens,
    normalize_prefix,
    to_timestamp,
)

__all__ = ["SearchOps"]

logger = logging.getLogger(__name__)

INLINE_EMBED_S = 0.0005
"""A query embedding faster than this (its moving average, seconds) runs on the
search's own thread, not beside the lexical leg on the aux thread: a thread hop
and back cost about 0.1-0.2 ms at 100k memories on 2 cores (measured), while
ONNX MiniLM takes milliseconds, overlapped. Hashing and table embedders fall below."""


VANISHED_RETRIES = 3
"""Most times one search runs when memories it ranked vanish meanwhile (deleted by
another process or object between their ranking and the read of their rows)."""


class SearchOps(LexicalLegOps, LearningOps, SpreadOps):
    """Reads: a query's candidates, pool, spreading and hits (and its learning step)."""

    def search(
        self,
        query: str,
        scope: Sequence[str],
        k: int,
        *,
        learn: bool = True,
        spread: bool = True,
        reference_time: TimeLike | None = None,
        kind: Kind = "episodic",
        semantic_k: int | None = None,
        max_tokens: int | None = None,
        count_tokens: TokenCount | None = None,
    ) -> SearchResult:
        started = time.perf_counter()
        query = check_content(query, "query")
        prefix = normalize_prefix(scope)
        k = check_k(k)
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0
        ):
            raise InvalidInputError(f"max_tokens must be an int >= 0 or None, got {max_tokens!r}")
        if max_tokens is not None:
            return self._search_budget(
                query,
                scope,
                k,
                max_tokens,
                count_tokens,
                learn=learn,
                spread=spread,
                reference_time=reference_time,
                kind=kind,
                semantic_k=semantic_k,
            )
        sem_k = self.config.retrieval.semantic_k if semantic_k is None else semantic_k
        if isinstance(sem_k, bool) or not isinstance(sem_k, int) or sem_k < 0:
            raise InvalidInputError(f"semantic_k must be an int >= 0, got {semantic_k!r}")
        sem_k = min(sem_k, MAX_K)  # "no limit" (sys.maxsize) as k
        ref_given = (
            None
            if reference_time is None
            else to_timestamp(reference_time, default=0.0, name="reference_time")
        )
        refuse_switched_search(self)  # another process switched embedders since the open
        if self._needs_reconcile:
            try:
                self.reconcile()
            except StorageError as exc:  # the rows stay unindexed: scanned exactly below
                logger.warning("re-index failed, searching unindexed rows exactly: %s", exc)
        for attempt in range(1, VANISHED_RETRIES + 1):
            found = self._search_once(
                query,
                prefix,
                k,
                learn,
                spread,
                ref_given,
                kind,
                sem_k,
                started,
                last=attempt == VANISHED_RETRIES,
            )
            if found is not None:
                return found
        raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover

    def _search_once(
        self,
        query: str,
        prefix: tuple[str, ...],
        k: int,
        learn: bool,
        spread: bool,
        ref_given: float | None,
        kind: Kind,
        sem_k: int,
        started: float,
        *,
        last: bool,
    ) -> SearchResult | None:
        """One search; ``None`` (unless ``last``) when a memory it ranked vanished
        before its row was read (deleted by another process or object): the hit
        was skipped and the result would be short of ``k`` (a caller paging by
        "fewer than k: no more" missed a replaced memory's successor), so the
        search runs again, nothing learned."""
        node: int | None
        if prefix:
            node = self.store.find_scope(prefix)
            if node is None:
                return SearchResult(query, ())
            nodes = self.store.descendants(node)
        else:  # (): every scope, one candidate pool
            node, nodes = None, self.store.all_scope_ids()
        paths: list[tuple[Kind, int]] = [(kind, k)]
        if kind == "episodic" and sem_k > 0:
            paths.append(("semantic", sem_k))
        hits: list[Hit] = []
        learned: list[list[int]] = []
        rows: dict[int, RankRow] = {}
        prunable: list[tuple[int, int]] = []
        holding = {pk: self.store.nodes_holding(nodes, pk) for pk, _ in paths}
        self._late_s = 0.0
        cached = self._cached_query(query)
        if cached is None and self._embed_s < INLINE_EMBED_S:
            # a fast embedder (hashing, a table): handing it to the aux thread and
            # back costs more than the lexical leg's overlap saves
            cached = self._embed_query(query)
        # Beside the lexical leg (and the lexical candidates' rows), on the aux thread:
        # the ANN query when the query's vectors are known and the index may be
        # queried from another thread (Chroma's query releases the GIL; the index is
        # this thread's again once the future is done), else the query embedding
        # (ONNX releases it too), the ANN query then following here.
        ahead = pending = None
        if cached is not None and getattr(self.index, "queries_from_any_thread", False):
            ahead = self._beside(self._dense, cached[0], paths, holding)
        elif cached is None:
            pending = self._beside(self._embed_query, query)
        running: list[Future[Any]] = [f for f in (ahead, pending) if f is not None]
        words = frozenset(tokens(query))  # the learned selection's ``named``
        edges = EdgeReader(self)  # each node's edges read once in this search
        lexical_start = time.perf_counter()
        try:
            stats = self._term_stats(query)
            lexical = {
                pk: self._lexical(query, node, nodes, pk, pkk, stats) if holding[pk] else {}
                for pk, pkk in paths
            }
            # while the ANN query runs: the lexical candidates' ranking rows and their
            # pool (the query's vectors are known when the ANN query runs ahead)
            late = self._tokens is not None
            known: dict[Kind, tuple[dict[int, RankRow], retrieval.Pool]] = {}
            if ahead is not None and cached is not None:
                allowed = set(nodes)
                for pk, lex in lexical.items():
                    got = self.store.rank_rows((), lex, tokens=late) if lex else {}
                    admitted = _admit(got, allowed, pk)
                    known[pk] = (got, self._pool(admitted, cached[0], lex, cached[1], words))
                if spread:
                    for _, pool in known.values():
                        if ahead.done():
                            break
                        self._edges_ahead(pool, ref_given, edges)
            lexical_s = time.perf_counter() - lexical_start
        finally:
            # neither is ever left running, whatever happens: the embedding writes the
            # query cache, the ANN query uses the index
            dense_start = time.perf_counter()
            wait(running)
        mass = self._lexical_mass(stats)
        qv, qtok = cached if cached is not None else pending.result()  # type: ignore[union-attr]
        dense = ahead.result() if ahead is not None else self._dense(qv, paths, holding)
        dense_s = time.perf_counter() - dense_start
        legs_s = time.perf_counter() - started
        for path_kind, path_k in paths:
            if not holding[path_kind]:
                continue
            found = self._search_kind(
                qv,
                qtok,
                dense[path_kind],
                nodes,
                path_kind,
                path_k,
                spread,
                ref_given,
                lexical[path_kind],
                mass,
                words,
                known.get(path_kind),
                edges,
            )
            if found is None:
                continue
            ranking, path_rows, path_hits, path_prunable = found
            if path_kind == "semantic":
                # facts beside episodes only when they match; a semantic search is as asked
                floor = self.config.retrieval.semantic_min_relevance if kind == "episodic" else 0
                path_hits = [
                    replace(h, provenance="semantic") for h in path_hits if h.score >= floor
                ]
                if kind == "episodic":  # only the facts returned co-activate
                    shown = {h.memory.id for h in path_hits}
                    ranking = replace(
                        ranking,
                        base_top=[n for n in ranking.base_top if path_rows[n].id in shown],
                        associations=[n for n in ranking.associations if path_rows[n].id in shown],
                    )
            shown = {h.memory.id for h in path_hits}
            returned = (*ranking.base_top, *ranking.associations)
            if not last and any(path_rows[n].id not in shown for n in returned):
                return None
            hits.extend(path_hits)
            learned.append(self._coactive(ranking))
            rows.update(path_rows)
            prunable.extend(path_prunable)
        if learn and learned:
            self.learn_later(learned, rows, prunable)
        self.last_search_timing = SearchTiming(
            dense_s, lexical_s, legs_s, self._late_s, time.perf_counter() - started
        )
        return SearchResult(query, tuple(hits))

    def _search_budget(
        self,
        query: str,
        scope: Sequence[str],
        k: int,
        max_tokens: int,
        count_tokens: TokenCount | None,
        **opts: Any,
    ) -> SearchResult:
        """``search(k*)`` for the largest ``k* <= k`` whose hits fit ``max_tokens``.

        A budget means what ``k`` means: the hits of one ``search(k*)`` (the
        same base and association hits), never a longer ranking cut short. The
        first pass (read-only, ``k``) estimates ``k*`` from whole hits in
        :func:`~helamem.core.types.ranking_order`; ``k*`` then shrinks until its
        hits fit, or grows while the next one's do (so a budget costs about
        three to four searches); the final search learns (when asked) from
        exactly what is returned. Facts then fill what is left, in their order.
        """
        share = self.config.retrieval.association_share
        learn = bool(opts.pop("learn", True))
        wide = self.search(query, scope, k, learn=False, **opts)
        episodes = [h for h in wide if h.provenance != "semantic"]
        n = len(fit_tokens(episodes, max_tokens, count_tokens, share))

        def fits(m: int) -> SearchResult | None:
            res = self.search(query, scope, m, learn=False, **opts)
            eps = [h for h in res if h.provenance != "semantic"]
            kept = fit_tokens(eps, max_tokens, count_tokens, share)
            return res if len(kept) == len(eps) else None

        found = fits(n) if n else None
        while n > 0 and found is None:  # the estimate was too long: shrink
            n -= 1
            found = fits(n) if n else None
        while found is not None and n < min(k, len(episodes)):  # or too short: grow
            bigger = fits(n + 1)
            if bigger is None:
                break
            n, found = n + 1, bigger
        res = found if found is not None else wide
        if n == 0:
            facts = [h for h in wide if h.provenance == "semantic"]
            return SearchResult(query, tuple(fit_tokens(facts, max_tokens, count_tokens, share)))
        kept = fit_tokens(list(res), max_tokens, count_tokens, share)
        if learn:  # the same search learning, asking only for the facts that fit: what is
            # cut is neither returned nor learned from
            fitting = sum(h.provenance == "semantic" for h in kept)
            res = self.search(query, scope, n, learn=True, **{**opts, "semantic_k": fitting})
            kept = fit_tokens(list(res), max_tokens, count_tokens, share)
        return SearchResult(query, tuple(kept))

    def _coactive(self, ranking: retrieval.Ranking) -> list[int]:
        """The returned memories that co-activate: all, or the best ``learn_top``."""
        top = self.config.retrieval.learn_top
        if not top:
            return ranking.returned
        final = {n: ranking.base[n] + ranking.boost.get(n, 0.0) for n in ranking.returned}
        return dynamics.best_first(final)[:top]

    def _dense(
        self, qv: np.ndarray, paths: list[tuple[Kind, int]], holding: dict[Kind, list[int]]
    ) -> dict[Kind, list[tuple[str, float]]]:
        """Each path's dense candidates ``(id, cosine distance)``."""
        m = self.config.retrieval.candidates
        dense = {
            pk: self.index.query(qv, max(m, pkk), holding[pk], pk)
            for pk, pkk in paths
            if holding[pk]
        }
        if getattr(self.index, "wants_reconcile", False):
            # the index met vectors not yet in HNSW (another process's): fold them in
            self._needs_reconcile = True
        return dense

    def _cached_query(self, query: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The query's vectors from the ``query_cache``, or ``None``."""
        got = self._queries.get(query) if self.config.retrieval.query_cache else None
        if got is not None:
            self._queries.move_to_end(query)
        return got

    def _embed_query(self, query: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The query's pooled and token vectors, kept in the ``query_cache`` (run on
        the owner thread, or on the aux thread while the owner does not read the cache)."""
        started = time.perf_counter()
        vecs, toks = self._embed_tokens([query])
        took = time.perf_counter() - started
        self._embed_s = took if math.isinf(self._embed_s) else 0.8 * self._embed_s + 0.2 * took
        got = (vecs[0], toks[0] if toks else None)
        for arr in got:
            if arr is not None:
                arr.setflags(write=False)  # shared by later searches of the same text
        size = self.config.retrieval.query_cache
        if size:
            self._queries[query] = got
            while len(self._queries) > size:
                self._queries.popitem(last=False)
        return got

    def _beside(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """``fn(*args)`` on the aux thread; here, at once, once Python stopped its thread
        pools at exit (a thread of the program still searching: see ``_exit``)."""
        if self._aux_pool is None:
            self._aux_pool = ThreadPoolExecutor(1, thread_name_prefix="helamem-embed")
        try:
            return self._aux_pool.submit(fn, *args)
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
            done: Future[Any] = Future()
            done.set_result(fn(*args))  # what it raises, the search raises
            return done

    def _search_kind(
        self,
        qv: np.ndarray,
        qtok: np.ndarray | None,
        dense_ids: list[tuple[str, float]],
        nodes: list[int],
        kind: Kind,
        k: int,
        spread: bool,
        ref_given: float | None,
        lex: dict[int, float],
        mass: float,
        words: frozenset[str] = frozenset(),
        known: tuple[dict[int, RankRow], retrieval.Pool] | None = None,
        edges: EdgeReader | None = None,
    ) -> tuple[retrieval.Ranking, dict[int, RankRow], list[Hit], list[tuple[int, int]]] | None:
        """One kind's ranking, rows, hits and edges to prune (``None``: no candidate).

        ``known``: the lexical candidates' rows (as read) and the pool of those in
        ``nodes`` of ``kind``, made while the ANN query ran; the dense candidates'
        rows and pool are added to them here."""
        cfg = self.config.retrieval
        allowed = set(nodes)
        late = self._tokens is not None  # token vectors come with the rows (MaxSim)
        # ranking columns only (the lexical candidates' read already when ``known``),
        # one query for the rest; _hits loads the full rows of the returned memories
        if known is None:
            got = self.store.rank_rows([i for i, _ in dense_ids], lex, tokens=late)
            rows = _admit(got, allowed, kind)
            pool = self._pool(rows, qv, lex, qtok, words) if rows else None
        else:
            have = {r.id for r in known[0].values()}
            fresh = self.store.rank_rows(
                [i for i, _ in dense_ids if i not in have], (), tokens=late
            )
            got = known[0] | fresh
            added = _admit(fresh, allowed, kind)
            rows = _admit(known[0], allowed, kind) | added
            pool = retrieval.join_pools(known[1], self._pool(added, qv, lex, qtok, words))
        if {i for i, _ in dense_ids} - {r.id for r in got.values()} and self.store.tombstones():
            # the index holds vectors of deleted memories (another process's delete that
            # failed, or was killed before the index's): its tombstones, at the next search
            # (vectors without a memory or a tombstone, an older database restored beside
            # a newer index, are only skipped: re-indexing would not remove them)
            self._needs_reconcile = True
        if not rows or pool is None:
            return None
        ref = retrieval.reference_time(pool, ref_given)
        ranking: retrieval.Ranking | None = None
        prunable: list[tuple[int, int]] = []
        if spread and cfg.activation_alpha > 0 and cfg.max_flipped > 0:
            # the seeds need only base activations (rank takes them: computed once)
            base = retrieval.base_activations(pool, cfg, ref)
            seeds = retrieval.seeds(base, cfg)
            triples, prunable, first = self._seed_edges(seeds, edges or EdgeReader(self))
            if triples:
                extra_ns = {j for _, j, _ in triples if j not in rows}
                extra = _admit(self.store.rank_rows((), extra_ns, tokens=late), allowed, kind)
                rows.update(extra)
                ranking = retrieval.rank(
                    pool,
                    k=k,
                    config=cfg,
                    ref_time=ref,
                    edges=triples,
                    neighbours=self._pool(extra, qv, {}, qtok, words),
                    lexical_mass=mass,
                    first_hop=first,
                    learned=kind == "episodic",
                    base=base,
                )
        if ranking is None:  # no spreading, or no edge from a seed
            ranking = retrieval.rank(pool, k=k, config=cfg, ref_time=ref, lexical_mass=mass)
        return ranking, rows, self._hits(ranking, rows, pool, qv, lex), prunable

    def _pool(
        self,
        rows: dict[int, RankRow],
        qv: np.ndarray,
        lex: dict[int, float],
        qtok: np.ndarray | None = None,
        words: frozenset[str] = frozenset(),
    ) -> retrieval.Pool:
        ns = tuple(sorted(rows))
        if not ns:
            return retrieval.Pool((), np.zeros(0), np.zeros(0), np.zeros(0))
        dim = qv.shape[0]
        got = [rows[n] for n in ns]
        embs = [r.embedding for r in got]
        size = 4 * dim
        if None not in embs and set(map(len, embs)) == {size}:  # type: ignore[arg-type]
            # one buffer, one float32 matrix (the same values np.stack gives)
            mat = np.frombuffer(b"".join(embs), dtype=np.float32).reshape(len(ns), dim)  # type: ignore[arg-type]
        else:
            mat = np.stack(
                [
                    v if (v := r.vector()) is not None and v.shape[0] == dim else np.zeros(dim)
                    for r in got
                ]
            )
        return retrieval.Pool(
            ns,
            np.asarray(mat @ qv, dtype=np.float64),
            np.array([lex.get(n, 0.0) for n in ns], dtype=np.float64),
            np.array([r.event_time for r in got], dtype=np.float64),
            # the token vectors came with the rows (rank_rows(..., tokens=True))
            self._late(qtok, ns, {r.n: r.tokens for r in got if r.tokens is not None}),
            np.array([r.chars for r in got], dtype=np.float64),
            np.array([r.question for r in got], dtype=np.float64),
            np.array([named(r.role, words) for r in got], dtype=np.float64),
        )

    def _late(
        self, qtok: np.ndarray | None, ns: Sequence[int], read: Mapping[int, bytes] | None = None
    ) -> np.ndarray | None:
        """:func:`~helamem.core._late.late_scores`, timed (``SearchTiming.late_s``)."""
        if qtok is None or not ns:
            return None
        started = time.perf_counter()
        try:
            return late_scores(self, qtok, ns, read)
        finally:
            self._late_s += time.perf_counter() - started

    def _hits(
        self,
        ranking: retrieval.Ranking,
        rows: dict[int, RankRow],
        pool: retrieval.Pool,
        qv: np.ndarray,
        lex: dict[int, float],
    ) -> list[Hit]:
        dense = dict(zip(pool.ns, pool.dense.tolist(), strict=True))
        full = self.store.rows_by_n([*ranking.base_top, *ranking.associations])
        hits = []

        for prov, ns in (("base", ranking.base_top), ("association", ranking.associations)):
            for n in ns:
                if n not in full:  # deleted by another process or object during the search
                    continue
                r = rows[n]
                if n not in dense:
                    v = r.vector()
                    dense[n] = float(v @ qv) if v is not None and v.shape == qv.shape else 0.0
                b = ranking.boost.get(n, 0.0)
                base = ranking.base[n]
                hits.append(
                    Hit(
                        memory=self._memory(full[n]),
                        score=ranking.relevance.get(n, 0.0),
                        activation=base + b,
                        base=base,
                        boost=b,
                        dense=dense[n],
                        lexical=lex.get(n, 0.0),
                        provenance=prov,  # type: ignore[arg-type]
                        via=tuple(
                            (rows[s].id, round(w, 6))
                            for s, w in ranking.via.get(n, [])
                            if s in rows
                        ),
                    )
                )
        hits.sort(key=lambda h: -h.score)  # best first (stable: base before association on ties)
        return hits


def _admit(rows: Mapping[int, RankRow], allowed: Collection[int], kind: Kind) -> dict[int, RankRow]:
    """The rows of memories of ``kind`` in the scopes ``allowed`` (a search's candidates)."""
    return {n: r for n, r in rows.items() if r.scope_id in allowed and r.kind == kind}

"""Query search's ranked items for :class:`~helamem.langgraph.HelaMemStore`.

The core is asked for episodes (turns, documents) and for distilled facts as
two searches of one kind each, merged by score: a search of episodes brings
at most ``retrieval.semantic_k`` facts beside them, and only those above
``retrieval.semantic_min_relevance``, while a store's query search returns
every matching item. Each hit becomes the item it indexes (a document that
still names it, or a recorded memory), and the best of a page co-activate.
"""

from __future__ import annotations

from collections.abc import Sequence

from helamem.core import HelaMemory, Hit, Kind, query_tail
from langgraph.store.base import GetOp, Item, SearchItem, SearchOp

from ._filters import matches
from ._ops import (
    Docs,
    Plan,
    Search,
    hit_address,
    item_at,
    public,
    searched,
)
from ._recorded import addressable, is_store_memory, item_of, store_address
from ._writes import family_base, named_id

__all__ = ["RankedSearch"]


class RankedSearch:
    """Mixin: the ranked items of a query search, and the page's learning."""

    memory: HelaMemory
    recorded: bool
    filter_overfetch: int

    def _ranked(
        self, op: SearchOp, n: int
    ) -> Plan[tuple[list[tuple[SearchItem, Hit]], list[tuple[str, tuple[str, ...], str]], bool]]:
        """The live items among the core's best episodes and facts that match the
        filter, highest score first, at least ``n`` of them unless the prefix holds
        fewer; the stale memories met; and whether every memory was seen.

        Episodes (turns, documents) and facts are one search of ``k`` each (facts only
        when recorded memories are items), merged by score; a kind is exhausted when
        it returns fewer than ``k``. ``k`` grows until ``n`` items match and the
        ``n``-th scores no lower than the last hit of every kind not exhausted, or
        every kind is exhausted. The stop is a heuristic: the core chooses its best
        k by activation (or the learned model) and only then sorts them by score, so
        a memory a kind did not return can outscore one it did.
        """
        assert op.query
        query = query_tail(op.query)  # a longer one is searched by its end
        if not query:  # its end holds nothing visible: nothing to rank by
            return [], [], True
        k = n * self.filter_overfetch if op.filter else n
        kinds: tuple[Kind, ...] = ("episodic", "semantic") if self.recorded else ("episodic",)
        got: dict[Kind, list[Hit]] = {}
        more = set(kinds)  # the kinds not exhausted
        while True:
            for kind in kinds:
                if kind in more:
                    got[kind] = yield Search(query, op.namespace_prefix or None, k, kind)
                    if len(got[kind]) < k:
                        more.discard(kind)
            found, stale = yield from self._live(op, [h for kind in kinds for h in got[kind]])
            if not more:
                return found, stale, True
            last = max(min(h.score for h in got[c]) for c in more)  # the unseen: mostly below
            if len(found) >= n and found[n - 1][1].score >= last:
                return found, stale, False
            # fill the usual candidate pool first: within it the core's best-k sets are
            # nested in k, so offset pages stay exact (see _query)
            cap = self.memory.config.retrieval.candidates
            k = cap if k < cap < 4 * k else 4 * k

    def _live(
        self, op: SearchOp, hits: list[Hit]
    ) -> Plan[tuple[list[tuple[SearchItem, Hit]], list[tuple[str, tuple[str, ...], str]]]]:
        """The hits as items: documents that still name them, and recorded memories
        (unless ``recorded=False``, or a document shadows their address). Read without
        refreshing TTLs: only the items a page returns are refreshed."""
        # a memory with "langgraph" metadata that does not name a document of its own
        # scope is not the store's: never shown, never deleted (see store_address)
        hits = [h for h in hits if not is_store_memory(h.memory) or store_address(h.memory)]
        docs_of = [h for h in hits if is_store_memory(h.memory)]
        mine = [h for h in hits if not is_store_memory(h.memory)] if self.recorded else []
        # a recorded scope LangGraph refuses as a namespace (a user_id with ".") holds no
        # document: nothing to look up there (the document store would refuse the lookup)
        mine_at = [h for h in mine if addressable(h.memory.scope)]
        addresses = [hit_address(h) for h in docs_of] + [(h.memory.scope, h.id) for h in mine_at]
        got: list[Item | None] = (
            (yield Docs([GetOp(*a, refresh_ttl=False) for a in addresses])) if addresses else []
        )
        doc = {h.id: d for h, d in zip(docs_of, got, strict=False)}
        shadowed = {
            h.id for h, d in zip(mine_at, got[len(docs_of) :], strict=True) if d is not None
        }
        found: list[tuple[SearchItem, Hit]] = []
        stale: list[tuple[str, tuple[str, ...], str]] = []
        seen: set[tuple[tuple[str, ...], str]] = set()
        for h in sorted(hits, key=lambda h: -h.score):
            if h.id in doc:
                d = doc[h.id]
                named = named_id(d)
                if named != family_base(h.id):  # in flight, or stale: kept
                    stale.append((h.id, *hit_address(h)))
                if d is None or named is None:
                    continue  # no document (yet), or one without memories
                # a document naming another memory was rewritten since the search ranked
                # this one: the item is there, with its newer value (a search racing a
                # write shows the old or the new value; skipping it left the item out)
                item = public(d, h.score, scored=True)
            elif self.recorded and h.id not in shadowed and not is_store_memory(h.memory):
                item = searched(item_of(h.memory), h.score)
            else:
                continue
            if item_at(item) not in seen and matches(item.value, op.filter):
                seen.add(item_at(item))  # an item scores by its best field
                found.append((item, h))
        return found, stale

    def _coactive(self, page: Sequence[Hit]) -> list[list[str]]:
        """The core's learning rule on the page: per kind, the best ``learn_top``
        by score (0: all) co-activate; association hits only if they rank among them."""
        top = self.memory.config.retrieval.learn_top
        groups: dict[bool, list[Hit]] = {}
        for h in page:
            groups.setdefault(h.provenance == "semantic", []).append(h)
        out = []
        for g in groups.values():
            best = sorted(g, key=lambda h: -h.score)
            ids = [h.id for h in (best[:top] if top else best)]
            if len(ids) > 1:
                out.append(ids)
        return out

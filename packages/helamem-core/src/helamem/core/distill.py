"""Hebbian distillation: similarity edges, hubs, clusters, and distillers.

Pure planning (no I/O) plus two distillers: :class:`LLMDistiller` (any
LiteLLM model, one call per scope of a consolidation) and :class:`ExtractiveDistiller`
(no model: the most central sentences of each cluster).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .errors import InvalidInputError, LLMError
from .jsontext import load_metadata
from .llm import LLMClient
from .prompts import DISTILL_FACTS, MAX_FACTS, render_clusters
from .storage.base import DRAWN_FROM

__all__ = [
    "ClusterPlan",
    "Distiller",
    "Drafts",
    "ExtractiveDistiller",
    "FactDraft",
    "LLMDistiller",
    "build_cluster",
    "find_hubs",
    "signature",
    "similarity_edges",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """A hub and its strongest neighbours, ready to distil (members hub first).

    ``texts`` are ``"role: content"`` lines for a prompt; ``contents`` the bare texts.
    """

    scope_id: int
    hub: int
    members: tuple[int, ...]
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    contents: tuple[str, ...]
    vectors: npt.NDArray[np.float32]
    signature: str


@dataclass(frozen=True, slots=True)
class FactDraft:
    """A fact proposed by a distiller, with the ids of the episodes it cites and of
    the episodes it was written from.

    Attributes:
        text: The fact.
        source_ids: The episodes it cites (its provenance).
        seen: Every episode shown to the distiller when it wrote the fact (an LLM
            sees all the clusters of its call): the fact rests on them too, so it
            goes when any of them is deleted. Empty: the clusters of its sources.
    """

    text: str
    source_ids: tuple[str, ...]
    seen: tuple[str, ...] = ()


class Drafts(list[FactDraft]):
    """A distiller's drafts; ``cut``: the scope nodes whose answer was cut (a truncated
    LLM answer whose complete facts were salvaged). A cluster of such a scope is
    recorded as distilled only when a draft cites one of its own episodes (one no
    other cluster of that scope holds): the others are sent again. ``failed``: the
    scope nodes whose LLM call failed, with the error; none of their clusters is
    recorded (all are sent again at the next consolidation)."""

    def __init__(
        self,
        drafts: Sequence[FactDraft] = (),
        *,
        cut: Sequence[int] = (),
        failed: Mapping[int, LLMError] | None = None,
    ) -> None:
        super().__init__(drafts)
        self.cut = set(cut)
        self.failed: dict[int, LLMError] = dict(failed or {})


DISTILLED_FROM = "_helamem_clusters"
"""A fact's metadata key: the signatures of the clusters distilled into it (a near-identical
fact merged into it adds its clusters'), so that the clusters are distilled again when the
fact goes with one of its episodes (:meth:`helamem.core._core.Core._delete_tx`)."""


RESERVED = (DISTILLED_FROM, DRAWN_FROM)
"""Metadata keys of HeLa-Mem's distillation bookkeeping (never shown to the owner)."""


def refuse_reserved(metadata: Mapping[str, Any]) -> None:
    """Refuse a :data:`RESERVED` key on the metadata of a memory being added (it is read
    back without it: it would silently go).

    Raises:
        InvalidInputError: ``metadata`` holds one.
    """
    for key in RESERVED:
        if key in metadata:
            raise InvalidInputError(
                f"metadata key {key!r} is reserved for HeLa-Mem's distillation "
                "bookkeeping; store that value under another key"
            )


def distilled_from(metadata: str) -> list[str]:
    """The cluster signatures a fact's metadata (JSON text) names; ``[]`` for none.

    Examples:
        >>> distilled_from('{"_helamem_clusters": ["ab", "cd"]}'), distilled_from("{}")
        (['ab', 'cd'], [])
    """
    try:
        found = load_metadata(metadata).get(DISTILLED_FROM, [])
    except (ValueError, AttributeError):  # not a JSON object: a fact of another writer
        return []
    return [s for s in found if isinstance(s, str)] if isinstance(found, list) else []


def user_metadata(metadata: str) -> dict[str, Any]:
    """A memory's metadata (JSON text) as its owner sees it: without :data:`RESERVED` keys.

    Examples:
        >>> user_metadata('{"_helamem_clusters": ["ab"], "topic": "tea"}'), user_metadata("{}")
        ({'topic': 'tea'}, {})
    """
    if metadata == "{}":  # most memories: no parse
        return {}
    meta = load_metadata(metadata)
    for key in RESERVED:
        meta.pop(key, None)
    return meta


def signature(ids: Sequence[str]) -> str:
    """Identity of a cluster's membership: unchanged members → same signature.

    Examples:
        >>> signature(["b", "a"]) == signature(["a", "b"])
        True
    """
    return hashlib.sha1("\x1f".join(sorted(ids)).encode()).hexdigest()


def similarity_edges(
    new_ns: Sequence[int],
    new_vecs: npt.NDArray[np.float32],
    all_ns: Sequence[int],
    all_vecs: npt.NDArray[np.float32],
    top_n: int,
    min_cos: float,
    weight: float,
) -> list[tuple[int, int, float]]:
    """Edges from each new memory to its ``top_n`` most similar others above ``min_cos``.

    Returns ``(a, b, weight · cos)`` with ``a < b``, each pair once (``cos`` capped at
    1: unit vectors within float32 rounding can pass it).

    Examples:
        >>> v = np.eye(3, dtype=np.float32)
        >>> similarity_edges([0], v[:1], [0, 1, 2], np.stack([v[0], v[0], v[2]]), 5, 0.5, 0.3)
        [(0, 1, 0.3)]
    """
    if not len(new_ns) or not len(all_ns) or top_n <= 0:
        return []
    sims = new_vecs @ all_vecs.T
    out: dict[tuple[int, int], float] = {}
    all_arr = np.asarray(all_ns)
    for row, n in enumerate(new_ns):
        s = sims[row].copy()
        s[all_arr == n] = -np.inf
        for j in np.argsort(-s)[:top_n]:
            cos = float(s[j])
            if cos < min_cos:
                break
            m = int(all_arr[j])
            key = (n, m) if n < m else (m, n)
            # vectors are unit length within 1e-6 (vectors.check_vectors), so a cosine
            # can pass 1 (1.000002): an edge weight stays in [0, 1], which every edge
            # obeys and an import checks
            out[key] = max(out.get(key, 0.0), round(weight * min(cos, 1.0), 6))
    return [(a, b, w) for (a, b), w in sorted(out.items())]


def find_hubs(edges: Sequence[tuple[int, int, float]], min_degree: int) -> list[int]:
    """Nodes with at least ``min_degree`` edges, ranked by degree × strength.

    Examples:
        >>> find_hubs([(1, 2, .5), (1, 3, .5), (1, 4, .5), (2, 3, .1)], 3)
        [1]
    """
    degree: dict[int, int] = defaultdict(int)
    strength: dict[int, float] = defaultdict(float)
    for a, b, w in edges:
        for n in (a, b):
            degree[n] += 1
            strength[n] += w
    hubs = [n for n, d in degree.items() if d >= min_degree]
    return sorted(hubs, key=lambda n: (-degree[n] * strength[n], n))


def build_cluster(hub: int, edges: Sequence[tuple[int, int, float]], size: int) -> list[int]:
    """The hub and its strongest neighbours, ``size`` members at most.

    Examples:
        >>> build_cluster(1, [(1, 2, .2), (1, 3, .9), (2, 3, .5)], 2)
        [1, 3]
    """
    nbrs: dict[int, float] = {}
    for a, b, w in edges:
        if a == hub:
            nbrs[b] = max(nbrs.get(b, 0.0), w)
        elif b == hub:
            nbrs[a] = max(nbrs.get(a, 0.0), w)
    best = sorted(nbrs, key=lambda n: (-nbrs[n], n))[: size - 1]
    return [hub, *best]


class Distiller(Protocol):
    """Turns clusters into fact drafts (sync and async)."""

    def distill(self, clusters: Sequence[ClusterPlan]) -> list[FactDraft]: ...

    async def adistill(self, clusters: Sequence[ClusterPlan]) -> list[FactDraft]: ...


_LABELS = re.compile(r"(?:\[?E\d+\]?[\s,.;]*)+")


def _source_label(source: str) -> str:
    """A cited label, bare or as the prompt shows it: ``"[E1]"`` and ``" E1 "`` are
    ``"E1"``; anything else (``"e1"``, ``"../E1"``) stays as it is and matches nothing."""
    label = source.strip()
    if label.startswith("[") and label.endswith("]"):
        label = label[1:-1].strip()
    return label


class ExtractiveDistiller:
    """No model: each cluster's most central sentences become facts.

    Centrality is the summed cosine similarity of a member to the others.
    """

    def __init__(self, facts_per_cluster: int = 2) -> None:
        self._n = facts_per_cluster

    def distill(self, clusters: Sequence[ClusterPlan]) -> list[FactDraft]:
        drafts: list[FactDraft] = []
        for c in clusters:
            sims = c.vectors @ c.vectors.T
            centrality = sims.sum(axis=1) - np.diag(sims)
            for i in np.argsort(-centrality, kind="stable")[: self._n]:
                drafts.append(FactDraft(c.contents[int(i)], (c.ids[int(i)],)))
        return drafts

    async def adistill(self, clusters: Sequence[ClusterPlan]) -> list[FactDraft]:
        return self.distill(clusters)


class LLMDistiller:
    """One :data:`~helamem.core.prompts.DISTILL_FACTS` call per scope node of the clusters.

    Episodes are shown with short labels (``E1``...) and the answer's labels
    are mapped back; a fact citing no known label is dropped, so a fact can
    never cite an episode outside the clusters it was given.
    """

    def __init__(self, client: LLMClient, max_facts_per_cluster: int = 3) -> None:
        self.client = client
        self._per_cluster = max_facts_per_cluster

    def _request(self, clusters: Sequence[ClusterPlan]) -> tuple[dict[str, str], dict[str, str]]:
        labels: dict[str, str] = {}
        rendered: list[list[tuple[str, str]]] = []
        for c in clusters:
            group = []
            for mid, text in zip(c.ids, c.texts, strict=True):
                label = labels.setdefault(mid, f"E{len(labels) + 1}")
                group.append((label, text))
            rendered.append(group)
        variables = {
            "clusters": render_clusters(rendered),
            # never more than the answer's schema takes (more: invalid, every time)
            "max_facts": str(min(MAX_FACTS, self._per_cluster * len(clusters))),
        }
        return {v: k for k, v in labels.items()}, variables

    @staticmethod
    def _drafts(
        facts: Sequence[tuple[str, Sequence[str]]],
        refs: dict[str, str],
        clusters: Sequence[ClusterPlan] = (),
    ) -> list[FactDraft]:
        """Map labels back to ids; drop facts citing nothing known and bare labels; fold
        repeats into the first.

        A label is read as the prompt shows it or bare (``"[E1]"``, ``"E1"``).
        A repeat is the same text for the same scope (two tenants' clusters may
        each earn the same fact, "The user walks a dog every morning", and each
        keeps its own); the first keeps its text and takes the repeat's sources,
        so the fact rests on every episode cited for it.

        Examples:
            >>> LLMDistiller._drafts([("Alice has a cat named Miso", ["[E1]", "E2"])],
            ...                      {"E1": "m1", "E2": "m2"})
            [FactDraft(text='Alice has a cat named Miso', source_ids=('m1', 'm2'), seen=())]
        """
        scope_of = {mid: c.scope_id for c in clusters for mid in c.ids}
        shown: dict[int, tuple[str, ...]] = {}  # each scope's episodes, all in the call
        for c in clusters:
            shown[c.scope_id] = tuple(dict.fromkeys([*shown.get(c.scope_id, ()), *c.ids]))
        out: dict[tuple[int | None, str], FactDraft] = {}
        for text, sources in facts:
            labels = (_source_label(s) for s in sources)
            ids = tuple(dict.fromkeys(refs[s] for s in labels if s in refs))
            clean = " ".join(text.split())
            if not ids or len(clean) < 8 or _LABELS.fullmatch(clean):
                continue
            if len({scope_of.get(i) for i in ids}) > 1:
                continue  # mixes scopes: never stored, nor folded into a fact that is
            key = (scope_of.get(ids[0]), clean.lower())
            first = out.get(key)  # a repeat adds its sources: it rests on them too
            merged = ids if first is None else tuple(dict.fromkeys([*first.source_ids, *ids]))
            seen = shown.get(key[0], ()) if key[0] is not None else ()
            out[key] = FactDraft(clean if first is None else first.text, merged, seen)
        return list(out.values())

    def distill(self, clusters: Sequence[ClusterPlan]) -> list[FactDraft]:
        """Drafts of every scope whose call succeeded (see :class:`Drafts` ``failed``).

        Raises:
            LLMUnavailableError, LLMResponseError: Every scope's call failed (the first
                scope's error; nothing to write).
        """
        out = Drafts()
        for group in _by_scope(clusters):  # one call per scope: tenants never share a prompt
            refs, variables = self._request(group)
            try:
                answer = self.client.complete_json(DISTILL_FACTS, **variables)
            except LLMError as exc:  # this tenant only: the others' facts are kept
                _failed(out, group, exc)
                continue
            out.extend(self._drafts([(f.text, f.sources) for f in answer.facts], refs, group))
            if answer.salvaged:
                out.cut.add(group[0].scope_id)
        return _checked(out, clusters)

    async def adistill(self, clusters: Sequence[ClusterPlan]) -> list[FactDraft]:
        """Async :meth:`distill`."""
        out = Drafts()
        for group in _by_scope(clusters):
            refs, variables = self._request(group)
            try:
                answer = await self.client.acomplete_json(DISTILL_FACTS, **variables)
            except LLMError as exc:
                _failed(out, group, exc)
                continue
            out.extend(self._drafts([(f.text, f.sources) for f in answer.facts], refs, group))
            if answer.salvaged:
                out.cut.add(group[0].scope_id)
        return _checked(out, clusters)


def _failed(out: Drafts, group: Sequence[ClusterPlan], exc: LLMError) -> None:
    """Record a scope whose call failed; its clusters are distilled at a later consolidation."""
    out.failed[group[0].scope_id] = exc
    logger.warning(
        "distilling scope node %d (%d clusters) failed; its clusters are sent again at the "
        "next consolidation: %s",
        group[0].scope_id,
        len(group),
        exc,
    )


def _checked(out: Drafts, clusters: Sequence[ClusterPlan]) -> Drafts:
    """``out``, or the first failure when every scope's call failed."""
    if out.failed and len(out.failed) == len({c.scope_id for c in clusters}):
        raise next(iter(out.failed.values()))
    return out


def _by_scope(clusters: Sequence[ClusterPlan]) -> list[list[ClusterPlan]]:
    """Clusters grouped by scope node, in order: one LLM call per tenant (clusters of
    several in one prompt let a fact drawn from one tenant's memories cite another's)."""
    groups: dict[int, list[ClusterPlan]] = {}
    for c in clusters:
        groups.setdefault(c.scope_id, []).append(c)
    return list(groups.values())

"""LoCoMo scoring: hits against evidence per (method, category), and the results dict."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helamem.core.config import RetrievalConfig
from helamem.core.types import Hit

from ._common import CachingEmbedder, TokenCounter, versions
from .locomo_data import (
    BUDGETS,
    CATEGORIES,
    Conversation,
    EvidenceReport,
)
from .locomo_methods import Method


@dataclass(slots=True)
class Tally:
    """Sums over the questions of one (method, category)."""

    questions: int = 0
    hit: defaultdict[int | str, float] = field(default_factory=lambda: defaultdict(float))
    recall: defaultdict[int | str, float] = field(default_factory=lambda: defaultdict(float))
    tokens: defaultdict[int | str, float] = field(default_factory=lambda: defaultdict(float))
    items: defaultdict[int | str, float] = field(default_factory=lambda: defaultdict(float))

    def add(
        self,
        hit: Mapping[int | str, float],
        recall: Mapping[int | str, float],
        tokens: Mapping[int | str, int],
        items: Mapping[int | str, int],
    ) -> None:
        self.questions += 1
        for total, values in (
            (self.hit, hit),
            (self.recall, recall),
            (self.tokens, tokens),
            (self.items, items),
        ):
            for k, v in values.items():
                total[k] += v

    def summary(self, ks: Sequence[int | str]) -> dict[str, Any]:
        n = self.questions
        out: dict[str, Any] = {"questions": n}
        for key, counter in (
            ("r", self.hit),
            ("recall", self.recall),
            ("tokens", self.tokens),
            ("hits", self.items),
        ):
            for k in ks:
                out[f"{key}@{k}"] = round(counter[k] / n, 4) if n else None
        return out


def score(
    retrieved: Mapping[int | str, list[tuple[str, str]]],
    evidence: set[str],
    counter: TokenCounter,
) -> tuple[
    dict[int | str, float], dict[int | str, float], dict[int | str, int], dict[int | str, int]
]:
    hit: dict[int | str, float] = {}
    recall: dict[int | str, float] = {}
    tokens: dict[int | str, int] = {}
    items: dict[int | str, int] = {}
    for k, hits in retrieved.items():
        if isinstance(k, str):  # a token budget "256t": fill it with whole hits, in order
            budget, used, kept = int(k[:-1]), 0, []
            for d, c in hits:
                cost = counter.count(c + "\n")
                if used + cost > budget:
                    break
                used += cost
                kept.append((d, c))
            hits = kept
        found = {x for d, _ in hits for x in fact_dias(d)} & evidence
        hit[k] = 1.0 if found else 0.0
        recall[k] = len(found) / len(evidence)
        tokens[k] = counter.count("\n".join(c for _, c in hits)) if hits else 0
        items[k] = len(hits)
    return hit, recall, tokens, items


def bucket(category: int, sample_id: str) -> list[str]:
    keys = [str(category), "all"]
    if 1 <= category <= 4:
        keys += ["1-4", f"{sample_id}/1-4"]
    return keys


FACT = "fact:"
"""Prefix of a fact's pseudo turn id: ``"fact:D1:3|D2:5"`` names its source turns."""


def fact_dias(dia: str) -> list[str]:
    return dia[len(FACT) :].split("|") if dia.startswith(FACT) else [dia]


def dia_of(hit: Hit, sources: Mapping[str, str] | None = None) -> str:
    """The LoCoMo turn id of a hit (a turn pair's reply keeps its own in ``reply_dia_id``;
    a fact's is :data:`FACT` and its source turns, found in ``sources``)."""
    if hit.provenance == "semantic":
        known = sources or {}
        cited = sorted({known[i] for i in hit.memory.provenance if i in known})
        return FACT + "|".join(cited)
    meta = hit.memory.metadata
    if hit.memory.role == "assistant" and "reply_dia_id" in meta:
        return str(meta["reply_dia_id"])
    return str(meta.get("dia_id"))


def assemble_results(
    *,
    data: Path,
    convs: list[Conversation],
    chosen: list[Method],
    configs: Mapping[str, RetrievalConfig],
    overrides: Mapping[str, Any],
    seed: int,
    ks: Sequence[int],
    limits: tuple[int | None, int | None],
    report: EvidenceReport,
    counter: TokenCounter,
    cache: CachingEmbedder,
    embed_s: float,
    tally: Mapping[str, Mapping[str, Tally]],
    ingest_s: Mapping[str, float],
    query_s: Mapping[str, float],
    searches: Mapping[str, int],
    assoc: Mapping[str, Counter[str]],
) -> dict[str, Any]:
    n_questions = sum(len(c.questions) for c in convs)
    scored_keys: list[int | str] = [*ks, *(f"{t}t" for t in BUDGETS)]
    keys = [str(c) for c in CATEGORIES] + ["1-4", "all"]
    names = {**{str(c): n for c, n in CATEGORIES.items()}, "1-4": "1-4", "all": "all"}
    methods_out: dict[str, Any] = {}
    for m in chosen:
        cats = {}
        for key in keys:
            entry = {"name": names[key], **tally[m.name].get(key, Tally()).summary(scored_keys)}
            cats[key] = entry
        methods_out[m.name] = {
            "description": m.description,
            "spread": m.spread,
            "learn": m.learn,
            "retrieval": configs[m.name].model_dump(),
            "ingest_s": round(ingest_s[m.name], 3),
            "query_s": round(query_s[m.name], 3),
            "searches": searches[m.name],
            "query_ms_per_question": (
                round(1000 * query_s[m.name] / n_questions, 2) if n_questions else None
            ),
            "calls_per_question": (
                round(searches[m.name] / n_questions, 2) if n_questions else None
            ),
            "query_ms_per_call": (
                round(1000 * query_s[m.name] / searches[m.name], 2) if searches[m.name] else None
            ),
            "association_hits": {
                "at_k": configs[m.name].default_k,
                "total": assoc[m.name]["hits"],
                "evidence": assoc[m.name]["evidence"],
            },
            "facts": {
                str(key): {
                    "returned": assoc[m.name][f"facts@{key}"],
                    "citing_evidence": assoc[m.name][f"facts_citing@{key}"],
                    "citing_rate": (
                        round(
                            assoc[m.name][f"facts_citing@{key}"] / assoc[m.name][f"facts@{key}"],
                            4,
                        )
                        if assoc[m.name][f"facts@{key}"]
                        else None
                    ),
                }
                for key in (configs[m.name].default_k, "512t")
            },
            "categories": cats,
            "conversations": {
                c.sample_id: tally[m.name].get(f"{c.sample_id}/1-4", Tally()).summary(scored_keys)
                for c in convs
            },
        }
    return {
        "benchmark": "locomo-retrieval",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(data),
        "config": {
            "conversations": limits[0],
            "questions_per_conversation": limits[1],
            "methods": [m.name for m in chosen],
            "ks": list(ks),
            "token_budgets": list(BUDGETS),
            "retrieval_overrides": dict(overrides),
            "embedder": cache.name,
            "scope": "one per conversation: ('locomo', sample_id)",
            "reference_time": "the conversation's last session date",
            "memory": "one per turn: 'speaker: text' + ' [image: caption]'",
        },
        "seed": seed,
        "versions": versions(),
        "token_counter": {"name": counter.name, "exact": counter.exact, "detail": counter.detail},
        "dataset": {
            "conversations": [c.sample_id for c in convs],
            "turns": sum(len(c.turns) for c in convs),
            "questions": n_questions,
            "evidence": report.as_dict(),
        },
        "embedding": {"texts": cache.computed, "seconds": round(embed_s, 3)},
        "methods": methods_out,
        "token_parity": token_parity(methods_out, ks),
        "plot": None,
    }


def token_parity(
    methods: Mapping[str, Any], ks: Sequence[int], reference: str = "dense"
) -> dict[str, Any] | None:
    """Context tokens each method needs to match the reference's R@10 (categories 1-4).

    For every method, the smallest ``k`` whose R@k reaches the reference's
    R@10 (R@ the largest k when 10 is not measured), with its tokens and hits.

    Args:
        methods: ``results["methods"]``.
        ks: The cut-offs measured.
        reference: The method to match.

    Returns:
        ``None`` when the reference method did not run.

    Examples:
        >>> cat = lambda r5, r10, t5, t10: {"categories": {"1-4": {
        ...     "r@5": r5, "r@10": r10, "tokens@5": t5, "tokens@10": t10,
        ...     "hits@5": 5, "hits@10": 10}}}
        >>> p = token_parity({"dense": cat(.4, .5, 150, 300), "x": cat(.6, .7, 200, 400)}, [5, 10])
        >>> p["methods"]["x"]
        {'k': 5, 'r': 0.6, 'tokens': 200, 'hits': 5, 'no_more_tokens': True}
    """
    if reference not in methods:
        return None
    k_ref = 10 if 10 in ks else max(ks)
    ref = methods[reference]["categories"]["1-4"]
    target, budget = ref[f"r@{k_ref}"], ref[f"tokens@{k_ref}"]
    if target is None:
        return None
    out: dict[str, Any] = {"reference": reference, "k": k_ref, "r": target, "tokens": budget}
    per: dict[str, Any] = {}
    for name, m in methods.items():
        c = m["categories"]["1-4"]
        k = next((k for k in sorted(ks) if (c[f"r@{k}"] or 0.0) >= target), None)
        per[name] = (
            None
            if k is None
            else {
                "k": k,
                "r": c[f"r@{k}"],
                "tokens": c[f"tokens@{k}"],
                "hits": c[f"hits@{k}"],
                "no_more_tokens": c[f"tokens@{k}"] <= budget,
            }
        )
    out["methods"] = per
    return out

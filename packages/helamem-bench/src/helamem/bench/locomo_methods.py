"""The benchmarked LoCoMo methods: retrieval settings of each, and the agent-loop replays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .locomo_data import (
    LOOP_K,
)

FACTS_EVERY = 20
"""The ``helamem-facts`` method consolidates its scope after every this many turns."""


@dataclass(frozen=True, slots=True)
class Method:
    """One benchmarked retrieval method.

    Attributes:
        name: Its name in the results.
        retrieval: Overrides of :class:`~helamem.core.RetrievalConfig`.
        spread: ``search(spread=...)``.
        learn: ``search(learn=...)``.
        description: One line for the report.
        ingest: How its store is filled: ``"plain"`` (``add_many``, one memory
            per turn), ``"loop-learn"`` or ``"loop-off"`` (the agent loop,
            see :func:`replay_agent_loop`), or ``"facts"`` (``add_many`` in
            chunks of :data:`FACTS_EVERY` turns, each followed by
            ``consolidate``; searches return facts as the defaults do).
    """

    name: str
    retrieval: Mapping[str, Any]
    spread: bool
    learn: bool
    description: str
    ingest: str = "plain"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "dense",
            {"keyword_weight": 0.0, "late_weight": 0.0},
            False,
            False,
            "dense (MiniLM pooled cosine) only",
        ),
        Method(
            "maxsim",
            {"keyword_weight": 0.0, "late_weight": 1.0},
            False,
            False,
            "late interaction (MiniLM token MaxSim) only",
        ),
        Method("bm25", {"keyword_weight": 1.0}, False, False, "lexical (FTS5 BM25) only"),
        Method(
            "hybrid",
            {"late_weight": 0.0, "keyword_weight": 0.7},
            False,
            False,
            "the usual hybrid: z-score fusion of pooled cosine and BM25",
        ),
        Method("fusion", {}, False, False, "HeLa-Mem's base ranking: no spreading, no learning"),
        Method("helamem", {}, True, True, "fusion + spreading + Hebbian learning"),
        Method("helamem-no-spread", {}, False, True, "ablation: learning, no spreading"),
        Method("helamem-no-learn", {}, True, False, "ablation: spreading, no learning"),
        Method(
            "helamem-facts",
            {},
            True,
            True,
            f"helamem plus distilled facts (extractive, consolidating every {FACTS_EVERY} "
            f"turns; a fact's hits are its source turns)",
            "facts",
        ),
    )
}
"""The methods, by name, in report order."""

INGESTS: tuple[str, ...] = ("plain", "agent-loop")
"""``run_locomo(ingest=...)``: ``"agent-loop"`` runs :data:`REPLAYS` instead of the methods."""

REPLAYS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "loop-learn",
            {},
            True,
            False,
            f"agent loop, learning on: search(a, k={LOOP_K}), add_turns(a, b, used_ids=hits)",
            "loop-learn",
        ),
        Method(
            "loop-off",
            {},
            True,
            False,
            "agent loop, learning off: add_turns(a, b), no used_ids",
            "loop-off",
        ),
        Method("plain", {}, True, False, "plain add_many ingest (one memory per turn)", "plain"),
    )
}
"""The replays of ``--ingest agent-loop``: helamem's defaults, questions read-only."""

"""End to end with a real LLM: SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1,
reached through LiteLLM's OpenAI-compatible route. Skipped only when the model
packages are absent (``./dev test`` installs them)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from smollm_server import SmolLMServer, available, serve_smollm, unavailable_reason

from helamem.core import (
    ConsolidationConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    LLMConfig,
)

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(not available(), reason=str(unavailable_reason())),
]

SCOPE = ("users", "maria")
CONVERSATION = [
    ("I just adopted a golden retriever puppy named Biscuit.", "Biscuit is a lovely name!"),
    ("Biscuit chewed my running shoes this morning.", "Puppies love to chew shoes."),
    ("I take Biscuit to the park by the river every evening.", "That sounds relaxing."),
    ("My sister Ana is visiting from Lisbon next week.", "How nice, how long is she staying?"),
    ("Ana is staying for two weeks and loves dogs.", "She will enjoy meeting Biscuit."),
    ("Biscuit starts puppy training classes on Saturday.", "Good luck with the classes!"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[SmolLMServer]:
    with serve_smollm() as srv:
        yield srv


def test_distils_a_conversation_with_a_real_llm(tmp_path: Path, server: SmolLMServer) -> None:
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        llm=LLMConfig(
            model=server.model,
            api_base=server.api_base,
            api_key=server.api_key,
            json_mode="schema",
            max_tokens=512,
            timeout_s=120,
            max_retries=1,
            backoff_s=0.1,
        ),
        consolidation=ConsolidationConfig(max_clusters=2, hub_min_degree=2),
    )
    with HelaMemory(cfg, embedder=HashingEmbedder(128)) as mem:
        episodes: set[str] = set()
        for i, (user, assistant) in enumerate(CONVERSATION):
            u, a = mem.add_turn(
                SCOPE, user, assistant, event_time=datetime(2023, 5, 1 + i, tzinfo=UTC)
            )
            episodes |= {u.id, a.id}
        report = mem.consolidate(SCOPE)
        st = mem.stats(SCOPE)
        assert st.llm_calls >= 1
        assert st.llm_prompt_tokens > 0
        assert st.llm_completion_tokens > 0
        assert report.clusters >= 1
        assert report.facts_added >= 1, report
        facts = [mem.get(i) for i in report.fact_ids]
        for fact in facts:
            assert fact.kind == "semantic"
            assert fact.scope == SCOPE
            assert fact.content.strip()
            assert fact.provenance
            assert set(fact.provenance) <= episodes  # cites only this conversation
        res = mem.search("Biscuit the puppy", SCOPE, k=3, semantic_k=3)
        assert any(h.provenance == "semantic" for h in res)

"""A fact merged from several clusters and then deleted leaves none of them without a fact.

When distillation merges a new fact into a near-identical existing one, the
fact rests on the episodes of both clusters. Before, deleting an episode of
the second cluster deleted the fact (it repeats that episode) while the first
cluster stayed recorded as distilled: its episodes were never distilled again
and rested on no fact for good.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_consolidation_report import CAT, _labels
from test_distill import S, ScriptedLLM, StoreConfig

from helamem.core import (
    ConsolidationConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    LLMClient,
    LLMConfig,
)


def _blocks(messages: list[dict[str, str]]) -> list[frozenset[str]]:
    """The episode texts of each cluster a distillation prompt shows."""
    text = messages[-1]["content"]
    return [
        frozenset(t.strip() for t in re.findall(r"\[E\d+\] (?:\w+: )?(.*)", block))
        for block in text.split("Cluster ")[1:]
    ]


def _memory(tmp_path: Path, store_config: StoreConfig, llm: ScriptedLLM) -> HelaMemory:
    """A store whose distiller is ``llm``, one cluster per consolidation."""
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        store=store_config(tmp_path / "s"),
        llm=LLMConfig(model="gpt-4o-mini", backoff_s=0.0),
        consolidation=ConsolidationConfig(max_clusters=1),
    )
    client = LLMClient(cfg.llm, completion=llm, acompletion=llm.acall, sleep=lambda s: None)
    return HelaMemory(cfg, embedder=HashingEmbedder(64), llm=client)


def test_a_fact_merged_from_two_clusters_and_deleted_has_both_distilled_again(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """A cluster whose fact another cluster's near-identical fact merged into is distilled
    again once that fact goes with an episode of the other cluster (before, it stayed
    recorded as distilled: its episodes were left without a fact for good)."""
    shown: list[list[frozenset[str]]] = []

    def cite_all(messages: list[dict[str, str]]) -> str:
        shown.append(_blocks(messages))
        return json.dumps({"facts": [{"text": CAT, "sources": list(_labels(messages))}]})

    llm = ScriptedLLM(*[cite_all] * 40)
    with _memory(tmp_path, store_config, llm) as mem:
        ids: dict[str, str] = {}
        for i in range(10):
            u, a = mem.add_turn(S, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
            ids[u.content], ids[a.content] = u.id, a.id
        first = mem.consolidate(S)
        second = mem.consolidate(S)
        (c1,), (c2,) = shown
        assert (first.facts_added, second.facts_added, second.facts_updated) == (1, 0, 1)
        fact = mem.get(first.fact_ids[0])
        assert {mem.get(i).content for i in fact.provenance} == c1 | c2  # merged
        assert fact.metadata == {}  # its clusters are the store's bookkeeping, not the user's
        assert c2 - c1
        mem.delete(ids[sorted(c2 - c1)[0]])  # the fact goes with it
        assert mem.stats(S).semantic == 0
        before = len(shown)
        while mem.consolidate(S).clusters:
            pass
        again = [b for blocks in shown[before:] for b in blocks]
        assert c1 in again  # the untouched cluster, distilled again
        facts = mem.search("cat miso", S, k=1, semantic_k=50, learn=False)
        cited = {i for h in facts if h.provenance == "semantic" for i in h.memory.provenance}
        assert {ids[t] for t in c1} <= cited  # its episodes rest on a fact again


def test_a_fact_stated_twice_rests_on_the_sources_of_both(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """The model states one fact twice, each citing other episodes: the fact cites them all
    (before, the repeat was dropped with its sources), and each cluster records the facts
    drawn from it (before: every fact of the whole run)."""
    cited: set[str] = set()

    def twice(messages: list[dict[str, str]]) -> str:
        shown = _labels(messages)
        labels = list(shown)
        cited.update(shown[k] for k in labels[:2])
        return json.dumps(
            {"facts": [{"text": CAT, "sources": labels[:1]}, {"text": CAT, "sources": labels[1:2]}]}
        )

    llm = ScriptedLLM(twice)
    with _memory(tmp_path, store_config, llm) as mem:
        for i in range(5):
            mem.add_turn(S, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
        report = mem.consolidate(S)
        assert (report.facts_added, report.clusters) == (1, 1)
        fact = mem.get(report.fact_ids[0])
        assert {mem.get(i).content for i in fact.provenance} == cited
        core = mem._core
        assert core is not None
        node = core.store.find_scope(list(S))
        assert node is not None
        assert [facts for _, _, facts, _ in core.store.clusters_of(node)] == [1]

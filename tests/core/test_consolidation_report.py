"""A consolidation report counts what the consolidation changed, and only that.

Before, a second ``consolidate`` right after the first, with nothing new,
distilled again (clusters around the hubs the first run had folded into its
clusters), added and updated facts and reported them; a draft merged into a
fact counted as an update even when it changed nothing, a fact updated by two
drafts counted twice (and kept only the last draft's sources), and a fact
added and then merged into in the same run counted as added and updated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_distill import S, ScriptedLLM, StoreConfig, _mem

from helamem.core import (
    ConsolidationConfig,
    ConsolidationReport,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
)

CAT = "Alice has a cat named Miso"


def _changes(r: ConsolidationReport) -> tuple[object, ...]:
    """The report's counts of changes (``hubs`` and ``skipped_unchanged`` count what it
    examined, not what it changed)."""
    return (
        r.scopes,
        r.similarity_edges,
        r.clusters,
        r.facts_added,
        r.facts_updated,
        r.facts_dropped,
        r.fact_ids,
    )


def _labels(messages: list[dict[str, str]]) -> dict[str, str]:
    """``label -> episode text`` of the episodes a distillation prompt shows."""
    found = re.finditer(r"\[(E\d+)\] (?:\w+: )?(.*)", messages[-1]["content"])
    return {m.group(1): m.group(2).strip() for m in found}


def _extractive(tmp_path: Path, store_config: StoreConfig, max_clusters: int) -> HelaMemory:
    """A store with the extractive distiller (no model)."""
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        store=store_config(tmp_path / "s"),
        consolidation=ConsolidationConfig(max_clusters=max_clusters),
    )
    return HelaMemory(cfg, embedder=HashingEmbedder(64))


def test_a_consolidation_with_nothing_new_changes_and_reports_nothing(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    with _extractive(tmp_path, store_config, max_clusters=100) as mem:
        for i in range(12):
            mem.add_turn(S, f"I love my cat Miso, she is {i} and sleeps", f"Miso is lovely {i}")
            mem.add(f"I walk my dog Rex every morning {i}", S)
        first = mem.consolidate(S)
        assert first.facts_added > 0 and first.clusters > 0
        before = mem.stats(S)
        for _ in range(2):
            again = mem.consolidate(S)
            assert _changes(again) == (0, 0, 0, 0, 0, 0, ())
            assert again.skipped_unchanged == first.clusters  # every cluster, known
        after = mem.stats(S)
        assert (after.semantic, after.edges) == (before.semantic, before.edges)


def test_with_a_small_max_clusters_runs_distil_the_rest_then_nothing(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    with _extractive(tmp_path, store_config, max_clusters=2) as mem:
        for i in range(12):
            mem.add_turn(S, f"I love my cat Miso, she is {i} and sleeps", f"Miso is lovely {i}")
        runs = [mem.consolidate(S) for _ in range(30)]
        distilled = [r.clusters for r in runs]
        assert distilled[0] == 2
        done = distilled.index(0)  # once a run has nothing left, none has
        assert all(c == 0 for c in distilled[done:])
        assert all(_changes(r) == (0, 0, 0, 0, 0, 0, ()) for r in runs[done:])
        # every run before distilled clusters no earlier run had
        assert sum(distilled) == runs[done].skipped_unchanged


def test_facts_updated_counts_each_fact_that_changed_once(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    cited: set[str] = set()  # texts of the episodes the fact cites so far

    def cite_all_twice(messages: list[dict[str, str]]) -> str:
        """The fact in two near-identical wordings, each citing half the episodes shown."""
        labels = list(_labels(messages))
        cited.update(_labels(messages).values())
        half = len(labels) // 2
        return json.dumps(
            {
                "facts": [
                    {"text": CAT, "sources": labels[:half]},
                    {"text": f"{CAT}.", "sources": labels[half:]},
                ]
            }
        )

    def cite_only_known(messages: list[dict[str, str]]) -> str:
        """The same fact, citing only episodes it cites already: it changes nothing."""
        known = [k for k, t in _labels(messages).items() if t in cited]
        assert known
        return json.dumps({"facts": [{"text": f"{CAT}.", "sources": known}]})

    llm = ScriptedLLM(cite_all_twice, cite_all_twice, cite_only_known)
    with _mem(tmp_path, store_config, llm) as mem:

        def story(start: int) -> None:
            for i in range(start, start + 5):
                mem.add_turn(S, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")

        story(0)
        first = mem.consolidate(S)
        # added, then merged into by the second draft: one fact added, none updated
        assert (first.facts_added, first.facts_updated, len(first.fact_ids)) == (1, 0, 1)
        fact = mem.get(first.fact_ids[0])
        assert {mem.get(i).content for i in fact.provenance} == cited  # both drafts' sources

        story(5)  # new episodes: new clusters
        second = mem.consolidate(S)
        assert len(llm.calls) == 2
        # one fact, changed by two drafts: updated once, with both drafts' sources
        assert (second.facts_added, second.facts_updated, second.fact_ids) == (0, 1, (fact.id,))
        fact = mem.get(fact.id)
        assert {mem.get(i).content for i in fact.provenance} == cited

        story(10)
        third = mem.consolidate(S)
        assert len(llm.calls) == 3
        # the draft restates the fact with sources it cites already: nothing changed
        assert (third.facts_added, third.facts_updated, third.fact_ids) == (0, 0, ())
        assert third.clusters >= 1  # its clusters were distilled (and are known now)
        now = mem.get(fact.id)  # (its metadata names one more cluster it came from)
        assert (now.content, now.provenance, now.event_time) == (
            fact.content,
            fact.provenance,
            fact.event_time,
        )
        assert mem.stats(S).semantic == 1

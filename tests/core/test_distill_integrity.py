"""Facts stay true to the episodes they rest on: answers off the schema, deletes and
overlapping consolidations (interleavings forced by the mock LLM, no sleeps)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_distill import S, ScriptedLLM, StoreConfig, _mem, _story, facts_citing_first_labels

from helamem.core import (
    ConsolidationReport,
    HelaMemory,
    LLMResponseError,
    MemoryNotFoundError,
    NewMemory,
)


@pytest.mark.parametrize("off_schema", ['{"error": "upstream overloaded"}', "{}"])
def test_json_without_facts_is_an_error_and_the_cluster_is_retried(
    tmp_path: Path, store_config: StoreConfig, off_schema: str
) -> None:
    llm = ScriptedLLM(off_schema, off_schema, facts_citing_first_labels)
    with _mem(tmp_path, store_config, llm) as mem:
        _story(mem)
        with pytest.raises(LLMResponseError, match="after one repair"):
            mem.consolidate(S)
        assert len(llm.calls) == 2  # the answer and its repair
        assert mem.stats().semantic == 0
        report = mem.consolidate(S)  # not marked distilled: the same clusters again
        assert llm.calls[2]["messages"] == llm.calls[0]["messages"]
        assert report.facts_added >= 1


def test_an_empty_facts_list_is_nothing_to_distil(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    llm = ScriptedLLM(*['{"facts": []}'] * 5)
    with _mem(tmp_path, store_config, llm) as mem:
        _story(mem)
        first = mem.consolidate(S)
        assert len(llm.calls) == 1 and first.clusters >= 1 and first.facts_added == 0
        mem.consolidate(S)
        # the clusters it saw were recorded: never sent again
        assert all(c["messages"] != llm.calls[0]["messages"] for c in llm.calls[1:])


def _edges_and_rows(mem: HelaMemory, scope: tuple[str, ...]) -> tuple[set[int], set[int]]:
    """The keys of ``scope``'s memories, and the keys its edges touch."""

    def read(core: Any) -> tuple[set[int], set[int]]:
        store = core.store
        nodes = store.descendants(store.find_scope(scope))
        rows = {r.n for r in store.rows_in_scopes(nodes)}
        return rows, {n for e in store.edges_in_scopes(nodes) for n in (e.a, e.b)}

    return mem._call(read)  # type: ignore[no-any-return]


def test_an_episode_deleted_while_planning_gets_no_edges(mem: HelaMemory) -> None:
    scope = ("t", "1")
    ms = [mem.add(f"I walked my dog Rex in the park today number {i}", scope) for i in range(5)]
    store = mem._call(lambda core: core.store)
    read = store.vectors_of

    def read_then_deleted(*args: Any, **kwargs: Any) -> Any:
        out = read(*args, **kwargs)
        store.vectors_of = read
        with store.tx() as db:  # another writer deletes the newest episode, read above
            store.delete_memories(db, [store.rows_by_id([ms[4].id])[ms[4].id]])
        return out

    store.vectors_of = read_then_deleted
    report = mem.consolidate(scope)  # no KeyError
    rows, touched = _edges_and_rows(mem, scope)
    assert len(rows) == 4 + report.facts_added
    assert touched and touched <= rows  # no edge to the deleted episode
    assert ms[4].id not in {i for f in report.fact_ids for i in mem.get(f).provenance}
    mem.consolidate(scope)
    assert _edges_and_rows(mem, scope)[1] <= _edges_and_rows(mem, scope)[0]


def _secret_story(mem: HelaMemory) -> str:
    """Four turns about a cat and one telling a secret: the user episode's id."""
    for i in range(4):
        mem.add_turn(S, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
    secret, _ = mem.add_turn(
        S, "my bank PIN is 4921 and my cat miso chased a mouse", "miso the cat is fast"
    )
    return secret.id


def _labels(messages: list[dict[str, str]]) -> dict[str, str]:
    """``label -> text`` of the episodes a distillation prompt shows."""
    found = re.finditer(r"\[(E\d+)\] (?:\w+: )?(.*)", messages[-1]["content"])
    return {m.group(1): m.group(2) for m in found}


def test_an_episode_deleted_while_the_llm_distils_leaves_no_fact(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    secret: list[str] = []

    def delete_while_thinking(messages: list[dict[str, str]]) -> str:
        assert mem.delete(secret) == 1  # the user deletes it while the call is in flight
        labels = _labels(messages)
        pin = [k for k, t in labels.items() if "PIN" in t]
        other = [k for k, t in labels.items() if "PIN" not in t]
        assert pin and other  # the model was shown the secret
        return json.dumps(
            {"facts": [{"text": "Alice's bank PIN is 4921", "sources": [*other[:1], *pin]}]}
        )

    llm = ScriptedLLM(delete_while_thinking, facts_citing_first_labels)
    with _mem(tmp_path, store_config, llm) as mem:
        secret.append(_secret_story(mem))
        report = mem.consolidate(S)
        assert (report.facts_added, report.facts_updated) == (0, 0)
        assert report.facts_dropped == 1
        assert mem.stats(S).semantic == 0
        hits = mem.search("bank PIN 4921", S, k=5, kind="semantic", learn=False)
        assert [h.content for h in hits] == []
        # its cluster was not recorded: the survivors are distilled by the next run
        again = mem.consolidate(S)
        assert again.facts_added >= 1
        shown = _labels(llm.calls[1]["messages"]).values()
        assert shown and all("PIN" not in t for t in shown)
        cited = {i for f in again.fact_ids for i in mem.get(f).provenance}
        assert secret[0] not in cited


def _one_fact(wording: str) -> Callable[[list[dict[str, str]]], str]:
    def answer(messages: list[dict[str, str]]) -> str:
        labels = list(_labels(messages))
        return json.dumps({"facts": [{"text": wording, "sources": labels[:2]}]})

    return answer


@pytest.mark.parametrize("inner_scope", [S, ("users",)], ids=["same scope", "prefix"])
def test_overlapping_consolidations_store_a_cluster_s_facts_once(
    tmp_path: Path, store_config: StoreConfig, inner_scope: tuple[str, ...]
) -> None:
    inner: list[ConsolidationReport] = []
    first = _one_fact("Miso is the fast, mouse-hunting pet cat of Alice")

    def consolidate_meanwhile(messages: list[dict[str, str]]) -> str:
        inner.append(mem.consolidate(inner_scope))  # another consolidation overtakes this one
        return first(messages)

    second = _one_fact("Alice owns a cat called Miso that hunts mice")
    llm = ScriptedLLM(consolidate_meanwhile, second)
    with _mem(tmp_path, store_config, llm) as mem:
        for i in range(3):
            mem.add_turn(S, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
        outer = mem.consolidate(S)
        prompts = [c["messages"] for c in llm.calls]
        assert len(prompts) == 2 and prompts[0] == prompts[1]  # both planned the same clusters
        assert inner[0].facts_added == 1
        assert (outer.facts_added, outer.facts_updated, outer.fact_ids) == (0, 0, ())
        facts = mem.search("Miso cat mice", S, k=5, kind="semantic", learn=False)
        assert [h.content for h in facts] == ["Alice owns a cat called Miso that hunts mice"]
        assert mem.stats(S).semantic == 1


def test_deleting_an_episode_deletes_the_facts_citing_it(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    llm = ScriptedLLM(*[facts_citing_first_labels] * 4)
    with _mem(tmp_path, store_config, llm) as mem:
        episodes = _story(mem)
        report = mem.consolidate(S)
        facts = {f: set(mem.get(f).provenance) for f in report.fact_ids}
        assert facts
        doomed = min(next(iter(facts.values())))
        citing = {f for f, prov in facts.items() if doomed in prov}
        rows = mem._call(lambda c: c.store.rows_by_id(list(facts)))  # type: ignore[attr-defined]
        # the facts resting on it: citing it, or distilled from a cluster holding it
        resting = {f for f in facts if doomed in json.loads(rows[f].metadata)["_helamem_drawn"]}
        assert citing and citing <= resting
        assert mem.delete([doomed]) == 1
        left = mem.search("cat named miso", S, k=10, kind="semantic", learn=False)
        left_ids = {h.id for h in left}
        assert not resting & left_ids  # gone from search, and from the store:
        for f in resting:
            with pytest.raises(MemoryNotFoundError):
                mem.get(f)
        assert all(doomed not in h.memory.provenance for h in left)
        assert mem.stats(S).semantic == len(facts) - len(resting)
        assert mem.stats().vectors == len(episodes) - 1 + len(facts) - len(resting)
        # the survivors' clusters are not blocked: the next run distils them again
        again = mem.consolidate(S)
        assert again.facts_added >= 1
        assert all(doomed not in mem.get(f).provenance for f in again.fact_ids)
        # deleting every episode leaves no fact repeating them
        mem.delete([e for e in episodes if e != doomed])
        assert mem.stats(S).memories == 0
        assert len(mem.search("cat named miso", S, k=5, kind="semantic", learn=False)) == 0


@pytest.mark.parametrize("again", ["same text", "new text"])
def test_an_episode_added_again_under_its_id_is_distilled_again(
    tmp_path: Path, store_config: StoreConfig, again: str
) -> None:
    llm = ScriptedLLM(*[_every_label] * 4)
    with _mem(tmp_path, store_config, llm) as mem:
        ids = [f"ep-{i}" for i in range(5)]
        mem.add_many([NewMemory(f"my cat miso chased a mouse {i}", S, id=i) for i in ids])
        first = mem.consolidate(S)
        assert first.facts_added == 1 and set(mem.get(first.fact_ids[0]).provenance) == set(ids)
        mem.delete([ids[0]])  # its fact goes with it
        assert mem.stats(S).semantic == 0
        text = "my cat miso chased a mouse ep-0" if again == "same text" else "miso caught a rat"
        mem.add_many([NewMemory(text, S, id=ids[0])])
        # the same ids, but not the memories distilled before: the cluster is new
        report = mem.consolidate(S)
        assert (report.clusters, report.facts_added) == (1, 1)
        assert ids[0] in mem.get(report.fact_ids[0]).provenance
        mem.consolidate(S)  # and now that cluster is known: never sent again
        assert all(c["messages"] != llm.calls[1]["messages"] for c in llm.calls[2:])


def _every_label(messages: list[dict[str, str]]) -> str:
    labels = list(_labels(messages))
    return json.dumps({"facts": [{"text": "Alice's cat Miso hunts mice", "sources": labels}]})


def test_a_backup_restored_after_its_episodes_were_deleted_is_distilled_again(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    llm = ScriptedLLM(*[_every_label] * 3)
    with _mem(tmp_path, store_config, llm) as mem:
        ids = [mem.add(f"my cat miso chased a mouse {i}", S).id for i in range(5)]
        mem.export_scope(S, tmp_path / "backup.jsonl")  # before any consolidation
        assert mem.consolidate(S).facts_added == 1
        mem.delete(ids)  # one by one, not delete_scope: the fact goes with them
        assert mem.stats(S).memories == 0
        assert mem.import_scope(tmp_path / "backup.jsonl").memories == 5
        # the restored episodes (their ids and times as before) have no fact yet
        report = mem.consolidate(S)
        assert (report.clusters, report.facts_added) == (1, 1)
        assert set(mem.get(report.fact_ids[0]).provenance) == set(ids)


def _citing_one(messages: list[dict[str, str]]) -> str:
    """A model that writes each cluster's fact from all its episodes but cites one."""
    return facts_citing_first_labels(messages, cited=1)


def test_a_fact_goes_with_an_episode_it_was_distilled_from_but_did_not_cite(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Helper 143 F4: a fact rested only on the episodes its LLM cited, so one written
    from a whole cluster that cites a single episode outlived the delete of the
    others (their content, in the fact, stayed searchable). A fact now rests on every
    episode of the clusters it was distilled from: deleting any takes it along; the
    survivors are distilled again; ``forget`` never takes one of them."""
    llm = ScriptedLLM(_citing_one, _citing_one)
    with _mem(tmp_path, store_config, llm, clusters=1) as mem:
        _story(mem)
        report = mem.consolidate(S)
        [fact] = report.fact_ids
        [cited] = mem.get(fact).provenance
        assert "_helamem_drawn" not in mem.get(fact).metadata  # bookkeeping, not shown
        row = mem._call(lambda c: c.store.rows_by_id([fact])[fact])  # type: ignore[attr-defined]
        drawn = set(json.loads(row.metadata)["_helamem_drawn"])
        assert cited in drawn and len(drawn) > 1  # the whole cluster, cited or not
        doomed = sorted(drawn - {cited})[0]
        candidates = mem.forget(S, dry_run=True, older_than_s=0, below=1.0).candidates
        assert not {m.id for m in candidates} & drawn  # forgetting never takes the fact
        assert mem.delete([doomed]) == 1
        with pytest.raises(MemoryNotFoundError):
            mem.get(fact)
        assert mem.get(cited).id == cited  # the cited episode stays
        assert mem.stats(S).semantic == 0
        assert mem.consolidate(S).facts_added == 1  # the survivors again


def _cats_and_pins(mem: HelaMemory) -> list[str]:
    """Five cat turns, then five bank-PIN turns in ``S``: the PIN episodes' ids."""
    pins = []
    for i in range(5):
        mem.add_turn(S, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
    for i in range(5):
        u, a = mem.add_turn(S, f"bank pin code number 4711 secret {i}", f"pin code 4711 {i}")
        pins += [u.id, a.id]
    return pins


def _written_from_the_other_cluster(messages: list[dict[str, str]]) -> str:
    """One fact in the words of the PIN cluster, citing a cat episode only (the LLM saw
    every cluster of the scope in its one call)."""
    blocks = messages[-1]["content"].split("Cluster ")[1:]
    cats = next(b for b in blocks if "miso" in b and "4711" not in b)
    first = re.findall(r"\[(E\d+)\]", cats)[0]
    return json.dumps({"facts": [{"text": "Alice's bank PIN is 4711", "sources": [first]}]})


def test_a_fact_goes_with_any_episode_its_llm_was_shown(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Review 145: a fact rested on the clusters of the episodes it cited, but the LLM
    sees every cluster of the scope in one call: "Alice's bank PIN is 4711", written
    from the PIN cluster and citing a cat episode, outlived the delete of every PIN
    episode. A fact now rests on every episode its distiller was shown."""
    llm = ScriptedLLM(_written_from_the_other_cluster)
    with _mem(tmp_path, store_config, llm, clusters=4) as mem:
        pins = _cats_and_pins(mem)
        report = mem.consolidate(S)
        assert report.clusters >= 2  # the case: the cat and the PIN clusters in one call
        [fact] = report.fact_ids
        assert not set(mem.get(fact).provenance) & set(pins)  # it cites no PIN episode
        mem.delete(pins)  # the user forgets every PIN episode
        with pytest.raises(MemoryNotFoundError):
            mem.get(fact)


def _one_good_fact_and_one_invisible(messages: list[dict[str, str]]) -> str:
    labels = re.findall(r"\[(E\d+)\]", messages[-1]["content"])
    facts = [
        {"text": "Alice keeps a cat named Miso", "sources": labels[:2]},
        # long enough to pass the distiller's length rule, but nothing add() would store
        {"text": "\u200b" * 10, "sources": labels[:1]},
        {"text": "\x01\x02\x03\x04\x05\x06\x07\x08\x0e", "sources": labels[:1]},
    ]
    return json.dumps({"facts": facts})


def test_a_fact_of_invisible_characters_is_dropped_and_the_others_are_stored(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    llm = ScriptedLLM(_one_good_fact_and_one_invisible)
    with _mem(tmp_path, store_config, llm, clusters=1) as mem:
        _story(mem)
        report = mem.consolidate(S)  # not InvalidInputError ("pass some visible text")
        assert (report.facts_added, report.facts_dropped, report.clusters) == (1, 2, 1)
        (fact,) = [mem.get(i) for i in report.fact_ids]
        assert fact.content == "Alice keeps a cat named Miso"
        mem.export_scope(S, tmp_path / "a.jsonl")  # and the store's export imports
        mem.delete_scope(S)
        assert mem.import_scope(tmp_path / "a.jsonl").memories == 11


def test_a_consolidation_whose_vector_write_fails_reports_its_stored_facts(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Trial 167: with the Chroma server down, consolidate() raised StorageError after its
    facts were committed (a recorder then reported the turn that triggered it as failed,
    though stored): a caller retrying would distil again. As an add's, the facts' vectors
    wait for the re-index; the call reports what it stored."""
    from helamem.core import StorageError

    llm = ScriptedLLM(facts_citing_first_labels, facts_citing_first_labels)
    with _mem(tmp_path, store_config, llm) as mem:
        _story(mem)
        index = mem._call(lambda core: core.index)
        real = index.upsert

        def down(*args: Any, **kwargs: Any) -> Any:
            raise StorageError("could not reach the Chroma server (test)")

        index.upsert = down
        try:
            report = mem.consolidate(S)
        finally:
            index.upsert = real
        assert report.facts_added >= 1
        assert mem.stats().semantic == report.facts_added
        assert mem.stats().unindexed >= report.facts_added  # waiting for the re-index
        mem.flush()  # the index is back: the facts' vectors are written
        assert mem.stats().unindexed == 0
        found = mem.search("cat named Miso", S, k=3, kind="semantic")
        assert {h.memory.id for h in found} == set(report.fact_ids)

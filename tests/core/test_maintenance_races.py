"""Maintenance racing ordinary use: what a delete, an add or a search meanwhile leaves
(interleavings forced by the mock LLM or a hook point, no sleeps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_distill import S, ScriptedLLM, StoreConfig, _mem, facts_citing_first_labels
from test_distill_integrity import _cats_and_pins, _written_from_the_other_cluster

from helamem.core import HelaMemory
from helamem.core.storage.base import rests_on
from races import racing_tx

StoreDb = Callable[[Path], Any]


def damage(store_db: StoreDb, path: Path) -> dict[str, list[str]]:
    """What a settled race left wrong in the graph store at ``path`` (both backends):
    edges to a missing memory, facts resting on a missing episode."""
    db = store_db(path)
    try:
        ids = {str(r[0]) for r in db.execute("SELECT id FROM memories").fetchall()}
        orphans = db.execute(
            "SELECT a, b FROM edges WHERE a NOT IN (SELECT n FROM memories)"
            " OR b NOT IN (SELECT n FROM memories)"
        ).fetchall()
        facts = db.execute(
            "SELECT id, provenance, metadata FROM memories WHERE kind = 'semantic'"
        ).fetchall()
    finally:
        db.close()
    return {
        "edge_orphan": [f"{a}-{b}" for a, b in orphans],
        "fact_orphan": [str(f) for f, prov, meta in facts if not rests_on(prov, meta) <= ids],
    }


CLEAN: dict[str, list[str]] = {"edge_orphan": [], "fact_orphan": []}


def test_an_episode_shown_to_the_llm_and_deleted_meanwhile_leaves_no_fact(
    tmp_path: Path, store_config: StoreConfig, store_db: StoreDb
) -> None:
    """A fact rests on every episode its LLM was shown (review 145), so one written
    while an episode it was shown (of another cluster than those it cites) is deleted
    is dropped, as a fact citing it is: "Alice's bank PIN is 4711", citing a cat
    episode, was stored after every PIN episode was deleted, and stayed searchable."""
    pins: list[str] = []

    def delete_while_thinking(messages: list[dict[str, str]]) -> str:
        assert "4711" in messages[-1]["content"]  # the model was shown the PIN cluster
        assert mem.delete(pins) == len(pins)  # the user forgets it while the call is in flight
        return _written_from_the_other_cluster(messages)

    llm = ScriptedLLM(delete_while_thinking, facts_citing_first_labels)
    with _mem(tmp_path, store_config, llm, clusters=4) as mem:
        pins += _cats_and_pins(mem)
        report = mem.consolidate(S)
        assert (report.facts_added, report.facts_updated, report.facts_dropped) == (0, 0, 1)
        assert report.clusters == 0  # none recorded: the survivors are distilled again
        assert mem.stats(S).semantic == 0
        hits = mem.search("bank PIN 4711", S, k=5, kind="semantic", learn=False)
        assert [h.content for h in hits] == []
        again = mem.consolidate(S)
        assert again.facts_added >= 1
        assert "4711" not in llm.calls[1]["messages"][-1]["content"]
        assert damage(store_db, tmp_path / "s") == CLEAN


def _edge(mem: HelaMemory, x: str, y: str) -> Any:
    def read(c: Any) -> Any:
        rows = c.store.rows_by_id([x, y])
        a, b = sorted((rows[x].n, rows[y].n))
        return c.store.edges_among([a, b]).get((a, b)), c.store.scope_state(rows[x].scope_id)[0]

    return mem._call(read)  # type: ignore[attr-defined]


def test_a_consolidation_never_moves_an_edge_s_tick_back(tmp_path: Path, make_mem: Any) -> None:
    """A consolidation read its scope's tick before the transaction that writes its
    similarity edges: another writer's turn and co-activation of two episodes landing
    in between left the edge stamped with the older tick (the co-activation's tick
    went back, and the edge decayed from then). Now the tick is read under the lock."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        turns = [
            one.add_turn(S, f"my cat miso chased a mouse {i}", f"miso the cat is fast {i}")
            for i in range(3)
        ]
        x, y = turns[0][0].id, turns[1][0].id
        one.flush()
        assert _edge(one, x, y)[0] is None

        def act() -> None:
            two.add_turn(S, "the weather was rainy", "take an umbrella")
            two.reinforce([x, y])

        racing_tx(one, act)
        one.consolidate(S)
        edge, tick = _edge(one, x, y)
        assert edge is not None and edge.weight > 0.05  # the similarity edge, stronger
        assert edge.tick == tick  # the tick of the co-activation, not the one before it

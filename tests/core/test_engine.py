"""Behaviour of the HelaMemory facade (deterministic hashing embedder)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from helamem.core import (
    ConfigError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
    StorageError,
)
from helamem.core.storage.chroma import ChromaIndex

ALICE = ("users", "alice")


def test_add_get_roundtrip(mem: HelaMemory) -> None:
    t = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    m = mem.add(
        "Alice adopted a cat named Miso", ALICE, role="user", event_time=t, metadata={"session": 1}
    )
    got = mem.get(m.id)
    assert got == m
    assert got.scope == ALICE
    assert got.event_time == t
    assert got.metadata == {"session": 1}
    assert "miso" in got.keywords
    assert got.kind == "episodic"


def test_ids_sort_by_creation(mem: HelaMemory) -> None:
    ids = [mem.add(f"note {i}", ALICE).id for i in range(5)]
    assert ids == sorted(ids)


def test_add_turn_links_episodes_in_order(mem: HelaMemory) -> None:
    u1, a1 = mem.add_turn(ALICE, "hello there", "hi, how can I help")
    mem.add_turn(ALICE, "tell me a joke", "why did the chicken")
    assert (u1.role, a1.role) == ("user", "assistant")
    st = mem.stats(ALICE)
    assert st.episodic == 4
    assert st.edges == 3  # u1-a1, a1-u2, u2-a2
    assert st.mean_edge_weight == pytest.approx(0.5)


def test_persistence_across_reopen(tmp_path: Path, make_mem: Any) -> None:
    path = tmp_path / "store"
    with make_mem(path) as m1:
        mem_ids = [m.id for m in m1.add_turn(ALICE, "I love hiking in the Alps", "Nice")]
        m1.reinforce(mem_ids)
        before = m1.stats()
    with make_mem(path) as m2:
        assert m2.stats() == before
        assert m2.get(mem_ids[0]).content == "I love hiking in the Alps"
        res = m2.search("hiking alps", ALICE, k=1, learn=False)
        assert res.ids[0] == mem_ids[0]  # the reply may follow as an association hit
        assert m2.list_scopes() == [ALICE]


def test_search_learns_and_learn_false_is_read_only(mem: HelaMemory) -> None:
    for text in ["tea with milk", "coffee at noon", "green tea in kyoto", "rainy day walk"]:
        mem.add(text, ALICE)
    before = mem.stats()
    res = mem.search("tea", ALICE, k=2, learn=False)
    assert len(res) >= 2
    assert mem.stats() == before
    assert all(mem.get(i).access_count == 0 for i in res.ids)
    res = mem.search("tea", ALICE, k=2, spread=False)
    after = mem.stats()
    assert after.edges == before.edges + 1  # the two tea memories were not adjacent
    assert all(mem.get(i).access_count == 1 for i in res.ids)


def _story(mem: HelaMemory) -> tuple[str, str]:
    t = datetime(2023, 5, 8, tzinfo=UTC)  # one day: recency breaks no ties
    cat = mem.add("alice adopted a cat named miso", ALICE, event_time=t).id
    for filler in ["the weather was grey", "bought new running shoes", "watched a film"]:
        mem.add(filler, ALICE, event_time=t)
    vet = mem.add("vet appointment friday morning", ALICE, event_time=t).id
    for _ in range(30):  # the two were used together in many turns
        mem.reinforce([cat, vet])
    return cat, vet


def test_spreading_surfaces_memory_with_no_shared_word(make_mem: Any, tmp_path: Path) -> None:
    # k=2 with half the slots open to association hits; the spread activation picks them
    # ("final": the learned model is fitted on long conversations, not a 12-memory story)
    with make_mem(tmp_path / "s", association_share=0.5, selection="final") as mem:
        _spreading_surfaces(mem)


def _spreading_surfaces(mem: HelaMemory) -> None:
    cat, vet = _story(mem)
    query = "tell me about the cat miso"
    assert not set(query.split()) & set(["vet", "appointment", "friday", "morning"])
    plain = mem.search(query, ALICE, k=2, spread=False, learn=False)
    assert plain.ids[0] == cat
    assert vet not in plain.ids
    spread = mem.search(query, ALICE, k=2, learn=False)
    assert spread.ids[0] == cat
    assert vet in spread.ids
    hit = next(h for h in spread if h.id == vet)
    assert hit.provenance == "association"
    assert hit.boost > 0
    assert hit.lexical == 0.0
    assert hit.via and hit.via[0][0] == cat
    assert len(spread) == 2  # k means k: the association took the second slot


def test_scope_isolation_and_segment_prefixes(mem: HelaMemory) -> None:
    a = mem.add("my secret code is swordfish", ("user", "1")).id
    b = mem.add("my secret code is marlin", ("user", "10")).id
    c = mem.add("my secret code is tuna", ("user", "1", "sub")).id
    r1 = mem.search("secret code", ("user", "1"), k=10)
    assert set(r1.ids) == {a, c}
    r10 = mem.search("secret code", ("user", "10"), k=10)
    assert r10.ids == [b]
    assert set(mem.search("secret code", ("user",), k=10).ids) == {a, b, c}
    assert mem.search("secret code", ("user", "100"), k=10).ids == []
    assert mem.list_scopes(("user", "1")) == [("user", "1"), ("user", "1", "sub")]
    every = [("user", "1"), ("user", "1", "sub"), ("user", "10")]
    assert sorted(mem.list_scopes(())) == sorted(mem.list_scopes()) == every  # () as in search
    assert mem.stats(()).memories == mem.stats().memories == 3
    # Edges never cross scopes, even when asked to.
    assert mem.reinforce([a, b]) == 0
    assert mem.stats(("user", "10")).edges == 0


def test_spreading_never_leaves_the_scope(mem: HelaMemory) -> None:
    cat, vet = _story(mem)
    other = ("users", "bob")
    mem.add("bob adopted a cat named miso", other)
    res = mem.search("cat miso", other, k=5)
    assert all(mem.get(i).scope == other for i in res.ids)
    assert cat not in res.ids and vet not in res.ids


def test_delete_removes_memory_edges_and_vector(mem: HelaMemory) -> None:
    u, a = mem.add_turn(ALICE, "walk the dog at six", "Reminder set")
    assert mem.stats().vectors == 2
    assert mem.delete(u.id) == 1
    st = mem.stats()
    assert (st.memories, st.edges, st.vectors) == (1, 0, 1)
    assert mem.search("walk dog", ALICE, k=5).ids == [a.id]
    # the next episode links to nothing deleted
    mem.add("feed the dog", ALICE)
    assert mem.stats().edges == 1


def _edge_pairs(mem: HelaMemory, scope: tuple[str, ...], path: Path) -> set[frozenset[str]]:
    import json

    mem.export_scope(scope, path)
    lines = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
    return {frozenset((o["a"], o["b"])) for o in lines if o["type"] == "edge"}


def test_deleting_the_newest_episode_keeps_the_chain(mem: HelaMemory, tmp_path: Path) -> None:
    """The next add links to the newest episode left, not to nothing."""
    first, second = mem.add("first", ALICE).id, mem.add("second", ALICE).id
    mem.delete(second)
    third = mem.add("third", ALICE).id
    assert _edge_pairs(mem, ALICE, tmp_path / "a.jsonl") == {frozenset((first, third))}
    fourth, fifth = mem.add("fourth", ALICE).id, mem.add("fifth", ALICE).id
    mem.delete([fourth, fifth])  # deleted together: past both, to the one before
    sixth = mem.add("sixth", ALICE).id
    assert _edge_pairs(mem, ALICE, tmp_path / "b.jsonl") == {
        frozenset((first, third)),
        frozenset((third, sixth)),
    }


def test_deleting_the_newest_episode_after_its_predecessor_keeps_the_chain(
    mem: HelaMemory, tmp_path: Path
) -> None:
    """Deleted one call at a time, as together: the next add links to the newest left."""
    first, second = mem.add("first", ALICE).id, mem.add("second", ALICE).id
    third = mem.add("third", ALICE).id
    mem.delete(second)  # takes the edge third came from
    mem.delete(third)  # the newest goes in a later call: no edge left to walk back on
    fourth = mem.add("fourth", ALICE).id
    assert _edge_pairs(mem, ALICE, tmp_path / "a.jsonl") == {frozenset((first, fourth))}
    fifth, sixth = mem.add("fifth", ALICE).id, mem.add("sixth", ALICE).id
    seventh = mem.add("seventh", ALICE).id
    mem.delete(fifth)
    mem.delete([sixth, seventh])  # back past sixth by its edge, then to the newest left
    eighth = mem.add("eighth", ALICE).id
    assert _edge_pairs(mem, ALICE, tmp_path / "b.jsonl") == {
        frozenset((first, fourth)),
        frozenset((fourth, eighth)),
    }


def test_decay_is_lazy_and_prunes(tmp_path: Path, store_config: Any) -> None:
    from helamem.core import DynamicsConfig

    path = tmp_path / "s"
    cfg = HelaMemConfig(
        path=path, dynamics=DynamicsConfig(decay_rate=0.5), store=store_config(path)
    )
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        m.add("first", ALICE)
        m.add("second", ALICE)  # edge 0.5 at tick 2
        for i in range(6):  # six more ticks: 0.5 * 0.5**6 < 0.01
            m.add(f"other {i}", ALICE)
        before = m.stats(ALICE).edges
        report = m.decay(ALICE)
        assert report["pruned"] >= 1
        assert m.stats(ALICE).edges == before - report["pruned"]


@pytest.mark.sqlite_only  # writes SQLite's FTS5 table directly
def test_reconcile_reindexes_rows_that_missed_the_vector_index(
    tmp_path: Path, make_mem: Any
) -> None:
    path = tmp_path / "store"
    with make_mem(path) as m:
        m.add("the quick brown fox", ALICE)
    # Simulate a crash between the SQLite commit and the Chroma upsert.
    db = sqlite3.connect(path / "helamem.sqlite3")
    with db:
        db.execute(
            "INSERT INTO memories(id, scope_id, kind, content, event_time, created_at)"
            " VALUES ('01LOST', 2, 'episodic', 'lazy dog sleeps', 0, 0)"
        )
        db.execute(
            "INSERT INTO memories_fts(rowid, content, tags)"
            " VALUES (last_insert_rowid(), 'lazy dog sleeps', 's1k1 s2k1')"
        )
    db.close()
    with make_mem(path) as m:
        st = m.stats()
        assert (st.unindexed, st.vectors, st.memories) == (0, 2, 2)
        assert m.search("sleeping dog", ALICE, k=1, learn=False).ids == ["01LOST"]


def test_reconcile_reindexes_rows_marked_unindexed(
    tmp_path: Path, make_mem: Any, store_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The portable half of the crash above: a committed row the index never took."""
    path = tmp_path / "store"
    with make_mem(path) as m:
        ids = [m.add(f"note {i} on the quick brown fox", ALICE).id for i in range(3)]
    db = store_db(path)
    try:
        db.execute("UPDATE memories SET indexed = 0 WHERE id = ?", (ids[1],))
    finally:
        db.close()
    with caplog.at_level(logging.INFO, logger="helamem"), make_mem(path) as m:
        assert "re-indexed 1 memories" in caplog.text  # a recovery is reported
        st = m.stats()
        assert (st.unindexed, st.vectors, st.memories) == (0, 3, 3)
        assert m.search("note 1 quick fox", ALICE, k=1, learn=False).ids == [ids[1]]


class _FlakyIndex(ChromaIndex):
    fail = True

    def upsert(self, *args: object, **kwargs: object) -> None:
        if self.fail:
            self.fail = False
            raise StorageError("injected")
        super().upsert(*args, **kwargs)  # type: ignore[arg-type]


def test_failed_index_write_loses_nothing(tmp_path: Path, store_config: Any) -> None:
    cfg = HelaMemConfig(path=tmp_path / "s", store=store_config(tmp_path / "s"))
    # a custom index scans small scopes from the graph store it is given (SQLite's file
    # beside its directory by default)
    reader = None
    if cfg.store is not None:
        from helamem.core.storage.postgres import connect_reader

        reader = partial(connect_reader, cfg.store)
    index = _FlakyIndex(cfg.chroma, cfg.path / "chroma", attach_minilm=False, connect=reader)
    with HelaMemory(cfg, embedder=HashingEmbedder(64), vector_index=index) as m:
        mid = m.add("orchids need little water", ALICE).id
        assert m.stats().unindexed == 1
        assert m.search("orchids water", ALICE, k=1).ids == [mid]
        assert m.stats().unindexed == 0


def test_embedder_mismatch_is_refused(tmp_path: Path, make_mem: Any, store_config: Any) -> None:
    with make_mem(tmp_path / "s") as m:
        m.add("x marks the spot", ALICE)
    cfg = HelaMemConfig(path=tmp_path / "s", store=store_config(tmp_path / "s"))
    other = HelaMemory(cfg, embedder=HashingEmbedder(64))
    # the fix named: the CLI for a SQLite directory, reembed=True for PostgreSQL (no CLI)
    fix = "reindex --reembed" if store_config(tmp_path / "s") is None else "reembed=True"
    with pytest.raises(ConfigError, match=fix):
        other.open()
    other.close()


def test_reindex_rebuilds_vector_index(mem: HelaMemory) -> None:
    mem.add_many([NewMemory(f"fact number {i}", ALICE) for i in range(10)])
    assert mem.reindex() == 10
    assert mem.stats().vectors == 10
    assert mem.search("fact number 3", ALICE, k=1).ids


def test_add_many_links_in_order_and_ticks_per_item(mem: HelaMemory) -> None:
    ms = mem.add_many(
        [NewMemory(f"step {i}", ALICE) for i in range(4)]
        + [NewMemory("elsewhere", ("users", "bob"))]
    )
    assert [m.scope for m in ms] == [ALICE] * 4 + [("users", "bob")]
    assert mem.stats(ALICE).edges == 3
    assert mem.stats(("users", "bob")).edges == 0


def test_add_turn_used_ids_co_activate_with_the_new_episode(mem: HelaMemory) -> None:
    old = mem.add("alice is vegetarian", ALICE).id
    far = [mem.add(f"filler {i}", ALICE).id for i in range(3)]
    mem.add_turn(ALICE, "suggest a dinner", "a lentil curry", used_ids=[old])
    before = mem.stats(ALICE).edges
    assert before == 3 + 2 + 2  # temporal chain (5 links) + old-user + old-assistant
    assert far


async def test_async_twins(tmp_path: Path, make_mem: Any) -> None:
    async with make_mem(tmp_path / "s") as m:
        u, a = await m.aadd_turn(ALICE, "I play the cello", "How long have you played?")
        x = await m.aadd("cello lessons on tuesday", ALICE)
        await m.aadd_many([NewMemory("orchestra rehearsal", ALICE)])
        res = await m.asearch("cello", ALICE, k=2)
        assert set(res.ids) <= {u.id, a.id, x.id} | set(res.ids)
        assert (await m.aget(x.id)).content == "cello lessons on tuesday"
        results = await asyncio.gather(*(m.asearch("cello", ALICE, k=1) for _ in range(20)))
        assert all(r.ids for r in results)
        assert await m.areinforce([u.id, x.id]) == 1
        assert await m.alist_scopes() == [ALICE]
        st = await m.astats()
        assert st.memories == 4
        assert (await m.adecay())["edges"] == st.edges
        assert await m.adelete(x.id) == 1
    assert m.closed


def test_any_chroma_embedding_function_can_replace_the_embedder(
    tmp_path: Path, store_config: Any
) -> None:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

    inner = HashingEmbedder(32)

    class MyEF(EmbeddingFunction[Documents]):
        def __init__(self) -> None:
            pass

        def __call__(self, input: Documents) -> Embeddings:
            return list(inner.embed(list(input)))

        @staticmethod
        def name() -> str:
            return "my-ef"

    cfg = HelaMemConfig(path=tmp_path / "s", store=store_config(tmp_path / "s"))
    with HelaMemory(cfg, embedder=MyEF()) as m:
        mid = m.add("sunflowers in the garden", ALICE).id
        assert m.search("garden sunflowers", ALICE, k=1).ids == [mid]
        assert m.stats().embedder == "chroma:my-ef"


def test_add_turns_batches_turns_with_their_own_used_ids(mem: HelaMemory) -> None:
    from helamem.core import NewTurn

    bob = ("users", "bob")
    old = mem.add("alice is vegetarian", ALICE).id
    pairs = mem.add_turns(
        [
            NewTurn(ALICE, "suggest a dinner", "a lentil curry", used_ids=[old]),
            NewTurn(bob, "hello", "hi bob"),
            NewTurn(ALICE, "and dessert?", "a fruit salad"),
        ]
    )
    assert [(u.role, a.role) for u, a in pairs] == [("user", "assistant")] * 3
    assert pairs[1][0].scope == bob
    # alice: old-u1 (temporal), u1-a1, a1-u3, u3-a3, plus old-a1 from used_ids: 5 edges
    assert mem.stats(ALICE).edges == 5
    assert mem.stats(bob).edges == 1
    assert mem.stats(ALICE).episodic == 5


def test_standalone_documents_get_no_temporal_edges(mem: HelaMemory) -> None:
    """``NewMemory(linked=False)``: a document, not a turn; no edge to its neighbours."""
    from helamem.core import NewMemory

    mem.add("the first conversation message", ("s",))
    mem.add_many(
        [NewMemory(f"standalone document number {i}", ("s",), linked=False) for i in range(3)]
    )
    assert mem.stats(("s",)).edges == 0
    mem.add("the next conversation message", ("s",))
    # the conversation's own chain skips the documents: one edge, first -> next
    assert mem.stats(("s",)).edges == 1
    mem.add_many([NewMemory("linked by default", ("t",)), NewMemory("second", ("t",))])
    assert mem.stats(("t",)).edges == 1


def test_reinforce_with_an_unknown_id_names_it_and_changes_nothing(mem: HelaMemory) -> None:
    from helamem.core.errors import MemoryNotFoundError

    a, b = (mem.add(t, ALICE).id for t in ("tea with Bob", "coffee with Ann"))
    before = mem.stats(ALICE)
    with pytest.raises(MemoryNotFoundError, match=r"'ghost' \(1 of 3 ids unknown\).*never added"):
        mem.reinforce([a, "ghost", b])
    after = mem.stats(ALICE)
    assert (after.edges, after.mean_edge_weight) == (before.edges, before.mean_edge_weight)
    assert mem.reinforce([a, b]) == 1
    assert mem.reinforce([a, mem.add("other scope", ("users", "bob")).id]) == 0  # never linked


def test_add_returns_as_stored(mem: HelaMemory) -> None:
    """What ``add``, ``add_many`` and ``add_turn`` return is what a later ``get``
    reads (the returned memories are built from what was inserted, not read back):
    awkward text (NUL, a lone surrogate, newlines, non-BMP), chosen and generated
    ids, roles, times, metadata, keywords of both kinds, and a turn with used ids."""
    t = datetime(2023, 5, 8, 13, 56, 7, 123456, tzinfo=UTC)
    made = [
        mem.add("plain text about tea", ALICE),
        mem.add("nul\x00inside and a lone \ud800 surrogate", ALICE, role="user", event_time=t),
        mem.add("emoji \U0001f375 line\nbreak", ("users", "bob"), metadata={"a": [1, 2.5, None]}),
    ]
    made += mem.add_many(
        [
            NewMemory("chosen id memory", ALICE, id="chosen-1", keywords=["Kw", "two"]),
            NewMemory("far past", ALICE, role="assistant", event_time=1.5),
            NewMemory("unlinked note", ALICE, linked=False, metadata={"k": {"n": "v"}}),
        ]
    )
    made += list(mem.add_turn(ALICE, "what tea?", "green \x00 tea", used_ids=[made[0].id]))
    for m in made:
        assert mem.get(m.id) == m
    assert made[0].access_count == 0 and made[0].last_access is None

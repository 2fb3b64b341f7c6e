"""Bulk writes that choose their rows under the writer lock: another writer's commit
landing just before one's transaction (two store objects on one store) is what the
operation sees, never a selection made before it (forget, delete_scope, reinforce,
re-embedding, import_scope, a turn's used_ids, decay)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HelaMemory, ImportConflictError, MemoryNotFoundError, NewMemory
from helamem.core._check import check_store
from races import racing_tx, rewrite

A = ("users", "a")
DAY, T0 = 86400, 1_600_000_000


def _survivors(m: HelaMemory, ids: list[str]) -> dict[str, str]:
    out = {}
    for i in ids:
        with contextlib.suppress(MemoryNotFoundError):
            out[i] = m.get(i).content
    return out


def _check_clean(path: Path, backend: str) -> None:
    if backend == "sqlite":  # check_store reads SQLite's file
        report = check_store(path)
        assert report.defects == (), report.to_text()


@pytest.mark.parametrize("race", ["deleted", "deleted-and-added-again", "reinforced"])
def test_forget_racing_another_writer(
    tmp_path: Path, make_mem: Any, backend: str, race: str
) -> None:
    """One forgets ``doc-1`` and ``doc-2`` (old, never used, no edge) while two, just
    before one's transaction, deletes ``doc-1`` (forget raised MemoryNotFoundError and
    forgot nothing), deletes it and adds a new ``doc-1`` (forget deleted the new
    memory), or reinforces it (forget deleted a memory no longer weak). Now forget
    judges the episodes as they are when it writes: it forgets ``doc-2`` only."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        one.add_many(
            [
                NewMemory("the old text about tea", A, event_time=T0, id="doc-1", linked=False),
                NewMemory("an old note on kettles", A, event_time=T0 + 1, id="doc-2", linked=False),
                NewMemory("a recent note", A, event_time=T0 + 100 * DAY, id="doc-3", linked=False),
            ]
        )
        one.flush()
        dry = one.forget(A, below=0.01)
        assert [m.id for m in dry.candidates] == ["doc-1", "doc-2"]

        def act() -> None:
            if race == "reinforced":
                two.reinforce(["doc-1", "doc-3"])
                return
            two.delete("doc-1")
            if race == "deleted-and-added-again":
                new = NewMemory("new words on violins", A, event_time=T0 + 100 * DAY, id="doc-1")
                two.add_many([new])

        racing_tx(one, act)
        report = one.forget(A, below=0.01, dry_run=False)
        assert (report.deleted, report.dry_run) == (1, False)
        assert [m.id for m in report.candidates] == ["doc-2"]
        want = {"doc-3": "a recent note"}
        if race == "deleted-and-added-again":
            want["doc-1"] = "new words on violins"
        elif race == "reinforced":
            want["doc-1"] = "the old text about tea"
        for m in (one, two):
            assert _survivors(m, ["doc-1", "doc-2", "doc-3"]) == want
            assert m.stats().memories == len(want)
        if race == "deleted-and-added-again":
            assert one.search("violins", A, k=1, learn=False).ids == ["doc-1"]
        st = one.stats()
        assert (st.vectors, st.unindexed) == (len(want), 0)
    _check_clean(path, backend)


@pytest.mark.parametrize("under", [("users", "a", "c"), ("users", "a", "c", "d")])
def test_delete_scope_racing_another_writers_new_child_scope(
    tmp_path: Path, make_mem: Any, backend: str, under: tuple[str, ...]
) -> None:
    """Two adds a memory in a new scope under ``users/a`` just before one's
    ``delete_scope(users/a)`` transaction: one read the scopes under it before its
    transaction, so the new scope's memory survived the deletion of its parent. Now
    the scopes are read under the writer lock: it goes too."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        one.add_many([NewMemory("tea in the garden", A), NewMemory("a second note", A)])
        other = one.add("bob keeps bees", ("users", "b")).id
        one.flush()
        racing_tx(one, lambda: two.add("violins in the attic", under))
        assert one.delete_scope(A) == 3
        for m in (one, two):
            assert m.list_scopes(A) == []
            assert m.stats(A).memories == 0
            assert m.list_scopes() == [("users", "b")]
            assert m.get(other).content == "bob keeps bees"
            assert m.search("violins attic", under, k=3, learn=False).ids == []
        st = one.stats()
        assert (st.memories, st.vectors, st.unindexed) == (1, 1, 0)
    _check_clean(path, backend)


@pytest.mark.parametrize("readd", [True, False], ids=["deleted-and-added-again", "deleted"])
def test_reinforce_racing_another_writers_delete_of_the_same_id(
    tmp_path: Path, make_mem: Any, backend: str, readd: bool
) -> None:
    """One reinforces ``doc-1`` with ``doc-2`` while two deletes ``doc-1`` (and adds a
    new ``doc-1``) just before one's transaction: one read the ids before it, so it
    returned 1 having written no edge (the old key was gone), and never said that
    ``doc-1`` was missing. Now it reinforces what ``doc-1`` is when it writes: the new
    memory (an edge), or raises MemoryNotFoundError."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        one.add_many(
            [
                NewMemory("the old text about tea", A, id="doc-1", linked=False),
                NewMemory("a note on kettles", A, id="doc-2", linked=False),
            ]
        )
        one.flush()

        def act() -> None:
            two.delete("doc-1")
            if readd:
                two.add_many([NewMemory("new words on violins", A, id="doc-1", linked=False)])

        racing_tx(one, act)
        if readd:
            assert one.reinforce(["doc-1", "doc-2"]) == 1
        else:
            with pytest.raises(MemoryNotFoundError, match="doc-1"):
                one.reinforce(["doc-1", "doc-2"])
        for m in (one, two):
            assert m.stats(A).edges == (1 if readd else 0)
            assert m.stats(A).memories == (2 if readd else 1)
    _check_clean(path, backend)


def test_reembed_racing_another_writers_rewrite_of_a_memory(
    tmp_path: Path, make_mem: Any, backend: str
) -> None:
    """Two rewrites ``doc-1``'s text (and vector), as a consolidation updating a fact
    does, just before one's ``reindex(reembed=True)`` writes the vectors it computed
    from the texts it read before: the old text's vector replaced the new one's, so
    ``doc-1`` was found by words it no longer has. Now a vector is written only where
    the memory's text is still the one it was computed from."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        one.add_many([NewMemory("the old text about tea", A, id="doc-1"), NewMemory("x y", A)])
        one.flush()
        core = one._core
        assert core is not None
        real = core.store.tx

        @contextmanager
        def second_tx() -> Iterator[Any]:  # the first records the embedder; then vectors
            core.store.tx = real  # type: ignore[method-assign]
            racing_tx(one, lambda: two._call(rewrite("doc-1", "new words on violins")))
            with real() as db:
                yield db

        core.store.tx = second_tx  # type: ignore[method-assign]
        assert one.reindex(reembed=True) == 2
        new = core.embedder.embed(["new words on violins"])[0].tobytes()
        for m in (one, two):
            assert m.get("doc-1").content == "new words on violins"
            inner = m._core
            assert inner is not None
            assert inner.store.rows_by_id(["doc-1"])["doc-1"].embedding == new
        st = one.stats()
        assert (st.memories, st.vectors, st.unindexed) == (2, 2, 0)
    _check_clean(path, backend)


@pytest.mark.parametrize("into", [("restore",), ("restore", "c")], ids=["target", "under"])
def test_import_scope_racing_another_writers_add_to_its_target(
    tmp_path: Path, make_mem: Any, backend: str, into: tuple[str, ...]
) -> None:
    """Two adds a memory to the empty target scope (or a scope under it) just before
    one's ``import_scope`` transaction: one checked that the target held no memories
    before it, so the import landed in a non-empty scope (and dropped its cluster
    records). Now the check is made under the writer lock: ImportConflictError, and
    nothing is imported."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        one.add_many([NewMemory("tea in the garden", A, id="doc-1"), NewMemory("x y", A)])
        one.export_scope(A, tmp_path / "a.jsonl")
        assert one.delete_scope(A) == 2
        racing_tx(one, lambda: two.add("violins in the attic", into))
        with pytest.raises(ImportConflictError, match="already holds memories"):
            one.import_scope(tmp_path / "a.jsonl", scope=("restore",))
        for m in (one, two):
            assert m.stats(("restore",)).memories == 1
            assert [h.memory.content for h in m.search("violins tea", ("restore",), k=5)] == [
                "violins in the attic"
            ]
            with pytest.raises(MemoryNotFoundError):
                m.get("doc-1")
        st = one.stats()
        assert (st.memories, st.vectors, st.unindexed) == (1, 1, 0)
    _check_clean(path, backend)


def _edge_ends(m: HelaMemory, id_: str) -> set[str]:
    """The ids of the memories memory ``id_`` has an edge to."""
    core = m._core
    assert core is not None
    n = core.store.rows_by_id([id_])[id_].n
    ends = {e.a if e.b == n else e.b for e in core.store.edges_of([n])}
    return {i for i in (core.store.id_of(x) for x in ends) if i is not None}


@pytest.mark.parametrize("readd", [True, False], ids=["deleted-and-added-again", "deleted"])
def test_add_turn_racing_another_writers_delete_of_a_used_id(
    tmp_path: Path, make_mem: Any, backend: str, readd: bool
) -> None:
    """One records a turn that used ``doc-1`` while two deletes ``doc-1`` (and adds a
    new ``doc-1``) just before one's transaction: one read the used ids before it, so
    the new ``doc-1`` got no edge to the turn (the old key was gone). Now the used ids
    are read under the writer lock: the new memory co-activates with the turn, and a
    used id that is gone is ignored, as an unknown one always was."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        one.add_many([NewMemory("the old text about tea", A, id="doc-1", linked=False)])
        one.flush()

        def act() -> None:
            two.delete("doc-1")
            if readd:
                two.add_many([NewMemory("violins in the attic", A, id="doc-1", linked=False)])

        racing_tx(one, act)
        user, reply = one.add_turn(A, "where are the violins?", "in the attic", used_ids=["doc-1"])
        for m in (one, two):
            assert _edge_ends(m, user.id) == ({reply.id, "doc-1"} if readd else {reply.id})
            assert _edge_ends(m, reply.id) == ({user.id, "doc-1"} if readd else {user.id})
            if readd:
                assert _edge_ends(m, "doc-1") == {user.id, reply.id}
                assert m.get("doc-1").content == "violins in the attic"
            st = m.stats(A)
            assert (st.memories, st.edges) == ((3, 3) if readd else (2, 1))
    _check_clean(path, backend)


@pytest.mark.parametrize("made", ["child-scope", "scope"])
def test_decay_racing_another_writers_new_scope(
    tmp_path: Path, make_mem: Any, backend: str, made: str
) -> None:
    """Two adds a turn (one edge) in a new scope under ``users/a`` (or makes
    ``users/a`` itself) just before one's ``decay(users/a)`` transaction: one read the
    scopes before it, so the new scope's edge was not decayed (nor counted), and a
    scope missing before returned at once. Now the scopes are read under the writer
    lock: the edge is decayed and counted."""
    path = tmp_path / "s"
    under = (*A, "c") if made == "child-scope" else A
    with make_mem(path) as one, make_mem(path) as two:
        one.add_turn(("users", "b"), "bees?", "in the hive")
        if made == "child-scope":
            one.add_turn(A, "tea?", "in the garden")
        racing_tx(one, lambda: two.add_turn(under, "violins?", "in the attic"))
        assert one.decay(A) == {"pruned": 0, "edges": 2 if made == "child-scope" else 1}
        for m in (one, two):
            assert m.stats(under).edges == 1
            assert m.stats().edges == (3 if made == "child-scope" else 2)
    _check_clean(path, backend)

"""A forked child of a process whose embedded Chroma engine started opens the store
without hanging (the engine's threads do not survive ``fork()``; a new client in the
child waited forever): it stores and searches small scopes, leaves large scopes'
vectors to the parent, and a search of a large scope raises ``IndexLockedError``
naming the fix. Nothing the child writes is lost: the parent indexes it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from helamem.core import (
    ChromaConfig,
    ForkedStoreError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    IndexLockedError,
    NewMemory,
)

pytestmark = [
    pytest.mark.sqlite_only,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork"),
]

BIG, SMALL = ("users", "alice"), ("users", "child")


def _open(path: Path) -> HelaMemory:
    cfg = HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=20))
    return HelaMemory(cfg, embedder=HashingEmbedder(64)).open()


def _child(path: Path) -> int:
    """The child's checks; its exit status (0: all held)."""
    m = _open(path)
    m.add_many(NewMemory(f"child note {i} kiwi{i}", SMALL) for i in range(3))
    if [h.memory.content for h in m.search("kiwi1", SMALL, k=1)] != ["child note 1 kiwi1"]:
        return 2
    m.add_many(NewMemory(f"late alice note {i} mango{i}", BIG) for i in range(5))
    try:
        m.search("mango2", BIG, k=3)
    except IndexLockedError as exc:
        if "forked" not in str(exc) or "spawn" not in str(exc):
            return 3
    else:
        return 4
    m.close()
    return 0


def _refused(path: Path) -> int:
    try:
        _open(path)
    except ForkedStoreError as exc:
        return 0 if "before forking" in str(exc) else 3
    return 4


@pytest.mark.parametrize("close_before_fork", [False, True])
def test_a_forked_child_opens_the_store_without_hanging(
    tmp_path: Path, close_before_fork: bool, run_forked: Callable[[Callable[[], int]], int]
) -> None:
    """With the parent's store open at the fork, the child is refused the store
    (``ForkedStoreError``: SQLite's copied lock state); closed before, it uses it."""
    path = tmp_path / "s"
    parent = _open(path)
    parent.add_many(NewMemory(f"alice note {i} apple{i}", BIG) for i in range(40))  # HNSW
    assert parent.search("apple7", BIG, k=1)[0].memory.content == "alice note 7 apple7"
    if close_before_fork:
        parent.close()
        assert run_forked(lambda: _child(path)) == 0
        parent = _open(path)
    else:
        assert run_forked(lambda: _refused(path)) == 0
    with parent:
        assert parent.stats().memories == (48 if close_before_fork else 40)
        assert parent.search("apple7", BIG, k=1)[0].memory.content == "alice note 7 apple7"
        if close_before_fork:  # the child's rows of the large scope, unindexed there
            hit = parent.search("mango2", BIG, k=1)[0]
            assert hit.memory.content == "late alice note 2 mango2"
            assert parent.search("kiwi0", SMALL, k=1)[0].memory.content == "child note 0 kiwi0"
    with _open(path) as again:
        assert again.stats().unindexed == 0


def _child_elsewhere(path: Path) -> int:
    """A store of its own, on another path: no lock or client of the parent's on it,
    yet a new embedded client would still hang (the engine is per process). Its scope
    stays exact here (not moved to HNSW): searched, and found."""
    with _open(path) as m:
        m.add_many(NewMemory(f"own note {i} plum{i}", BIG) for i in range(30))
        hits = m.search("plum3", BIG, k=1)
        return 0 if [h.memory.content for h in hits] == ["own note 3 plum3"] else 4


def test_a_forked_child_opens_another_path_without_hanging(
    tmp_path: Path, run_forked: Callable[[Callable[[], int]], int]
) -> None:
    with _open(tmp_path / "parent") as parent:
        parent.add_many(NewMemory(f"alice note {i} apple{i}", BIG) for i in range(40))  # HNSW
        assert parent.search("apple7", BIG, k=1)[0].memory.content == "alice note 7 apple7"
        assert run_forked(lambda: _child_elsewhere(tmp_path / "child")) == 0
    with _open(tmp_path / "child") as again:  # the child's memories, indexed here
        assert again.stats().memories == 30
        assert again.search("plum3", BIG, k=1)[0].memory.content == "own note 3 plum3"
        assert again.stats().unindexed == 0

"""A relative ``HelaMemConfig.path`` names one directory for the memory's whole life.

Each file of a store (SQLite, the Chroma index, its lock, the checkpoint
thread's connection) is opened on first use, some long after construction; a
path left relative was taken against the working directory of that moment,
so an ``os.chdir`` in between split the store: the Chroma index landed in the
new directory and the next open rebuilt it from SQLite.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
from helamem.core.config import ChromaConfig

pytestmark = pytest.mark.sqlite_only

SCOPE = ("rel",)


def _config(path: Path) -> HelaMemConfig:
    # scopes move into Chroma at 50 memories: the index's directory opens mid-way
    return HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=50))


@pytest.mark.parametrize("before", [0, 10, 120])
def test_a_chdir_after_construction_moves_no_part_of_the_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    before: int,
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    m = HelaMemory(_config(Path("store")), embedder=HashingEmbedder(64))
    assert m.config.path == home / "store"
    if before:
        m.add_many(NewMemory(f"first {i} walrus", SCOPE) for i in range(before))
    monkeypatch.chdir(elsewhere)
    m.add_many(NewMemory(f"then {i} walrus", SCOPE) for i in range(200))
    assert m.search("then 7", SCOPE, k=1).hits[0].memory.content == "then 7 walrus"
    m.close()
    assert list(elsewhere.iterdir()) == []
    caplog.set_level(logging.WARNING)
    with HelaMemory(_config(home / "store"), embedder=HashingEmbedder(64)) as again:
        assert again.stats(SCOPE).memories == before + 200
        assert again.search("then 7", SCOPE, k=1).hits[0].memory.content == "then 7 walrus"
    assert "lacks vectors" not in caplog.text  # the index was where the store is

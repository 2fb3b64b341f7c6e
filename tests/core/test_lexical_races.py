"""The tantivy BM25 index against writes of other store objects on the same file,
a repair run by another store, and its directory deleted under its holder: its
candidates are always exactly FTS5's (no deleted memory, no stale text, none missing)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HelaMemory, NewMemory
from helamem.core._core import Core
from helamem.core._repair import repair_derived
from lexical_probe import lexical, serving
from races import rewrite

SCOPE = ("u",)
WORDS = [f"w{i}" for i in range(30)]
SMALL = {"lexical_index_min": 20, "lexical_index_tail": 3}

pytestmark = pytest.mark.sqlite_only  # tantivy, derived from SQLite's FTS5


def _texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.sample(WORDS, 3)) + f" unique{rng.randrange(10**9)}" for _ in range(n)]


def _lexical(mem: HelaMemory, query: str, k: int = 500) -> set[str]:
    return set(lexical(mem, SCOPE, query, k))


def _same(holder: HelaMemory, plain: HelaMemory, queries: list[str]) -> None:
    for q in queries:
        assert _lexical(holder, q) == _lexical(plain, q), q


def test_writes_of_another_store_object_reach_the_holders_index(
    tmp_path: Path, make_mem: Any
) -> None:
    path = tmp_path / "t"
    rng = random.Random(11)
    queries = [" ".join(rng.sample(WORDS, 2)) for _ in range(6)] + ["quokka", "wombat"]
    with (
        make_mem(path, **SMALL) as holder,
        make_mem(path, **SMALL) as other,
        make_mem(path, lexical_index="fts5") as plain,
    ):
        mems = holder.add_many([NewMemory(t, SCOPE) for t in _texts(rng, 40)])
        _same(holder, plain, queries)
        assert serving(holder)
        for step in range(12):
            # the other object searches FTS5 (the holder has the index) and writes
            assert _lexical(other, queries[step % len(queries)]) is not None
            assert not serving(other)
            if step % 3 == 0:
                other.add_many([NewMemory(t, SCOPE) for t in _texts(rng, 4)])
            elif step % 3 == 1:
                other.delete(mems.pop(rng.randrange(len(mems))).id)
            else:
                victim = mems.pop(rng.randrange(len(mems)))
                text = f"quokka wombat {step} " + " ".join(rng.sample(WORDS, 2))
                other._call(rewrite(victim.id, text))
            _same(holder, plain, queries)
        assert serving(holder)


def test_a_repair_by_another_store_reaches_the_holders_index(tmp_path: Path, make_mem: Any) -> None:
    path = tmp_path / "t"
    rng = random.Random(12)
    with make_mem(path, lexical_index="fts5") as first:  # no tantivy index yet
        mems = first.add_many([NewMemory(t, SCOPE) for t in _texts(rng, 40)])
        lost = mems[5]

        def damage(c: Core) -> None:  # a full-text row missing (`helamem check` reports it)
            n = c.store.keys_of([lost.id])[lost.id]
            with c.store.tx() as db:
                db.execute("DELETE FROM memories_fts WHERE rowid = ?", (n,))

        first._call(damage)
    with (
        make_mem(path, **SMALL) as holder,
        make_mem(path, **SMALL) as other,
        make_mem(path, lexical_index="fts5") as plain,
    ):
        word = lost.content.split()[-1]
        assert _lexical(holder, word) == set()  # built from FTS5, which lacks it
        assert serving(holder)
        report = other._call(lambda c: repair_derived(c, vectors=False))
        assert report.fts_rows == 40
        assert _lexical(plain, word) == {lost.content}
        _same(holder, plain, [word, "w1 w2", "w3"])


def test_the_index_directory_deleted_under_its_holder(tmp_path: Path, make_mem: Any) -> None:
    path = tmp_path / "t"
    rng = random.Random(13)
    with make_mem(path, **SMALL) as holder, make_mem(path, lexical_index="fts5") as plain:
        mems = holder.add_many([NewMemory(t, SCOPE) for t in _texts(rng, 40)])
        assert _lexical(holder, "w1")
        assert serving(holder)
        shutil.rmtree(path / "lexical")
        holder.delete(mems[0].id)
        holder.add_many([NewMemory(t, SCOPE) for t in _texts(rng, 10)])
        _same(holder, plain, ["w1 w2", "w4", mems[0].content.split()[-1]])
        holder._call(lambda c: setattr(c.lexical_index, "_retry_at", 0.0))
        _same(holder, plain, ["w1 w2", "w4", mems[0].content.split()[-1]])

"""A process that opened a store before another switched its embedder (``helamem reindex
--reembed``) stored vectors of the old embedder, which dense search never found (check:
``embedding_missing``); it is refused every write of vectors instead, nothing stored."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helamem.core import (
    ConfigError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
    _reembed,
)
from helamem.core._check import check_store
from helamem.core._reembed import SWITCH_CHECK_S
from helamem.core.maxsim import pack_tokens

A = ("users", "alice")


def _switch(path: Path) -> None:
    argv = ["reindex", "--reembed", "--embedder", "hashing", "--dimension", "32", str(path)]
    code = "import sys; from helamem.core.cli import main; sys.exit(main(sys.argv[1:]))"
    subprocess.run([sys.executable, "-c", code, *argv], check=True, timeout=120)


def test_a_writer_opened_before_a_switch_is_refused(tmp_path: Path) -> None:
    old = HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(64))
    with old:
        for i in range(3):
            old.add(f"note {i} about tea", A)
        old.export_scope(A, tmp_path / "a.jsonl")
        _switch(tmp_path / "s")  # another process, while this one holds the store open
        assert old.stats().embedder == "hashing-32"  # the store's, not this memory's
        with pytest.raises(ConfigError, match="switched this store's embedder to 'hashing-32'"):
            old.add("written with the old embedder", A)
        with pytest.raises(ConfigError, match="open the store again"):
            old.add_turn(A, "a question", "an answer")
        with pytest.raises(ConfigError):
            old.import_scope(tmp_path / "a.jsonl", scope=("copy",))
    report = check_store(tmp_path / "s")
    assert report.ok, report.to_text()
    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(32)) as new:
        assert new.stats().memories == 3
        new.add("the new embedder writes", A)


def test_a_writer_is_refused_while_a_switch_is_recorded(tmp_path: Path) -> None:
    with HelaMemory(HelaMemConfig(path=tmp_path), embedder=HashingEmbedder(64)) as old:
        old.add("note about tea", A)
        db = sqlite3.connect(tmp_path / "helamem.sqlite3")
        with db:  # as a switch of another process records it before re-embedding
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('embedder.switch', ?)",
                ('{"name": "hashing-32", "dimension": 32, "done_n": 0}',),
            )
        db.close()
        with pytest.raises(ConfigError, match="is switching this store's embedder"):
            old.add("written with the old embedder", A)
        assert old.stats().memories == 1


def test_a_search_of_a_memory_opened_before_a_switch_is_refused(tmp_path: Path) -> None:
    """Its query vectors (of the old embedder) match no stored vector: the dense leg
    found nothing and the hits came by BM25 alone (dense 0.0), silently."""
    old = HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(64))
    with old:
        for i in range(5):
            old.add(f"item {i} zebra", A)
        assert old.search("item 3 zebra", A, k=3)[0].dense > 0.9
        _switch(tmp_path / "s")
        time.sleep(SWITCH_CHECK_S)  # searches read the record at most that often
        with pytest.raises(ConfigError, match="nothing was searched"):
            old.search("item 3 zebra", A, k=3)
    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=HashingEmbedder(32)) as new:
        assert new.search("item 3 zebra", A, k=3)[0].dense > 0.9  # the new one searches


def test_the_switching_memory_itself_searches(tmp_path: Path) -> None:
    with HelaMemory(HelaMemConfig(path=tmp_path), embedder=HashingEmbedder(64)) as mem:
        mem.add("note about tea", A)
    with HelaMemory(
        HelaMemConfig(path=tmp_path), embedder=HashingEmbedder(32), reembed=True
    ) as new:
        time.sleep(SWITCH_CHECK_S)
        assert new.search("tea", A, k=1)[0].content == "note about tea"


def _dense_top(mem: HelaMemory, text: str) -> str | None:
    """The id the vector index ranks first for ``text`` under ``A`` (the dense leg alone)."""

    def run(c: Any) -> str | None:
        node = c.store.find_scope(A)
        got = c.index.query(c._embed([text])[0], 1, c.store.descendants(node), "episodic")
        return got[0][0] if got else None

    return mem._call(run)  # type: ignore[no-any-return]


def test_a_process_opened_before_a_switch_rewrites_no_vector(tmp_path: Path) -> None:
    """Its ``reindex()`` recomputed every vector with the old embedder (hashing-64 under
    the record hashing-32: dense search found none, check: embedding_missing), its
    ``reindex(reembed=True)`` switched the store back without the crash-safe switch,
    and its re-index of an unindexed row (``flush``, a search after a failed write)
    rewrote that row's vector: each is refused, nothing rewritten."""
    path = tmp_path / "s"
    texts = [f"note {i} about a kettle{i}" for i in range(4)]
    old = HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64))
    with old:
        ids = [old.add(t, A).id for t in texts]
        _switch(path)  # another process, while this one holds the store open
        with pytest.raises(ConfigError, match="switched this store's embedder to 'hashing-32'"):
            old.reindex()
        with pytest.raises(ConfigError, match="open the store again"):
            old.reindex(reembed=True)
        db = sqlite3.connect(path / "helamem.sqlite3")
        with db:  # as an index write that failed leaves a row
            db.execute("UPDATE memories SET indexed = 0 WHERE id = ?", (ids[0],))
        before = db.execute("SELECT id, embedding FROM memories ORDER BY n").fetchall()
        old.flush()  # re-indexes unindexed rows
        assert db.execute("SELECT id, embedding FROM memories ORDER BY n").fetchall() == before
        db.close()
    report = check_store(path)
    assert report.ok, report.to_text()
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(32)) as new:
        assert new.stats().embedder == "hashing-32"
        assert [_dense_top(new, t) for t in texts] == ids


class _Flipped(HashingEmbedder):
    """Another model of the same dimension (hashing's vectors negated, tokens too)."""

    @property
    def name(self) -> str:
        return f"flipped-{self.dimension}"

    def embed(self, texts: Any) -> Any:
        return -super().embed(texts)

    def embed_with_tokens(self, texts: Any) -> Any:
        vecs, toks = super().embed_with_tokens(texts)
        return -vecs, [-t for t in toks]


def test_a_search_opened_before_a_switch_stores_no_token_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch drops every token vector (refilled lazily by searches); a search of a
    process still open with the old model refilled them with the old model's, which
    the new model's searches then scored (same dimension: nothing tells them apart).
    A search reads the embedder record at most every ``SWITCH_CHECK_S`` (then it is
    refused): one within that period scores them and stores none."""
    path = tmp_path / "s"
    texts = [f"note {i} about a kettle{i} and tea" for i in range(6)]
    old = HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64, token_vectors=True))
    with old:
        old.add_many(NewMemory(t, A) for t in texts)
        monkeypatch.setattr(_reembed, "SWITCH_CHECK_S", 1e9)
        assert old.search("kettle", A, k=1, learn=False)  # the record read: not again
        with HelaMemory(
            HelaMemConfig(path=path), embedder=_Flipped(64, token_vectors=True), reembed=True
        ) as new:
            assert new.reembedded == 6
        assert old.search("kettle tea", A, k=3, learn=False)  # scored, not stored
        db = sqlite3.connect(path / "helamem.sqlite3")
        assert db.execute("SELECT COUNT(*) FROM token_vectors").fetchone()[0] == 0
        db.close()
        monkeypatch.setattr(_reembed, "SWITCH_CHECK_S", 0.0)
        with pytest.raises(ConfigError, match="nothing was searched"):
            old.search("kettle tea", A, k=3, learn=False)
    with HelaMemory(HelaMemConfig(path=path), embedder=_Flipped(64, token_vectors=True)) as new:
        assert new.search("kettle tea", A, k=3, learn=False)  # stores the new model's

        def stored(c: Any) -> dict[str, bytes]:
            got = c.store.token_vectors([r.n for rows in c.store.all_rows() for r in rows])
            rows = c.store.rows_by_n(list(got))
            return {rows[n].content: b for n, b in got.items()}

        got = new._call(stored)
        toks = _Flipped(64, token_vectors=True).embed_with_tokens(list(got))[1]
        assert got and list(got.values()) == [pack_tokens(t) for t in toks]


def test_an_export_opened_before_a_switch_never_labels_the_new_vectors_as_its_own(
    tmp_path: Path,
) -> None:
    """Its header named the process's embedder (hashing-64) over the vectors the store
    now holds (another model of dimension 64): an import into a hashing-64 store
    reused them as hashing-64's, so dense search ranked each memory by a foreign
    vector (nothing tells them apart). Refused instead, nothing written."""
    path, out = tmp_path / "s", tmp_path / "a.jsonl"
    texts = [f"note {i} about a kettle{i} and tea" for i in range(4)]
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as old:
        ids = [m.id for m in old.add_many(NewMemory(t, A) for t in texts)]
        HelaMemory(HelaMemConfig(path=path), embedder=_Flipped(64), reembed=True).open().close()
        with pytest.raises(ConfigError, match="switched this store's embedder to 'flipped-64'"):
            old.export_scope(A, out)
    assert not out.exists() and not list(tmp_path.glob(".a.jsonl*"))
    with HelaMemory(HelaMemConfig(path=path), embedder=_Flipped(64)) as new:
        new.export_scope(A, out)  # the store's embedder exports
    with HelaMemory(HelaMemConfig(path=tmp_path / "t"), embedder=HashingEmbedder(64)) as other:
        assert other.import_scope(out).reembedded == 4  # another model's file: recomputed
        assert [_dense_top(other, t) for t in texts] == ids


def test_a_record_whose_dimension_is_text_is_this_embedder_everywhere(tmp_path: Path) -> None:
    """The open compared ``int(dimension)`` and took the store as this embedder's, the
    write check compared the text and refused every add as switched to itself."""
    with HelaMemory(HelaMemConfig(path=tmp_path), embedder=HashingEmbedder(64)) as mem:
        mem.add("note about tea", A)
    db = sqlite3.connect(tmp_path / "helamem.sqlite3")
    with db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'embedder'",
            ('{"name": "hashing-64", "dimension": "64"}',),
        )
    db.close()
    with HelaMemory(HelaMemConfig(path=tmp_path), embedder=HashingEmbedder(64)) as mem:
        mem.add("another note", A)
        assert mem.search("tea", A, k=1)[0].content == "note about tea"

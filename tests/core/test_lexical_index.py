"""The tantivy BM25 index of large stores: the same candidates as FTS5, kept in
step with SQLite through writes, deletes, rewrites, other processes, kills and
a lost or damaged directory."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HelaMemory, NewMemory
from helamem.core._core import Core
from helamem.core.storage.lexical import LexicalIndex
from lexical_probe import lexical, serving

SCOPE = ("u",)
WORDS = [f"w{i}" for i in range(60)]

# a tiny threshold and tail so that a few dozen memories exercise every path
SMALL = {"lexical_index_min": 20, "lexical_index_tail": 3}

pytestmark = pytest.mark.sqlite_only  # tantivy, derived from SQLite's FTS5


def _texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.sample(WORDS, 4)) + f" unique{rng.randrange(10**9)}" for _ in range(n)]


def _lexical(mem: HelaMemory, query: str, k: int = 500) -> dict[str, float]:
    return lexical(mem, SCOPE, query, k)


def _index(mem: HelaMemory) -> LexicalIndex:
    lx = mem._call(lambda c: c.lexical_index)
    assert lx is not None
    return lx


def test_same_candidates_as_fts5_through_random_writes(tmp_path: Path, make_mem: Any) -> None:
    rng = random.Random(7)
    with (
        make_mem(tmp_path / "t", **SMALL) as tv,
        make_mem(tmp_path / "f", lexical_index="fts5") as ft,
    ):
        ids: list[tuple[str, str]] = []
        for step in range(40):
            op = rng.random()
            if op < 0.6 or len(ids) < 5:
                batch = _texts(rng, rng.randrange(1, 8))
                a = tv.add_many([NewMemory(t, SCOPE) for t in batch])
                b = ft.add_many([NewMemory(t, SCOPE) for t in batch])
                ids.extend((x.id, y.id) for x, y in zip(a, b, strict=True))
            else:
                gone = rng.sample(ids, rng.randrange(1, 4))
                tv.delete([x for x, _ in gone])
                ft.delete([y for _, y in gone])
                ids = [p for p in ids if p not in gone]
            query = " ".join(rng.sample(WORDS, 2))
            got, want = _lexical(tv, query), _lexical(ft, query)
            # every matching memory is a candidate (limit above the matches), both ways
            assert set(got) == set(want), step
        assert serving(tv), "the index never took over"
        # scores are BM25 in both (idf aside, which only scales a one-word query's
        # scores): the same order, once tantivy holds every row
        _index(tv).tail = 0
        for word in WORDS[:10]:
            got, want = _lexical(tv, word), _lexical(ft, word)
            assert sorted(got, key=lambda c: (-round(got[c], 4), c)) == sorted(
                want, key=lambda c: (-round(want[c], 4), c)
            )


def test_a_new_memory_is_found_at_once(tmp_path: Path, make_mem: Any) -> None:
    with make_mem(tmp_path / "t", **SMALL, keyword_weight=1.0, late_weight=0.0) as mem:
        mem.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(1), 40)])
        assert _lexical(mem, "w1")  # builds the index
        assert serving(mem)
        mem.add("the zeppelin landed", SCOPE)
        # above the mark: FTS5 answers for it until the tail is indexed
        assert "the zeppelin landed" in _lexical(mem, "zeppelin")
        top = mem.search("zeppelin", SCOPE, k=1, learn=False, spread=False)
        assert top[0].content == "the zeppelin landed"


def test_a_deleted_memory_is_gone_and_a_rewritten_one_matches_its_new_text(
    tmp_path: Path, make_mem: Any
) -> None:
    with make_mem(tmp_path / "t", **SMALL) as mem:
        mems = mem.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(2), 40)])
        mem.add_many([NewMemory(f"filler {i} w1", SCOPE) for i in range(10)])
        old = mem.add("the quokka smiled", SCOPE)
        mem.add_many([NewMemory(f"filler more {i}", SCOPE) for i in range(10)])
        assert "the quokka smiled" in _lexical(mem, "quokka")
        assert old.content == "the quokka smiled"
        mem.delete(mems[0].id)
        first = mems[0].content.split()[-1]
        assert _lexical(mem, first) == {}

        # a rewrite in place (consolidation's update_fact): logged by the trigger
        def rewrite(c: Core) -> None:
            n = c.store.db.execute("SELECT n FROM memories WHERE id = ?", (old.id,)).fetchone()[0]
            row = c.store.rows_by_n([n])[n]
            tags = c.store.db.execute(
                "SELECT tags FROM memories_fts WHERE rowid = ?", (n,)
            ).fetchone()[0]
            with c.store.tx() as db:
                c.store.update_fact(
                    db,
                    row,
                    content="the wombat slept",
                    search_text="the wombat slept",
                    tags=tags,
                    keywords="[]",
                    provenance="[]",
                    event_time=row.event_time,
                    embedding=row.embedding or b"",
                )

        mem._call(rewrite)
        assert _lexical(mem, "quokka") == {}
        assert set(_lexical(mem, "wombat")) == {"the wombat slept"}
        assert (
            mem._call(
                lambda c: c.store.db.execute("SELECT COUNT(*) FROM lexical_log").fetchone()[0]
            )
            == 0
        )


def test_small_stores_never_build_it(mem: HelaMemory, tmp_path: Path) -> None:
    mem.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(3), 30)])
    assert mem.search("w1 w2", SCOPE, k=3)
    assert not (tmp_path / "store" / "lexical").exists()
    # nor log anything: the trigger waits for the index
    assert (
        mem._call(lambda c: c.store.db.execute("SELECT COUNT(*) FROM lexical_log").fetchone()[0])
        == 0
    )


@pytest.mark.parametrize("damage", ["deleted", "garbage", "other-version"])
def test_a_lost_or_damaged_index_is_rebuilt(tmp_path: Path, make_mem: Any, damage: str) -> None:
    path = tmp_path / "t"
    texts = _texts(random.Random(4), 40)
    with make_mem(path, **SMALL) as mem:
        mem.add_many([NewMemory(t, SCOPE) for t in texts])
        before = _lexical(mem, "w3 w4")
        assert serving(mem) and before
    lx_dir = path / "lexical"
    if damage == "deleted":
        import shutil

        shutil.rmtree(lx_dir)
    elif damage == "garbage":
        (lx_dir / "meta.json").write_text("{ not json")
    else:
        meta = json.loads((lx_dir / "meta.json").read_text())
        meta["schema"] = meta["schema"][:1]  # an index another version wrote
        (lx_dir / "meta.json").write_text(json.dumps(meta))
    with make_mem(path, **SMALL) as mem:
        assert _lexical(mem, "w3 w4") == pytest.approx(before)
        assert serving(mem)


def _damage_positions(lx_dir: Path) -> None:
    """Overwrite the body of every segment's positions file in place (its footer kept,
    so tantivy opens it and panics reading it; an open index sees it through mmap)."""
    files = list(lx_dir.glob("*.pos"))
    assert files
    for f in files:
        data = f.read_bytes()
        footer = 8 + struct.unpack("<I", data[-8:-4])[0]
        with f.open("r+b") as out:
            out.write(b"\xff" * (len(data) - footer))


@pytest.mark.parametrize("when", ["while-open", "before-open"])
def test_a_panicking_index_falls_back_to_fts5_and_is_rebuilt(
    tmp_path: Path, make_mem: Any, when: str
) -> None:
    """Damaged segment files make tantivy panic (pyo3's PanicException, a BaseException):
    FTS5 answers instead, and the index is rebuilt from the store."""
    path = tmp_path / "t"
    texts = _texts(random.Random(4), 40)
    with make_mem(path, **SMALL) as mem:
        mem.add_many([NewMemory(t, SCOPE) for t in texts])
        before = _lexical(mem, "w3 w4")
        assert serving(mem) and before
        if when == "while-open":
            _damage_positions(path / "lexical")
            assert _lexical(mem, "w3 w4").keys() == before.keys()  # FTS5's answer
            assert mem.search("w3 w4", SCOPE, k=3, learn=False)
            lx = _index(mem)
            assert lx._damaged and not serving(mem)
            lx._retry_at = 0.0  # instead of waiting RETRY_S
            assert _lexical(mem, "w3 w4") == pytest.approx(before)
            assert serving(mem) and not lx._damaged
    if when == "before-open":
        _damage_positions(path / "lexical")
    with make_mem(path, **SMALL) as mem:
        assert _lexical(mem, "w3 w4") == pytest.approx(before)
        assert serving(mem)
        assert mem.search("w3 w4", SCOPE, k=3, learn=False)


def _child(path: Path, body: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from conftest import make_memory
        from helamem.core import NewMemory
        mem = make_memory(__import__("pathlib").Path({str(path)!r}),
                          lexical_index_min=20, lexical_index_tail=3)
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_killed_holder_leaves_a_usable_index(tmp_path: Path, make_mem: Any) -> None:
    path = tmp_path / "t"
    out = _child(
        path,
        """
        mem.add_many([NewMemory(f"w1 killed {i}", ("u",)) for i in range(40)])
        mem.search("w1", ("u",), k=3)               # builds and commits the index
        mem.add_many([NewMemory(f"w1 after {i}", ("u",)) for i in range(5)])
        gone = mem.search("killed", ("u",), k=1)[0].memory.id
        mem.delete(gone)                            # logged, applied at the next search
        print(gone, flush=True)
        os._exit(0)                                 # no close: as a SIGKILL would
        """,
    )
    assert out.returncode == 0, out.stderr
    gone = out.stdout.strip()
    with make_mem(path, **SMALL) as mem:
        got = _lexical(mem, "w1 killed after")
        assert serving(mem)
        assert gone and gone not in got  # the delete logged before the kill was applied
    with make_mem(path, lexical_index="fts5") as plain:  # FTS5 on the same file
        want = _lexical(plain, "w1 killed after")
    assert set(got) == set(want) and len(got) == 44


def test_another_process_holding_the_index_costs_nothing_but_speed(
    tmp_path: Path, make_mem: Any
) -> None:
    path = tmp_path / "t"
    with make_mem(path, **SMALL) as holder:
        holder.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(5), 40)])
        assert _lexical(holder, "w5")
        assert serving(holder)
        # a second process writes, deletes and searches meanwhile (FTS5 for it)
        out = _child(
            path,
            """
            mem.add_many([NewMemory(f"w5 from the child {i}", ("u",)) for i in range(5)])
            hits = [h for h in mem.search("child", ("u",), k=10, learn=False)
                    if "from the child" in h.content]
            assert len(hits) == 5, len(hits)
            mem.delete([h.memory.id for h in hits][:2])
            lx = mem._call(lambda c: c.lexical_index)
            print(lx.held_elsewhere, flush=True)
            mem.close()
            """,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "True"
        # the holder sees the child's writes and deletes
        child = {c for c in _lexical(holder, "child") if "from the child" in c}
        assert len(child) == 3
    with make_mem(path, lexical_index="fts5") as plain:
        want = _lexical(plain, "w5 child")
    with make_mem(path, **SMALL) as again:
        assert set(_lexical(again, "w5 child")) == set(want)


def test_reindex_rebuilds_it(tmp_path: Path, make_mem: Any) -> None:
    path = tmp_path / "t"
    with make_mem(path, **SMALL) as mem:
        mem.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(6), 40)])
        before = _lexical(mem, "w7 w8")
        mem.reindex()
        assert _lexical(mem, "w7 w8") == pytest.approx(before)
        assert serving(mem)


def test_a_second_store_waits_its_turn_then_takes_over(tmp_path: Path, make_mem: Any) -> None:
    path = tmp_path / "t"
    first = make_mem(path, **SMALL)
    first.open()
    first.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(8), 40)])
    want = _lexical(first, "w9 w10")
    assert serving(first)
    with make_mem(path, **SMALL) as second:  # same directory, same process
        assert set(_lexical(second, "w9 w10")) == set(want)
        assert _index(second).held_elsewhere and not serving(second)
        first.close()
        _index(second)._retry_at = 0.0  # instead of waiting RETRY_S
        assert set(_lexical(second, "w9 w10")) == set(want)
        assert serving(second) and not _index(second).held_elsewhere


class _BrokenSearcher:
    """Tantivy failing as it does (ValueError), e.g. a segment file gone from disk."""

    def search(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("Failed to open file for read: segment gone")


def test_a_failing_index_falls_back_to_fts5(tmp_path: Path, make_mem: Any) -> None:
    with make_mem(tmp_path / "t", **SMALL) as mem:
        mem.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(9), 40)])
        want = _lexical(mem, "w11 w12")
        assert serving(mem)
        _index(mem)._searcher = _BrokenSearcher()
        assert _lexical(mem, "w11 w12").keys() == want.keys()
        assert mem.search("w11 w12", SCOPE, k=3, learn=False)


def test_an_older_copy_of_the_store_file_gets_a_rebuilt_index(
    tmp_path: Path, make_mem: Any
) -> None:
    """A backup restored under a newer index reuses keys the index holds: rebuilt."""
    import shutil

    path = tmp_path / "t"
    with make_mem(path, **SMALL) as mem:
        mem.add_many([NewMemory(f"alpha w1 early {i}", SCOPE) for i in range(40)])
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(path / "helamem.sqlite3", backup)
    with make_mem(path, **SMALL) as mem:
        mem.add_many([NewMemory(f"gamma w1 later {i}", SCOPE) for i in range(30)])
        assert len(_lexical(mem, "gamma")) == 30 and serving(mem)
    for suffix in ("", "-wal", "-shm"):
        (path / f"helamem.sqlite3{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, path / "helamem.sqlite3")
    with make_mem(path, **SMALL) as mem:
        mem.add_many([NewMemory(f"beta w1 restored {i}", SCOPE) for i in range(12)])
        assert len(_lexical(mem, "beta")) == 12  # keys the old index held
        assert _lexical(mem, "gamma") == {}  # rows this file never had
        assert serving(mem)


def test_an_index_beside_another_stores_file_is_rebuilt(tmp_path: Path, make_mem: Any) -> None:
    import shutil

    with make_mem(tmp_path / "a", **SMALL) as a:
        a.add_many([NewMemory(f"apple w2 {i}", SCOPE) for i in range(40)])
        assert _lexical(a, "apple") and serving(a)
    with make_mem(tmp_path / "b", **SMALL) as b:
        b.add_many([NewMemory(f"banana w2 {i}", SCOPE) for i in range(50)])
    shutil.rmtree(tmp_path / "b" / "lexical", ignore_errors=True)
    shutil.copytree(tmp_path / "a" / "lexical", tmp_path / "b" / "lexical")
    with make_mem(tmp_path / "b", **SMALL) as b:
        assert _lexical(b, "apple") == {}
        assert len(_lexical(b, "banana")) == 50
        assert serving(b)


class _FailingCommits:
    """A tantivy writer whose next commit fails (as on a full disk), then works."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.fail = inner, True

    def commit(self) -> Any:
        if self.fail:
            self.fail = False
            raise ValueError("An IO error occurred: No space left on device")
        return self.inner.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_failed_commit_loses_no_row(tmp_path: Path, make_mem: Any) -> None:
    with make_mem(tmp_path / "t", **SMALL) as mem:
        mem.add_many([NewMemory(f"first w3 {i}", SCOPE) for i in range(40)])
        assert len(_lexical(mem, "first")) == 40 and serving(mem)
        lx = _index(mem)
        lx._writer = _FailingCommits(lx._writer)
        before = lx._mark
        # the add's catch-up fails: logged, the add stands, the mark stays
        mem.add_many([NewMemory(f"second w3 {i}", SCOPE) for i in range(10)])
        assert lx._mark == before
        assert len(_lexical(mem, "second")) == 10  # retried at the search, or FTS5's tail
        assert len(_lexical(mem, "first second")) == 50
        assert lx._mark > before


def test_an_unwritable_index_directory_costs_one_warning_not_a_flood(
    tmp_path: Path, make_mem: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t"
    path.mkdir()
    (path / "lexical").write_text("a file where the index's directory should be")
    with make_mem(path, **SMALL) as mem, make_mem(tmp_path / "f", lexical_index="fts5") as ft:
        texts = _texts(random.Random(10), 40)
        mem.add_many([NewMemory(t, SCOPE) for t in texts])
        ft.add_many([NewMemory(t, SCOPE) for t in texts])
        with caplog.at_level("WARNING", logger="helamem"):
            for q in ("w13 w14", "w15", "w16 w17", "w18"):
                assert set(_lexical(mem, q)) == set(_lexical(ft, q))
                mem.add("w13 one more", SCOPE)
                ft.add("w13 one more", SCOPE)
        assert not serving(mem)
        failures = [r for r in caplog.records if "lexical index" in r.getMessage()]
        assert 1 <= len(failures) <= 2, [r.getMessage() for r in failures]
        assert "lexical_index='fts5'" in failures[-1].getMessage()


def test_reindex_goes_on_when_the_lexical_index_cannot_be_emptied(
    tmp_path: Path, make_mem: Any
) -> None:
    with make_mem(tmp_path / "t", **SMALL) as mem:
        mem.add_many([NewMemory(f"kiwi w4 {i}", SCOPE) for i in range(40)])
        assert len(_lexical(mem, "kiwi")) == 40 and serving(mem)
        lx = _index(mem)
        lx._writer = _FailingCommits(lx._writer)
        assert mem.reindex() == 40  # the vector index is rebuilt all the same
        assert len(_lexical(mem, "kiwi")) == 40


def _fts5_tail_queries(mem: HelaMemory, query: str) -> int:
    """FTS5 MATCH statements one search issues (the tail's query)."""
    seen: list[str] = []

    def run(c: Core) -> None:
        c.store.db.set_trace_callback(seen.append)
        try:
            c.search(query, SCOPE, 3, learn=False)
        finally:
            c.store.db.set_trace_callback(None)

    mem._call(run)
    return sum(s.startswith("SELECT rowid, bm25(memories_fts") for s in seen)


def test_the_tail_is_folded_in_once_no_memory_came(tmp_path: Path, make_mem: Any) -> None:
    """``lexical_index_fold_s`` after the newest memory the store's thread folds the
    tail (the rows above the mark, FTS5's) into tantivy: searches then skip FTS5's
    query, and still find every tail memory; the next add is found at once again."""
    opts = {
        "lexical_index_min": 20,
        "lexical_index_tail": 5,
        "lexical_index_fold_s": 1.0,  # the asserts before the wait fit well within it
        "lexical_index_fold_searches": 1,
    }
    with make_mem(tmp_path / "t", **opts) as mem:
        mem.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(3), 30)])
        assert _lexical(mem, "w1")  # builds the index
        mem.add_many([NewMemory(f"the zeppelin number {i} landed", SCOPE) for i in range(3)])
        assert _index(mem).tail_rows == 3  # above the mark: FTS5's
        assert _fts5_tail_queries(mem, "zeppelin") == 1
        time.sleep(1.6)
        mem.stats()  # a call: the owner's loop ran the fold between calls
        assert _index(mem).tail_rows == 0
        assert _fts5_tail_queries(mem, "zeppelin") == 0
        found = _lexical(mem, "zeppelin")
        assert {f"the zeppelin number {i} landed" for i in range(3)} <= set(found)
        mem.add("a blimp over the zeppelin field", SCOPE)  # a new tail: FTS5 at once
        assert "a blimp over the zeppelin field" in _lexical(mem, "blimp")
        assert _fts5_tail_queries(mem, "blimp") == 1
    with make_mem(tmp_path / "t", **opts) as mem:  # the fold was committed: reopened, found
        assert {f"the zeppelin number {i} landed" for i in range(3)} <= set(
            _lexical(mem, "zeppelin")
        )


@pytest.mark.parametrize(("fold_s", "searches"), [(0.0, 1), (30.0, 1), (0.3, 64)])
def test_no_fold_when_off_before_its_time_or_rarely_searched(
    tmp_path: Path, make_mem: Any, fold_s: float, searches: int
) -> None:
    """Off (0), before its time, or when the tail was searched fewer than
    ``lexical_index_fold_searches`` times since the add (a chat: a commit per turn
    would cost more than the searches save): the tail stays FTS5's."""
    opts = {
        "lexical_index_min": 20,
        "lexical_index_tail": 5,
        "lexical_index_fold_s": fold_s,
        "lexical_index_fold_searches": searches,
    }
    with make_mem(tmp_path / "t", **opts) as mem:
        mem.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(4), 30)])
        assert _lexical(mem, "w1")
        mem.add("the zeppelin landed", SCOPE)
        for _ in range(3):
            assert _fts5_tail_queries(mem, "zeppelin") == 1
        time.sleep(0.8)
        mem.stats()
        assert _index(mem).tail_rows == 1
        assert _fts5_tail_queries(mem, "zeppelin") == 1


def test_deleting_the_newest_memories_leaves_no_tail(tmp_path: Path, make_mem: Any) -> None:
    """Deleting the memories above the mark lowers the store's highest key to it:
    nothing is left for FTS5 (its query is skipped) and nothing to fold."""
    opts = {"lexical_index_min": 20, "lexical_index_tail": 5, "lexical_index_fold_searches": 1}
    with make_mem(tmp_path / "t", **opts) as mem:
        mem.add_many([NewMemory(t, SCOPE) for t in _texts(random.Random(5), 30)])
        assert _lexical(mem, "w1")
        gone = mem.add_many([NewMemory(f"zeppelin {i}", SCOPE) for i in range(2)])
        assert _index(mem).tail_rows == 2
        mem.delete([m.id for m in gone])
        assert _fts5_tail_queries(mem, "zeppelin") == 0
        assert _index(mem).tail_rows == 0
        assert mem._call(lambda c: c.lexical_fold_in()) is None
        assert not _lexical(mem, "zeppelin")


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_fold_seconds_must_be_a_finite_time(bad: float) -> None:
    """0 means never; infinity is refused (a config saved as JSON could not be read back)."""
    from pydantic import ValidationError

    from helamem.core import RetrievalConfig

    with pytest.raises(ValidationError, match="lexical_index_fold_s"):
        RetrievalConfig(lexical_index_fold_s=bad)
    cfg = RetrievalConfig(lexical_index_fold_s=0.0)
    assert RetrievalConfig.model_validate_json(cfg.model_dump_json()) == cfg

"""HelaMemStore keeps documents and memories in step (issue 14, case 4).

* a put racing a query search keeps its memory (the search skips it, never deletes it);
* a failing write leaves no orphan memory and no document without its memory, and raises;
* an interrupted writer's journal is settled by the next writer;
* a seeded random interleaving of puts, replacements, deletes and searches from
  threads on two store objects on one path loses nothing and orphans nothing;
* query search learns only what the core's ``learn_top`` rule picks, so each item
  stays findable by its own word.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import BaseStore, Op, PutOp, Result

from helamem.core import HelaMemory, InvalidInputError
from helamem.langgraph import ID_FIELD, HelaMemStore
from helamem.langgraph.store import JOURNAL, RepairReport

NS = ("users", "alice")
WAIT_S = 20.0
WORDS: tuple[str, ...] = (
    "cat",
    "dog",
    "tea",
    "coffee",
    "garden",
    "piano",
    "paris",
    "tokyo",
    "river",
    "mountain",
)
WORDS += ("book", "movie", "soccer", "chess", "bread", "cheese", "rain", "snow", "train", "bike")


Integrity = Callable[[Path, BaseStore], tuple[int, int]]


@pytest.fixture
def integrity(store_db: Callable[[Path], Any]) -> Integrity:
    """``integrity(path, docs)``: ``(orphans, dangling)`` of the memory at ``path``
    (read from its graph store, SQLite or PostgreSQL) and its document store."""
    return lambda path, docs: _integrity(store_db(path), docs)


def _integrity(db: Any, docs: BaseStore) -> tuple[int, int]:
    """``(orphans, dangling)``: memories with store metadata that their document
    does not name, and documents naming a memory that does not exist."""
    try:
        rows = db.execute("SELECT id, metadata FROM memories").fetchall()
    finally:
        db.close()
    mems = {str(mid): json.loads(raw)["langgraph"] for mid, raw in rows if "langgraph" in raw}
    orphans = 0
    for mid, where in mems.items():
        d = docs.get(tuple(where["namespace"]), where["key"], refresh_ttl=False)
        orphans += d is None or d.value[ID_FIELD]["id"] != mid
    listed = docs.search((), limit=100_000, refresh_ttl=False)
    dangling = sum(1 for d in listed if d.value[ID_FIELD]["id"] not in (None, *mems))
    return orphans, dangling


@pytest.fixture
def store(memory: HelaMemory) -> Iterator[HelaMemStore]:
    s = HelaMemStore(memory)
    yield s
    s.close()


class Gate:
    """Holds the document store's first write until ``go`` (and says when it is held)."""

    def __init__(self, docs: BaseStore) -> None:
        self.real = docs.batch
        self.held = threading.Event()
        self.go = threading.Event()

    def __call__(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        if any(isinstance(o, PutOp) for o in ops) and not self.held.is_set():
            self.held.set()
            assert self.go.wait(WAIT_S)
        return self.real(ops)


def _reads_unlocked(store: HelaMemStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """``store``'s reads take no lock (as without ``flock``, on Windows), so they can
    meet the states a write in flight passes through (a batch's reads wait for a
    write otherwise: ``test_store_batch_snapshot``)."""
    monkeypatch.setattr(store._journal, "read_lock", lambda: None)


def _in_thread(fn: Any, *args: Any) -> threading.Thread:
    t = threading.Thread(target=fn, args=args)
    t.start()
    return t


# -- fault 1: a put racing a query search --------------------------------------


def test_put_racing_query_search_keeps_its_memory(
    store: HelaMemStore,
    memory: HelaMemory,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    integrity: Integrity,
) -> None:
    _reads_unlocked(store, monkeypatch)
    gate = Gate(store.documents)
    monkeypatch.setattr(store.documents, "batch", gate)
    t = _in_thread(store.put, NS, "pet", {"text": "the walrus sings at dawn"})
    assert gate.held.wait(WAIT_S)
    # the memory is in, the document not yet: the search skips it and keeps it
    assert memory.stats().memories == 1
    assert store.search(NS, query="walrus") == []
    assert memory.stats().memories == 1
    gate.go.set()
    t.join(WAIT_S)
    monkeypatch.undo()
    got = store.get(NS, "pet")
    assert got is not None and got.value == {"text": "the walrus sings at dawn"}
    assert [(i.key, i.value) for i in store.search(NS, query="walrus")] == [("pet", got.value)]
    assert memory.stats().memories == 1
    assert integrity(path, store.documents) == (0, 0)


def test_replacement_in_flight_shows_the_old_value(
    store: HelaMemStore,
    memory: HelaMemory,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    integrity: Integrity,
) -> None:
    store.put(NS, "pet", {"text": "the walrus sings", "v": 1})
    _reads_unlocked(store, monkeypatch)
    gate = Gate(store.documents)
    monkeypatch.setattr(store.documents, "batch", gate)
    t = _in_thread(store.put, NS, "pet", {"text": "the walrus dances", "v": 2})
    assert gate.held.wait(WAIT_S)
    assert memory.stats().memories == 2  # old and new memory; the document names the old
    for _ in range(3):  # repeated: no search deletes the new memory
        found = store.search(NS, query="walrus", limit=10)
        assert [(i.key, i.value["v"]) for i in found] == [("pet", 1)]
    gate.go.set()
    t.join(WAIT_S)
    monkeypatch.undo()
    found = store.search(NS, query="walrus", limit=10)
    assert [(i.key, i.value["v"]) for i in found] == [("pet", 2)]
    assert memory.stats().memories == 1  # the put deleted the old memory
    assert integrity(path, store.documents) == (0, 0)


def test_search_meeting_a_stale_memory_deletes_it_only_when_no_writer_holds_the_lock(
    store: HelaMemStore,
    memory: HelaMemory,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    integrity: Integrity,
) -> None:
    store.put(NS, "a", {"text": "heron by the lake"})
    store.documents.delete(NS, "a")  # behind the store's back: the memory is stale
    _reads_unlocked(store, monkeypatch)
    gate = Gate(store.documents)
    monkeypatch.setattr(store.documents, "batch", gate)
    t = _in_thread(store.put, NS, "b", {"text": "kestrel on the wire"})
    assert gate.held.wait(WAIT_S)
    assert store.search(NS, query="heron") == []
    assert memory.stats().memories == 2  # a writer holds the lock: left for later
    gate.go.set()
    t.join(WAIT_S)
    monkeypatch.undo()
    assert [i.key for i in store.search(NS, query="heron")] == ["b"]  # "a" is stale
    assert memory.stats().memories == 1  # deleted under the lock, after a re-read
    assert integrity(path, store.documents) == (0, 0)


# -- fault 2: a put is atomic -----------------------------------------------------


def _failing_writes(docs: BaseStore, *, reads_too: bool = False) -> Any:
    real = docs.batch

    def batch(ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        if reads_too or any(isinstance(o, PutOp) for o in ops):
            raise sqlite3.OperationalError("disk I/O error")
        return real(ops)

    return batch


def test_failing_document_write_leaves_no_orphan(
    store: HelaMemStore,
    memory: HelaMemory,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    integrity: Integrity,
) -> None:
    store.put(NS, "kept", {"text": "the otter swims", "v": 1})
    monkeypatch.setattr(store.documents, "batch", _failing_writes(store.documents))
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store.put(NS, "new", {"text": "a new otter"})
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store.put(NS, "kept", {"text": "the otter flies", "v": 2})
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store.batch([PutOp(NS, f"b{i}", {"text": f"otter {i}"}) for i in range(5)])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store.delete(NS, "kept")
    monkeypatch.undo()
    assert memory.stats().memories == 1
    assert (path / JOURNAL).read_bytes() == b""  # settled at once
    assert store.get(NS, "new") is None
    kept = store.get(NS, "kept")
    assert kept is not None and kept.value == {"text": "the otter swims", "v": 1}
    found = store.search(NS, query="otter", limit=10)
    assert [(i.key, i.value["v"]) for i in found] == [("kept", 1)]
    assert integrity(path, store.documents) == (0, 0)


def test_failing_memory_add_changes_nothing(
    store: HelaMemStore,
    memory: HelaMemory,
    path: Path,
    integrity: Integrity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.put(NS, "k", {"text": "a quiet harbour"})

    def refuse(*args: object, **kwargs: object) -> None:
        raise InvalidInputError("the core refuses the text")

    monkeypatch.setattr(memory, "add_many", refuse)
    with pytest.raises(InvalidInputError):
        store.put(NS, "k", {"text": "a loud harbour"}, index=["text"])
    monkeypatch.undo()
    got = store.get(NS, "k")
    assert got is not None and got.value == {"text": "a quiet harbour"}
    assert [i.key for i in store.search(NS, query="harbour")] == ["k"]
    assert memory.stats().memories == 1
    assert integrity(path, store.documents) == (0, 0)


def test_unsettled_failure_is_settled_by_the_next_writer(
    store: HelaMemStore,
    memory: HelaMemory,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    integrity: Integrity,
) -> None:
    store.put(NS, "old", {"text": "a red kite"})
    # the document write fails, and so does every read after it: the put cannot settle
    monkeypatch.setattr(store.documents, "batch", _flaky(store.documents))
    with pytest.raises(sqlite3.OperationalError):
        store.put(NS, "k", {"text": "a blue kite"})
    monkeypatch.undo()
    assert memory.stats().memories == 2  # one orphan, named by the journal
    assert (path / JOURNAL).read_bytes().count(b"\n") == 1
    assert integrity(path, store.documents) == (1, 0)
    assert [i.key for i in store.search(NS, query="blue kite", limit=10)] == ["old"]
    store.put(NS, "other", {"text": "a green kite"})  # the next writer settles it first
    assert (path / JOURNAL).read_bytes() == b""
    assert memory.stats().memories == 2
    assert integrity(path, store.documents) == (0, 0)
    assert sorted(i.key for i in store.search(NS, query="kite", limit=10)) == ["old", "other"]


def _flaky(docs: BaseStore) -> Any:
    """Reads work until the first write; from then on everything fails."""
    real = docs.batch
    broken = threading.Event()

    def batch(ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        if broken.is_set() or any(isinstance(o, PutOp) for o in ops):
            broken.set()
            raise sqlite3.OperationalError("disk I/O error")
        return real(ops)

    return batch


def test_repair_deletes_stale_and_reindexes_missing(
    store: HelaMemStore, memory: HelaMemory, path: Path, integrity: Integrity
) -> None:
    for i in range(4):
        store.put(NS, f"k{i}", {"text": f"puffin number {i}"})
    store.documents.delete(NS, "k0")  # stale memory (as TTL leaves it)
    lost = store.get(NS, "k1")
    assert lost is not None
    memory.delete(store.documents.get(NS, "k1").value[ID_FIELD]["id"])  # type: ignore[union-attr]
    assert integrity(path, store.documents) == (1, 1)
    assert store.repair() == RepairReport(settled=0, stale_deleted=1, readded=1, unindexed=0)
    assert integrity(path, store.documents) == (0, 0)
    assert [i.key for i in store.search(NS, query="puffin 1", limit=1)] == ["k1"]
    assert store.repair() == RepairReport(settled=0, stale_deleted=0, readded=0, unindexed=0)


# -- a randomized interleaving ----------------------------------------------------


def test_random_interleaving_loses_and_orphans_nothing(
    path: Path, new_memory: Any, integrity: Integrity
) -> None:
    """4 threads on 2 store objects (one path): 240 puts/replacements/deletes of
    their own keys and of 4 shared keys, and query searches between them."""
    rng = random.Random(1414)
    memory = new_memory(path)
    stores = [HelaMemStore(memory), HelaMemStore(memory)]
    n_threads, n_ops = 4, 60
    final: dict[str, dict[str, Any] | None] = {}  # owned keys: the last acknowledged value
    shared_values: dict[str, list[dict[str, Any] | None]] = {f"s{i}": [] for i in range(4)}
    bad: list[str] = []
    lock = threading.Lock()
    seeds = [rng.randrange(1 << 30) for _ in range(n_threads)]

    def worker(t: int) -> None:
        r = random.Random(seeds[t])
        s = stores[t % 2]
        mine = [f"t{t}k{i}" for i in range(8)]
        for o in range(n_ops):
            roll = r.random()
            shared = r.random() < 0.25
            key = r.choice(list(shared_values)) if shared else r.choice(mine)
            if roll < 0.55:
                word = f"w{t}x{o}q"
                value = {"text": f"{word} shared words apple river", "tag": word}
                if shared:
                    with lock:
                        shared_values[key].append(value)
                s.put(NS, key, value)
                if not shared:
                    final[key] = value
            elif roll < 0.7:
                if shared:
                    with lock:
                        shared_values[key].append(None)
                s.delete(NS, key)
                if not shared:
                    final[key] = None
            else:
                for item in s.search(NS, query="apple river", limit=r.randint(1, 8)):
                    if "tag" in item.value and item.value["text"].split()[0] != item.value["tag"]:
                        bad.append(f"mixed value {item.value}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    start = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads)
    assert time.monotonic() - start < 120
    assert bad == []
    s = stores[0]
    for key, value in final.items():
        got = s.get(NS, key)
        assert (None if got is None else got.value) == value, key
    for key, values in shared_values.items():
        got = s.get(NS, key)
        assert (None if got is None else got.value) in values, key
    listed = s.search(NS, limit=1000)
    assert {i.key for i in listed} == {k for k, v in final.items() if v is not None} | {
        k for k in shared_values if s.get(NS, k) is not None
    }
    for item in listed:  # every live item is found by its own word, with its value
        # (a limit covering the namespace: the store must return it, never skip it;
        # how it ranks is the core's, see test_each_item_stays_findable_by_its_own_word)
        found = s.search(NS, query=item.value["tag"], limit=200)
        assert (item.key, item.value) in [(i.key, i.value) for i in found]
    assert integrity(path, s.documents) == (0, 0)
    assert memory.stats().memories == len(listed)
    assert (path / JOURNAL).read_bytes() == b""
    for st in stores:
        st.close()
    memory.close()


# -- fault 3: query search learns what the core's rule picks -----------------------


def test_each_item_stays_findable_by_its_own_word(store: HelaMemStore, memory: HelaMemory) -> None:
    """100 items, each asked for its unique word with limit=5 after the others.

    Reinforcing every item of each page (the old store) made 24 of 100 miss here.
    """
    assert memory.config.retrieval.learn_top == 2
    rng = random.Random(7)
    letters = "bcdfghjklmnpqrstvwxz"
    unique = [f"w{i:03d}" + "".join(rng.choice(letters) for _ in range(5)) for i in range(100)]
    for i, u in enumerate(unique):
        store.put(NS, f"k{i}", {"text": f"{u} " + " ".join(rng.sample(WORDS, 8))})
    misses = [
        i
        for i, u in enumerate(unique)
        if f"k{i}" not in [h.key for h in store.search(NS, query=u, limit=5)]
    ]
    print(f"misses: {len(misses)} of 100")
    assert len(misses) <= 5


def test_learning_reinforces_only_the_best_learn_top(
    store: HelaMemStore, memory: HelaMemory
) -> None:
    for i in range(6):
        store.put(NS, f"k{i}", {"text": f"badger sett number {i}"})
    assert memory.stats().edges == 0  # documents are not a conversation: no temporal chain
    page = store.search(NS, query="badger sett", limit=6)
    assert len(page) == 6
    assert memory.stats().edges == 1  # only the best two co-activate


def test_a_search_racing_a_rewrite_still_finds_the_item(
    store: HelaMemStore,
    memory: HelaMemory,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    integrity: Integrity,
) -> None:
    """Trial: the core ranked the item's old memory, then a rewrite replaced it before
    the documents were read; the hit was dropped as stale and the item left out of the
    page (348 of 2,851 searches with a writer in another process)."""
    store.put(NS, "k", {"text": "apple pie", "v": 1})
    store.put(NS, "other", {"text": "banana bread"})
    real = memory.search
    rewrites = iter([None])

    def search_then_rewrite(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        if next(rewrites, "done") is None:  # once: the write lands between rank and read
            _in_thread(store.put, NS, "k", {"text": "apple tart", "v": 2}).join(WAIT_S)
        return got

    _reads_unlocked(store, monkeypatch)
    monkeypatch.setattr(memory, "search", search_then_rewrite)
    found = store.search(NS, query="apple", limit=5)  # every memory seen: no second search
    monkeypatch.undo()
    assert [(i.key, i.value) for i in found][:1] == [("k", {"text": "apple tart", "v": 2})]
    assert sorted(i.key for i in found) == ["k", "other"]
    assert [i.value["v"] for i in store.search(NS, query="apple", limit=1)] == [2]
    assert integrity(path, store.documents) == (0, 0)

"""Differential test: HelaMemStore against LangGraph's InMemoryStore over seeded random ops.

Both stores receive the same sequence of a few hundred puts, deletes, gets,
searches (with and without a query, with filters and paging),
``list_namespaces`` calls and mixed batches. What must agree:

* ``get``: the value (or ``None``);
* search without a query: the set of items under the prefix that match the
  filter, and pages of the store's own order (``offset``/``limit`` slice it);
* search with a query: the same *set* semantics (every matching item can
  come back, each page has ``min(limit, matching - offset)`` items, all of
  them matching), ``score=None`` exactly for unindexed items; ranking and
  scores are not compared (InMemoryStore ranks by its own embeddings);
* ``list_namespaces``: equal lists;
* ``batch``: reads answered from the state before the batch.

Intended differences (see the adapter README): listing order (the document
store's order, not InMemoryStore's insertion order), and query pages past the
ranked items (InMemoryStore repeats its unindexed items at every such offset).
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import (
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from helamem.langgraph import HelaMemStore

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "maple",
    "tiger",
    "ocean",
    "violet",
    "candle",
    "harbor",
]
NAMESPACES = [("a",), ("a", "x"), ("a", "y"), ("b", "x"), ("b", "x", "z")]
FILTERS: list[dict[str, Any] | None] = [
    None,
    {"n": 2},
    {"n": {"$ne": 2}},
    {"n": {"$gt": 1}},
    {"n": {"$gte": 1, "$lt": 4}},
    {"done": True},
    {"done": {"$ne": True}},
    {"meta": {"prio": 1}},
    {"meta": {"prio": {"$lte": 1}}},
    {"tags": ["t1", "t2"]},
]


def _embed(texts: list[str]) -> list[list[float]]:
    out = []
    for t in texts:
        v = [0.0] * 16
        for w in t.split():
            v[zlib.crc32(w.encode()) % 16] += 1.0
        out.append(v)
    return out


def _value(rng: random.Random) -> dict[str, Any]:
    value: dict[str, Any] = {}
    if rng.random() < 0.9:
        value["text"] = " ".join(rng.sample(WORDS, 3))
    value["n"] = rng.randrange(5)  # always: InMemoryStore's $gt raises on a missing field
    if rng.random() < 0.5:
        value["done"] = rng.random() < 0.5
    if rng.random() < 0.5:
        value["meta"] = {"prio": rng.randrange(3), "x": "y"}
    if rng.random() < 0.3:
        value["tags"] = rng.choice([["t1", "t2"], ["t2"], ["t1", "t2", "t3"]])
    return value


INDEXES: list[Any] = [None, False, ["text"], ["meta.x"], ["text", "meta.x"], []]


def _indexed(value: dict[str, Any], index: Any) -> bool:
    """Whether a put of ``value`` with ``index`` embeds anything (fields: ``["text"]``)."""
    if index is False:
        return False
    paths = ["text"] if index is None else index
    return any(p.split(".")[0] in value for p in paths)


def _flat(items: list[Any]) -> list[tuple[tuple[str, ...], str]]:
    return [(tuple(i.namespace), i.key) for i in items]


class Pair:
    """The two stores, fed the same operations."""

    def __init__(self, ours: HelaMemStore, rng: random.Random) -> None:
        self.ours = ours
        index: Any = {"dims": 16, "embed": _embed, "fields": ["text"]}
        self.ref = InMemoryStore(index=index)
        self.rng = rng
        self.keys: list[tuple[tuple[str, ...], str]] = []
        self.unindexed: set[tuple[tuple[str, ...], str]] = set()

    def put(self) -> None:
        ns = self.rng.choice(NAMESPACES)
        key = f"k{self.rng.randrange(40)}"
        value = _value(self.rng)
        index: Any = False if self.rng.random() < 0.15 else None
        for s in (self.ours, self.ref):
            s.put(ns, key, value, index=index)
        self.keys.append((ns, key))
        if index is False or "text" not in value:
            self.unindexed.add((ns, key))
        else:
            self.unindexed.discard((ns, key))

    def delete(self) -> None:
        if self.keys:
            ns, key = self.rng.choice(self.keys)
            for s in (self.ours, self.ref):
                s.delete(ns, key)
            self.prune()

    def prune(self) -> None:
        """InMemoryStore lists a namespace whose items were all deleted, or that a get or
        search only looked at; SqliteStore (and so HelaMemStore) lists namespaces that
        hold items. Compare those."""
        for ns in [ns for ns, items in self.ref._data.items() if not items]:
            del self.ref._data[ns]

    def get(self) -> None:
        ns, key = self.rng.choice(self.keys) if self.keys else (("a",), "none")
        a, b = self.ours.get(ns, key), self.ref.get(ns, key)
        assert (a and a.value) == (b and b.value), (ns, key)

    def matching(self, prefix: tuple[str, ...], flt: Any) -> list[tuple[tuple[str, ...], str]]:
        return _flat(self.ref.search(prefix, filter=flt, limit=10_000))

    def listing(self) -> None:
        prefix = self.rng.choice([(), ("a",), ("b", "x"), ("a", "x")])
        flt = self.rng.choice(FILTERS)
        limit, offset = self.rng.randrange(0, 8), self.rng.randrange(0, 12)
        want = self.matching(prefix, flt)
        full = _flat(self.ours.search(prefix, filter=flt, limit=10_000))
        assert sorted(full) == sorted(want), (prefix, flt)
        page = self.ours.search(prefix, filter=flt, limit=limit, offset=offset)
        assert _flat(page) == full[offset : offset + limit]
        ref_page = self.ref.search(prefix, filter=flt, limit=limit, offset=offset)
        assert len(page) == len(ref_page)
        for item in page:
            got = self.ours.get(tuple(item.namespace), item.key)
            assert got is not None and got.value == item.value and item.score is None

    def query(self) -> None:
        prefix = self.rng.choice([(), ("a",), ("b",), ("a", "x")])
        flt = self.rng.choice(FILTERS)
        limit, offset = self.rng.randrange(1, 8), self.rng.randrange(0, 6)
        q = " ".join(self.rng.sample(WORDS, 2))
        want = set(self.matching(prefix, flt))
        page = self.ours.search(prefix, query=q, filter=flt, limit=limit, offset=offset)
        keys = _flat(page)
        assert len(keys) == len(set(keys)) and set(keys) <= want, (prefix, flt, q)
        assert len(page) == min(limit, max(0, len(want) - offset)), (prefix, flt, limit, offset)
        ranked = len(want - self.unindexed)
        if offset < ranked:  # past its ranked items InMemoryStore repeats its unindexed ones
            ref = self.ref.search(prefix, query=q, filter=flt, limit=limit, offset=offset)
            assert len(page) == len(ref)
        scores = [i.score for i in page]
        for (ns, key), score in zip(keys, scores, strict=True):
            assert (score is None) == ((ns, key) in self.unindexed), (ns, key, score)
        nones = [s is None for s in scores]
        assert nones == sorted(nones)  # the unindexed items come after the ranked ones

    def namespaces(self) -> None:
        conds: list[MatchCondition] = []
        if self.rng.random() < 0.5:
            conds.append(MatchCondition("prefix", self.rng.choice([("a",), ("*", "x"), ("b",)])))
        if self.rng.random() < 0.3:
            conds.append(MatchCondition("suffix", self.rng.choice([("x",), ("z",)])))
        kw: dict[str, Any] = {
            "max_depth": self.rng.choice([None, 1, 2]),
            "limit": self.rng.randrange(1, 6),
            "offset": self.rng.randrange(0, 3),
        }
        op = ListNamespacesOp(match_conditions=tuple(conds) or None, **kw)
        self.prune()
        assert self.ours.batch([op]) == self.ref.batch([op])

    def mixed_batch(self) -> None:
        """A batch of 2-8 random ops over a few keys: puts (per-item ``index`` lists,
        ``index=False``), deletes, gets, searches with and without a query and
        ``list_namespaces``, in any order; reads see the state before the batch and
        the last write of a key wins."""
        self.prune()
        ops: list[Op] = []
        for _ in range(self.rng.randrange(2, 9)):
            ns = self.rng.choice(NAMESPACES[:3])
            key = f"k{self.rng.randrange(4)}"
            kind = self.rng.randrange(6)
            if kind == 0:
                ops.append(PutOp(ns, key, _value(self.rng), index=self.rng.choice(INDEXES)))
            elif kind == 1:
                ops.append(PutOp(ns, key, None))
            elif kind == 2:
                ops.append(GetOp(ns, key))
            elif kind == 3:
                ops.append(SearchOp(("a",), filter=self.rng.choice(FILTERS), limit=100))
            elif kind == 4:
                q = " ".join(self.rng.sample(WORDS, 2))
                ops.append(SearchOp(("a",), query=q, filter=self.rng.choice(FILTERS), limit=100))
            else:
                ops.append(ListNamespacesOp(match_conditions=None, limit=100))
        # InMemoryStore's gets and searches create the namespaces they look at (listed,
        # though empty): namespaces are compared with its listing before the batch
        before = self.ref.list_namespaces(limit=100)
        a, b = self.ours.batch(ops), self.ref.batch(ops)
        for op, x, y in zip(ops, a, b, strict=True):
            if isinstance(op, SearchOp):
                assert isinstance(x, list) and isinstance(y, list)
                assert sorted(_flat(x)) == sorted(_flat(y)), op
                values = {(tuple(i.namespace), i.key): i.value for i in y}
                for item in x:
                    assert item.value == values[(tuple(item.namespace), item.key)], op
            elif isinstance(op, ListNamespacesOp):
                assert x == before, op
            elif isinstance(op, GetOp):
                assert (x.value if isinstance(x, Item) else x) == (
                    y.value if isinstance(y, Item) else y
                ), op
        last: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, PutOp):
                last[(op.namespace, op.key)] = op
        for address, put in last.items():
            self.keys.append(address)
            if put.value is None or _indexed(put.value, put.index):
                self.unindexed.discard(address)
            else:
                self.unindexed.add(address)
        self.prune()

    def batch(self) -> None:
        ns = self.rng.choice(NAMESPACES)
        key = f"k{self.rng.randrange(40)}"
        value = _value(self.rng)
        ops: list[Op] = [
            GetOp(ns, key),
            PutOp(ns, key, value),
            GetOp(ns, key),
            SearchOp(ns, limit=100),
            PutOp(ns, key, None) if self.rng.random() < 0.3 else PutOp(ns, key, value),
            GetOp(ns, key),
        ]
        a, b = self.ours.batch(ops), self.ref.batch(ops)
        for x, y in zip(a, b, strict=True):
            if isinstance(x, list):
                assert isinstance(y, list) and sorted(_flat(x)) == sorted(_flat(y))
            else:
                assert (x.value if isinstance(x, Item) else x) == (
                    y.value if isinstance(y, Item) else y
                )
        self.keys.append((ns, key))
        self.prune()
        last = ops[4]
        assert isinstance(last, PutOp)
        if last.value is None or "text" in value:
            self.unindexed.discard((ns, key))
        else:
            self.unindexed.add((ns, key))


@pytest.fixture
def ours(tmp_path: Path, new_memory: Any) -> Iterator[HelaMemStore]:
    m = new_memory(tmp_path / "mem", dim=64)
    with HelaMemStore(m, index={"fields": ["text"]}) as s:
        yield s
    m.close()


@pytest.mark.parametrize(
    "seed", [int(s) for s in os.environ.get("HELAMEM_DIFF_SEEDS", "7").split(",")]
)
def test_random_ops_agree_with_in_memory_store(ours: HelaMemStore, seed: int) -> None:
    rng = random.Random(seed)
    pair = Pair(ours, rng)
    actions = [
        (pair.put, 10),
        (pair.delete, 2),
        (pair.get, 3),
        (pair.listing, 3),
        (pair.query, 3),
        (pair.namespaces, 2),
        (pair.batch, 1),
        (pair.mixed_batch, 2),
    ]
    funcs, weights = zip(*actions, strict=True)
    for _ in range(320):
        rng.choices(funcs, weights)[0]()

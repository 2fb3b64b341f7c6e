"""The after-turn recorder (helamem.core.hooks): ordering, backpressure, errors, context."""

from __future__ import annotations

import asyncio
import doctest
import itertools
import json
import logging
import pickle
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from helamem.core import (
    CommitUnknownError,
    DynamicsConfig,
    EmbeddingError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    InvalidInputError,
    InvalidScopeError,
    NewTurn,
    PostgresConfig,
    RetrievalConfig,
    Scope,
    StoreClosedError,
    hooks,
)
from helamem.core.hooks import (
    RecorderClosedError,
    RecorderFullError,
    TurnFailure,
    TurnRecorder,
    TurnRecordingError,
)

ETA = DynamicsConfig().learning_rate
TEMPORAL = 0.5  # DynamicsConfig().temporal_weight
SCOPES: list[Scope] = [("users", f"u{i}") for i in range(5)]
StoreConfig = Callable[[Path], PostgresConfig | None]


class DictIndex:
    """An in-memory VectorIndex: embedded Chroma costs ~35 ms per upsert, too slow for
    the tests that record hundreds of turns (the recorder is what they test)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[np.ndarray, int, str]] = {}

    def open(self, dimension: int) -> None:
        pass

    def close(self) -> None:
        pass

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        scope_ids: Sequence[int],
        kinds: Sequence[str],
    ) -> None:
        for i, v, s, k in zip(ids, vectors, scope_ids, kinds, strict=True):
            self.rows[i] = (np.array(v, dtype=np.float32), s, k)

    def delete(self, items: Sequence[tuple[str, int, str]]) -> None:
        for i, _, _ in items:
            self.rows.pop(i, None)

    def query(
        self, vector: np.ndarray, n: int, scope_ids: Sequence[int], kind: str
    ) -> list[tuple[str, float]]:
        allowed = set(scope_ids)
        found = [
            (i, 1.0 - float(v @ vector))
            for i, (v, s, k) in self.rows.items()
            if s in allowed and k == kind
        ]
        return sorted(found, key=lambda p: p[1])[:n]

    def count(self, scope_ids: Any = None) -> int:
        return len(self.rows)

    def reset(self) -> None:
        self.rows.clear()


def exact_memory(
    path: Path,
    embedder: Any = None,
    cls: type[HelaMemory] = HelaMemory,
    *,
    fast: bool = False,
    store: StoreConfig | None = None,
) -> Any:
    """A store without decay (δ = 1), so edge weights are exact sums.

    Every hit of a learning search co-activates (``learn_top=0``), as the
    edge model assumes. ``store``: the ``store_config`` fixture (default: SQLite).
    """
    cfg = HelaMemConfig(
        path=path,
        store=None if store is None else store(path),
        # the reference clique (every used memory co-activates), which EdgeModel implies
        dynamics=DynamicsConfig(decay_rate=1.0, used_pairs="all", attribution_margin=2.0),
        retrieval=RetrievalConfig(learn_top=0),
    )
    index = DictIndex() if fast else None
    return cls(cfg, embedder=embedder or HashingEmbedder(256), vector_index=index)


@dataclass
class Snapshot:
    """What the graph store holds (read through a connection of its own)."""

    episodes: dict[Scope, list[tuple[str | None, str]]]  # (role, content) in insertion order
    edges: dict[frozenset[str], float]  # by the contents of both ends
    edges_in: dict[Scope, int]


def read_store(con: Any) -> Snapshot:
    """The snapshot of the graph store ``con`` (from ``store_db``); closes it."""
    try:
        scopes = {
            int(i): tuple(json.loads(p)) for i, p in con.execute("SELECT id, path FROM scopes")
        }
        content: dict[int, str] = {}
        episodes: dict[Scope, list[tuple[str | None, str]]] = defaultdict(list)
        for n, sid, role, text in con.execute(
            "SELECT n, scope_id, role, content FROM memories WHERE kind = 'episodic' ORDER BY n"
        ):
            content[int(n)] = text
            episodes[scopes[int(sid)]].append((role, text))
        edges: dict[frozenset[str], float] = {}
        edges_in: dict[Scope, int] = defaultdict(int)
        for a, b, sid, w in con.execute("SELECT a, b, scope_id, weight FROM edges"):
            edges[frozenset((content[int(a)], content[int(b)]))] = float(w)
            edges_in[scopes[int(sid)]] += 1
        return Snapshot(dict(episodes), edges, dict(edges_in))
    finally:
        con.close()


@dataclass
class EdgeModel:
    """The weights DESIGN §4 implies (no decay): temporal chain + η per co-activation."""

    weights: dict[frozenset[str], float] = field(default_factory=dict)
    last: dict[Scope, str] = field(default_factory=dict)

    def episode(self, scope: Scope, text: str) -> None:
        if scope in self.last:
            self.weights[frozenset((self.last[scope], text))] = TEMPORAL
        self.last[scope] = text

    def turn(self, scope: Scope, user: str, assistant: str, used: Iterable[str] = ()) -> None:
        self.episode(scope, user)
        self.episode(scope, assistant)
        group = sorted({user, assistant, *used})
        if len(group) > 2 or used:
            for i, a in enumerate(group):
                for b in group[i + 1 :]:
                    key = frozenset((a, b))
                    self.weights[key] = min(1.0, self.weights.get(key, 0.0) + ETA)


def assert_edges(snap: Snapshot, model: EdgeModel) -> None:
    assert set(snap.edges) == set(model.weights)
    for key, w in model.weights.items():
        assert snap.edges[key] == pytest.approx(w, abs=1e-9), sorted(key)


class MarkerFailingEmbedder(HashingEmbedder):
    """Fails on any batch holding a text with ``BOOM`` in it."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if any("BOOM" in t for t in texts):
            raise EmbeddingError("embedder exploded on a BOOM marker; remove the marker")
        return super().embed(texts)


class SlowEmbedder(HashingEmbedder):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        time.sleep(0.002)
        return super().embed(texts)


class ConsolidatingMemory(HelaMemory):
    """A HelaMemory with a fake ``aconsolidate`` that notes the scope's size at each call."""

    calls: list[tuple[Scope, int]]
    fail: bool = False

    async def aconsolidate(self, scope: Sequence[str]) -> Any:
        st = await self.astats(scope)
        self.calls.append((tuple(scope), st.episodic))
        if self.fail:
            raise RuntimeError("distiller unavailable")


class FakeMemory:
    """Only ``aadd_turn``/``aadd_turns`` (no ``aconsolidate``); each call waits for ``gate``.

    Like a HelaMemory, it owns one thread with an event loop (``_call_soon``
    runs a callback there), where the recorder's lanes run.
    """

    def __init__(self, *, fail_on: str | None = None) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: threading.Thread | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[dict[str, Any]] = []
        self.fail_on = fail_on

    def _call_soon(self, callback: Any) -> None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._owner = threading.Thread(
                target=self._loop.run_forever, name="fake-owner", daemon=True
            )
            self._owner.start()
        self._loop.call_soon_threadsafe(callback)

    def _on_owner_thread(self) -> bool:
        return self._owner is not None and threading.current_thread() is self._owner

    async def aadd_turn(
        self,
        scope: Sequence[str],
        user: str,
        assistant: str,
        *,
        event_time: float | None = None,
        metadata: dict[str, Any] | None = None,
        used_ids: Iterable[str] = (),
    ) -> None:
        if not self.gate.is_set():
            await asyncio.to_thread(self.gate.wait)
        if self.fail_on is not None and self.fail_on in user:
            raise ValueError(f"fake failure on {user!r}")
        self.calls.append(
            {
                "scope": tuple(scope),
                "user": user,
                "assistant": assistant,
                "event_time": event_time,
                "metadata": metadata,
                "used_ids": tuple(used_ids),
            }
        )

    async def aadd_turns(self, turns: Sequence[NewTurn]) -> None:
        """All or nothing, like HelaMemory.aadd_turns."""
        if not self.gate.is_set():
            await asyncio.to_thread(self.gate.wait)
        for t in turns:
            if self.fail_on is not None and self.fail_on in t.user:
                raise ValueError(f"fake failure on {t.user!r}")
        for t in turns:
            self.calls.append(
                {
                    "scope": tuple(t.scope),
                    "user": t.user,
                    "assistant": t.assistant,
                    "event_time": t.event_time,
                    "metadata": None if t.metadata is None else dict(t.metadata),
                    "used_ids": tuple(t.used_ids),
                }
            )


def fake(m: FakeMemory) -> HelaMemory:
    return cast(HelaMemory, m)


# -- concurrency, ordering, reinforcement -------------------------------------


async def test_concurrent_coroutines_store_every_turn_once_in_order(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "store"
    mem = exact_memory(path, fast=True, store=store_config)
    model = EdgeModel()
    seeds: dict[Scope, list[str]] = {}
    for s in SCOPES:
        seeds[s] = []
        for k in range(2):
            text = f"seed {s[1]} {k}"
            seeds[s].append((await mem.aadd(text, s)).id)
            model.episode(s, text)
    seed_text = {i: f"seed {s[1]} {k}" for s in SCOPES for k, i in enumerate(seeds[s])}
    log: dict[Scope, list[tuple[str, str, tuple[str, ...]]]] = defaultdict(list)

    async def agent(c: int, rec: TurnRecorder) -> None:
        for j in range(50):
            s = SCOPES[(c + j) % 5]
            other = SCOPES[(c + j + 1) % 5]
            n = c * 50 + j
            if n % 7 == 0:  # both seeds of the scope, plus one of another scope (ignored)
                used = [seeds[s][0], seeds[s][1], seeds[other][0]]
            elif n % 7 == 3:
                used = [seeds[s][1]]
            else:
                used = []
            user, assistant = f"c{c} t{j} question {n}", f"c{c} t{j} answer {n}"
            await rec.record_turn(s, user, assistant, used_ids=used)
            # no await between the enqueue and here: this is the queue order
            same = tuple(seed_text[i] for i in used if i in seeds[s])
            log[s].append((user, assistant, same))
            if j % 5 == 0:
                await asyncio.sleep(0)

    async with TurnRecorder(mem, max_pending=64, consolidate_every=None) as rec:
        await asyncio.gather(*(agent(c, rec) for c in range(20)))
        await rec.flush()
        assert rec.pending == 0
        assert rec.recorded == 1000

    snap = read_store(store_db(path))
    total = 0
    for s in SCOPES:
        expected: list[tuple[str | None, str]] = [(None, f"seed {s[1]} {k}") for k in range(2)]
        for user, assistant, used in log[s]:
            expected += [("user", user), ("assistant", assistant)]
            model.turn(s, user, assistant, used)
        assert snap.episodes[s] == expected  # each turn exactly once, in queue order
        total += len(log[s])
        st = mem.stats(s)
        assert st.episodic == 2 + 2 * len(log[s])
        assert snap.edges_in[s] == st.edges
    assert total == 1000
    assert_edges(snap, model)  # one temporal chain per scope; η per co-activation exactly
    s0 = frozenset(("seed u0 0", "seed u0 1"))
    assert snap.edges[s0] > TEMPORAL  # the seeds were reinforced together
    mem.close()


async def test_many_recorders_share_one_memory(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "store"
    mem = exact_memory(path, fast=True, store=store_config)
    recs = [TurnRecorder(mem, max_pending=8, consolidate_every=None) for _ in range(3)]

    async def agent(r: int) -> None:
        for j in range(40):
            await recs[r].record_turn(SCOPES[j % 2], f"r{r} q{j}", f"r{r} a{j}")

    await asyncio.gather(*(agent(r) for r in range(3)))
    for rec in recs:
        await rec.close()
    snap = read_store(store_db(path))
    for s in SCOPES[:2]:
        eps = snap.episodes[s]
        assert len(eps) == 3 * 40
        assert len({t for _, t in eps}) == len(eps)
        # each recorder's turns in its own order, each answer right after its question
        parity = SCOPES.index(s)
        for r in range(3):
            mine = [t for _, t in eps if t.startswith(f"r{r} ")]
            turns = [j for j in range(40) if j % 2 == parity]
            assert mine == [x for j in turns for x in (f"r{r} q{j}", f"r{r} a{j}")]
        texts = [t for _, t in eps]
        chain = {frozenset(p) for p in itertools.pairwise(texts)}
        assert {k for k in snap.edges if k <= set(texts)} == chain  # one chain
        assert all(snap.edges[k] == pytest.approx(TEMPORAL) for k in chain)
    mem.close()


async def test_sync_and_async_callers_share_one_recorder(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "store"
    mem = exact_memory(path, fast=True, store=store_config)
    rec = TurnRecorder(mem, max_pending=16, consolidate_every=None)

    def thread_producer(s: Scope) -> None:
        for j in range(30):
            rec.record_turn_sync(s, f"{s[1]} sync q{j}", f"{s[1]} sync a{j}")

    async def coro_producer(s: Scope) -> None:
        for j in range(30):
            await rec.record_turn(s, f"{s[1]} async q{j}", f"{s[1]} async a{j}")

    await asyncio.gather(
        asyncio.to_thread(thread_producer, SCOPES[0]),
        asyncio.to_thread(thread_producer, SCOPES[1]),
        coro_producer(SCOPES[2]),
        coro_producer(SCOPES[3]),
    )
    await rec.close()
    snap = read_store(store_db(path))
    for i, kind in ((0, "sync"), (1, "sync"), (2, "async"), (3, "async")):
        s = SCOPES[i]
        assert [t for _, t in snap.episodes[s]] == [
            x for j in range(30) for x in (f"{s[1]} {kind} q{j}", f"{s[1]} {kind} a{j}")
        ]
    mem.close()


def test_sync_only_use_from_threads_without_a_loop(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    mem = exact_memory(tmp_path / "store", fast=True, store=store_config)
    with TurnRecorder(mem, max_pending=4, consolidate_every=None) as rec:

        def produce(s: Scope) -> None:
            for j in range(20):
                rec.record_turn_sync(s, f"q{j}", f"a{j}")

        threads = [threading.Thread(target=produce, args=(s,)) for s in SCOPES[:3]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rec.flush_sync(timeout=60)
        assert rec.pending == 0
    assert rec.closed
    for s in SCOPES[:3]:
        st = mem.stats(s)
        assert (st.episodic, st.edges) == (40, 39)
    mem.close()


# -- errors ---------------------------------------------------------------------


async def test_failing_embedder_surfaces_at_flush_and_later_turns_land(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "store"
    mem = exact_memory(path, MarkerFailingEmbedder(256), store=store_config)
    s = SCOPES[0]
    async with TurnRecorder(mem, consolidate_every=None) as rec:
        for i in range(10):
            marker = " BOOM" if i in (3, 6) else ""
            await rec.record_turn(s, f"question {i}{marker}", f"answer {i}")
        with (
            caplog.at_level(logging.ERROR, logger="helamem.core.hooks"),
            pytest.raises(TurnRecordingError) as ei,
        ):
            await rec.flush()
        err = ei.value
        assert err.total == 2
        assert all(isinstance(e, EmbeddingError) for e in err.errors)
        assert [(f.stage, f.user) for f in err.failures] == [
            ("add_turn", "question 3 BOOM"),
            ("add_turn", "question 6 BOOM"),
        ]
        assert err.__cause__ is err.errors[0]
        assert "BOOM" in str(err) and "record them again" in str(err)
        assert sum("BOOM" in r.getMessage() for r in caplog.records) == 2
        assert mem.stats(s).episodic == 16

        for i in range(10, 15):
            await rec.record_turn(s, f"question {i}", f"answer {i}")
        await rec.flush()  # each failure is raised once; the later turns landed
    snap = read_store(store_db(path))
    kept = [i for i in range(15) if i not in (3, 6)]
    assert [t for _, t in snap.episodes[s]] == [
        x for i in kept for x in (f"question {i}", f"answer {i}")
    ]
    assert snap.edges_in[s] == 2 * len(kept) - 1  # the chain skips the failed turns
    mem.close()


async def test_errors_are_raised_at_close_and_noted_on_a_body_error() -> None:
    m = FakeMemory(fail_on="bad")
    rec = TurnRecorder(fake(m))
    rec.record_turn_nowait(("s",), "bad one", "x")
    rec.record_turn_nowait(("s",), "good one", "y")
    with pytest.raises(TurnRecordingError) as ei:
        await rec.close()
    assert isinstance(ei.value.errors[0], ValueError)
    assert [c["user"] for c in m.calls] == ["good one"]
    await rec.close()  # idempotent, and the failure was raised once

    async def agent_crashes(rec: TurnRecorder) -> None:
        async with rec:
            rec.record_turn_nowait(("s",), "bad one", "x")
            raise KeyError("agent crashed")

    with pytest.raises(KeyError) as body:
        await agent_crashes(TurnRecorder(fake(FakeMemory(fail_on="bad"))))
    assert any("turn recorder" in n for n in body.value.__notes__)


def _two_queued(m: FakeMemory, **first: Any) -> TurnRecorder:
    """A recorder on ``m`` with turns "one" (``first``: its options) and "two" queued
    before the owner loop takes either (so they form one batch)."""
    hold = threading.Event()
    m._call_soon(lambda: hold.wait(30))  # the owner loop waits: both turns queue before a lane
    try:
        rec = TurnRecorder(fake(m))
        rec.record_turn_nowait(("s",), "one", "x", **first)
        rec.record_turn_nowait(("s",), "two", "y")
    finally:
        hold.set()
    return rec


async def test_a_commit_of_unknown_outcome_is_reported_not_retried() -> None:
    """A batch whose COMMIT was lost may be stored: retrying its turns one by one
    could store them twice, so they are failed (raised at close) as they are."""

    class LostCommit(FakeMemory):
        async def aadd_turns(self, turns: Sequence[NewTurn]) -> None:
            self.calls.append({"batch": len(turns)})
            raise CommitUnknownError("the connection was lost during COMMIT")

    m = LostCommit()
    rec = _two_queued(m)
    with pytest.raises(TurnRecordingError) as ei:
        await rec.close()
    assert m.calls == [{"batch": 2}]  # one try, no turn-by-turn retry
    assert all(isinstance(e, CommitUnknownError) for e in ei.value.errors)
    assert len(ei.value.errors) == 2


async def test_a_commit_of_unknown_outcome_retries_the_turns_with_unique_on() -> None:
    """A turn recorded with ``unique_on`` is safe to retry after a lost COMMIT (the
    store skips it if the COMMIT had landed): it is retried alone; the other is failed."""

    class LostCommit(FakeMemory):
        async def aadd_turns(self, turns: Sequence[NewTurn]) -> None:
            self.calls.append({"batch": len(turns), "unique": [t.unique_on for t in turns]})
            if len(self.calls) == 1:
                raise CommitUnknownError("the connection was lost during COMMIT")

    m = LostCommit()
    rec = _two_queued(m, metadata={"r": "1"}, unique_on=("r",))
    with pytest.raises(TurnRecordingError) as ei:
        await rec.close()
    assert m.calls == [{"batch": 2, "unique": [("r",), ()]}, {"batch": 1, "unique": [("r",)]}]
    assert [f.user for f in ei.value.failures] == ["two"]
    assert isinstance(ei.value.errors[0], CommitUnknownError)


async def test_a_turn_whose_commit_was_lost_is_not_reported_as_unstored() -> None:
    """A lost COMMIT may have landed: the failure must not say "not stored, record it
    again" (stage ``add_turn``), or following it stores the turn twice."""

    class LandedThenLost(FakeMemory):
        async def aadd_turns(self, turns: Sequence[NewTurn]) -> None:
            await super().aadd_turns(turns)  # the COMMIT landed; its reply was lost
            raise CommitUnknownError("the connection was lost during COMMIT")

    m = LandedThenLost()
    rec = _two_queued(m)
    with pytest.raises(TurnRecordingError) as ei:
        await rec.close()
    assert [f.stage for f in ei.value.failures] == ["commit_unknown", "commit_unknown"]
    assert "'commit_unknown' or 'worker' may have been" in str(ei.value)


def test_turn_recording_error_pickles() -> None:
    f = TurnFailure("add_turn", ("s",), "u", "a", (), 0.0, ValueError("x"))
    err = pickle.loads(pickle.dumps(TurnRecordingError([f], 3)))
    assert err.total == 3 and err.failures[0].user == "u"
    assert isinstance(err.errors[0], ValueError)


async def test_bad_input_raises_at_once_and_queues_nothing(tmp_path: Path) -> None:
    mem = exact_memory(tmp_path / "never")
    rec = TurnRecorder(mem)
    with pytest.raises(InvalidScopeError):
        await rec.record_turn("alice", "hi", "hello")  # a str is not a scope
    with pytest.raises(InvalidInputError):
        rec.record_turn_nowait(("s",), "   ", "hello")
    with pytest.raises(InvalidInputError):
        rec.record_turn_sync(("s",), "hi", 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await rec.record_turn(("s",), "hi", "hello", used_ids=[1, 2])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError):
        await rec.record_turn(("s",), "hi", "hello", event_time=float("nan"))
    assert rec.pending == 0
    await rec.close()
    assert not (tmp_path / "never").exists()  # nothing was ever opened
    for bad in ({"max_pending": 0}, {"consolidate_every": 0}, {"concurrency": True}):
        with pytest.raises(InvalidInputError):
            TurnRecorder(mem, **bad)


def test_constructor_does_no_io_and_starts_no_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    rec = TurnRecorder(exact_memory(tmp_path / "x"))
    assert threading.active_count() == before
    assert not (tmp_path / "x").exists()
    rec.close_sync()  # closing an unused recorder is fine too
    with pytest.raises(RecorderClosedError):
        rec.record_turn_nowait(("s",), "hi", "hello")


# -- lifecycle and backpressure -------------------------------------------------


async def test_close_with_pending_work_loses_nothing(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    mem = exact_memory(tmp_path / "store", SlowEmbedder(256), fast=True, store=store_config)
    rec = TurnRecorder(mem, consolidate_every=None)
    for j in range(120):
        rec.record_turn_nowait(SCOPES[j % 3], f"q{j}", f"a{j}")
    assert rec.pending > 0
    await rec.close()
    assert rec.pending == 0 and rec.recorded == 120
    for s in SCOPES[:3]:
        assert mem.stats(s).episodic == 80
    await rec.close()  # idempotent
    rec.close_sync()
    with pytest.raises(RecorderClosedError):
        await rec.record_turn(SCOPES[0], "late", "too late")
    mem.close()


async def test_backpressure_bounds_the_queue() -> None:
    m = FakeMemory()
    m.gate.clear()
    rec = TurnRecorder(fake(m), max_pending=2)
    rec.record_turn_nowait(("s",), "q0", "a0")
    await rec.record_turn(("s",), "q1", "a1")
    assert rec.pending == 2
    with pytest.raises(RecorderFullError):
        rec.record_turn_nowait(("s",), "q2", "a2")
    with pytest.raises(RecorderFullError):
        await asyncio.to_thread(rec.record_turn_sync, ("s",), "q2", "a2", timeout=0.05)
    waiting = asyncio.create_task(rec.record_turn(("s",), "q2", "a2"))
    flushing = asyncio.create_task(rec.flush())
    await asyncio.sleep(0.05)
    assert not waiting.done() and not flushing.done()
    m.gate.set()
    await asyncio.wait_for(waiting, 30)
    await asyncio.wait_for(flushing, 30)
    await rec.close()
    assert [c["user"] for c in m.calls] == ["q0", "q1", "q2"]


async def test_close_wakes_producers_waiting_for_room() -> None:
    m = FakeMemory()
    m.gate.clear()
    rec = TurnRecorder(fake(m), max_pending=1)
    await rec.record_turn(("s",), "q0", "a0")
    waiting = asyncio.create_task(rec.record_turn(("s",), "q1", "a1"))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(rec.close())
    with pytest.raises(RecorderClosedError):
        await asyncio.wait_for(waiting, 30)
    m.gate.set()
    await asyncio.wait_for(closing, 30)
    assert [c["user"] for c in m.calls] == ["q0"]


async def test_the_recorder_has_no_thread_of_its_own(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Turns are stored on the memory's owner thread; recording starts no other thread."""
    mem = exact_memory(tmp_path / "store", fast=True, store=store_config)
    await mem.aopen()
    before = {t.ident for t in threading.enumerate()}
    seen: set[str] = set()
    async with TurnRecorder(mem, consolidate_every=None) as rec:
        for j in range(40):
            await rec.record_turn(SCOPES[j % 3], f"q{j}", f"a{j}")
        await rec.flush()
        # the store's WAL checkpoint thread (started by its first commit) is not the recorder's
        seen = {
            t.name
            for t in threading.enumerate()
            if t.ident not in before and t.name != "helamem-checkpoint"
        }
    assert seen == set()
    assert mem.stats().episodic == 80
    owner = mem._owner
    await mem.aclose()
    assert owner is not None and not owner.is_alive()  # close() stops the owner thread


async def test_closing_the_memory_under_a_recorder_fails_its_unstored_turns_loudly(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    class SlowEmbedder(HashingEmbedder):
        def embed(self, texts: Sequence[str]) -> Any:
            time.sleep(0.05)  # 4 batches: at least 0.2 s to store all 100 turns
            return super().embed(texts)

    mem = exact_memory(tmp_path / "store", SlowEmbedder(64), fast=True, store=store_config)
    rec = TurnRecorder(mem, consolidate_every=None)
    for j in range(100):
        rec.record_turn_nowait(SCOPES[j % 2], f"q{j}", f"a{j}")
    await mem.aclose()  # the recorder was not closed first
    assert rec.pending == 0  # nothing left hanging: every turn is stored or failed
    with pytest.raises(TurnRecordingError) as ei:
        await rec.flush()
    failed = ei.value.total
    assert 0 < failed <= 100
    assert all(f.stage == "add_turn" for f in ei.value.failures)
    assert all(isinstance(e, StoreClosedError) for e in ei.value.errors)
    assert "close the TurnRecorder before its memory" in str(ei.value.errors[0])
    # a turn recorded afterwards fails at once, and is raised at the next flush too
    rec.record_turn_nowait(SCOPES[0], "late", "turn")
    with pytest.raises(TurnRecordingError) as late:
        await rec.flush()
    assert late.value.total == 1 and isinstance(late.value.errors[0], StoreClosedError)
    await rec.close()
    with exact_memory(
        tmp_path / "store", HashingEmbedder(64), fast=True, store=store_config
    ) as reopened:
        stored = sum(reopened.stats(s).episodic for s in SCOPES[:2]) // 2
    assert stored + failed == 100  # each turn either stored or reported, never both


async def test_closing_the_memory_during_a_consolidation_keeps_stored_turns_stored(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    class SlowConsolidation(HelaMemory):
        async def aconsolidate(self, scope: Sequence[str]) -> None:
            await asyncio.sleep(30)  # an LLM call, cut short by close()

    mem = exact_memory(tmp_path / "store", cls=SlowConsolidation, fast=True, store=store_config)
    rec = TurnRecorder(mem, consolidate_every=1)
    await rec.record_turn(SCOPES[0], "q0", "a0")
    for _ in range(500):
        if rec.recorded:
            break
        await asyncio.sleep(0.01)
    assert rec.recorded == 1  # stored; consolidating now
    await mem.aclose()
    with pytest.raises(TurnRecordingError) as ei:
        await rec.flush()
    assert [f.stage for f in ei.value.failures] == ["consolidate"]  # not "add_turn"
    await rec.close()
    with exact_memory(tmp_path / "store", fast=True, store=store_config) as reopened:
        assert reopened.stats(SCOPES[0]).episodic == 2


def test_an_embedder_running_its_own_event_loop_works_on_the_owner_thread(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    class LoopEmbedder(HashingEmbedder):  # a sync API over an async client, as SDKs do
        def embed(self, texts: Sequence[str]) -> Any:
            async def call() -> Any:
                await asyncio.sleep(0)
                return HashingEmbedder.embed(self, texts)

            return asyncio.run(call())

    mem = exact_memory(tmp_path / "store", LoopEmbedder(64), fast=True, store=store_config)
    mem.add_turn(SCOPES[0], "I adopted a cat named Miso", "Congratulations!")
    with TurnRecorder(mem, consolidate_every=None) as rec:
        rec.record_turn_sync(SCOPES[0], "Miso likes tuna", "Noted.")
    assert mem.stats(SCOPES[0]).episodic == 4
    assert mem.search("Miso tuna", SCOPES[0], learn=False).hits
    mem.close()


def test_the_recorder_needs_a_helamemory_and_never_keeps_a_turn_it_refused() -> None:
    with pytest.raises(InvalidInputError, match="HelaMemory"):
        TurnRecorder(cast(HelaMemory, object()))

    class Broken(FakeMemory):
        def _call_soon(self, callback: Any) -> None:
            raise RuntimeError("no owner thread")

    rec = TurnRecorder(fake(Broken()))
    with pytest.raises(RuntimeError, match="no owner thread"):
        rec.record_turn_nowait(("s",), "q", "a")
    assert rec.pending == 0  # refused, so nothing waits for it
    rec.flush_sync(timeout=5)
    rec.close_sync(timeout=5)


async def test_system_exit_from_user_code_keeps_the_owner_thread_serving(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    class Exiting(HelaMemory):
        async def aconsolidate(self, scope: Sequence[str]) -> None:
            raise SystemExit(3)

    mem = exact_memory(tmp_path / "store", cls=Exiting, fast=True, store=store_config)
    rec = TurnRecorder(mem, consolidate_every=1)
    await rec.record_turn(SCOPES[0], "q0", "a0")
    with pytest.raises(TurnRecordingError) as ei:
        await asyncio.wait_for(rec.flush(), 30)
    assert [f.stage for f in ei.value.failures] == ["consolidate"]
    assert "SystemExit" in str(ei.value.errors[0])
    await rec.record_turn(SCOPES[0], "q1", "a1")  # the lanes and the store still serve
    with pytest.raises(TurnRecordingError):
        await asyncio.wait_for(rec.flush(), 30)
    await rec.close()
    assert (await asyncio.wait_for(mem.astats(SCOPES[0]), 30)).episodic == 4
    await mem.aclose()


async def test_waiting_on_any_recorder_from_the_owner_thread_fails_fast(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Even a recorder that never ran a turn: the guard knows the memory's owner thread."""

    class Auditing(HelaMemory):
        audit: TurnRecorder

        async def aconsolidate(self, scope: Sequence[str]) -> None:
            self.audit.record_turn_nowait(("audit",), "consolidated", str(scope))
            self.audit.flush_sync()  # would block the owner thread: refused

    mem = exact_memory(tmp_path / "store", cls=Auditing, fast=True, store=store_config)
    mem.audit = audit = TurnRecorder(mem, consolidate_every=None, max_pending=1)
    rec = TurnRecorder(mem, consolidate_every=1)
    await rec.record_turn(SCOPES[0], "q", "a")
    with pytest.raises(TurnRecordingError) as ei:
        await asyncio.wait_for(rec.flush(), 30)
    assert "own worker" in str(ei.value.errors[0])
    await asyncio.wait_for(audit.flush(), 30)  # from another thread it may wait, and does
    assert (await asyncio.wait_for(mem.astats(), 30)).episodic == 4  # q, a and the audit turn

    class Recording(HelaMemory):  # async record_turn on the owner thread, recorder full
        async def aconsolidate(self, scope: Sequence[str]) -> None:
            await audit.record_turn(("audit",), "one", "more")
            await audit.record_turn(("audit",), "and", "another")

    mem2 = exact_memory(tmp_path / "store2", cls=Recording, fast=True, store=store_config)
    audit = TurnRecorder(mem2, consolidate_every=None, max_pending=1)
    rec2 = TurnRecorder(mem2, consolidate_every=1)
    await rec2.record_turn(SCOPES[0], "q", "a")
    with pytest.raises(TurnRecordingError) as full:
        await asyncio.wait_for(rec2.flush(), 30)
    assert isinstance(full.value.errors[0], RecorderFullError)
    for r in (audit, rec2, rec, mem.audit):
        await r.close()
    await mem2.aclose()
    await mem.aclose()


async def test_waiting_on_the_recorder_from_its_own_worker_fails_fast() -> None:
    class SelfFlushing(FakeMemory):
        rec: TurnRecorder

        async def aconsolidate(self, scope: Sequence[str]) -> None:
            await self.rec.flush()  # would wait for itself

    m = SelfFlushing()
    m.rec = rec = TurnRecorder(fake(m), consolidate_every=1)
    await rec.record_turn(("s",), "q", "a")
    with pytest.raises(TurnRecordingError) as ei:
        await asyncio.wait_for(rec.flush(), 30)
    assert isinstance(ei.value.errors[0], RuntimeError)
    assert "own worker" in str(ei.value.errors[0])
    await rec.close()


async def test_event_time_is_taken_when_the_turn_is_recorded() -> None:
    m = FakeMemory()
    m.gate.clear()
    async with TurnRecorder(fake(m)) as rec:
        t0 = time.time()
        await rec.record_turn(("s",), "q", "a", metadata={"thread": "t1"})
        t1 = time.time()
        await rec.record_turn(("s",), "q2", "a2", ["m1"], 1_700_000_000)
        await asyncio.sleep(0.05)
        m.gate.set()
    first, second = m.calls
    assert t0 <= first["event_time"] <= t1
    assert first["metadata"] == {"thread": "t1"}
    assert (second["event_time"], second["used_ids"]) == (1_700_000_000.0, ("m1",))


async def test_event_loop_stays_responsive(tmp_path: Path, store_config: StoreConfig) -> None:
    mem = exact_memory(tmp_path / "store", fast=True, store=store_config)
    await mem.aopen()
    worst = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - t - 0.005)

    tick = asyncio.create_task(ticker())
    async with TurnRecorder(mem, max_pending=100, consolidate_every=None) as rec:
        for j in range(500):
            await rec.record_turn(SCOPES[j % 5], f"question number {j}", f"answer number {j}")
        await rec.flush()
    stop.set()
    await tick
    assert worst < 0.5
    assert mem.stats().episodic == 1000
    await mem.aclose()


# -- consolidation --------------------------------------------------------------


async def test_consolidation_every_n_turns_per_scope(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    mem = exact_memory(tmp_path / "store", cls=ConsolidatingMemory, fast=True, store=store_config)
    mem.calls = []
    a, b = SCOPES[0], SCOPES[1]
    async with TurnRecorder(mem, consolidate_every=3) as rec:
        for j in range(10):
            await rec.record_turn(a, f"a q{j}", f"a a{j}")
            if j < 7:
                await rec.record_turn(b, f"b q{j}", f"b a{j}")
    # once each time a scope's stored turns cross a multiple of 3 (a batch of
    # queued turns that crosses several multiples consolidates once), never early
    per_scope = {s: [n for t, n in mem.calls if t == s] for s in (a, b)}
    for scope, turns in ((a, 10), (b, 7)):
        seen = per_scope[scope]
        assert 1 <= len(seen) <= turns // 3
        assert seen == sorted(seen)
        assert all(n >= 2 * 3 * (i + 1) for i, n in enumerate(seen))

    mem.calls = []
    async with TurnRecorder(mem, consolidate_every=None) as rec:
        for j in range(5):
            await rec.record_turn(a, f"more q{j}", f"more a{j}")
    assert mem.calls == []

    mem.fail = True
    async with TurnRecorder(mem, consolidate_every=1) as rec:
        await rec.record_turn(a, "one more", "ok")
        with pytest.raises(TurnRecordingError) as ei:
            await rec.flush()
        assert [f.stage for f in ei.value.failures] == ["consolidate"]
        await rec.record_turn(a, "and another", "still ok")
        with pytest.raises(TurnRecordingError):
            await rec.flush()
    assert mem.stats(a).episodic == 20 + 10 + 4  # the turns themselves were stored
    mem.close()


@pytest.mark.skipif(not hasattr(HelaMemory, "aconsolidate"), reason="no aconsolidate yet")
async def test_real_consolidation_runs_in_the_background(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    mem = exact_memory(tmp_path / "store", fast=True, store=store_config)
    s = SCOPES[0]
    topics = ["tea", "hiking", "violin"]
    async with TurnRecorder(mem, consolidate_every=5) as rec:
        for j in range(15):
            t = topics[j % 3]
            await rec.record_turn(s, f"I really love {t} on weekends ({j})", f"{t} sounds fun")
        await rec.flush()
    st = await mem.astats(s)
    assert st.episodic == 30
    await mem.aclose()


def test_consolidate_every_defaults_to_the_memory_config(tmp_path: Path) -> None:
    assert TurnRecorder(fake(FakeMemory())).consolidate_every == 20
    mem = HelaMemory(HelaMemConfig(path=tmp_path / "x"), embedder=HashingEmbedder(64))
    assert TurnRecorder(mem).consolidate_every == 20
    assert TurnRecorder(mem, consolidate_every=None).consolidate_every is None
    if "consolidation" in HelaMemConfig.model_fields:
        cfg = HelaMemConfig.model_validate(
            {"path": tmp_path / "x", "consolidation": {"every_turns": 7}}
        )
        assert TurnRecorder(HelaMemory(cfg)).consolidate_every == 7


async def test_memory_without_aconsolidate_is_fine() -> None:
    m = FakeMemory()
    assert not hasattr(m, "aconsolidate")
    async with TurnRecorder(fake(m), consolidate_every=1) as rec:
        for j in range(3):
            await rec.record_turn(("s",), f"q{j}", f"a{j}")
    assert len(m.calls) == 3


# -- the turn context ------------------------------------------------------------


async def test_turn_context_records_the_ids_searches_returned(
    tmp_path: Path, store_config: StoreConfig, store_db: Any
) -> None:
    path = tmp_path / "store"
    mem = exact_memory(path, store=store_config)
    s = SCOPES[0]
    for text in ["green tea in kyoto", "black tea with milk", "coffee at noon"]:
        await mem.aadd(text, s)
    async with TurnRecorder(mem, consolidate_every=None) as rec:
        async with rec.turn(s) as turn:
            res = await mem.asearch("tea", s, k=2, learn=False, spread=False)

            async def side() -> None:  # a task spawned inside the turn counts too
                await mem.asearch("coffee", s, k=1, learn=False, spread=False)

            await asyncio.create_task(side())
            turn.record("which tea?", "green tea")
        coffee = next(i for i in turn.used_ids if i not in res.ids)
        assert turn.used_ids == [*res.ids, coffee]
        await rec.flush()

        async with rec.turn(s) as nothing:  # no record(): nothing is stored
            await mem.asearch("tea", s, learn=False)
        assert nothing.used_ids

        async def crash_mid_turn() -> None:
            async with rec.turn(s) as failed:
                failed.record("lost", "turn")
                raise RuntimeError("the agent failed mid-turn")

        async def record_twice() -> None:
            async with rec.turn(s) as twice:
                twice.record("q", "a")
                twice.record("q", "a")

        with pytest.raises(RuntimeError):
            await crash_mid_turn()
        with pytest.raises(InvalidInputError):
            await record_twice()
        await rec.flush()
    snap = read_store(store_db(path))
    assert [t for _, t in snap.episodes[s]][3:] == ["which tea?", "green tea"]
    used = {(await mem.aget(i)).content for i in turn.used_ids}
    assert used == {"green tea in kyoto", "black tea with milk", "coffee at noon"}
    for u in used:
        for new in ("which tea?", "green tea"):
            w = snap.edges[frozenset((u, new))]
            expect = TEMPORAL + ETA if u == "coffee at noon" and new == "which tea?" else ETA
            assert w == pytest.approx(expect)
    mem.close()


def test_turn_context_sync(tmp_path: Path, store_config: StoreConfig, store_db: Any) -> None:
    path = tmp_path / "store"
    mem = exact_memory(path, store=store_config)
    s = SCOPES[0]
    first = mem.add("alice adopted a cat named miso", s)
    mem.add("the weather was rainy", s)
    with TurnRecorder(mem, consolidate_every=None) as rec:
        with rec.turn(s, metadata={"thread": "t"}) as turn:
            res = mem.search("cat miso", s, k=1, learn=False)
            turn.record("what is my cat called?", "Miso", used_ids=["extra-id"])
        assert res.ids == [first.id]
        assert turn.used_ids == [first.id, "extra-id"]
    snap = read_store(store_db(path))
    assert snap.edges[frozenset((first.content, "Miso"))] == pytest.approx(ETA)
    con = store_db(path)
    meta = con.execute("SELECT metadata FROM memories WHERE content = 'Miso'").fetchone()[0]
    con.close()
    assert json.loads(meta) == {"thread": "t"}
    mem.close()


def test_module_doctests() -> None:
    result = doctest.testmod(hooks, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


async def test_recorded_metadata_is_what_was_passed_at_the_call() -> None:
    """A caller reusing (and changing) one metadata dict gets each turn's own values
    stored, as ``add_turn`` does; bad metadata is refused at the call, not at flush."""
    m = FakeMemory()
    m.gate.clear()
    meta: dict[str, Any] = {"session": {"id": "s-0"}, "tags": ["a"]}
    async with TurnRecorder(fake(m)) as rec:
        for i in range(3):
            meta["session"]["id"] = f"s-{i}"
            meta["tags"].append(f"t{i}")
            await rec.record_turn(("s",), f"q{i}", f"a{i}", metadata=meta)
        meta["session"]["id"] = "changed after"
        with pytest.raises(InvalidInputError, match="metadata"):
            await rec.record_turn(("s",), "q", "a", metadata={"bad": {1, 2}})
        m.gate.set()
    assert [c["metadata"] for c in m.calls] == [
        {"session": {"id": f"s-{i}"}, "tags": ["a", *(f"t{j}" for j in range(i + 1))]}
        for i in range(3)
    ]


class _BrokenIndex(DictIndex):
    """A custom index whose writes fail with its own error type (not StorageError)."""

    def upsert(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("index backend exploded")


def test_a_custom_index_failing_after_the_commit_stores_each_turn_once(tmp_path: Path) -> None:
    """Review: an error of another type than StorageError from a custom index's
    ``upsert``, raised after the turns' commit, failed the batch; the recorder then
    stored each of its turns again, one by one: every turn twice."""
    mem = HelaMemory(
        HelaMemConfig(path=tmp_path / "m"),
        embedder=HashingEmbedder(64),
        vector_index=_BrokenIndex(),
    )
    with mem, TurnRecorder(mem) as rec:
        for i in range(6):
            rec.record_turn_sync(("users", "alice"), f"question {i}", f"answer {i}")
        rec.flush_sync()
        assert mem.stats(("users", "alice")).episodic == 12
        # unindexed, so scanned exactly: found all the same
        hits = mem.search("question 4", ("users", "alice"), k=1, learn=False)
        assert hits[0].memory.content == "question 4"

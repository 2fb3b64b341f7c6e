"""A search sees every turn a TurnRecorder accepted before it (DESIGN §8), in its scopes.

Before, ``record_turn_sync(...)`` then ``search(...)`` in the same scope missed
the turn every time: the recorder only queued its dispatch on the owner loop,
so the search ran before the lane stored the turn.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_hooks import DictIndex

from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewTurn,
    Scope,
    SearchResult,
    StoreClosedError,
)
from helamem.core.hooks import TurnRecorder, TurnRecordingError

ALICE: Scope = ("users", "alice")
BOB: Scope = ("users", "bob")
CAROL: Scope = ("team", "carol")
WAIT = 30.0  # search_wait_timeout where a test expects the wait to end by itself


class GatedMemory(HelaMemory):
    """Turns of a scope in ``gated`` (of every scope when it is ``None``) are stored
    only once ``gate`` is set (the owner loop stays free meanwhile: the wait runs in a
    worker thread); ``stored`` notes the user message of every turn stored."""

    gate: threading.Event
    gated: set[Scope] | None
    stored: list[str]

    async def aadd_turns(self, turns: Iterable[NewTurn]) -> list[Any]:
        turns = list(turns)
        held = self.gated is None or any(tuple(t.scope) in self.gated for t in turns)
        if held and not self.gate.is_set():
            await asyncio.to_thread(self.gate.wait)
        out = await super().aadd_turns(turns)
        self.stored.extend(t.user for t in turns)
        return out


def memory(path: Path, cls: type[HelaMemory] = HelaMemory) -> Any:
    return cls(HelaMemConfig(path=path), embedder=HashingEmbedder(64), vector_index=DictIndex())


_GATES: list[threading.Event] = []


@pytest.fixture(autouse=True)
def _open_gates() -> Iterator[None]:
    """A failing test must not leave a lane (and its worker thread) waiting for ever."""
    yield
    while _GATES:
        _GATES.pop().set()


def gated(path: Path, *scopes: Scope) -> Any:
    """A :class:`GatedMemory` holding the turns of ``scopes`` (no scopes: of all),
    its gate closed."""
    mem = memory(path, GatedMemory)
    mem.gate, mem.gated, mem.stored = threading.Event(), set(scopes) or None, []
    _GATES.append(mem.gate)
    return mem


def texts(res: SearchResult) -> set[str]:
    return {h.content for h in res}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "search_wait_timeout" in r.getMessage()
    ]


# -- the search finds the turn recorded just before it ------------------------


def test_a_sync_search_sees_the_turns_recorded_just_before_it(tmp_path: Path) -> None:
    mem = memory(tmp_path / "store")
    mem.add("warm up the store", ("other",))
    with TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT) as rec:
        for i in range(8):
            for s in (ALICE, BOB, CAROL):
                rec.record_turn_sync(s, f"zebra{i} {s[1]} is my favourite", f"noted {i}")
                res = mem.search(f"zebra{i} {s[1]}", s, k=50, learn=False)
                assert f"zebra{i} {s[1]} is my favourite" in texts(res), (i, s)
            # a prefix search sees the turns of every scope under it
            rec.record_turn_sync(ALICE, f"yak{i} alice", "ok")
            rec.record_turn_sync(BOB, f"yak{i} bob", "ok")
            res = mem.search(f"yak{i}", ("users",), k=100, learn=False)
            assert {f"yak{i} alice", f"yak{i} bob"} <= texts(res), i
            rec.record_turn_sync(CAROL, f"gnu{i} carol", "ok")
            assert f"gnu{i} carol" in texts(mem.search(f"gnu{i}", (), k=100, learn=False))
            # and so does a search under a token budget
            rec.record_turn_sync(ALICE, f"okapi{i} alice", "ok")
            res = mem.search(f"okapi{i}", ALICE, max_tokens=4000, learn=False)
            assert f"okapi{i} alice" in texts(res), i
    mem.close()


async def test_an_async_search_sees_the_turns_recorded_just_before_it(tmp_path: Path) -> None:
    mem = memory(tmp_path / "store")
    await mem.aadd("warm up the store", ("other",))
    async with TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT) as rec:
        for i in range(8):
            for s in (ALICE, BOB, CAROL):
                await rec.record_turn(s, f"zebra{i} {s[1]} is my favourite", f"noted {i}")
                res = await mem.asearch(f"zebra{i} {s[1]}", s, k=50, learn=False)
                assert f"zebra{i} {s[1]} is my favourite" in texts(res), (i, s)
            rec.record_turn_nowait(ALICE, f"yak{i} alice", "ok")
            rec.record_turn_nowait(BOB, f"yak{i} bob", "ok")
            res = await mem.asearch(f"yak{i}", ("users",), k=100, learn=False)
            assert {f"yak{i} alice", f"yak{i} bob"} <= texts(res), i
            async with rec.turn(CAROL) as turn:  # as the adapters record
                turn.record(f"gnu{i} carol", "ok")
            res = await mem.asearch(f"gnu{i}", CAROL, max_tokens=4000, learn=False)
            assert f"gnu{i} carol" in texts(res), i
    await mem.aclose()


def test_a_search_sees_the_turns_of_every_recorder_of_the_memory(tmp_path: Path) -> None:
    mem = memory(tmp_path / "store")
    mem.add("warm up the store", ("other",))
    recs = [TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT) for _ in range(3)]
    for i in range(5):
        for r, rec in enumerate(recs):
            rec.record_turn_sync(ALICE, f"ibis{i} from recorder {r}", "ok")
        res = mem.search(f"ibis{i}", ALICE, k=100, learn=False)
        assert {f"ibis{i} from recorder {r}" for r in range(3)} <= texts(res), i
    recs[0].close_sync()  # a closed recorder is forgotten; the others still count
    recs[1].record_turn_sync(ALICE, "ibis closed", "ok")
    assert "ibis closed" in texts(mem.search("ibis closed", ALICE, k=100, learn=False))
    for rec in recs[1:]:
        rec.close_sync()
    mem.close()


# -- it waits only for what it must, and never for ever -----------------------


def test_a_search_waits_only_for_pending_turns_in_its_own_scopes(tmp_path: Path) -> None:
    mem = gated(tmp_path / "store", BOB)  # bob's turns are held until the gate opens
    mem.add("warm up the store", ("other",))
    rec = TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT)
    rec.record_turn_sync(BOB, "lemur bob", "ok")
    rec.record_turn_sync(ALICE, "lemur alice", "ok")
    with ThreadPoolExecutor(2) as pool:
        under_users: Future[SearchResult] = pool.submit(
            mem.search, "lemur", ("users",), k=100, learn=False
        )
        t0 = time.monotonic()
        res = mem.search("lemur", ALICE, k=100, learn=False)  # bob's pending turn: not waited
        assert time.monotonic() - t0 < WAIT / 3
        assert "lemur alice" in texts(res)
        assert "lemur carol" not in texts(res)
        rec.record_turn_sync(CAROL, "lemur carol", "ok")
        assert "lemur carol" in texts(mem.search("lemur", CAROL, k=100, learn=False))
        time.sleep(0.2)
        assert not under_users.done()  # ("users",) covers bob: it waits for his turn
        mem.gate.set()
        assert {"lemur alice", "lemur bob"} <= texts(under_users.result(WAIT))
    rec.close_sync()
    mem.close()


async def test_an_async_search_waits_without_blocking_the_event_loop(tmp_path: Path) -> None:
    mem = gated(tmp_path / "store", BOB)
    await mem.aadd("warm up the store", ("other",))
    rec = TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT)
    await rec.record_turn(BOB, "tapir bob", "ok")
    search = asyncio.ensure_future(mem.asearch("tapir", BOB, k=100, learn=False))
    ticks = 0
    for _ in range(20):  # the loop keeps running while the search waits
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20
    assert not search.done()
    mem.gate.set()
    assert "tapir bob" in texts(await asyncio.wait_for(search, WAIT))
    await rec.close()
    await mem.aclose()


def test_a_stuck_recorder_delays_a_search_at_most_its_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mem = gated(tmp_path / "store", BOB)
    mem.add("warm up the store", ("other",))
    rec = TurnRecorder(mem, consolidate_every=None, search_wait_timeout=0.3)
    rec.record_turn_sync(BOB, "okapi bob", "ok")
    caplog.set_level(logging.WARNING, logger="helamem.core.hooks")
    t0 = time.monotonic()
    res = mem.search("okapi", BOB, k=100, learn=False)
    took = time.monotonic() - t0
    assert 0.25 <= took < 10
    assert "okapi bob" not in texts(res)  # searched anyway, without it
    assert len(warnings_of(caplog)) == 1
    assert "1 turn(s)" in warnings_of(caplog)[0]

    async def asearch() -> SearchResult:
        return await mem.asearch("okapi", ("users",), k=100, learn=False)

    t0 = time.monotonic()
    res = asyncio.run(asearch())
    assert 0.25 <= time.monotonic() - t0 < 10
    assert "okapi bob" not in texts(res)
    assert len(warnings_of(caplog)) == 2
    mem.gate.set()
    rec.close_sync()
    assert "okapi bob" in texts(mem.search("okapi", BOB, k=100, learn=False))
    assert len(warnings_of(caplog)) == 2  # nothing pending: no wait, no warning
    mem.close()


def test_closing_the_memory_ends_a_search_waiting_for_its_turns(tmp_path: Path) -> None:
    mem = gated(tmp_path / "store", BOB)
    mem.add("warm up the store", ("other",))
    rec = TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT)
    rec.record_turn_sync(BOB, "quokka bob", "ok")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(mem.search, "quokka", BOB, k=100, learn=False)
        time.sleep(0.2)
        assert not waiting.done()
        t0 = time.monotonic()
        mem.close()  # the turn fails (the memory closed first): the search goes on, and raises
        with pytest.raises(StoreClosedError):
            waiting.result(WAIT)
        assert time.monotonic() - t0 < WAIT / 3
    mem.gate.set()
    with pytest.raises(TurnRecordingError):
        rec.close_sync()


# -- on the owner thread a search never waits for itself -----------------------


class SearchingConsolidation(HelaMemory):
    """Searches its scope from ``aconsolidate``, which runs in the recorder's lane on the
    owner loop, while a later turn of that scope waits in the same lane."""

    started: threading.Event
    go_on: threading.Event
    took: list[float]

    async def aconsolidate(self, scope: Sequence[str]) -> None:
        if self.took:
            return
        self.started.set()
        await asyncio.to_thread(self.go_on.wait)  # meanwhile the next turn is queued
        t0 = time.monotonic()
        await self.asearch("heron", scope, learn=False)
        self.search("heron", scope, learn=False)
        self.took.append(time.monotonic() - t0)


def test_a_search_on_the_owner_loop_does_not_wait_for_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mem = memory(tmp_path / "store", SearchingConsolidation)
    mem.started, mem.go_on, mem.took = threading.Event(), threading.Event(), []
    caplog.set_level(logging.WARNING, logger="helamem.core.hooks")
    rec = TurnRecorder(mem, consolidate_every=1, search_wait_timeout=WAIT)
    rec.record_turn_sync(ALICE, "heron 0", "ok")
    assert mem.started.wait(WAIT)
    rec.record_turn_sync(ALICE, "heron 1", "ok")  # behind the consolidation, in its lane
    mem.go_on.set()
    rec.flush_sync(WAIT)
    assert mem.took and mem.took[0] < WAIT / 3  # no wait for "heron 1", queued behind it
    assert warnings_of(caplog) == []
    # and from any other thread, a search still sees the turn just recorded
    rec.record_turn_sync(ALICE, "heron 2", "ok")
    assert "heron 2" in texts(mem.search("heron 2", ALICE, k=100, learn=False))
    rec.close_sync()
    mem.close()


# -- so do delete_scope and export_scope ---------------------------------------


def test_delete_scope_and_export_see_the_turns_recorded_just_before_them(tmp_path: Path) -> None:
    mem = gated(tmp_path / "store", ALICE, BOB)
    mem.add("warm up the store", ("other",))
    with TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT) as rec:
        rec.record_turn_sync(ALICE, "my passport number is 991", "noted")
        threading.Timer(0.2, mem.gate.set).start()  # stored a moment later
        assert mem.delete_scope(ALICE) == 2  # the turn went too, not stored after it
        rec.flush_sync()
        assert mem.list_scopes(("users",)) == []
        mem.gate.clear()
        rec.record_turn_sync(BOB, "okapi bob", "ok")
        threading.Timer(0.2, mem.gate.set).start()
        assert mem.export_scope(BOB, tmp_path / "bob.jsonl").memories == 2

        async def after_recording() -> tuple[int, int]:
            mem.gate.clear()
            await rec.record_turn(BOB, "yak bob", "ok")
            threading.Timer(0.2, mem.gate.set).start()
            exported = await mem.aexport_scope(BOB, tmp_path / "bob2.jsonl")
            mem.gate.clear()
            await rec.record_turn(BOB, "gnu bob", "ok")
            threading.Timer(0.2, mem.gate.set).start()
            return exported.memories, await mem.adelete_scope(BOB)

        assert asyncio.run(after_recording()) == (4, 6)
        rec.flush_sync()
        assert mem.list_scopes(("users",)) == []
    mem.close()

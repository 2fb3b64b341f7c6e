"""Every read of a memory (and every write whose result depends on what is stored)
sees the turns a TurnRecorder accepted before it, as ``search`` does.

Before, only ``search``, ``find_ids``, ``delete_scope`` and ``export_scope``
(and their async twins) waited for those turns: ``record_turn_sync(...)`` then
``stats``, ``get``, ``list_scopes``, ``consolidate``, ``forget``... ran before
the recorder's lane stored the turn and answered without it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_hooks_search import _open_gates, gated, memory  # noqa: F401 (autouse: gates opened)

from helamem.core import (
    ConsolidationReport,
    HelaMemory,
    NewMemory,
    NewTurn,
    Scope,
)
from helamem.core.hooks import TurnRecorder

ALICE: Scope = ("users", "alice")
WAIT = 30.0  # search_wait_timeout: the waits in these tests end by themselves
GATE_S = 0.3  # the recorded turn is stored this long after the call began


def logged(path: Path) -> Any:
    """A memory that stores every recorded turn only once its gate is set (open
    until a test closes it) and notes each stored turn's user message in ``stored``."""
    mem = gated(path)
    mem.gate.set()
    return mem


def record_then(mem: Any, rec: TurnRecorder, scope: Scope, user: str) -> None:
    """Record a turn that is stored only ``GATE_S`` seconds from now."""
    mem.gate.clear()
    rec.record_turn_sync(scope, user, "noted")
    threading.Timer(GATE_S, mem.gate.set).start()


# -- values: what a user reads right after recording a turn ---------------------


def test_reads_right_after_a_recorded_turn_see_it(tmp_path: Path) -> None:
    mem = logged(tmp_path / "store")
    mem.add("a spare memory of alice", ALICE)
    with TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT) as rec:
        record_then(mem, rec, ("users", "bob"), "bob likes tea")
        assert mem.list_scopes(("users",)) == [ALICE, ("users", "bob")]
        record_then(mem, rec, ALICE, "alice likes tea")
        assert mem.stats(ALICE).episodic == 3
        record_then(mem, rec, ALICE, "alice likes jazz")
        assert mem.stats().episodic == 7

        async def async_reads() -> tuple[int, list[Scope]]:
            mem.gate.clear()
            await rec.record_turn(("users", "dave"), "dave likes tea", "noted")
            threading.Timer(GATE_S, mem.gate.set).start()
            scopes = await mem.alist_scopes(("users",))
            mem.gate.clear()
            await rec.record_turn(ALICE, "alice likes fog", "noted")
            threading.Timer(GATE_S, mem.gate.set).start()
            return (await mem.astats(ALICE)).episodic, scopes

        episodic, scopes = asyncio.run(async_reads())
        assert ("users", "dave") in scopes
        assert episodic == 7
    mem.close()


# -- every public call: what it runs sees the turns accepted before it -----------

Call = Callable[[Any, dict[str, Any], Path], Any]


def _cases() -> dict[str, tuple[Scope, Call]]:
    """Each public operation of HelaMemory: the scope its turn is recorded in, and a
    call of it (``ids``: spare memories of alice made for it)."""
    return {
        "add": (ALICE, lambda m, ids, p: m.add("more", ALICE)),
        "add_many": (ALICE, lambda m, ids, p: m.add_many([NewMemory("more", ALICE)])),
        "add_turn": (ALICE, lambda m, ids, p: m.add_turn(ALICE, "q", "a")),
        "add_turns": (ALICE, lambda m, ids, p: m.add_turns([NewTurn(ALICE, "q", "a")])),
        "get": (ALICE, lambda m, ids, p: m.get(ids["a"])),
        "delete": (ALICE, lambda m, ids, p: m.delete(ids["a"])),
        "search": (ALICE, lambda m, ids, p: m.search("tea", ALICE, learn=False)),
        "find_ids": (ALICE, lambda m, ids, p: m.find_ids(ALICE, metadata={"k": "v"})),
        "reinforce": (ALICE, lambda m, ids, p: m.reinforce([ids["a"], ids["b"]])),
        "list_scopes": (ALICE, lambda m, ids, p: m.list_scopes()),
        "decay": (ALICE, lambda m, ids, p: m.decay(ALICE)),
        "stats": (ALICE, lambda m, ids, p: m.stats(("users",))),
        "consolidate": (ALICE, lambda m, ids, p: m.consolidate(ALICE)),
        "forget": (ALICE, lambda m, ids, p: m.forget(ALICE)),
        "delete_scope": (("gone",), lambda m, ids, p: m.delete_scope(("gone",))),
        "forget_turns": (ALICE, lambda m, ids, p: m.forget_turns(ALICE, [{"k": "v"}])),
        "export_scope": (ALICE, lambda m, ids, p: m.export_scope(ALICE, p / "out.jsonl")),
        "import_scope": (
            ALICE,
            lambda m, ids, p: m.import_scope(p / "src.jsonl", scope=("imported",)),
        ),
        "reindex": (ALICE, lambda m, ids, p: m.reindex()),
        "flush": (ALICE, lambda m, ids, p: m.flush()),
    }


CASES = _cases()
# opening and closing read no memories
NOT_READS = {"open", "aopen", "close", "aclose", "from_path", "from_url"}


def test_every_public_operation_is_covered_here() -> None:
    public = {
        name
        for name, value in inspect.getmembers(HelaMemory)
        if not name.startswith("_") and callable(value)
    }
    twins = {f"a{name}" for name in CASES}
    assert public - NOT_READS == set(CASES) | twins, "add the new operation to CASES"


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_operation_sees_the_turn_recorded_just_before_it(
    tmp_path: Path, name: str, mode: str
) -> None:
    mem = logged(tmp_path / "store")
    a, b = mem.add("a spare memory of alice", ALICE), mem.add("another of alice", ALICE)
    ids = {"a": a.id, "b": b.id}
    mem.add("exported, then deleted", ("src",))
    mem.export_scope(("src",), tmp_path / "src.jsonl")
    mem.delete_scope(("src",))
    scope, call = CASES[name]
    with TurnRecorder(mem, consolidate_every=None, search_wait_timeout=WAIT) as rec:
        if mode == "sync":
            record_then(mem, rec, scope, "recorded just before")
            call(mem, ids, tmp_path)
        else:
            twin = getattr(mem, f"a{name}")

            class Async:  # the call, with each method its async twin
                def __getattr__(self, attr: str) -> Any:
                    return getattr(mem, f"a{attr}") if attr == name else getattr(mem, attr)

            async def run() -> None:
                mem.gate.clear()
                await rec.record_turn(scope, "recorded just before", "noted")
                threading.Timer(GATE_S, mem.gate.set).start()
                result = call(Async(), ids, tmp_path)
                assert isinstance(result, Awaitable), twin
                await result

            asyncio.run(run())
        # the turn was stored before the operation returned (or stored a turn): it waited
        assert mem.stored[:1] == ["recorded just before"], name
    mem.close()


# -- the recorder's own work never waits for itself ----------------------------------


class OffloadingMemory(HelaMemory):
    """Overrides the recorder's async hooks the way the docs allow, handing the sync
    calls (and a read) to a thread: those calls run inside the lane's own work."""

    reads: list[int]

    async def aadd_turns(self, turns: Iterable[NewTurn]) -> list[Any]:
        stored = await asyncio.to_thread(self.add_turns, list(turns))
        self.reads.append((await asyncio.to_thread(self.stats, ALICE)).episodic)
        return stored

    async def aconsolidate(self, scope: Sequence[str]) -> ConsolidationReport:
        return await asyncio.to_thread(self.consolidate, scope)


def test_calls_a_lane_hands_to_a_thread_do_not_wait_for_its_own_turns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, ``add_turns`` called from an overridden ``aadd_turns`` through
    ``asyncio.to_thread`` waited ``search_wait_timeout`` for the very turn it was
    storing (then stored it, with a WARNING), every batch."""
    mem = memory(tmp_path / "store", OffloadingMemory)
    mem.reads = []
    with TurnRecorder(mem, consolidate_every=2, search_wait_timeout=WAIT) as rec:
        started = time.monotonic()
        rec.record_turn_sync(ALICE, "alice likes tea", "noted")
        rec.record_turn_sync(ALICE, "alice likes jazz", "noted")
        rec.flush_sync()
        took = time.monotonic() - started
    assert took < WAIT / 2  # no self-wait (WAIT is 30 s)
    assert mem.stats(ALICE).episodic == 4
    assert mem.reads and mem.reads[-1] == 4  # the lane's own read sees what it stored
    assert not [r for r in caplog.records if "still not stored" in r.getMessage()]
    mem.close()

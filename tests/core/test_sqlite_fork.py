"""``fork()`` while the parent's store is writing: the child's own store on the same
file neither hangs nor stays locked. SQLite keeps its lock state, and the mutexes
guarding it, in process memory; a call in flight at the fork used to stay "in
progress" in the child's copy, so the child's ``connect`` hung or every write there
waited its busy timeout and failed (``database is locked``). Now ``fork()`` waits for
the store's calls in flight (``sqlite_fork.ForkGate``); without it this test fails
(checked: 3 of 3 runs, two of them a hung child)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory
from helamem.core.storage import sqlite_fork

pytestmark = [
    pytest.mark.sqlite_only,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork"),
]

PARENT, CHILD = ("parent",), ("child",)


def _open(path: Path) -> HelaMemory:
    # a short busy timeout: a stuck lock fails the child in 3 s, not 30; no HNSW (the
    # parent's time goes to its SQLite transactions, where a fork used to land)
    cfg = HelaMemConfig(path=path, busy_timeout_s=3.0, chroma=ChromaConfig(exact_below=10**9))
    return HelaMemory(cfg, embedder=HashingEmbedder(32)).open()


def _child(path: Path, k: int) -> int:
    with _open(path) as m:
        m.add_many(NewMemory(f"child {k} note {i}", CHILD) for i in range(20))
        m.add(f"child {k} last", CHILD)
        return 0 if m.stats(CHILD).memories >= 21 else 2


def test_a_child_forked_mid_write_writes_its_own_store(
    tmp_path: Path, run_forked: Callable[[Callable[[], int]], int]
) -> None:
    path = tmp_path / "s"
    stop = threading.Event()
    written = [0]
    with _open(path) as parent:

        def write() -> None:  # the parent's store writes without pause (its owner thread)
            while not stop.is_set():
                parent.add_many(
                    NewMemory(f"parent {written[0]} {i} " + "x " * 200, PARENT) for i in range(200)
                )
                written[0] += 200

        writer = threading.Thread(target=write)
        writer.start()
        try:
            codes = []
            for k in range(12):  # without the gate, some fork lands mid-transaction (checked)
                time.sleep(0.05)
                codes.append(run_forked(lambda k=k: _child(path, k)))
        finally:
            stop.set()
            writer.join()
        assert codes == [0] * 12
        assert parent.stats(PARENT).memories == written[0]
        assert parent.stats(CHILD).memories == 12 * 21


# --- the gates themselves (sqlite_fork's hooks, called as fork() calls them) ---------


def _close(
    first: sqlite_fork.ForkGate,
    second: sqlite_fork.ForkGate,
    holding: threading.Event,
    done: threading.Event,
) -> None:
    """As a store's close: holds one gate, then needs the other to let it go."""
    with first:
        holding.set()
        time.sleep(0.3)  # the fork is waiting by now
        with second:
            pass
    done.set()


def test_fork_never_holds_a_gate_while_it_waits_for_another(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store closing holds its gate and waits for its checkpoint thread, which needs
    the checkpoint's gate. A fork that took the checkpoint's gate and then waited for the
    store's stalled both for the whole wait (then forked without the gate, logged).
    Both orders on the same two gates: one of them is the order a fork tries them in."""
    gates = [sqlite_fork.ForkGate(3.0, "store"), sqlite_fork.ForkGate(3.0, "checkpoint")]
    for first, second in (gates, gates[::-1]):
        holding, done = threading.Event(), threading.Event()

        closer = threading.Thread(target=_close, args=(first, second, holding, done))
        closer.start()
        assert holding.wait(10)
        started = time.monotonic()
        sqlite_fork._before_fork()
        try:
            took = time.monotonic() - started
            finished_first = done.is_set()  # the fork did not block the closer
            taken = sorted(g._name for g in sqlite_fork._taken if g in gates)
        finally:
            sqlite_fork._after_fork_in_parent()
        closer.join()
        assert finished_first
        assert taken == ["checkpoint", "store"]
        assert "did not wait longer" not in caplog.text
        assert took < 3.0  # it did not run out its wait either
        assert all(_free(g) for g in gates)


def _free(gate: sqlite_fork.ForkGate) -> bool:
    """Whether another thread can take ``gate`` now."""
    got: list[bool] = []

    def take() -> None:
        got.append(gate._lock.acquire(timeout=2))
        if got[0]:
            gate._lock.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return got == [True]


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Threads switch as often as the interpreter allows: races show in a few rounds."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class _SlowRelease:
    """A gate's lock whose release lingers: a second fork gets in while the first one
    is still giving its gates back."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()
        time.sleep(0.005)

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined,no-any-return]


def test_forks_from_two_threads_give_back_exactly_their_gates() -> None:
    """Two threads forking at once shared one list of taken gates: one gave back a gate
    the other had taken (``RuntimeError``), leaving it held by a thread that ends, and
    the store behind it then waited forever. Now forks take turns. (The hooks are called
    as ``fork()`` calls them: filelock refuses a real ``fork()`` while another thread's
    is in progress, but not every process imports filelock.)"""
    gates = [sqlite_fork.ForkGate(3.0, f"g{i}") for i in range(4)]
    for gate in gates:
        gate._lock = _SlowRelease()  # type: ignore[assignment]
    errors: list[BaseException] = []

    def fork_many() -> None:
        try:
            for _ in range(20):
                sqlite_fork._before_fork()
                sqlite_fork._after_fork_in_parent()
        except RuntimeError as exc:  # pragma: no cover - the fault
            errors.append(exc)

    forkers = [threading.Thread(target=fork_many) for _ in range(2)]
    for t in forkers:
        t.start()
    for t in forkers:
        t.join(60)
    assert not any(t.is_alive() for t in forkers)
    assert errors == []
    assert all(_free(g) for g in gates)


@pytest.mark.usefixtures("switch_often")
def test_gates_built_while_another_thread_forks() -> None:
    """The registry was read without a lock: a gate built on another thread during the
    read failed the fork's hook (``Set changed size during iteration``), which then
    took no gate at all."""
    errors: list[BaseException] = []
    done = threading.Event()

    def build() -> None:  # stores opened and closed on another thread
        alive: deque[sqlite_fork.ForkGate] = deque(maxlen=500)
        for _ in range(30_000):
            alive.append(sqlite_fork.ForkGate(1.0, "new"))
        done.set()

    builder = threading.Thread(target=build)
    builder.start()
    deadline = time.monotonic() + 10
    try:
        while not done.is_set() and time.monotonic() < deadline:
            try:
                sqlite_fork._before_fork()
            except RuntimeError as exc:  # pragma: no cover - the fault
                errors.append(exc)
            finally:
                sqlite_fork._after_fork_in_parent()
    finally:
        builder.join()
    assert errors == []


def test_a_fork_from_inside_a_job_keeps_that_job_whole_in_the_child(
    run_forked: Callable[[Callable[[], int]], int],
) -> None:
    """A thread that forks while it holds a gate (a fork from inside a store's job) still
    holds it in the child, once, and can let it go: the child's gates were all replaced
    by fresh ones, and giving one back there raised ``RuntimeError``."""
    gate = sqlite_fork.ForkGate(1.0, "mine")

    def child() -> int:
        if not gate._lock._is_owned():  # type: ignore[attr-defined]
            return 3
        gate.__exit__(None, None, None)  # the job ends in the child too
        return 0 if _free(gate) else 4

    with gate:
        code = run_forked(child)
    assert code == 0
    assert _free(gate)

"""``fork()`` and the SQLite store.

* A child must not open a store file its parent had open at the fork: SQLite's lock
  state, copied by ``fork()``, let the parent (closing its store) reset the WAL under
  the child's writes (10 of 100 lost; review). It raises ``ForkedStoreError`` now.
* A child forked while the parent's store is writing opens other stores without
  hanging: a SQLite call in flight at the fork used to stay "in progress" in the
  child's copy (``sqlite_fork.ForkGate``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helamem.core import (
    ChromaConfig,
    ForkedStoreError,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
)
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


def _refused(path: Path) -> int:
    try:
        _open(path)
    except ForkedStoreError as exc:
        return 0 if "spawn" in str(exc) and "before forking" in str(exc) else 3
    return 4


def test_a_child_forked_mid_write_opens_its_own_stores(
    tmp_path: Path, run_forked: Callable[[Callable[[], int]], int]
) -> None:
    """Forks while the parent writes without pause: each child opens a store of its
    own and writes it, and is refused the parent's file."""
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
            for k in range(12):
                time.sleep(0.05)
                codes.append(run_forked(lambda k=k: _child(tmp_path / f"child{k}", k)))
                codes.append(run_forked(lambda: _refused(path)))
        finally:
            stop.set()
            writer.join()
        assert codes == [0] * 24
        assert parent.stats(PARENT).memories == written[0]
    for k in range(12):
        with _open(tmp_path / f"child{k}") as m:
            assert m.stats(CHILD).memories == 21


def test_a_child_writes_the_parents_file_only_if_it_was_closed_before_the_fork(
    tmp_path: Path, run_forked: Callable[[Callable[[], int]], int]
) -> None:
    """The review's case: the parent's store open (idle) at the fork, the child's own
    store on the same file wrote 100 memories and saw them, the parent closed its store
    meanwhile, and 10 of the 100 were gone on reopening. Now the child is refused; with
    the parent's store closed before the fork, the child's 100 are all kept."""
    path = tmp_path / "s"
    parent = _open(path)
    parent.add("before the fork", PARENT)
    assert run_forked(lambda: _refused(path)) == 0
    parent.close()

    def child() -> int:
        with _open(path) as m:
            for i in range(100):
                m.add(f"child note {i}", CHILD)
            return 0 if m.stats(CHILD).memories == 100 else 2

    assert run_forked(child) == 0
    with _open(path) as again:
        assert again.stats(CHILD).memories == 100
        assert again.stats(PARENT).memories == 1


def test_a_grandchild_opens_a_store_of_its_own(
    tmp_path: Path, run_forked: Callable[[Callable[[], int]], int]
) -> None:
    """A child forks again (its hooks' state was reset at its own fork): the grandchild
    opens a new store, and is refused the file its parent (the child) had open."""
    parent_path, child_path = tmp_path / "p", tmp_path / "c"
    with _open(parent_path) as parent:
        parent.add("p", PARENT)

        def child() -> int:
            with _open(child_path) as m:
                m.add("c", CHILD)
                refused = _run_child(lambda: _refused(child_path))
                own = _run_child(lambda: _child(tmp_path / "g", 0))
                return refused * 10 + own

        assert run_forked(child) == 0
    with _open(tmp_path / "g") as g:
        assert g.stats(CHILD).memories == 21


def _run_child(fn: Callable[[], int]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


class _Waited:
    """A gate's lock that tells when a fork starts waiting for it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.waited = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self.waited.set()
        return self._lock.acquire(blocking, timeout) if blocking else False

    def release(self) -> None:
        self._lock.release()

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined,no-any-return]


def test_fork_never_holds_a_gate_while_it_waits_for_another(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store closing holds its gate and waits for its checkpoint thread, which needs
    the checkpoint's gate. A fork that took the checkpoint's gate and then waited for
    the store's stalled both for the whole wait (then forked without the gate, logged).
    Store gates are taken first now. Deterministic: the closer asks for the second gate
    only once the fork waits for the first."""
    store = sqlite_fork.ForkGate(3.0, "store", sqlite_fork.STORE)
    checkpoint = sqlite_fork.ForkGate(3.0, "checkpoint", sqlite_fork.CHECKPOINT)
    waited = _Waited()
    store._lock = waited  # type: ignore[assignment]
    holding, done = threading.Event(), threading.Event()

    def close() -> None:
        with store:
            holding.set()
            assert waited.waited.wait(10)  # the fork waits for the store's gate now
            with checkpoint:
                pass
        done.set()

    closer = threading.Thread(target=close)
    closer.start()
    assert holding.wait(10)
    started = time.monotonic()
    sqlite_fork._before_fork()
    try:
        took = time.monotonic() - started
        finished_first = done.is_set()
        taken = {g._name for g in sqlite_fork._mine.held if g in (store, checkpoint)}
    finally:
        sqlite_fork._after_fork_in_parent()
    closer.join()
    assert finished_first  # the fork did not block the closer
    assert taken == {"store", "checkpoint"}
    assert "did not wait longer" not in caplog.text
    assert took < 3.0  # it did not run out its wait
    assert _free(store) and _free(checkpoint)


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


def test_a_store_opened_while_the_fork_waits_is_waited_for_too() -> None:
    """The fork took the gates it saw when it began; a store opened while it waited
    (a new gate, its owner thread already connecting) was copied mid-call, and a child
    then hung in ``connect`` (review's stress: 1 child in about 500 forks). Now gates
    built meanwhile are taken too, and none can be built until the fork is done."""
    old = sqlite_fork.ForkGate(3.0, "old")
    waited = _Waited()
    old._lock = waited  # type: ignore[assignment]
    made: list[sqlite_fork.ForkGate] = []
    holding, done = threading.Event(), threading.Event()

    def work() -> None:
        with old:
            holding.set()
            assert waited.waited.wait(10)  # the fork waits for the old gate
            new = sqlite_fork.ForkGate(3.0, "new")  # another store opens meanwhile
            made.append(new)
            new.__enter__()  # and starts its first job
        time.sleep(0.3)  # the old gate is free; the new store is still connecting
        new.__exit__(None, None, None)
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    assert holding.wait(10)
    sqlite_fork._before_fork()
    try:
        finished_first = done.is_set()
        taken = {g._name for g in sqlite_fork._mine.held if g in (old, *made)}
    finally:
        sqlite_fork._after_fork_in_parent()
    worker.join()
    assert taken == {"old", "new"}
    assert finished_first  # the fork waited for the new store's job
    assert all(_free(g) for g in (old, *made))


class _Interrupted:
    """A gate's lock where a signal's exception (``KeyboardInterrupt``) lands once: in
    the fork's wait for it, or right after it is given back."""

    def __init__(self, where: str) -> None:
        self._lock = threading.RLock()
        self.where = where

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.where == "acquire":
            self.where = ""
            raise KeyboardInterrupt
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()
        if self.where == "release":
            self.where = ""
            raise KeyboardInterrupt

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("where", ["acquire", "release"])
def test_a_signal_in_the_fork_hooks_leaves_nothing_held(where: str) -> None:
    """An exception raised by a signal handler inside the hooks (which the fork only
    prints) left the registry held, so every later store construction, open and fork
    waited forever (review), or left the remaining gates held."""
    gates = [sqlite_fork.ForkGate(1.0, f"g{i}") for i in range(3)]
    gates[1]._lock = _Interrupted(where)  # type: ignore[assignment]
    raised = False
    try:
        sqlite_fork._before_fork()
        sqlite_fork._after_fork_in_parent()
    except KeyboardInterrupt:
        raised = True
    assert raised
    sqlite_fork._after_fork_in_parent()  # as fork() calls it even after a failed hook
    assert sqlite_fork._registry.acquire(timeout=2)
    sqlite_fork._registry.release()
    assert all(_free(g) for g in gates)
    sqlite_fork.ForkGate(1.0, "after")  # construction does not wait


def test_a_fork_waits_for_a_stuck_call_only_its_bound_then_warns_naming_the_file(
    tmp_path: Path,
    run_forked: Callable[[Callable[[], int]], int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """README: "The wait is bounded: in all at most the largest `busy_timeout_s` of the
    stores whose calls are in flight (10 s for a background checkpoint); past it the fork
    goes ahead and logs a WARNING naming the file." A store call stuck (20 s) at the fork,
    in a store whose bound is 1 s: the fork goes ahead while it is still stuck, and the
    child opens and writes a store of its own. Another store, open and idle, and one
    closed, both with a 25 s bound, made the fork wait 25 s: the stuck call's end."""
    import logging

    def config(name: str, busy_s: float) -> HelaMemConfig:
        chroma = ChromaConfig(exact_below=10**9)
        return HelaMemConfig(path=tmp_path / name, busy_timeout_s=busy_s, chroma=chroma)

    with HelaMemory(config("closed", 25.0), embedder=HashingEmbedder(32)) as closed:
        closed.add("closed before the fork", PARENT)
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def stuck(_: object) -> None:  # a store call, on the owner thread, inside its gate
        started.set()
        release.wait(20)
        finished.set()

    cfg = config("p", 1.0)
    with (
        HelaMemory(config("idle", 25.0), embedder=HashingEmbedder(32)).open() as idle,
        HelaMemory(cfg, embedder=HashingEmbedder(32)).open() as m,
    ):
        idle.add("open and idle at the fork", PARENT)
        m.add("written before the fork: a checkpoint thread too", PARENT)
        caller = threading.Thread(target=m._call, args=(stuck,))
        caller.start()
        try:
            assert started.wait(10)
            with caplog.at_level(logging.WARNING, logger="helamem.core.storage.sqlite_fork"):
                code = run_forked(lambda: _child(tmp_path / "c", 0))
            forked_while_stuck = not finished.is_set()
        finally:
            release.set()
            caller.join(30)
    assert code == 0
    assert forked_while_stuck  # it waited the stuck store's bound, not the others'
    assert f"fork() did not wait longer for work on {cfg.path} (1 s)" in caplog.text


def _pool_task(path: str) -> int:
    with _open(Path(path)) as m:  # the parent's open store, in a pool worker
        return len(m.add("from a pool worker", CHILD).id)


def test_a_fork_pools_task_opening_the_parents_open_store_raises_in_the_parent(
    tmp_path: Path,
) -> None:
    """README: "With multiprocessing's `fork` start method ..., a `Pool` whose tasks open
    the parent's open store get the error back in the parent" (``ForkedStoreError``,
    naming the fix), and nothing of the task is written; the pool goes on."""
    import multiprocessing

    path = tmp_path / "s"
    with _open(path) as parent:
        parent.add("before the pool", PARENT)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            with pytest.raises(ForkedStoreError, match="spawn"):
                pool.apply_async(_pool_task, (str(path),)).get(timeout=60)
            other = pool.apply_async(_pool_task, (str(tmp_path / "other"),)).get(timeout=60)
        assert other > 0  # another path opens normally in the worker
        assert parent.stats(CHILD).memories == 0

"""A batch's reads see one state: a write of the same path, from another store object
(thread) or another process, committing between two reads of one batch waits for the
batch instead (``InMemoryStore`` answers a batch atomically; before, a ``get`` could see a
key's new value and a listing in the same batch its old one, or a put and delete half
applied).

Each case lets the racing write run just after the batch's first read, waits for it
a bounded time (``RACE_S``), then lets the batch go on.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import GetOp, ListNamespacesOp, Op, PutOp, Result, SearchOp

from helamem.core import HelaMemory
from helamem.langgraph import HelaMemStore
from helamem.langgraph.store import JOURNAL

NS = ("users", "alice")
RACE_S = 0.5  # how long the first read waits for the racing write
WAIT_S = 60.0


def _after_first_read(store: HelaMemStore, race: Callable[[], None]) -> None:
    """Run ``race`` (bounded) right after ``store``'s next batch's first document read."""
    docs = store.documents
    real = docs.batch
    armed = [True]

    def batch(ops: Iterable[Op]) -> list[Result]:
        got = real(ops)
        if armed[0]:
            armed[0] = False
            race()
        return got

    docs.batch = batch  # type: ignore[method-assign]


def _racing_thread(other: HelaMemStore, ops: list[Op]) -> tuple[Callable[[], None], list[Any]]:
    """A race that writes ``ops`` with ``other`` on a thread, waiting at most ``RACE_S``
    for it; the thread (to join) is put in the returned list."""
    started: list[Any] = []

    def race() -> None:
        t = threading.Thread(target=other.batch, args=(ops,))
        t.start()
        started.append(t)
        t.join(RACE_S)

    return race, started


READS: dict[str, list[Op]] = {
    "listing": [GetOp(NS, "k"), SearchOp(NS, limit=10)],
    "query": [GetOp(NS, "k"), SearchOp(NS, query="apple", limit=10)],
    "namespaces": [GetOp(NS, "k"), ListNamespacesOp(match_conditions=None, limit=10)],
}


def _seen(results: list[Result]) -> tuple[Any, Any]:
    """What the get saw of ``k`` and what the other read saw of the state."""
    got, other = results
    first = None if got is None else got.value  # type: ignore[union-attr]
    if other and isinstance(other[0], tuple):  # namespaces
        return first, sorted(other)  # type: ignore[arg-type]
    return first, sorted((i.key, i.value) for i in other)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", sorted(READS))
@pytest.mark.parametrize("use_async", [False, True])
def test_a_write_between_two_reads_of_a_batch_waits_for_the_batch(
    memory: HelaMemory, kind: str, use_async: bool
) -> None:
    """A rewrite of ``k`` and a put+delete pair (another store object, on a thread) land
    after the batch's reads, never between them."""
    reader, writer = HelaMemStore(memory), HelaMemStore(memory)
    reader.put(NS, "k", {"text": "apple pie", "v": 1})
    before = _seen(reader.batch(READS[kind]))
    assert before[0] == {"text": "apple pie", "v": 1}
    for ops in (
        [PutOp(NS, "k", {"text": "apple tart", "v": 2})],  # a rewrite
        [PutOp(("users", "bob"), "new", {"text": "apple crumble"}), PutOp(NS, "k", None)],
    ):
        race, started = _racing_thread(writer, list(ops))
        _after_first_read(reader, race)
        ops_ = READS[kind]
        got = asyncio.run(reader.abatch(ops_)) if use_async else reader.batch(ops_)
        assert _seen(got) == before  # one state: the one before the racing write
        for t in started:
            t.join(WAIT_S)
            assert not t.is_alive()
        after = _seen(reader.batch(READS[kind]))
        assert after != before  # the racing write did land, after the batch
        reader.put(NS, "k", {"text": "apple pie", "v": 1})  # the state before, again
        reader.delete(("users", "bob"), "new")
    reader.close()
    writer.close()


_CHILD = """
import sys
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
from helamem.langgraph import HelaMemStore
from helamem.langgraph.store import JOURNAL
mem = HelaMemory(HelaMemConfig(path=sys.argv[1]), embedder=HashingEmbedder(256))
with HelaMemStore(mem) as store:
    store.put(("users", "alice"), "warm", {"text": "warm up"})  # opened, embedder loaded
    print("ready", flush=True)
    sys.stdin.readline()
    store.put(("users", "alice"), "k", {"text": "apple tart", "v": 2})
    print("done", flush=True)
mem.close()
"""


def test_a_write_from_another_process_between_two_reads_waits_for_the_batch(
    memory: HelaMemory, path: Path, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("the child opens the store by path (SQLite)")
    reader = HelaMemStore(memory)
    reader.put(NS, "k", {"text": "apple pie", "v": 1})
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        lines: list[str] = []

        def race() -> None:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            t = threading.Thread(target=lambda: lines.append(child.stdout.readline()))  # type: ignore[union-attr]
            t.start()
            t.join(RACE_S)  # the child's put commits now, or waits for the batch

        _after_first_read(reader, race)
        got = reader.batch(READS["listing"])
        assert _seen(got) == (
            {"text": "apple pie", "v": 1},
            [("k", {"text": "apple pie", "v": 1}), ("warm", {"text": "warm up"})],
        )
        assert child.wait(WAIT_S) == 0
        assert reader.get(NS, "k").value == {"text": "apple tart", "v": 2}  # type: ignore[union-attr]
    finally:
        if child.poll() is None:
            child.kill()
        reader.close()


def test_a_waiting_writer_goes_before_reads_that_come_after_it(tmp_path: Path) -> None:
    """The gate: a writer waiting for reads under way holds it, so a read that comes
    later waits behind the writer (a stream of overlapping reads never starves it)."""
    from helamem.langgraph._journal import Journal

    path = tmp_path / JOURNAL
    first, writer, later = Journal(path), Journal(path), Journal(path)
    order: list[str] = []
    held = first.read_lock()

    def write() -> None:
        with writer.held():
            order.append("write")

    def read() -> None:
        fd = later.read_lock()
        order.append("read")
        later.read_unlock(fd)

    w = threading.Thread(target=write)
    w.start()
    w.join(RACE_S)  # waits for the read under way, holding the gate
    r = threading.Thread(target=read)
    r.start()
    r.join(RACE_S)  # waits behind the writer, though only a read holds the lock
    assert order == []
    first.read_unlock(held)
    for t in (w, r):
        t.join(WAIT_S)
    assert order == ["write", "read"]
    writer.close()


def test_an_abatch_cancelled_while_it_waits_for_a_write_leaves_no_lock_held(
    memory: HelaMemory,
) -> None:
    """Its read lock, taken on a thread after the cancel, is given back: held, it would
    keep every later writer of the path waiting."""
    reader, writer = HelaMemStore(memory), HelaMemStore(memory)
    reader.put(NS, "k", {"text": "apple pie"})
    release = threading.Event()

    def hold() -> None:
        with writer._journal.held():  # a write under way
            release.wait(WAIT_S)

    holder = threading.Thread(target=hold)
    holder.start()

    async def cancelled() -> None:
        task = asyncio.ensure_future(reader.abatch([GetOp(NS, "k")]))
        await asyncio.sleep(RACE_S)  # waiting for the write
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()  # the write ends; the cancelled read takes the lock, then gives it back

    asyncio.run(cancelled())
    holder.join(WAIT_S)
    done = threading.Thread(target=writer.put, args=(NS, "k", {"text": "apple tart"}))
    done.start()
    done.join(WAIT_S)
    assert not done.is_alive()
    assert reader.get(NS, "k").value == {"text": "apple tart"}  # type: ignore[union-attr]
    reader.close()
    writer.close()


@pytest.mark.skipif(sys.platform == "win32", reason="no fork, no flock")
def test_a_child_forked_during_a_read_does_not_keep_the_lock(path: Path) -> None:
    """Review 170: an flock belongs to the open file, which a child forked while the
    read lock was held shares; closing the parent's descriptor alone left the lock held
    until the child exited, and every writer of the path waited for it."""
    import os
    import time

    from helamem.langgraph._journal import Journal

    reader, writer = Journal(path / JOURNAL), Journal(path / JOURNAL)
    fd = reader.read_lock()
    pid = os.fork()
    if pid == 0:  # the child never touches the store: it only outlives the read
        time.sleep(4)
        os._exit(0)
    try:
        reader.read_unlock(fd)
        started = time.monotonic()
        with writer.held():
            pass
        assert time.monotonic() - started < 2.0  # not the child's 4 s
    finally:
        os.waitpid(pid, 0)

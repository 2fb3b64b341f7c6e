"""A search's learning write runs after its results return, before the next call.

Issue 18 (item 2): the co-activation a ``search(learn=True)`` writes is off the
request path. These tests pin what that must keep: the write is never lost
while the memory is open (every later call sees it, ``close`` writes it), it
runs after the caller has its hits, and a failing write never fails the
search that came before it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from helamem.core import DiskFullError, HelaMemory

A = ("users", "a")


def _fill(mem: HelaMemory) -> list[str]:
    return [
        mem.add(text, A).id
        for text in (
            "alice plays the violin on sundays",
            "bob fixes bicycles in his garage",
            "tea with milk and honey",
            "the violin recital is on saturday",  # not next to the first: no temporal edge
        )
    ]


def _edges(mem: HelaMemory) -> int:
    return mem.stats(A).edges


def test_every_later_call_sees_the_learning_of_a_search(mem: HelaMemory) -> None:
    _fill(mem)
    before = _edges(mem)
    hits = mem.search("violin", A, k=2)
    assert len(hits) == 2
    # the very next call, whatever it is, runs after the write: the pair is an edge now
    assert _edges(mem) == before + 1
    assert all(mem.get(h.memory.id).access_count == 1 for h in hits)


def test_the_search_returns_before_its_learning_write(mem: HelaMemory) -> None:
    _fill(mem)
    core = mem._call(lambda c: c)
    real = core.store.co_activate
    release, writing, written = threading.Event(), threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> None:
        writing.set()
        release.wait(10)  # a synchronous write would hold the search this long
        real(*args, **kwargs)
        written.set()

    core.store.co_activate = held  # type: ignore[method-assign]
    before = _edges(mem)
    hits = mem.search("violin", A, k=2)
    assert len(hits) == 2
    assert not written.is_set()  # the caller has its hits while the write still waits
    release.set()
    assert writing.wait(10)
    assert _edges(mem) == before + 1  # and the next call comes after it
    assert written.is_set()


@pytest.mark.parametrize("error", [DiskFullError("the disk is full"), TypeError("a bug")])
@pytest.mark.parametrize("on_owner", [False, True])
def test_a_failed_learning_write_never_fails_the_search(
    mem: HelaMemory, caplog: pytest.LogCaptureFixture, error: Exception, on_owner: bool
) -> None:
    _fill(mem)
    core = mem._call(lambda c: c)
    real = core.store.co_activate

    def full(*args: Any, **kwargs: Any) -> None:
        raise error

    core.store.co_activate = full  # type: ignore[method-assign]
    before = _edges(mem)
    with caplog.at_level(logging.WARNING, logger="helamem.core._learning"):
        if on_owner:  # a call made on the owner thread (as a recorder lane's) runs inline
            hits = mem._call(lambda c: mem.search("violin", A, k=2))
        else:
            hits = mem.search("violin", A, k=2)
        assert {h.memory.content for h in hits} == {
            "alice plays the violin on sundays",
            "the violin recital is on saturday",
        }
        assert _edges(mem) == before  # dropped (the transaction rolled back), the store usable
    assert "co-activation was dropped, not stored" in caplog.text
    assert all(mem.get(h.memory.id).access_count == 0 for h in hits)
    core.store.co_activate = real  # type: ignore[method-assign]
    mem.search("violin", A, k=2)
    assert _edges(mem) == before + 1


def test_close_writes_a_learning_step_still_pending(tmp_path: Path, make_mem: Any) -> None:
    path = tmp_path / "s"
    mem = make_mem(path)
    _fill(mem)
    before = _edges(mem)
    core = mem._call(lambda c: c)
    pending: list[int] = []

    def bare_search() -> None:  # on the owner loop, outside a call: nothing writes after it
        core.search("violin", A, 2)
        pending.append(core.pending_learning)

    mem._call_soon(bare_search)
    mem.close()  # queued behind it
    assert pending == [1]
    with make_mem(path) as again:
        assert _edges(again) == before + 1


CHILD = """
import sys, time
from pathlib import Path
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
mem = HelaMemory(HelaMemConfig(path=Path(sys.argv[1])), embedder=HashingEmbedder(256))
mem.search("violin", ("users", "a"), k=2)  # learn=True
mem.stats()  # any later call returns after the learning write committed
print("ACK", flush=True)
time.sleep(60)  # killed here, never closed
"""


@pytest.mark.sqlite_only  # a child process on the store's file
def test_a_learning_write_survives_sigkill_once_a_later_call_returned(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from helamem.core import HashingEmbedder, HelaMemConfig

    path = tmp_path / "s"
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(256)) as mem:
        _fill(mem)
        before = _edges(mem)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ACK"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(256)) as again:
        assert _edges(again) == before + 1


async def _cancel_before_start(mem: HelaMemory, call: Callable[[], Awaitable[Any]]) -> None:
    """Cancel ``call()`` while the owner thread is busy, so it never starts."""
    import asyncio

    hold = threading.Event()
    mem._call_soon(lambda: hold.wait(30))  # the owner is busy: the call cannot start
    try:
        task = asyncio.ensure_future(call())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        hold.set()


async def _cancel_once_started(holder: Any, name: str, call: Callable[[], Awaitable[Any]]) -> None:
    """Cancel ``call()`` once it is inside ``holder.<name>`` on the owner thread."""
    import asyncio

    real = getattr(holder, name)
    started, go = threading.Event(), threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        go.wait(30)
        return real(*args, **kwargs)

    setattr(holder, name, slow)
    try:
        task = asyncio.ensure_future(call())
        assert await asyncio.to_thread(started.wait, 30)
        task.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        setattr(holder, name, real)


async def test_a_cancelled_asearch_learns_only_if_it_had_started(mem: HelaMemory) -> None:
    _fill(mem)
    before = _edges(mem)
    await _cancel_before_start(mem, lambda: mem.asearch("violin", A, k=2))
    assert _edges(mem) == before  # never started: nothing learned
    core = mem._call(lambda c: c)
    await _cancel_once_started(core.store, "rank_rows", lambda: mem.asearch("violin", A, k=2))
    assert _edges(mem) == before + 1  # started: it ran to the end and learned


async def test_a_cancelled_aadd_is_stored_only_if_it_had_started(mem: HelaMemory) -> None:
    """The documented semantics of a cancelled async write: not started, nothing stored;
    started, stored to the end (the caller still sees CancelledError)."""
    await _cancel_before_start(mem, lambda: mem.aadd("never stored", A))
    assert "never stored" not in [h.content for h in mem.search("never stored", A, k=5)]
    core = mem._call(lambda c: c)
    await _cancel_once_started(core, "_embed_tokens", lambda: mem.aadd("stored anyway", A))
    found = [h.content for h in mem.search("stored anyway", A, k=5, learn=False)]
    assert "stored anyway" in found  # started: it ran to the end


QUERIES = ["violin", "bicycles garage", "tea honey", "violin recital saturday", "bob", "milk"]


def _race(fn: Callable[[str], None], rounds: int = 3) -> None:
    start = threading.Barrier(len(QUERIES))

    def run(q: str) -> None:
        start.wait(10)
        for _ in range(rounds):
            fn(q)

    threads = [threading.Thread(target=run, args=(q,)) for q in QUERIES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)


def test_racing_learning_searches_lose_no_write(mem: HelaMemory) -> None:
    """Learning searches racing from threads are served one at a time and each one's
    write is kept: every hit returned is counted once (README: "Learning and order")."""
    ids = _fill(mem)
    returned: list[int] = []
    lock = threading.Lock()

    def search(q: str) -> None:
        n = len(mem.search(q, A, k=2))
        with lock:
            returned.append(n)

    _race(search)
    assert len(returned) == 3 * len(QUERIES)
    assert sum(mem.get(i).access_count for i in ids) == sum(returned) > 0


def test_racing_read_only_searches_answer_as_one_after_another(mem: HelaMemory) -> None:
    """With ``learn=False`` the order racing calls are served in does not matter: each
    answer is the one the same search gives alone (README: "Learning and order")."""
    _fill(mem)
    mem.search("violin", A, k=2)  # some learning first: edges beyond the temporal chain
    alone = {q: mem.search(q, A, k=2, learn=False) for q in QUERIES}
    got: list[tuple[str, list[str], list[float]]] = []
    lock = threading.Lock()

    def search(q: str) -> None:
        res = mem.search(q, A, k=2, learn=False)
        with lock:
            got.append((q, res.ids, [h.score for h in res]))

    _race(search)
    assert len(got) == 3 * len(QUERIES)
    for q, ids, scores in got:
        assert ids == alone[q].ids
        assert scores == [h.score for h in alone[q]]


async def test_a_cancelled_batch_write_is_stored_whole_or_not_at_all(mem: HelaMemory) -> None:
    """README (Cancelled async calls): an ``aadd_many``/``aadd_turns`` cancelled before
    the owner thread starts it stores nothing; once started it stores every memory of
    the batch ("a write is never partly stored"); a retry of the stored batch with its
    own ids raises ``InvalidInputError`` and stores nothing more."""
    from helamem.core import InvalidInputError, NewMemory, NewTurn

    def batch(tag: str) -> list[NewMemory]:
        return [NewMemory(f"{tag} note {i}", A, id=f"{tag}-{i}") for i in range(5)]

    turns = [NewTurn(A, f"turn question {i}", f"turn answer {i}") for i in range(3)]
    await _cancel_before_start(mem, lambda: mem.aadd_many(batch("never")))
    await _cancel_before_start(mem, lambda: mem.aadd_turns(turns))
    assert mem.stats(A).memories == 0  # never started: nothing stored
    core = mem._call(lambda c: c)
    await _cancel_once_started(core, "_embed_tokens", lambda: mem.aadd_many(batch("kept")))
    await _cancel_once_started(core, "_embed_tokens", lambda: mem.aadd_turns(turns))
    assert mem.stats(A).memories == 5 + 2 * 3  # started: stored to the end, whole
    assert all(mem.get(f"kept-{i}").content == f"kept note {i}" for i in range(5))
    with pytest.raises(InvalidInputError):
        # the safe retry, with one memory the first try did not carry: refused whole
        await mem.aadd_many([NewMemory("fresh note", A, id="fresh"), *batch("kept")])
    assert mem.stats(A).memories == 11


def test_another_open_store_object_sees_the_learning_once_a_later_call_returned(
    tmp_path: Path, make_mem: Any
) -> None:
    """README (Killed processes): a search's learning, once any later call has returned,
    is seen by "other store objects and processes". The other object is open before
    the search (its caches warm), as another worker's would be."""
    with make_mem(tmp_path / "s") as mem, make_mem(tmp_path / "s") as other:
        _fill(mem)
        before = _edges(other)
        other.search("violin", A, k=2, learn=False)
        hits = mem.search("violin", A, k=2)  # learns: one edge, two accesses
        mem.stats()  # a later call returned: the write is done
        assert _edges(other) == before + 1
        assert [other.get(h.memory.id).access_count for h in hits] == [1, 1]

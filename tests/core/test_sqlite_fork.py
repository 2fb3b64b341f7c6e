"""``fork()`` while the parent's store is writing: the child's own store on the same
file neither hangs nor stays locked. SQLite keeps its lock state, and the mutexes
guarding it, in process memory; a call in flight at the fork used to stay "in
progress" in the child's copy, so the child's ``connect`` hung or every write there
waited its busy timeout and failed (``database is locked``). Now ``fork()`` waits for
the store's calls in flight (``sqlite_fork.ForkGate``); without it this test fails
(checked: 3 of 3 runs, two of them a hung child)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory

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

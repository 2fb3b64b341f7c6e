"""``HelaMemStore.close()`` racing a put on another thread (helper 140): close used to
close the document store's SQLite connection and the journal under the writer
(the process crashed with SIGSEGV in ``SqliteStore``, or the put raised
``sqlite3.ProgrammingError``). Now close waits for the step under way, which
completes and is stored; a step starting after close raises ``StoreClosedError``.

The race is made deterministic: the put is held inside its write (after the
journal lock, before its intents are logged) until close has been seen waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HelaMemory, StoreClosedError
from helamem.langgraph import HelaMemStore

NS = ("docs",)


@pytest.fixture
def memory(tmp_path: Path, new_memory: Any) -> Iterator[HelaMemory]:
    mem: HelaMemory = new_memory(tmp_path / "store")
    with mem:
        yield mem


def _hold_the_write(store: HelaMemStore) -> tuple[threading.Event, threading.Event]:
    """Hold the next write inside the writer lock: ``(inside, release)``."""
    inside, release = threading.Event(), threading.Event()
    journal = store._journal
    log = journal.log

    def held_log(intents: Any) -> None:
        journal.log = log  # type: ignore[method-assign]
        inside.set()
        release.wait(30)
        log(intents)

    journal.log = held_log  # type: ignore[method-assign]
    return inside, release


@pytest.mark.parametrize("api", ["put", "aput"])
def test_close_waits_for_a_put_under_way_and_it_is_stored(memory: HelaMemory, api: str) -> None:
    store = HelaMemStore(memory)
    store.put(NS, "warm", {"text": "warm up"})
    inside, release = _hold_the_write(store)
    failed: list[BaseException] = []

    def put() -> None:
        try:
            if api == "put":
                store.put(NS, "k", {"text": "a heron by the river"})
            else:
                asyncio.run(store.aput(NS, "k", {"text": "a heron by the river"}))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failed.append(exc)

    writer = threading.Thread(target=put, daemon=True)
    writer.start()
    assert inside.wait(30)
    closer = threading.Thread(target=store.close, daemon=True)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive(), "close() returned while a put was writing"
    release.set()
    writer.join(30)
    closer.join(30)
    assert not closer.is_alive() and not writer.is_alive()
    assert failed == []
    with pytest.raises(StoreClosedError):
        store.put(NS, "later", {"text": "after close"})
    with HelaMemStore(memory) as again:
        got = again.get(NS, "k")
        assert got is not None and got.value == {"text": "a heron by the river"}
        assert [i.key for i in again.search(NS, query="heron")][:1] == ["k"]
        assert again.repair().readded == 0

"""README (Read your writes): ``get``/``aget`` wait "at most `read_timeout` seconds ...;
past it, a warning and the search goes ahead" for this memory's own turns still being
stored, in ``HelaMemChatMemory`` and ``HelaMemMemoryBlock``. The fault injected: a store
whose turn writes hang (a locked database, a stalled embedder) until the test releases them."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from li_fakes import hashing_config
from llama_index.core.llms import ChatMessage

from helamem.core import HelaMemory, NewTurn
from helamem.llamaindex import HelaMemChatMemory, HelaMemMemoryBlock

HANG_S = 30.0  # the most a hung write waits for the test to release it
SCOPE = ("users", "alice")
TURN = ("the wifi password is tulip", "Noted.")


class HungStore(HelaMemory):
    """A real store whose turn writes wait until ``release`` is set (at most ``HANG_S``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(hashing_config(path))
        self.release = threading.Event()
        self.writing = 0  # turn writes under way

    async def aadd_turns(self, turns: Iterable[NewTurn]) -> Any:
        batch = list(turns)
        self.writing += 1
        try:
            await asyncio.to_thread(self.release.wait, HANG_S)
            return await super().aadd_turns(batch)
        finally:
            self.writing -= 1


@pytest.fixture
async def hung(tmp_path: Path) -> AsyncIterator[HungStore]:
    store = HungStore(tmp_path / "store")
    yield store
    store.release.set()
    await store.aclose()


def _gave_up(hung: HungStore, caplog: pytest.LogCaptureFixture) -> None:
    """The read returned while the turn's write still hung, and said so."""
    assert not hung.release.is_set()
    assert hung.writing == 1  # its turn is still being stored: the read did not wait for it
    assert "turns not stored within 0.2 s: not searched" in caplog.text


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_chat_memorys_read_gives_up_waiting_after_read_timeout(
    hung: HungStore, caplog: pytest.LogCaptureFixture, use_async: bool
) -> None:
    ours = HelaMemChatMemory.from_defaults(memory=hung, scope=SCOPE, read_timeout=0.2)
    await ours.aput(ChatMessage(role="user", content=TURN[0]))
    await ours.aput(ChatMessage(role="assistant", content=TURN[1]))  # the turn: queued
    question = ChatMessage(role="user", content="what is the wifi password")
    await ours.aput(question)
    with caplog.at_level(logging.WARNING, logger="helamem.llamaindex"):
        got = await ours.aget() if use_async else await asyncio.to_thread(ours.get)
    _gave_up(hung, caplog)
    assert got[-1] == question  # the window, without waiting for the turn
    hung.release.set()
    await ours.aflush()  # the hung write, released, is stored: nothing was lost
    hits = await hung.asearch("wifi password tulip", SCOPE, k=3, learn=False)
    assert any(TURN[0] in h.content for h in hits)
    await ours.aclose()


async def test_a_blocks_read_gives_up_waiting_after_read_timeout(
    hung: HungStore, caplog: pytest.LogCaptureFixture
) -> None:
    block = HelaMemMemoryBlock.from_memory(hung, scope=SCOPE, read_timeout=0.2)
    await block.aput(
        [ChatMessage(role="user", content=TURN[0]), ChatMessage(role="assistant", content=TURN[1])]
    )
    question = [ChatMessage(role="user", content="what is the wifi password")]
    with caplog.at_level(logging.WARNING, logger="helamem.llamaindex"):
        got = await block.aget(question)
    _gave_up(hung, caplog)
    assert "tulip" not in got  # searched without the turn still hung
    hung.release.set()
    await block.aflush()
    assert "tulip" in await block.aget(question)  # stored once released: read again
    await block.aclose()

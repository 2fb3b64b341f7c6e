"""A turn put while ``close()``/``aclose()`` runs is stored (the adapter reopens, as
after its ``close``) or raises; it is never acknowledged and lost (helper 138).

The races are made deterministic by running the racing put from inside the
close: from the recorder's drain (the put arrives after close began, the memory
still open), and from inside ``record_turn`` (the put took the recorder just
before close closed it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage

from helamem.core import HelaMemConfig, HelaMemory, TurnRecorder
from helamem.llamaindex import HelaMemChatMemory, HelaMemMemoryBlock


def _turn(user: str, reply: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=reply)]


def _stored(config: HelaMemConfig, scope: tuple[str, ...]) -> list[str]:
    with HelaMemory(config) as check:
        res = check.search("x", scope, k=50, learn=False, spread=False, semantic_k=0)
        assert len(res) == check.stats(scope).episodic
        return sorted(h.content for h in res)


def _during(recorder: TurnRecorder | HelaMemory, name: str, act: Callable[[], Any]) -> None:
    """Run ``act`` once, at the start of ``recorder.<name>`` (an instance patch)."""
    original = getattr(recorder, name)

    def patched(*args: Any, **kwargs: Any) -> Any:
        setattr(recorder, name, original)
        act()
        return original(*args, **kwargs)

    setattr(recorder, name, patched)


def _during_async(recorder: TurnRecorder | HelaMemory, name: str, act: Callable[[], Any]) -> None:
    original = getattr(recorder, name)

    async def patched(*args: Any, **kwargs: Any) -> Any:
        setattr(recorder, name, original)
        await act()
        return await original(*args, **kwargs)

    setattr(recorder, name, patched)


@pytest.mark.parametrize("during", ["the recorder's drain", "the memory's close"])
def test_a_put_arriving_while_close_runs_is_stored(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig], during: str
) -> None:
    """The put arrives after close() began: while it drains the recorder (the put used to
    go to a new recorder on the still-open memory, which close() then shut: the turn
    failed, and the failure went with the recorder the next use replaced), or as it
    closes the memory it leased (the put took that memory and queued its turn there)."""
    config = config_at(tmp_path / "s")
    chat = HelaMemChatMemory.from_defaults(config=config, session_id="a")
    chat.put_messages(_turn("q1 apples", "r1"))
    target: TurnRecorder | HelaMemory = (
        chat.recorder if during == "the recorder's drain" else chat.memory
    )
    name = "close_sync" if during == "the recorder's drain" else "close"
    _during(target, name, lambda: chat.put_messages(_turn("q2 pears", "r2")))
    chat.close()
    chat.close()  # used after close, the adapter reopened: closed again when done
    assert _stored(config, ("llamaindex", "a")) == ["q1 apples", "q2 pears", "r1", "r2"]


def test_a_put_whose_recorder_close_shut_is_put_again(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]
) -> None:
    config = config_at(tmp_path / "s")
    chat = HelaMemChatMemory.from_defaults(config=config, session_id="a")
    chat.put_messages(_turn("q1 apples", "r1"))
    # the put took the recorder, then close() closed it before the turn was queued
    _during(chat.recorder, "record_turn_sync", chat.close)
    chat.put_messages(_turn("q2 pears", "r2"))
    chat.close()
    assert _stored(config, ("llamaindex", "a")) == ["q1 apples", "q2 pears", "r1", "r2"]


async def test_an_aput_arriving_while_aclose_drains_is_stored(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig]
) -> None:
    config = config_at(tmp_path / "s")
    chat = HelaMemChatMemory.from_defaults(config=config, session_id="a")
    await chat.aput_messages(_turn("q1 apples", "r1"))

    async def racing() -> None:
        await chat.aput_messages(_turn("q2 pears", "r2"))

    _during_async(chat.recorder, "close", racing)
    await chat.aclose()
    await chat.aclose()
    assert _stored(config, ("llamaindex", "a")) == ["q1 apples", "q2 pears", "r1", "r2"]


@pytest.mark.parametrize("where", ["close", "record_turn"])
async def test_a_block_put_racing_aclose_is_stored(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig], where: str
) -> None:
    config = config_at(tmp_path / "s")
    block = HelaMemMemoryBlock(config=config, scope=("b",))
    await block._aput(_turn("q1 apples", "r1"))

    async def racing() -> None:
        await block._aput(_turn("q2 pears", "r2"))

    if where == "close":
        _during_async(block.recorder, "close", racing)
        await block.aclose()
    else:
        _during_async(block.recorder, "record_turn", block.aclose)
        await racing()
    await block.aclose()
    assert _stored(config, ("b",)) == ["q1 apples", "q2 pears", "r1", "r2"]


@pytest.mark.parametrize("adapter", ["chat memory", "memory block"])
async def test_an_aput_arriving_while_aclose_shuts_the_memory_is_stored(
    tmp_path: Path, config_at: Callable[[Path], HelaMemConfig], adapter: str
) -> None:
    config = config_at(tmp_path / "s")
    scope: tuple[str, ...]
    if adapter == "chat memory":
        chat = HelaMemChatMemory.from_defaults(config=config, session_id="a")
        put, close, scope = chat.aput_messages, chat.aclose, ("llamaindex", "a")
        memory = chat.memory
    else:
        block = HelaMemMemoryBlock(config=config, scope=("b",))
        put, close, scope = block._aput, block.aclose, ("b",)
        memory = block.memory
    await put(_turn("q1 apples", "r1"))

    async def racing() -> None:
        await put(_turn("q2 pears", "r2"))

    _during_async(memory, "aclose", racing)
    await close()
    await close()
    assert _stored(config, scope) == ["q1 apples", "q2 pears", "r1", "r2"]

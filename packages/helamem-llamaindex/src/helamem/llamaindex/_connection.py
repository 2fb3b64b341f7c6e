"""An adapter's connection (its memory and turn recorder), written once for the
chat memory and the memory block: opened on first use, reopened after ``close``,
and closed so that a turn put while ``close`` runs is stored or raises, never lost.

``close`` takes the adapter's memory and recorder before it drains and releases
them: a put racing it finds none and opens its own (the adapter is used after its
``close``: it reopens, README), rather than queueing a turn on a recorder whose
memory ``close`` then shuts (its turn failed, and the failure went with the
replaced recorder). A put that took the recorder just before ``close`` closed it
(:class:`~helamem.core.RecorderClosedError`: the turn was not accepted) is put
again on the reopened connection.
"""

from __future__ import annotations

from typing import Any, Protocol

from helamem.core import HelaMemConfig, HelaMemory, RecorderClosedError, TurnRecorder

from ._shared import release_memory, resolve_memory

__all__ = [
    "aclose_connection",
    "arecord",
    "close_connection",
    "live_memory",
    "live_recorder",
    "record_sync",
]


class Holder(Protocol):
    """What an adapter keeps of its connection (pydantic private attributes)."""

    config: HelaMemConfig
    read_timeout: float
    _memory: HelaMemory | None
    _owned: bool
    _recorder: TurnRecorder | None
    _own_recorder: bool


def live_memory(holder: Holder) -> HelaMemory:
    """The live memory (reused from this process, else created from ``config``)."""
    if holder._memory is None or holder._memory.closed:
        holder._memory, holder._owned = resolve_memory(holder.config)
    return holder._memory


def live_recorder(holder: Holder) -> TurnRecorder:
    """The turn recorder completed turns go through (its own follows a reopened memory:
    a closed one accepts nothing; a shared recorder is its owner's)."""
    memory = live_memory(holder)
    own = holder._own_recorder
    if holder._recorder is None or (own and holder._recorder.memory is not memory):
        holder._recorder = TurnRecorder(memory, search_wait_timeout=min(holder.read_timeout, 1e6))
        holder._own_recorder = True
    return holder._recorder


def record_sync(holder: Holder, job: dict[str, Any]) -> None:
    """``record_turn_sync(**job)``; again on the reopened connection when this
    adapter's ``close`` closed the recorder meanwhile (the turn was not accepted)."""
    recorder = live_recorder(holder)
    try:
        recorder.record_turn_sync(**job)
    except RecorderClosedError:
        if holder._recorder is recorder:  # closed by its owner (a shared one): as raised
            raise
        live_recorder(holder).record_turn_sync(**job)


async def arecord(holder: Holder, job: dict[str, Any]) -> None:
    """Async :func:`record_sync` (``record_turn`` waits for room, never blocks)."""
    recorder = live_recorder(holder)
    try:
        await recorder.record_turn(**job)
    except RecorderClosedError:
        if holder._recorder is recorder:
            raise
        await live_recorder(holder).record_turn(**job)


def _detach(holder: Holder) -> tuple[TurnRecorder | None, bool, HelaMemory | None, bool]:
    """The adapter's recorder and memory, taken from it at once (see the module)."""
    taken = (holder._recorder, holder._own_recorder, holder._memory, holder._owned)
    holder._recorder, holder._own_recorder = None, False
    holder._memory, holder._owned = None, False
    return taken


def close_connection(holder: Holder) -> None:
    """Drain the recorder (close it if it is the adapter's own); close an owned memory
    (its last lease in this process). What the drain raises is raised after the lease
    is given back."""
    recorder, own_recorder, memory, owned = _detach(holder)
    try:
        if recorder is not None:
            recorder.close_sync() if own_recorder else recorder.flush_sync()
    finally:
        if owned and memory is not None and release_memory(memory):
            memory.close()


async def aclose_connection(holder: Holder) -> None:
    """Async :func:`close_connection`."""
    recorder, own_recorder, memory, owned = _detach(holder)
    try:
        if recorder is not None:
            await (recorder.close() if own_recorder else recorder.flush())
    finally:
        if owned and memory is not None and release_memory(memory):
            await memory.aclose()

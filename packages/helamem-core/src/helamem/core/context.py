"""Turn-scoped bookkeeping: which memories did retrieval return during this turn?

Adapters open a :func:`collect_used` block around one agent turn; every
:meth:`~helamem.core.HelaMemory.search` made inside it (sync or async, in
this context or tasks it spawns) adds the ids it returned, so the turn can
be recorded with "the memories used for it" without bookkeeping of its own.

What "used" means is decided in one place, when the turn is stored
(``add_turn``/``add_turns``, which :class:`~helamem.core.TurnRecorder` and
every adapter call): the ids passed as ``used_ids`` are what the turn
*retrieved or showed*; of those, only the memories the turn's reply (its
last message) is close to co-activate with the turn, and how they are linked
follows :class:`~helamem.core.DynamicsConfig` (``attribution_margin``,
``attribution_floor``, ``used_pairs``, ``unused_weakening``,
``strength_budget``; see :func:`helamem.core.dynamics.attributed`). So a
caller passes everything the turn saw; it never has to guess what the reply
drew on.

Examples:
    >>> with collect_used() as used:
    ...     note_used(["a", "b"])
    ...     note_used(["b", "c"])
    >>> used.ids
    ['a', 'b', 'c']
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["UsedMemories", "collect_used", "note_used"]


@dataclass
class UsedMemories:
    """The ids retrieval returned inside one :func:`collect_used` block, first seen first."""

    _ids: dict[str, None] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def add(self, ids: Iterable[str]) -> None:
        for i in ids:
            self._ids.setdefault(i, None)


_current: ContextVar[UsedMemories | None] = ContextVar("helamem_used_memories", default=None)


@contextmanager
def collect_used() -> Iterator[UsedMemories]:
    """Collect the ids of every search inside the block (nested blocks all collect)."""
    used = UsedMemories()
    outer = _current.get()
    token = _current.set(used)
    try:
        yield used
    finally:
        _current.reset(token)
        if outer is not None:
            outer.add(used.ids)


def note_used(ids: Iterable[str]) -> None:
    """Record ids as used by the current turn (no-op outside :func:`collect_used`)."""
    used = _current.get()
    if used is not None:
        used.add(ids)

"""HeLa-Mem for LangGraph: a Hebbian long-term memory store and a turn-recording checkpointer.

Examples:
    >>> from helamem.core import HelaMemory, TurnRecorder
    >>> from helamem.langgraph import HelaMemCheckpointer, HelaMemStore
    >>> mem = HelaMemory.from_path("./helamem-data")
    >>> store = HelaMemStore(mem)
    >>> with TurnRecorder(mem) as rec, HelaMemCheckpointer(rec, store=store) as saver:
    ...     graph = builder.compile(checkpointer=saver, store=store)   # doctest: +SKIP
"""

from ._scopes import SCOPE_KEY
from .checkpoint import (
    CheckpointerClosedError,
    CheckpointerModeError,
    CheckpointerNotOpenError,
    HelaMemCheckpointer,
    Turn,
    completed_turn,
    default_scope,
)
from .store import ID_FIELD, HelaMemStore

__all__ = [
    "ID_FIELD",
    "SCOPE_KEY",
    "CheckpointerClosedError",
    "CheckpointerModeError",
    "CheckpointerNotOpenError",
    "HelaMemCheckpointer",
    "HelaMemStore",
    "Turn",
    "completed_turn",
    "default_scope",
]

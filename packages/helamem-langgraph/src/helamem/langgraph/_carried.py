"""Whether a checkpoint only carries a turn along that an earlier one completed.

A put whose messages say what its parent's said (``update_state`` of other
channels, a run whose nodes write no message or ``{"messages": []}``, a run's
last node writing none) completes its turn only if no checkpoint since the
messages last changed did: else it carries that turn along and records nothing,
in a fresh checkpointer too, even after the turn was forgotten with
``delete_scope`` (its ``unique_on`` key went with it). :class:`CarriedTurns`
plans the reads (generators, driven by the checkpointer with ``get_tuple`` or
``aget_tuple``) and remembers this process's own recent puts, so that a put
whose parent it wrote reads nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass

from langchain_core.runnables import RunnableConfig

from langgraph.checkpoint.base import Checkpoint, CheckpointMetadata, CheckpointTuple

from ._scopes import LEGACY_ANCESTORS, ReadFailed
from ._turns import Turn, completed_turn, messages_seen

__all__ = ["CarriedTurns", "checkpoint_id"]

logger = logging.getLogger("helamem.langgraph.checkpoint")


def checkpoint_id(config: RunnableConfig | None) -> str | None:
    """The checkpoint a config names, as one key (``None``: none, a thread's latest)."""
    conf = (config or {}).get("configurable", {})
    at = conf.get("checkpoint_id")
    if not at:
        return None
    return f"{conf.get('thread_id')}\x00{conf.get('checkpoint_ns', '')}\x00{at}"


@dataclass(frozen=True, slots=True)
class _Seen:
    """What carrying needs of one checkpoint."""

    messages: int  # hash of messages_seen
    turn: str | None  # the key of the turn it completed
    parent: RunnableConfig | None


class CarriedTurns:
    """The reads that tell a carried turn, and this process's recent puts (bounded,
    thread-safe)."""

    def __init__(self, messages_key: str, limit: int) -> None:
        self._key = messages_key
        self._limit = limit
        self._known: OrderedDict[str, _Seen] = OrderedDict()
        self._lock = threading.Lock()

    def _seen(
        self,
        checkpoint: Checkpoint,
        config: RunnableConfig,
        metadata: CheckpointMetadata,
        parent: RunnableConfig | None,
    ) -> _Seen:
        done = completed_turn(config, checkpoint, metadata, self._key)
        return _Seen(hash(messages_seen(checkpoint, self._key)), done and done[1], parent)

    def remember(
        self,
        saved: RunnableConfig,
        parent: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
    ) -> None:
        """The checkpoint just written (``parent``: the put's config)."""
        at = checkpoint_id(saved)
        if at is None:
            return
        up = parent if checkpoint_id(parent) is not None else None
        seen = self._seen(checkpoint, saved, metadata, up)
        with self._lock:
            self._known[at] = seen
            self._known.move_to_end(at)
            while len(self._known) > self._limit:
                self._known.popitem(last=False)

    def plan(
        self, config: RunnableConfig, checkpoint: Checkpoint, turn: Turn
    ) -> Generator[RunnableConfig, CheckpointTuple | None, Turn | None]:
        """``turn`` unless a checkpoint at or above the put's parent, whose messages
        say the same as ``checkpoint``'s, completed it (yields the configs to read,
        newest first, at most :data:`LEGACY_ANCESTORS`, of checkpoints this process
        did not write; sent each tuple, ``None`` when none; thrown :class:`ReadFailed`:
        then, or past that many, ``unique_on`` decides)."""
        if checkpoint_id(config) is None:
            return turn
        mine = hash(messages_seen(checkpoint, self._key))
        want: RunnableConfig | None = config
        for _ in range(LEGACY_ANCESTORS):
            at = checkpoint_id(want)
            if want is None or at is None:
                return turn
            with self._lock:
                seen = self._known.get(at)
            if seen is None:
                try:
                    tup = yield want
                except ReadFailed as exc:
                    logger.debug("reading an earlier checkpoint failed: %r", exc)
                    return turn
                if tup is None:
                    return turn
                seen = self._seen(tup.checkpoint, tup.config, tup.metadata, tup.parent_config)
            if seen.messages != mine:
                return turn  # the messages changed after it: this put's turn is new
            if seen.turn == turn[1]:
                return None
            want = seen.parent
        return turn

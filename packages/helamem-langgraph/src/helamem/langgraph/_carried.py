"""Whether a checkpoint only carries a turn along that an earlier one completed.

Every root checkpoint is marked (:data:`~._scopes.MARK_KEY`) with the latest turn
completed at or above it (:class:`Mark`: its thread, epoch and key), passed from parent
to child. A put that completes the turn its parent's mark names carries it along and
records nothing, whatever it did to the messages (an old message removed, the answer
rewritten, a window trimmed, any number of checkpoints since), in a fresh
checkpointer too, even after the turn was forgotten with ``delete_scope``. A turn
completed anew (a new question, a replay from a checkpoint before its answer) is not
its parent's mark: the store holds it back when its ``unique_on`` key was forgotten
(``forgotten_turns``), in any process. A ``copy_thread`` copy carries
its source's turns as its own. Under a parent without a mark (written before marks, or
after a failed read) the older rule applies: the put records nothing when a checkpoint
since the messages last changed completed the same turn (at most
:data:`~._scopes.LEGACY_ANCESTORS` back). :class:`CarriedTurns` plans the reads
(generators, driven by the checkpointer with ``get_tuple`` or ``aget_tuple``) and
remembers this process's own recent puts, so that a put whose parent it wrote reads
nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Generator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.runnables import RunnableConfig

from langgraph.checkpoint.base import Checkpoint, CheckpointMetadata, CheckpointTuple

from ._scopes import LEGACY_ANCESTORS, MARK_KEY, ReadFailed
from ._turns import NO_ID, Turn, asked_again, completed_turn, human_count, messages_seen

__all__ = ["CarriedTurns", "Mark", "checkpoint_id", "marked"]

logger = logging.getLogger("helamem.langgraph.checkpoint")


def checkpoint_id(config: RunnableConfig | None) -> str | None:
    """The checkpoint a config names, as one key (``None``: none, a thread's latest)."""
    conf = (config or {}).get("configurable", {})
    at = conf.get("checkpoint_id")
    if not at:
        return None
    return f"{conf.get('thread_id')}\x00{conf.get('checkpoint_ns', '')}\x00{at}"


@dataclass(frozen=True, slots=True)
class Mark:
    """The latest turn completed at or above a checkpoint: its thread and epoch (as its
    ``unique_on`` key has them), its human message id, or for one without an id
    (:data:`~._turns.NO_ID`) a digest of its question and answer and the number of
    human messages then (a window drops some; a new turn adds one)."""

    thread: str
    epoch: str | None
    key: str
    humans: int = 0

    @classmethod
    def of(cls, turn: Turn, epoch: str | None, checkpoint: Checkpoint, messages_key: str) -> Mark:
        """The mark of ``turn``, completed by ``checkpoint`` in ``epoch``."""
        thread, key, user, answer = turn
        if not key.startswith(NO_ID):
            return cls(thread, epoch, key)
        text = f"{user}\x00{answer}".encode("utf-8", "surrogatepass")
        digest = NO_ID + hashlib.sha256(text).hexdigest()[:32]
        return cls(thread, epoch, digest, human_count(checkpoint, messages_key))

    def carries(self, done: Mark) -> bool:
        """Whether a put completing ``self`` only carries ``done`` (its parent's) along."""
        if (self.thread, self.epoch, self.key) != (done.thread, done.epoch, done.key):
            return False
        return not self.key.startswith(NO_ID) or self.humans <= done.humans

    def reopened(self) -> Mark:
        """This mark under a checkpoint whose messages end in a question: an id-less
        turn's question asked again (the same text, maybe at the same place, maybe with
        as many human messages) opens a new turn, which no later put carries along
        (``humans`` -1); a turn with an id keeps its id (a regenerated answer)."""
        return replace(self, humans=-1) if self.key.startswith(NO_ID) else self

    def dump(self) -> str:
        return json.dumps([self.thread, self.epoch, self.key, self.humans])


def _mark_of(metadata: Mapping[str, Any] | None) -> Mark | None:
    """The mark in a checkpoint's metadata (``None``: none, or not one of ours)."""
    raw = (metadata or {}).get(MARK_KEY)
    try:
        got = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not (isinstance(got, list) and len(got) == 4):
        return None
    thread, epoch, key, humans = got
    if not (isinstance(thread, str) and isinstance(key, str) and type(humans) is int):
        return None
    return Mark(thread, epoch, key, humans) if epoch is None or isinstance(epoch, str) else None


def marked(metadata: CheckpointMetadata, mark: Mark | None) -> Any:
    """``metadata`` with ``mark`` (unchanged when ``None``)."""
    return metadata if mark is None else {**metadata, MARK_KEY: mark.dump()}


@dataclass(frozen=True, slots=True)
class _Seen:
    """What carrying needs of one checkpoint."""

    messages: int  # hash of messages_seen
    turn: str | None  # the key of the turn it completed
    parent: RunnableConfig | None
    mark: Mark | None


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
        messages = hash(messages_seen(checkpoint, self._key))
        return _Seen(messages, done and done[1], parent, _mark_of(metadata))

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

    def _look(
        self, want: RunnableConfig
    ) -> Generator[RunnableConfig, CheckpointTuple | None, _Seen | None]:
        """The checkpoint ``want`` names: remembered, else read (``None``: none, or the
        read failed)."""
        at = checkpoint_id(want)
        with self._lock:
            seen = None if at is None else self._known.get(at)
        if seen is not None:
            return seen
        try:
            tup = yield want
        except ReadFailed as exc:
            logger.debug("reading an earlier checkpoint failed: %r", exc)
            return None
        if tup is None:
            return None
        return self._seen(tup.checkpoint, tup.config, tup.metadata, tup.parent_config)

    def plan(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        done: Turn | None,
        turn: Turn | None,
        epoch: str | None,
    ) -> Generator[RunnableConfig, CheckpointTuple | None, tuple[Turn | None, Mark | None]]:
        """``turn`` (the put's turn to record, ``None``: none) unless the put only
        carries it along, and the put's mark: that of ``done`` (the turn it completes),
        else its parent's (yields the configs to read, newest first, of checkpoints this
        process did not write; sent each tuple, ``None`` when none; thrown
        :class:`ReadFailed`: then ``unique_on`` decides)."""
        if config.get("configurable", {}).get("checkpoint_ns"):
            return turn, None  # a subgraph's: turns are the root's
        mine = None if done is None else Mark.of(done, epoch, checkpoint, self._key)
        if checkpoint_id(config) is None:
            return turn, mine
        parent = yield from self._look(config)
        held = None if parent is None else parent.mark
        thread = str(config.get("configurable", {}).get("thread_id"))
        if held is not None and held.thread != thread:  # a copy's: its source's turn
            held = replace(held, thread=thread, epoch=epoch)
        if held is not None and held.epoch != epoch:
            held = None  # the thread's epoch was not read (a failed read)
        if turn is None:
            if mine is None and held is not None and asked_again(checkpoint, self._key):
                held = held.reopened()
            return None, mine or held
        if held is not None:
            return (None if mine is not None and mine.carries(held) else turn), mine
        kept = yield from self._walk(config, checkpoint, turn, parent)
        return kept, mine

    def _walk(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        turn: Turn,
        seen: _Seen | None,
    ) -> Generator[RunnableConfig, CheckpointTuple | None, Turn | None]:
        """The rule under a parent without a mark: ``turn`` unless a checkpoint at or
        above the put's parent (``seen``), whose messages say the same as
        ``checkpoint``'s, completed it (at most :data:`LEGACY_ANCESTORS`)."""
        mine = hash(messages_seen(checkpoint, self._key))
        for _ in range(LEGACY_ANCESTORS):
            if seen is None or seen.messages != mine:
                return turn  # the messages changed after it: this put's turn is new
            if seen.turn == turn[1]:
                return None
            if seen.parent is None:
                return turn
            seen = yield from self._look(seen.parent)
        return turn

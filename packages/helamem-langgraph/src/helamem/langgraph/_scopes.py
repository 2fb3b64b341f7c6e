"""The scope a checkpoint's turn goes to, written into the checkpoint's metadata.

A run's config names its scope (``("users", user_id)`` by default); a config from
``get_state_history`` or ``get_state`` (time travel, or a UI going on from the last
state) holds only LangGraph's keys. So every root checkpoint carries the scope it was
written in (:data:`SCOPE_KEY`: ``{"thread": thread_id, "scope": [...] or None, ...}``),
and a put whose config holds only LangGraph's keys takes its parent's: from the
checkpointer's recent puts, else read from the saver. A parent written before the stamp
(or by another thread: ``copy_thread`` copies metadata) is looked up the old way: the
run's keys that savers copy into checkpoint metadata, walking up at most
:data:`LEGACY_ANCESTORS` checkpoints.

A turn belongs to whoever asked its question: the turn a put opens (the first human
message of its latest turn is not its parent's) takes its config's scope when the put
writes it from outside (an ``update_state``, a run's first step, a human message holding
the text of the run's ``Command(resume=...)``: a chat through ``interrupt()``) or when
its config's scope is the thread's asker's (the stamp's ``asker``: the scope of the
latest run that started with keys of its own, carried from parent to child, so a node
writing the question of a ``question`` field, or of a resumed run of the same user, is
the asker's; the scope, not the keys: a request id or a platform's run id differ from
run to run); every other put keeps its
parent's scope whatever its config says (a run's input, an approver's ``update_state``
or ``Command(resume=...)`` with his own ``user_id``, a node of his run writing a human
message, an edit of the pending question, a clear: the asker's turn stays in the asker's
scope, and the thread with it).

:meth:`ScopeBook.resolve` is the algorithm once, as a generator that yields the configs
of the checkpoints it must read and is sent their tuples; the checkpointer's ``put``
and ``aput`` drive it with the saver's ``get_tuple`` and ``aget_tuple``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_core.runnables import RunnableConfig

from langgraph.checkpoint.base import CheckpointMetadata, CheckpointTuple

from ._turns import question_key

__all__ = [
    "LEGACY_ANCESTORS",
    "MARK_KEY",
    "SCOPE_KEY",
    "Asker",
    "Put",
    "ReadFailed",
    "Resolved",
    "ScopeBook",
]

logger = logging.getLogger(__name__)

SCOPE_KEY = "helamem_scope"
"""The checkpoint metadata key that holds, as a JSON string (savers that keep only
scalar metadata keep it), ``{"thread": thread_id, "scope": [...] or None, "keys": {...},
"asker": {"scope": [...] or None}, "epoch": checkpoint_id}``: the scope of the thread's
turns when the checkpoint was written (``None``: the scope function gave none), the
configurable keys (str, int, float or bool values) of the run its scope came from, which
decide the scope of a copy of the thread (``copy_thread``), the scope of the latest run
that started with keys of its own (absent: none), and the id of the thread's first
checkpoint (:attr:`Resolved.epoch`; absent: stamped before epochs)."""

MARK_KEY = "helamem_turn"
"""The checkpoint metadata key that holds, as a JSON string, the latest turn completed at
or above the checkpoint (:class:`~helamem.langgraph._carried.Mark`)."""

LEGACY_ANCESTORS = 16
"""Checkpoints looked at, newest first, above a parent without a stamp of its thread."""

_LANGGRAPH_KEYS = frozenset({"thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map"})
_METADATA_KEYS = frozenset({"source", "step", "parents", "writes", "run_id", SCOPE_KEY, MARK_KEY})

Scope = tuple[str, ...] | None


class ReadFailed(Exception):  # noqa: N818 (a signal into the plan, not raised to callers)
    """The saver could not read a checkpoint the plan asked for (thrown into it)."""


@dataclass(frozen=True, slots=True)
class Asker:
    """The scope of the run that last started on a thread with keys of its own."""

    scope: Scope


@dataclass(frozen=True, slots=True)
class Resolved:
    """A put's scope (``None``: record nothing), whether to stamp it, and the error the
    scope function raised (re-raised if the put completes a turn)."""

    scope: Scope
    stamp: bool = True
    error: Exception | None = None
    keys: Mapping[str, Any] = field(default_factory=dict)
    """The run keys the scope came from (the stamp passes them on to copies)."""
    asked: str | None = None
    """The key of the first human message of the put's latest turn (see
    :func:`~helamem.langgraph._turns.question_key`); ``None``: none."""
    asker: Asker | None = None
    """The scope of the latest run that started on the thread with keys of its own: a
    turn a run of that scope opens is asked by it."""
    epoch: str | None = None
    """The id of the thread's first checkpoint since it was last started (a thread id
    used again after ``delete_thread`` starts a new epoch); ``None``: a thread stamped
    before epochs, or a copy's."""


@dataclass(frozen=True, slots=True)
class Put:
    """What a put's scope depends on in its checkpoint (see :mod:`._turns`)."""

    asked: str | None = None
    """The key of the first human message of the checkpoint's latest turn."""
    outside: bool = False
    """It writes outside input (a run's first step, an ``update_state``, a resume value
    written as the latest turn's question)."""
    starts: bool = False
    """It is a run's first (its input, or the first step, which consumes ``__start__``:
    under ``durability="exit"`` a run's only put)."""
    id: str | None = None
    """The id of the checkpoint put (a thread's first starts its epoch)."""

    def opens(self, parent_asked: str | None) -> bool:
        """Whether the put opens a new turn over a parent whose latest turn's first
        human message has key ``parent_asked``."""
        return self.asked is not None and parent_asked != self.asked


def has_run_keys(config: RunnableConfig) -> bool:
    """Whether ``config`` holds keys of its own (``user_id``, ...), not only LangGraph's."""
    conf = config.get("configurable", {})
    return any(k not in _LANGGRAPH_KEYS and not k.startswith("__") for k in conf)


def _run_keys(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's configurable keys a saver copied into a checkpoint's metadata."""
    return {
        k: v
        for k, v in (metadata or {}).items()
        if k not in _METADATA_KEYS and k not in _LANGGRAPH_KEYS and not k.startswith("__")
    }


def _own_keys(config: RunnableConfig) -> dict[str, Any]:
    """``config``'s own configurable keys with a JSON scalar value."""
    return {
        k: v
        for k, v in config.get("configurable", {}).items()
        if k not in _LANGGRAPH_KEYS
        and not k.startswith("__")
        and isinstance(v, str | int | float | bool)
    }


def _stamp_of(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The stamp in ``metadata`` (``None``: none, or not one of ours)."""
    raw = (metadata or {}).get(SCOPE_KEY)
    try:
        stamp = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(stamp, dict) or not isinstance(stamp.get("thread"), str):
        return None
    scope = stamp.get("scope")
    if scope is not None and not (
        isinstance(scope, list) and all(isinstance(x, str) for x in scope)
    ):
        return None
    keys = stamp.get("keys")
    stamp["keys"] = keys if isinstance(keys, dict) else {}
    asker = stamp.get("asker")
    got = asker.get("scope") if isinstance(asker, dict) else False
    if got is None or (isinstance(got, list) and all(isinstance(x, str) for x in got)):
        stamp["asker"] = Asker(None if got is None else tuple(got))
    else:
        stamp["asker"] = None
    epoch = stamp.get("epoch")
    stamp["epoch"] = epoch if isinstance(epoch, str) else None
    return stamp


def _epoch_of(stamp: dict[str, Any] | None, thread: str) -> str | None:
    """The epoch a stamp gives a put of ``thread`` (``None``: no stamp, or another
    thread's: a copy's)."""
    return stamp["epoch"] if stamp is not None and stamp["thread"] == thread else None


def _unstamped(got: Resolved) -> Resolved:
    """``got``'s scope for this put only, after a failed read: stamped, it would move the
    thread for good."""
    return Resolved(got.scope, stamp=False, error=got.error)


class ScopeBook:
    """The scopes of this checkpointer's recent puts (bounded), and the resolution of a
    put's scope. Thread-safe: ``put`` may run on several threads at once."""

    def __init__(
        self,
        scope: Callable[[RunnableConfig], Sequence[str] | None],
        limit: int,
        messages_key: str = "messages",
    ):
        self._scope = scope
        self._messages_key = messages_key
        self._limit = limit
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[str, str, str], Resolved] = OrderedDict()

    def _call(self, config: RunnableConfig) -> Resolved:
        try:
            got = self._scope(config)
        except Exception as exc:  # noqa: BLE001 (the user's function: raised with a turn)
            logger.debug("the scope function raised for %r: %r", config, exc)
            return Resolved(None, stamp=False, error=exc)
        return Resolved(None if got is None else tuple(got), keys=_own_keys(config))

    def resolve(
        self, config: RunnableConfig, put: Put = Put()
    ) -> Generator[RunnableConfig, CheckpointTuple | None, Resolved]:
        """The scope of a put of ``config`` (the parent's config): yields the configs of
        the checkpoints to read, is sent each one's tuple (``None``: none) or thrown
        :class:`ReadFailed`.

        A config with keys of its own gives its scope to a put that starts the thread
        and to one that opens a new turn (:meth:`Put.opens`) with outside input or
        by a run of the thread's asker (the scope of the latest run that started with
        keys, stamped and carried from parent to child); every other put keeps the
        parent's stamped scope (a bare config's always).
        """
        mine = functools.cache(lambda: self._call(config))  # the scope function once a put
        got = yield from self._resolve(config, put, mine)
        asker = got.asker
        if put.starts and has_run_keys(config):
            asker = Asker(mine().scope) if mine().error is None else None
        return replace(got, asked=put.asked, asker=asker)

    def _resolve(
        self, config: RunnableConfig, put: Put, mine: Callable[[], Resolved]
    ) -> Generator[RunnableConfig, CheckpointTuple | None, Resolved]:
        conf = config.get("configurable", {})
        if conf.get("checkpoint_ns"):
            return Resolved(None, stamp=False)  # a subgraph's: turns are the root's
        thread, parent = str(conf.get("thread_id")), conf.get("checkpoint_id")
        own = has_run_keys(config)
        if parent is None:  # the thread starts, or a fork of its first checkpoint
            try:
                latest = yield {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            except ReadFailed as exc:
                logger.warning("reading a thread's latest checkpoint failed: %r", exc)
                return _unstamped(mine())
            if latest is None:  # new, or used again after delete_thread: a new epoch
                return replace(mine(), epoch=put.id)
            epoch = yield from self._nearest_epoch(latest, thread)
            return replace(mine(), epoch=epoch)
        with self._lock:
            known = self._recent.get((thread, "", parent))
        if known is not None:
            return self._same_thread(mine, own, put, known.asked, known)
        want: RunnableConfig | None = config
        try:
            for _ in range(LEGACY_ANCESTORS):
                if want is None:
                    break
                tup = yield want
                if tup is None:
                    break
                stamp = _stamp_of(tup.metadata)
                if stamp is not None and stamp["thread"] == thread:
                    scope = None if stamp["scope"] is None else tuple(stamp["scope"])
                    inherited = Resolved(
                        scope, keys=stamp["keys"], asker=stamp["asker"], epoch=stamp["epoch"]
                    )
                    return self._same_thread(mine, own, put, self._asked(tup), inherited)
                if stamp is not None and own and put.outside and put.opens(self._asked(tup)):
                    return mine()  # a turn this run opened on a copy
                if stamp is not None and own:  # the copy's scope: its run keys first
                    return self._call({**config, "configurable": {**conf, **stamp["keys"]}})
                if own:  # written before the stamp (or unstamped: a failed read): the
                    # config's, in the epoch of the nearest stamp of the thread above it
                    epoch = yield from self._nearest_epoch(tup, thread)
                    return replace(mine(), epoch=epoch)
                # another thread's (copy_thread): the scope of its run's keys here;
                # else written before the stamp: the run keys savers copy to metadata
                keys = stamp["keys"] if stamp is not None else _run_keys(tup.metadata)
                if keys or stamp is not None:
                    return self._call({**config, "configurable": {**keys, **conf}})
                want = tup.parent_config
        except ReadFailed as exc:
            logger.warning("reading a checkpoint for the scope of a turn failed: %r", exc)
            return _unstamped(mine())
        return mine()

    @staticmethod
    def _nearest_epoch(
        tup: CheckpointTuple, thread: str
    ) -> Generator[RunnableConfig, CheckpointTuple | None, str | None]:
        """The epoch of the nearest stamped checkpoint at or above ``tup`` (``tup``
        itself, then at most :data:`LEGACY_ANCESTORS` parents; ``None``: none, another
        thread's stamp, or a read failed). A put under, or a fork beside, a checkpoint
        left unstamped by a failed read stays in its thread's epoch rather than
        switching the thread's turns to the identity of threads stamped before epochs."""
        above: CheckpointTuple | None = tup
        for _ in range(LEGACY_ANCESTORS + 1):
            if above is None:
                return None
            stamp = _stamp_of(above.metadata)
            if stamp is not None:
                return _epoch_of(stamp, thread)
            if above.parent_config is None:
                return None
            try:
                above = yield above.parent_config
            except ReadFailed:
                return None
        return None

    @staticmethod
    def _same_thread(
        mine: Callable[[], Resolved],
        own: bool,
        put: Put,
        parent_asked: str | None,
        inherited: Resolved,
    ) -> Resolved:
        """A put over a parent of its thread: its config's scope for a turn it opens with
        outside input or in a run of the thread's asker, else the parent's; the thread's
        epoch either way."""
        if own and put.opens(parent_asked):
            got, asker = mine(), inherited.asker
            if put.outside or (
                asker is not None and got.error is None and got.scope == asker.scope
            ):
                return replace(got, asker=asker, epoch=inherited.epoch)
        return inherited

    def _asked(self, tup: CheckpointTuple) -> str | None:
        """The key of the first human message of a read checkpoint's latest turn."""
        return question_key(tup.checkpoint, self._messages_key)

    def stamp(self, metadata: CheckpointMetadata, config: RunnableConfig, got: Resolved) -> Any:
        """``metadata`` with the put's stamp (unchanged when it takes none)."""
        if not got.stamp:
            return metadata
        thread = str(config.get("configurable", {}).get("thread_id"))
        scope = None if got.scope is None else list(got.scope)
        stamp: dict[str, Any] = {"thread": thread, "scope": scope, "keys": dict(got.keys)}
        if got.asker is not None:
            asker = got.asker.scope
            stamp["asker"] = {"scope": None if asker is None else list(asker)}
        if got.epoch is not None:
            stamp["epoch"] = got.epoch
        return {**metadata, SCOPE_KEY: json.dumps(stamp, sort_keys=True)}

    def remember(self, saved: RunnableConfig, got: Resolved) -> None:
        """The scope of the checkpoint just written: its child's put reads no parent."""
        conf = saved.get("configurable", {})
        cid = conf.get("checkpoint_id")
        if not got.stamp or cid is None or conf.get("checkpoint_ns"):
            return
        key = (str(conf.get("thread_id")), "", str(cid))
        with self._lock:
            self._recent[key] = got
            self._recent.move_to_end(key)
            while len(self._recent) > self._limit:
                self._recent.popitem(last=False)

"""What the turn recorder handles: a validated turn (job), its failures, the recorder's errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._args import check_revive, unique_fields
from .distill import refuse_reserved
from .errors import HelaMemError, InvalidInputError
from .types import NewTurn, Scope, TimeLike, dump_json, normalize_scope, to_timestamp

if TYPE_CHECKING:
    pass

__all__ = [
    "IN_RECORDER_LANE",
    "Job",
    "RecorderClosedError",
    "RecorderFullError",
    "Stage",
    "TurnFailure",
    "TurnRecordingError",
    "Waiter",
    "check_options",
    "make_job",
    "resolve",
]

IN_RECORDER_LANE: ContextVar[bool] = ContextVar("helamem_in_recorder_lane", default=False)
"""True inside a turn recorder's lane (its ``aadd_turns`` and ``aconsolidate``, and
whatever they hand to a thread: ``asyncio.to_thread`` copies the context). A memory
call made there does not wait for recorded turns: it would wait for the very turns
the lane is storing (:meth:`helamem.core._owner.OwnedCore._call`)."""

Stage = Literal["add_turn", "commit_unknown", "consolidate", "worker"]


class RecorderClosedError(HelaMemError, RuntimeError):
    """The recorder was closed; create a new :class:`TurnRecorder` to record more turns."""


class RecorderFullError(HelaMemError, RuntimeError):
    """The recorder's queue is full (``max_pending`` turns).

    Use ``await record_turn(...)`` (waits for room), pass a timeout to
    ``record_turn_sync``, or raise ``max_pending``.
    """


@dataclass(frozen=True, slots=True)
class TurnFailure:
    """One turn whose background work failed.

    Attributes:
        stage: ``"add_turn"``: the turn was not stored (record it again once
            the cause is fixed); ``"commit_unknown"``: the connection to the
            store was lost during the turn's COMMIT
            (:class:`~helamem.core.errors.CommitUnknownError`), so it may or may
            not have been stored: read the scope (or record it with
            ``unique_on``, which the recorder retries itself) before recording
            it again; ``"consolidate"``: the turn was stored but
            the consolidation it triggered failed; ``"worker"``: the
            recorder's worker stopped unexpectedly (the turn may or may not
            have been stored).
        scope: The turn's scope.
        user: The user message.
        assistant: The assistant message.
        used_ids: The ids it was recorded with.
        event_time: Its event time (POSIX seconds).
        error: The original exception.
    """

    stage: Stage
    scope: Scope
    user: str
    assistant: str
    used_ids: tuple[str, ...]
    event_time: float
    error: Exception


class TurnRecordingError(HelaMemError, RuntimeError):
    """Background recording failed for some turns (raised at ``flush``/``close``).

    Attributes:
        failures: One :class:`TurnFailure` per failed turn (the first 1000).
        errors: The original exceptions, in the same order.
        total: How many failures happened in all, including any not kept.
    """

    def __init__(self, failures: Sequence[TurnFailure], total: int | None = None) -> None:
        self.failures = tuple(failures)
        self.errors: tuple[Exception, ...] = tuple(f.error for f in self.failures)
        self.total = len(self.failures) if total is None else total
        if self.failures:
            f = self.failures[0]
            first = f"first: {f.stage} in scope {f.scope!r}: {type(f.error).__name__}: {f.error}"
        else:
            first = "no details kept"
        super().__init__(
            f"{self.total} turn(s) failed in the background ({first}); turns that failed at "
            f"stage 'add_turn' were not stored: fix the cause and record them again from "
            f".failures; those at 'commit_unknown' or 'worker' may have been: read first"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.failures, self.total))


@dataclass(slots=True)
class Job:
    scope: Scope
    user: str
    assistant: str
    used_ids: tuple[str, ...]
    event_time: float
    metadata: dict[str, Any] | None
    seq: int = -1
    stored: bool = False  # committed by the memory (set on the owner loop)
    unique_on: tuple[str, ...] = ()
    forgotten: bool = False  # a delete_scope of its scope came after it (owner loop)
    ids: tuple[str, ...] = ()  # the memories it stored
    revive: bool = False  # stored even when its unique_on key was forgotten

    def turn(self) -> NewTurn:
        return NewTurn(
            self.scope,
            self.user,
            self.assistant,
            self.event_time,
            self.metadata,
            self.used_ids,
            self.unique_on,
            self.revive,
        )


@dataclass(eq=False, slots=True)
class Waiter:
    """An async caller waiting (on its own loop) until ``ready()`` holds."""

    ready: Callable[[], bool]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    if not value or value.isspace():  # isspace() stops at the first visible character
        raise InvalidInputError(f"{what} is empty or whitespace only; pass some text")
    return value


def make_job(
    scope: Sequence[str],
    user: str,
    assistant: str,
    used_ids: Iterable[str],
    event_time: TimeLike | None,
    metadata: Mapping[str, Any] | None,
    unique_on: Sequence[str] = (),
    revive: bool = False,
) -> Job:
    """Cheap validation in the caller's thread; the memory checks the rest."""
    ids = (used_ids,) if isinstance(used_ids, str) else tuple(used_ids)
    if not all(isinstance(i, str) for i in ids):
        raise InvalidInputError("used_ids must be strings (memory ids)")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a dict, got {type(metadata).__name__}")
    refuse_reserved(metadata or {})
    # one pass over an iterable (a generator once consumed would be empty)
    unique = unique_on if isinstance(unique_on, str) else tuple(unique_on)
    unique_fields(unique, metadata)
    return Job(
        scope=normalize_scope(scope),
        user=_check_text(user, "user"),
        assistant=_check_text(assistant, "assistant"),
        used_ids=ids,
        # "now" is when the turn happened, not when the worker gets to it
        event_time=to_timestamp(event_time, default=time.time()),
        # a snapshot, checked now: the caller may reuse or change its dict (nested
        # values too) before the owner thread stores the turn
        metadata=None if metadata is None else json.loads(dump_json(metadata, "metadata")),
        unique_on=tuple(unique),
        revive=check_revive(revive),
    )


def _configured_every(memory: object) -> int:
    """``memory.config.consolidation.every_turns``, or the documented default 20."""
    every = getattr(
        getattr(getattr(memory, "config", None), "consolidation", None), "every_turns", 20
    )
    return every if isinstance(every, int) and not isinstance(every, bool) and every > 0 else 20


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def check_options(
    memory: object,
    max_pending: object,
    consolidate_every: object,
    concurrency: object,
    exit_timeout: object,
    search_wait_timeout: object = 10.0,
) -> int | None:
    """Validate the recorder's options; returns ``consolidate_every`` resolved.

    Raises:
        InvalidInputError: On a bad ``max_pending``, ``consolidate_every``,
            ``concurrency``, ``exit_timeout`` or ``search_wait_timeout``.
    """
    if not all(callable(getattr(memory, m, None)) for m in ("_call_soon", "_on_owner_thread")):
        raise InvalidInputError(
            f"TurnRecorder records into a HelaMemory (or a subclass: override aadd_turns / "
            f"aconsolidate to change what is stored), got {type(memory).__name__}"
        )
    for name, value in (("max_pending", max_pending), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    for name, value in (
        ("exit_timeout", exit_timeout),
        ("search_wait_timeout", search_wait_timeout),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value < float("inf")
        ):
            raise InvalidInputError(
                f"{name} must be a finite number of seconds >= 0, got {value!r}"
            )
    every: object = (
        _configured_every(memory) if consolidate_every == "config" else consolidate_every
    )
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise InvalidInputError(
            f"consolidate_every must be a positive int, None or 'config', got {every!r}"
        )
    return every

"""A checkpoint's turn, read from its ``messages`` channel (pure; no I/O): whether it
completes one (:func:`completed_turn`), its question's key (:func:`question_key`) and the
turn's identity in the store (:func:`identity`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig

from helamem.core import is_blank
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata

__all__ = [
    "NO_ID",
    "Turn",
    "asked_again",
    "completed_turn",
    "human_count",
    "identity",
    "latest_question",
    "messages_seen",
    "outside",
    "question_key",
    "resume_texts",
]

Turn = tuple[str, str, str, str]
"""``(thread_id, turn key, user message, assistant message)``."""

_ROLES = {"human": "human", "user": "human", "ai": "ai", "assistant": "ai"}


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def _role(message: Any) -> str | None:
    return _ROLES.get(str(_field(message, "type") or _field(message, "role")))


def _text(message: Any) -> str:
    """A message's text: its string content, or its content blocks' text joined;
    ``""`` for any other content (a custom state's ``{"content": 7}``)."""
    content = _field(message, "content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list | tuple):
        return ""
    parts = [
        p if isinstance(p, str) else str(p.get("text", ""))
        for p in content
        if isinstance(p, str) or (isinstance(p, Mapping) and p.get("type") == "text")
    ]
    return "".join(parts)


_SENDS = "__pregel_tasks"  # LangGraph's channel of pending Send packets
RESUME = "__resume__"  # the pending write of a Command(resume=...)


def _triggers(channel: str, value: Any) -> bool:
    """Whether a checkpoint's ``channel`` holding ``value`` triggers another node.

    An edge's ``branch:to:<node>`` channel; pending ``Send`` packets (the
    fan-out's workers run next); a join's ``join:<a>+<b>:<node>`` barrier that
    every source has reached (its node runs next; a barrier still waiting, or
    consumed, triggers nothing; a deferred node's barrier holds ``(seen,
    finished)``).

    Examples:
        >>> _triggers("branch:to:final", None), _triggers("__pregel_tasks", [])
        (True, False)
        >>> _triggers("join:a+b:c", {"a", "b"}), _triggers("join:a+b:c", {"a"})
        (True, False)
        >>> _triggers("join:a+b:c", ({"a", "b"}, False)), _triggers("join:a+b:c", (set(), False))
        (True, False)
    """
    if channel.startswith("branch:to:"):
        return True
    if channel == _SENDS:
        return bool(value)
    if channel.startswith("join:"):
        seen = value
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], bool):
            seen = value[0]  # a deferred node's barrier: (sources seen, finished)
        if not isinstance(seen, set | frozenset | list):
            return False
        sources = channel[len("join:") :].rsplit(":", 1)[0].split("+")
        return bool(seen) and set(sources) <= {str(x) for x in seen}
    return False


def messages_seen(checkpoint: Checkpoint, messages_key: str = "messages") -> tuple[Any, ...]:
    """What a checkpoint's messages say (each one's id, role and text; pure): equal
    for two checkpoints whose messages are alike, however the channel was written
    (``{"messages": []}`` bumps its version and changes nothing)."""
    values = checkpoint.get("channel_values") or {}
    messages = values.get(messages_key)
    if not isinstance(messages, list):
        return (messages_key in values,)
    return tuple((repr(_field(m, "id")), _role(m), _text(m)) for m in messages)


def human_count(checkpoint: Checkpoint, messages_key: str = "messages") -> int:
    """How many human messages a checkpoint's ``messages`` hold."""
    messages = (checkpoint.get("channel_values") or {}).get(messages_key)
    return sum(_role(m) == "human" for m in messages) if isinstance(messages, list) else 0


def asked_again(checkpoint: Checkpoint, messages_key: str = "messages") -> bool:
    """Whether a checkpoint's ``messages`` end in a human message (a question not
    answered yet: a run's input, a regenerated answer's removal)."""
    messages = (checkpoint.get("channel_values") or {}).get(messages_key)
    return isinstance(messages, list) and bool(messages) and _role(messages[-1]) == "human"


def completed_turn(
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    messages_key: str = "messages",
) -> Turn | None:
    """The turn a checkpoint completes, if it completes one (pure; no I/O).

    Examples:
        >>> completed_turn(cfg, checkpoint, {"source": "loop"})   # doctest: +SKIP
        ('t1', 'msg-1', 'hi', 'hello!')
    """
    conf = config.get("configurable", {})
    thread = conf.get("thread_id")
    values = checkpoint.get("channel_values") or {}
    # a step of the graph, or an answer written with update_state (human in the loop)
    if metadata.get("source") not in ("loop", "update") or conf.get("checkpoint_ns"):
        return None
    if thread is None:
        return None
    if any(_triggers(str(ch), v) for ch, v in values.items()):
        return None  # more nodes are triggered: the run goes on
    messages = values.get(messages_key)
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if _role(last) != "ai" or _field(last, "tool_calls"):
        return None
    humans = _question(messages)
    if not humans:
        return None
    human = messages[humans[-1]]
    asked: list[str] = []  # the same question sent again (a retry after a failure): once
    for i in humans:
        text = _text(messages[i])
        if not is_blank(text) and (not asked or asked[-1] != text):
            asked.append(text)
    user = "\n".join(asked)
    answer = _text(last)
    if is_blank(user) or is_blank(answer):  # the core stores no blank text
        return None
    # the human message's id, else its place and text (NO_ID: not an identity, a
    # messages channel without a reducer repeats it)
    key = str(_field(human, "id") or f"{NO_ID}{humans[-1]}:{hash(user)}:{hash(answer)}")
    return str(thread), key, user, answer


NO_ID = "no-id:"
"""The prefix of a turn key made for a human message without an id."""


def _answer(message: Any) -> bool:
    """Whether ``message`` answers a turn: an AI message with text and no tool calls."""
    return (
        _role(message) == "ai"
        and not _field(message, "tool_calls")
        and not is_blank(_text(message))
    )


def _question(messages: Sequence[Any]) -> list[int]:
    """The places of the latest turn's human messages: the last one and every one
    before it since the answer to the turn before (two sent at once, or one whose run
    failed before it was answered); ``[]``: none."""
    humans = [i for i, m in enumerate(messages) if _role(m) == "human"]
    if not humans:
        return []
    start = next((i + 1 for i in range(humans[-1] - 1, -1, -1) if _answer(messages[i])), 0)
    return [i for i in humans if i >= start]


def _key(message: Any) -> str:
    """A human message's id, else a hash of its text (stable across processes; not its
    place, which a window of the last messages shifts)."""
    got = _field(message, "id")
    if got:
        return str(got)
    digest = hashlib.sha256(_text(message).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{NO_ID}{digest[:32]}"


def latest_question(
    checkpoint: Checkpoint, messages_key: str = "messages"
) -> tuple[str, str] | None:
    """The key and text of the first human message of the checkpoint's latest turn (the
    turn its ``messages`` end in: answered or not); ``None``: no human message.

    Examples:
        >>> latest_question({"channel_values": {"messages": [{"type": "human", "id": "m1",
        ...     "content": "hi"}]}})
        ('m1', 'hi')
    """
    messages = (checkpoint.get("channel_values") or {}).get(messages_key)
    if not isinstance(messages, list):
        return None
    humans = _question(messages)
    if not humans:
        return None
    first = messages[humans[0]]
    return _key(first), _text(first)


def question_key(checkpoint: Checkpoint, messages_key: str = "messages") -> str | None:
    """:func:`latest_question`'s key (``None``: no human message)."""
    got = latest_question(checkpoint, messages_key)
    return None if got is None else got[0]


def resume_texts(writes: Sequence[tuple[str, Any]]) -> frozenset[str]:
    """The strings a ``Command(resume=...)`` carries in a task's pending writes (the value,
    or the values of a mapping of interrupt ids to values); empty without a resume."""
    out: set[str] = set()
    for channel, value in writes:
        if channel != RESUME:
            continue
        values = value.values() if isinstance(value, Mapping) else [value]
        out.update(v for v in values if isinstance(v, str))
    return frozenset(out)


def outside(metadata: CheckpointMetadata, new_versions: ChannelVersions) -> bool:
    """Whether the put writes what came from outside the graph: a run's input (its
    ``input`` put, or the first step's, which consumes ``__start__``) or an
    ``update_state``; a node's own writes (a resumed run's) are not."""
    return metadata.get("source") in ("input", "update") or "__start__" in new_versions


def identity(thread: str, key: str, epoch: str | None = None) -> dict[str, Any]:
    """A turn's metadata (its thread, the thread's epoch and the human message id) and
    those as its ``unique_on`` key: the store records a turn once however often a
    checkpoint completes it (a replay from an earlier checkpoint, another process, an
    answer regenerated for the same message), and a thread id used again after
    ``delete_thread`` (a new epoch: the id of its first checkpoint) records its own turns
    whatever their message ids. A thread stamped before epochs (``None``) keeps the pair
    ``(thread_id, message_id)``, as its turns were stored. A human message without an id
    has no identity (without a reducer, "yes" at the same place of a new input is a new
    turn): only the checkpointer's own last-turn check applies."""
    if key.startswith(NO_ID):
        return {"metadata": {"thread_id": thread}}
    meta = {"thread_id": thread, **({} if epoch is None else {"thread_epoch": epoch})}
    meta["message_id"] = key
    return {"metadata": meta, "unique_on": tuple(meta)}

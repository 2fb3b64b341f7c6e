"""What :class:`~helamem.llamaindex.HelaMemChatMemory` returns: counting, window, placement.

Pure functions over chat messages (no storage): how many tokens a message
costs, the longest recent window within a budget, the memory message that fits
beside it, and whether the agent asking drops the first system message.

Examples:
    >>> from llama_index.core.llms import ChatMessage
    >>> count = lambda text: len(text.split())
    >>> history = [
    ...     ChatMessage(role="user", content="one two"),
    ...     ChatMessage(role="assistant", content="three"),
    ... ]
    >>> [m.content for m in window(history, 3, count)]
    ['one two', 'three']
    >>> window(history, 2, count)  # it never opens with the reply
    []
    >>> message_tokens(history[0], count)
    2
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock

from ._shared import Line, fit_lines, held_by, select_lines, window_text

logger = logging.getLogger(__name__)

Count = Callable[[str], int]

_OPENERS_SKIPPED = (MessageRole.ASSISTANT, MessageRole.TOOL)


def _jsonable(value: object) -> object:
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else str(value)


def payload(message: ChatMessage) -> str:
    """What the LLM receives for ``message``: its text, tool calls with their arguments,
    and its ``additional_kwargs`` (as JSON)."""
    parts: list[str] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            call = {"name": block.tool_name, "arguments": block.tool_kwargs}
            parts.append(json.dumps(call, default=_jsonable))
    extra = {k: v for k, v in message.additional_kwargs.items() if k != "session_id"}
    if extra:
        parts.append(json.dumps(extra, default=_jsonable))
    return "\n".join(p for p in parts if p)


def message_tokens(message: ChatMessage, count: Count) -> int:
    """Tokens of ``message``'s :func:`payload` (0 for an empty message)."""
    text = payload(message)
    return count(text) if text else 0


def total_tokens(messages: Sequence[ChatMessage], count: Count) -> int:
    """Tokens of every message, summed: what ``token_limit`` bounds."""
    return sum(message_tokens(m, count) for m in messages)


def window(history: Sequence[ChatMessage], budget: int, count: Count) -> list[ChatMessage]:
    """The longest recent suffix of ``history`` within ``budget`` tokens, or ``[]``.

    As ``ChatMemoryBuffer``: the window never opens with an assistant reply or
    a tool result, unless the whole history does or it is the newest message
    alone. Unlike it, when nothing fits, nothing is returned: the list always
    fits the budget.

    Examples:
        >>> from llama_index.core.llms import ChatMessage
        >>> replies = [
        ...     ChatMessage(role="assistant", content="one two three"),
        ...     ChatMessage(role="assistant", content="four"),
        ... ]
        >>> [m.content for m in window(replies, 2, lambda text: len(text.split()))]
        ['four']
    """
    sizes = [message_tokens(m, count) for m in history]
    used = sum(sizes)
    last = len(history) - 1
    for start in range(len(history)):
        opens = start in (0, last) or history[start].role not in _OPENERS_SKIPPED
        if opens and used <= budget:
            return list(history[start:])
        used -= sizes[start]
    return []


def current_turn(history: Sequence[ChatMessage], room: int, count: Count) -> list[ChatMessage]:
    """The window that memories never displace: from the newest user message on.

    When that does not fit ``room``, the longest window that does (possibly ``[]``).
    """
    users = [i for i, m in enumerate(history) if m.role == MessageRole.USER]
    turn = list(history[users[-1] :]) if users else list(history[-1:])
    return turn if total_tokens(turn, count) <= room else window(history, room, count)


def memory_message(header: str, lines: Sequence[Line]) -> ChatMessage:
    """The system message holding ``lines`` under ``header``."""
    text = "\n".join([header, *(line.text for line in lines)])
    return ChatMessage(role=MessageRole.SYSTEM, content=text)


def compose(
    history: Sequence[ChatMessage],
    lines: Sequence[Line],
    *,
    k: int,
    header: str,
    memory_tokens: int,
    room: int,
    count: Count,
) -> tuple[list[ChatMessage], list[Line]]:
    """The memory message and the window, together within ``room`` tokens; the lines shown.

    The current turn (:func:`current_turn`) comes first; the memory message
    takes at most ``k`` lines whose memory the returned window does not hold,
    best first, whole lines within ``memory_tokens`` and within what the turn
    leaves; older messages fill the rest. When the current turn does not fit, no
    memory message: the longest window that fits, else (one message over the
    budget) the newest message alone, as ``ChatMemoryBuffer`` returns it: the model
    then says the message is too long (an empty list made LlamaIndex's own agents
    fail with ``IndexError``, or answer a question they never saw).
    """
    turn = current_turn(history, room, count)
    users = [i for i, m in enumerate(history) if m.role == MessageRole.USER]
    if history and (not turn or (users and history[users[-1]] not in turn)):
        # the question does not fit: no memories for it (none would be seen with it);
        # what fits, else the newest message alone, as ChatMemoryBuffer
        return (turn or list(history[-1:])), []
    spare = room - total_tokens(turn, count)
    held = window_text(turn)
    while True:  # every pass excludes at least one more memory: it ends
        shown = fit_lines(select_lines(lines, k, held), memory_tokens, count)
        head: list[ChatMessage] = []
        while shown:
            head = [memory_message(header, shown)]
            if total_tokens(head, count) <= spare:
                break
            shown, head = shown[:-1], []  # the lowest-ranked line goes first
        recent = window(history, room - total_tokens(head, count), count)
        text = window_text(recent)
        if not any(held_by(text, line.content) for line in shown):
            return head + recent, shown
        held = f"{held}\n{text}"


def drops_first_system_message() -> bool | None:
    """Whether the agent awaiting ``aget`` discards the first system message.

    ``ReActAgent`` (llama-index-core 0.14) drops ``llm_input[0]`` when it is a
    system message, meant for its own ``system_prompt``; without one, it would
    drop the memory message. ``True`` for such an agent (or an
    ``AgentWorkflow`` of only such agents), ``False`` for any other caller,
    ``None`` for an ``AgentWorkflow`` that mixes them (which agent runs next is
    not known here).
    """
    from llama_index.core.agent.workflow import AgentWorkflow, BaseWorkflowAgent, ReActAgent

    frame = sys._getframe(1)
    for _ in range(8):
        if frame.f_back is None:
            return False
        frame = frame.f_back
        caller: Any = frame.f_locals.get("self")
        if isinstance(caller, ReActAgent):
            return not caller.system_prompt
        if isinstance(caller, BaseWorkflowAgent):
            return False
        if isinstance(caller, AgentWorkflow):
            agents = list(caller.agents.values())
            bare = [a for a in agents if isinstance(a, ReActAgent) and not a.system_prompt]
            return len(bare) == len(agents) if len(bare) in (0, len(agents)) else None
    return False

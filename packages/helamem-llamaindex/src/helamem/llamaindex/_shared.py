"""Translation helpers shared by the memory block and the chat memory.

Nothing here stores or ranks anything: it turns LlamaIndex chat messages into
the ``(user, assistant)`` turns :class:`~helamem.core.TurnRecorder` records,
and :class:`~helamem.core.SearchResult` hits into prompt text, and it keeps
one live :class:`~helamem.core.HelaMemory` per store directory so that an
adapter rebuilt from its serialized state (for example by a workflow
``Context``) reuses the connection, and the embedder, it was created with.

Examples:
    >>> from llama_index.core.llms import ChatMessage
    >>> turns, pending = pair_turns(
    ...     [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="hello")]
    ... )
    >>> turns, pending
    ([('hi', 'hello')], None)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple, TypeVar

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.utils import get_tokenizer

from helamem.core import (
    ConfigError,
    HelaMemConfig,
    HelaMemory,
    Hit,
    Scope,
    SearchResult,
    is_blank,
    query_tail,
)
from helamem.core.identity import database_key, store_key

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

_live: weakref.WeakValueDictionary[str, HelaMemory] = weakref.WeakValueDictionary()
_leases: weakref.WeakKeyDictionary[HelaMemory, int] = weakref.WeakKeyDictionary()
"""Adapters holding each memory :func:`resolve_memory` opened (a caller's own: none)."""
_live_lock = threading.Lock()


_MASKED = "**********"
"""A secret as pydantic serializes it: the DSN of a config loaded from an older dump."""
_DATABASE = "helamem-database:"
"""A dumped config's DSN: this prefix and :func:`_database` of the real one (no secret)."""


def _database(dsn: str) -> str:
    """:func:`~helamem.core.identity.database_key`, also of a dumped config's DSN (its
    key after :data:`_DATABASE`; ``""``: a masked one, unknown)."""
    if dsn == _MASKED:
        return ""
    if dsn.startswith(_DATABASE):
        return dsn[len(_DATABASE) :]
    return database_key(dsn)


def _store_key(config: HelaMemConfig) -> str:
    """:func:`~helamem.core.identity.store_key` (``""`` for a masked DSN's database)."""
    store = config.store
    return store_key(config, None if store is None else _database(store.dsn.get_secret_value()))


def _live_for(key: str, config: HelaMemConfig) -> HelaMemory | None:
    """The live memory of ``key``; for a masked DSN's key (a config loaded from a dump
    older than :data:`_DATABASE`) the one live memory on its path and schema.

    Raises:
        ConfigError: Several live memories on that path and schema (other databases),
            or none for a config loaded from a dump (its DSN is not serialized).
    """
    store = config.store
    dumped = store is not None and (
        (dsn := store.dsn.get_secret_value()) == _MASKED or dsn.startswith(_DATABASE)
    )
    found = _live.get(key)
    if found is None and key.endswith("\x00") and key.count("\x00") == 2:
        alive = [m for k, m in list(_live.items()) if k.startswith(key) and not m.closed]
        if len(alive) > 1:
            raise ConfigError(
                f"{len(alive)} live memories share the path and schema of this loaded "
                "adapter (different databases) and its dump names none; give each "
                "database its own path, or dump the adapter again with this version"
            )
        found = alive[0] if alive else None
    if dumped and (found is None or found.closed):
        raise ConfigError(
            "this adapter was loaded from a dump, which holds no PostgreSQL DSN (secrets "
            "are never serialized): register_memory(HelaMemory(config)) with the DSN "
            "before loading it (a DSN naming the same host, port, database and user)"
        )
    return found


def register_memory(memory: HelaMemory) -> None:
    """Make ``memory`` the connection adapters use for its store directory.

    Adapters given ``memory=`` register it themselves. A memory registered so is
    the caller's to close, even one that adapters opened (no adapter's
    ``close()`` closes it). Call this in a new process before loading a
    serialized adapter (``from_dict``, a workflow ``Context``) whose memory
    needs a custom embedder or secrets, which are never serialized.

    Args:
        memory: An open or unopened memory; it stays registered while it is
            alive and not closed.

    Examples:
        >>> register_memory(HelaMemory.from_path("./helamem-data"))  # doctest: +SKIP
    """
    with _live_lock:
        _live[_store_key(memory.config)] = memory
        _leases.pop(memory, None)  # the caller's now: no adapter's close() closes it


def resolve_memory(config: HelaMemConfig) -> tuple[HelaMemory, bool]:
    """The live memory for ``config.path``, else a new one; and whether this adapter holds
    a lease on it (then it must :func:`release_memory` it when it closes).

    A memory the caller registered (:func:`register_memory`, ``memory=``) is
    the caller's to close: no lease. One this function opened is shared by
    every adapter on that path in this process and closes with the last lease,
    so one session's ``close()`` never closes the store under another.
    """
    key = _store_key(config)
    with _live_lock:
        found = _live_for(key, config)
        if found is not None and not found.closed:
            _warn_if_other_settings(found.config, config)
            if found not in _leases:
                return found, False
            _leases[found] += 1
            return found, True
        memory = HelaMemory(config)  # no I/O: it opens on first use
        _live[key] = memory
        _leases[memory] = 1
        return memory, True


def _settings(config: HelaMemConfig) -> dict[str, Any]:
    """What a config sets beyond where its store is (the path, a PostgreSQL DSN) and its
    secrets (API keys: a config loaded from a dump has none)."""
    out = config.model_dump(exclude={"path"})
    for part, key in (("store", "dsn"), ("embedder", "api_key"), ("llm", "api_key")):
        if isinstance(out.get(part), dict):
            out[part].pop(key, None)
    return out


def _warn_if_other_settings(live: HelaMemConfig, asked: HelaMemConfig) -> None:
    """An adapter given a config for a store that is open in this process shares the
    live memory, whose settings apply: say so when the two configs differ (a retrieval
    or dynamics setting the adapter was given would be ignored without a word)."""
    differ = _differing(_settings(live), _settings(asked))
    if differ:
        logger.warning(
            "the store at %s is open in this process with other settings (%s): "
            "this adapter shares that memory and its settings, not the config it was "
            "given; close the other adapters (or the memory you registered) first, or "
            "give this configuration its own path",
            live.path,
            ", ".join(differ),
        )


def _differing(have: Any, want: Any, at: str = "") -> list[str]:
    """The dotted names of the settings that differ, each with both values."""
    if isinstance(have, dict) and isinstance(want, dict):
        return [
            d
            for k in sorted(have.keys() | want.keys())
            for d in _differing(have.get(k), want.get(k), f"{at}.{k}" if at else str(k))
        ]
    return [] if have == want else [f"{at} {have!r} (given {want!r})"]


def release_memory(memory: HelaMemory) -> bool:
    """Give back one lease :func:`resolve_memory` handed out; True when it was the last
    (the caller then closes ``memory``)."""
    with _live_lock:
        held = _leases.get(memory, 0) - 1
        if held > 0:
            _leases[memory] = held
            return False
        _leases.pop(memory, None)
        key = _store_key(memory.config)
        if held == 0 and _live.get(key) is memory:
            # closing now: a racing resolve_memory opens a new one rather than take this
            # one as a caller's (no lease) and queue turns on it as it closes
            del _live[key]
        return held == 0


_CONNECTION = {"_memory": None, "_owned": False, "_recorder": None, "_own_recorder": False}


def without_connection(state: dict[Any, Any]) -> dict[Any, Any]:
    """A pydantic pickle ``state`` with the connection and recorder left out.

    The unpickled adapter finds the live memory for its ``config.path`` again
    (or opens one), as after ``from_dict``.
    """
    private = dict(state.get("__pydantic_private__") or {})
    private.update(_CONNECTION)
    return {**state, "__pydantic_private__": private}


def copy_without_connection(model: _M, memo: dict[int, Any] | None = None) -> _M:
    """A copy of an adapter (``copy.copy``, ``copy.deepcopy``, ``model_copy``) that, like
    an unpickled one, finds the live memory for its ``config.path`` again: it holds no
    lease and no recorder of the original's, so its ``close()`` never closes the store
    under the original. ``memo``: deep (``copy.deepcopy``'s memo), else shallow."""
    state = model.__getstate__()
    if memo is not None:
        state = copy.deepcopy(state, memo)
    else:
        state = {**state, "__dict__": dict(state["__dict__"])}
    made = object.__new__(type(model))
    made.__setstate__(state)
    return made


def dump_config(config: HelaMemConfig) -> dict[str, Any]:
    """``config`` as JSON-safe data, with API keys left out (they are never serialized)
    and its path absolute (a state loaded in another working directory opens this
    store, not a new empty one there)."""
    data = config.model_dump(mode="json")
    data["path"] = os.path.abspath(os.fspath(config.path))
    for section in ("embedder", "llm"):
        data[section]["api_key"] = None
    if config.store is not None:  # which database, without its secrets: see _store_key
        data["store"]["dsn"] = _DATABASE + _database(config.store.dsn.get_secret_value())
    return data


def message_text(message: ChatMessage) -> str:
    """The text blocks of ``message``, joined; ``""`` for text the core would refuse as
    blank (only whitespace, control or zero-width characters: ``is_blank``): no query,
    no turn."""
    text = "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock)).strip()
    return "" if is_blank(text) else text


def _line(*prefixes: str) -> re.Pattern[str]:
    return re.compile(rf"^({'|'.join(prefixes)}):", re.MULTILINE)


_STEP_END = _line("Action", "Answer")  # a step's Thought ends at its first such line
_OBSERVATION, _THOUGHT = _line("Observation"), _line("Thought")


def reply_text(message: ChatMessage) -> str:
    r""":func:`message_text` of a reply; of a ReAct trace (``ReActAgent`` puts its whole
    reasoning as one assistant message), only its final answer, as the agent returns it.

    A trace is read as ``ReActAgent`` writes it (``BaseReasoningStep.get_content``,
    parsed as its ``ReActOutputParser`` does): steps from the start, each a ``Thought:``
    (any number of lines) ending at its first ``Action:`` or ``Answer:`` line; a tool
    step's ``Observation:`` (the tool's output) runs to the next ``Thought:`` line;
    the answer is everything after the first step's ``Answer:``, so an answer holding
    ``Observation:``, ``Thought:`` or ``Answer:`` lines stays whole. A trace ending
    with a ``return_direct`` tool's output ``O`` (``Observation: O``, ``Thought: O``,
    ``Answer: O``) gives ``O`` after its first ``Answer:``, as the agent's ``finalize``
    does; an empty answer gives ``""`` (no reply: :func:`is_final_reply`). A reply not
    starting with ``Thought:``, or with no ``Answer:`` step, is kept whole.

    Examples:
        >>> trace = "Thought: look\nAction: lookup\nObservation: 7731\nThought: ok\nAnswer: Done."
        >>> reply_text(ChatMessage(role="assistant", content=trace))
        'Done.'
        >>> reply_text(ChatMessage(role="assistant", content="Thought: easy\nso\nAnswer: Miso."))
        'Miso.'
    """
    text = message_text(message)
    for last in re.finditer("\nAnswer: ", text):  # a return_direct tool's output, repeated
        out = text[last.end() :]
        head = text[: last.start()]
        if text.startswith("Thought:") and head.endswith(f"Observation: {out}\nThought: {out}"):
            return out.partition("Answer:")[2 if "Answer:" in out else 0].strip()
    pos = 0
    while text.startswith("Thought:", pos):
        end = _STEP_END.search(text, pos)
        if end is None:
            break
        if end.group(1) == "Answer":
            return text[end.end() :].strip()
        observed = _OBSERVATION.search(text, end.end())
        step = _THOUGHT.search(text, observed.end()) if observed else None
        if step is None:
            break
        pos = step.start()
    return text


def is_final_reply(message: ChatMessage) -> bool:
    """An assistant message with text and no tool call: the answer that ends a turn."""
    if message.role != MessageRole.ASSISTANT or not reply_text(message):
        return False
    if message.additional_kwargs.get("tool_calls"):
        return False
    return not any(isinstance(b, ToolCallBlock) for b in message.blocks)


def pair_turns(
    messages: Sequence[ChatMessage], pending_user: str | None = None
) -> tuple[list[tuple[str, str]], str | None]:
    """Completed ``(user, assistant)`` turns in ``messages``, and the user text still waiting.

    Consecutive user messages join into one; tool calls and tool results are
    skipped; a reply right after a turn's reply in ``messages`` (a second
    agent answering the same question) joins that turn's answer; any other
    reply with no user message before it, or one answering a user message
    without text (``message_text`` gives ``""``; every reply until the next user
    message with text), starts no turn. A user message repeating the last one
    of the question waiting (a retry) is taken once.

    Examples:
        >>> msgs = [ChatMessage(role=r, content=t) for r, t in
        ...         [("user", "q"), ("assistant", "one"), ("assistant", "two")]]
        >>> turns, pending = pair_turns(msgs)
        >>> turns[0][0], turns[0][1].splitlines(), pending
        ('q', ['one', 'two'], None)
    """
    turns: list[tuple[str, str]] = []
    asked = False  # a user message without text since the last reply
    last: str | None = None  # the waiting question's last message, when seen in this call
    for message in messages:
        if message.role == MessageRole.USER:
            text = message_text(message)
            if not text:
                asked = True
            elif not pending_user:
                pending_user = last = text
            elif text != last if last is not None else not _ends_with(pending_user, text):
                pending_user, last = f"{pending_user}\n{text}", text
            # else: its last message again (a retry after a failed call): once
        elif is_final_reply(message):
            if pending_user is None:
                if asked:  # a reply to a message without text: no turn (nor a join)
                    logger.debug("reply to a user message without text: not recorded")
                elif turns:  # another reply to the question just answered
                    user, answer = turns[-1]
                    turns[-1] = (user, f"{answer}\n{reply_text(message)}")
                else:
                    logger.debug("assistant message with no user message before it: not recorded")
                continue
            turns.append((pending_user, reply_text(message)))
            pending_user, asked, last = None, False, None
    return turns, pending_user


def _ends_with(waiting: str, text: str) -> bool:
    """Whether ``text`` may be the last message of the question ``waiting`` (its messages
    were joined by a previous call: only its end can be compared)."""
    return waiting == text or waiting.endswith(f"\n{text}")


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by LlamaIndex's global tokenizer (what ``Memory`` counts with)."""
    return len(get_tokenizer()(text))


def lazy_tokenizer(text: str) -> list[Any]:
    """LlamaIndex's global tokenizer, looked up on first use rather than at construction."""
    return list(get_tokenizer()(text))


class Line(NamedTuple):
    """One memory as a prompt line, with the id and text it came from."""

    text: str
    id: str
    content: str


def held_by(window_text: str, content: str) -> bool:
    r"""Whether the chat window already holds ``content`` word for word, as whole lines.

    A recorded episode is a message's text (or consecutive user messages'
    texts, joined), so it matches whole lines of :func:`window_text`; a short
    memory such as ``"ok"`` is not held by a window that says ``"look"``.

    Examples:
        >>> held_by("hi\nMiso is a cat\nbye", "Miso is a cat"), held_by("look", "ok")
        (True, False)
    """
    return f"\n{content.strip()}\n" in f"\n{window_text}\n"


def window_text(messages: Sequence[ChatMessage]) -> str:
    """The text of ``messages``, joined: what :func:`held_by` looks in."""
    return "\n".join(message_text(m) for m in messages)


def _search_args(memory: HelaMemory, k: int) -> dict[str, Any]:
    return {"k": k, "semantic_k": min(memory.config.retrieval.semantic_k, k)}


_REFILL_ROUNDS = 8
"""At most this many read-only searches refill the slots the window holds."""


def _next_k(hits: Sequence[Hit], asked: int, k: int, held: str) -> int | None:
    """The k of the next read-only search, or ``None`` when ``hits`` (a search for
    ``asked``) already hold ``k`` the window does not, or the scope has no more.

    The next search asks for ``k`` plus as many as the window holds of these
    hits, so it grows every round. A larger k is not a superset of a smaller
    one (association hits compete for the k slots), so "ask for k + n once" could
    still come back with fewer than k free hits.
    """
    best = best_hits(hits, asked)
    taken = sum(held_by(held, h.content) for h in best)
    episodes = sum(h.provenance != "semantic" for h in hits)
    if len(best) - taken >= k or episodes < asked:
        return None
    return k + taken


# The refill search, written once: :func:`_refill` yields each search's keyword arguments
# and is sent its hits; :func:`candidates` and :func:`candidates_sync` run the searches.
_Searches = Generator[dict[str, Any], Sequence[Hit], list[Hit]]


def _refill(memory: HelaMemory, k: int, held: str, min_score: float, learn: bool) -> _Searches:
    asked = k
    res = yield {"learn": learn, **_search_args(memory, k)}
    for _ in range(_REFILL_ROUNDS):
        if (nxt := _next_k(res, asked, k, held)) is None:
            break
        asked = nxt
        res = yield {"learn": False, **_search_args(memory, asked)}
    return [h for h in best_hits(res, asked) if h.score > min_score]


async def candidates(
    memory: HelaMemory,
    query: str,
    scope: Scope,
    k: int,
    held: str = "",
    min_score: float = 0.0,
    learn: bool = True,
) -> list[Line]:
    """The best hits as lines, highest score first: enough for ``k`` not held by ``held``.

    The core returns up to ``k`` episodes and, beside them, up to
    ``min(semantic_k, k)`` facts; both carry its relevance (``Hit.score`` in
    [0, 1], one absolute scale), so they are merged by it (ties keep the core's
    order: episodes before facts). When the window text ``held`` already holds
    some of the best ``k``, read-only searches (at most
    :data:`_REFILL_ROUNDS`) ask for more until ``k`` others can take their slots
    or the scope has no more (the first search learned). Only hits scoring above
    ``min_score`` are kept (by default, a hit of relevance 0, which shares
    neither meaning nor a word with the query, is left out). ``learn=False``: no
    search learns (the same question asked again within a turn).
    """
    query = query_tail(query)
    if not query:
        return []
    plan = _refill(memory, k, held, min_score, learn)
    args = next(plan)
    try:
        while True:
            args = plan.send((await memory.asearch(query, scope, **args)).hits)
    except StopIteration as done:
        return render_lines(query, done.value)


def candidates_sync(
    memory: HelaMemory,
    query: str,
    scope: Scope,
    k: int,
    held: str = "",
    min_score: float = 0.0,
    learn: bool = True,
) -> list[Line]:
    """Blocking :func:`candidates`."""
    query = query_tail(query)
    if not query:
        return []
    plan = _refill(memory, k, held, min_score, learn)
    args = next(plan)
    try:
        while True:
            args = plan.send(memory.search(query, scope, **args).hits)
    except StopIteration as done:
        return render_lines(query, done.value)


def best_hits(hits: Sequence[Hit], k: int) -> list[Hit]:
    """The ``k`` highest-scoring hits, best first (stable on ties)."""
    return sorted(hits, key=lambda h: -h.score)[:k]


def render_lines(query: str, hits: Sequence[Hit]) -> list[Line]:
    """One prompt line per hit, in the given order."""
    return [Line(SearchResult(query, (h,)).to_text(), h.id, h.content) for h in hits]


def select_lines(lines: Sequence[Line], k: int, held: str) -> list[Line]:
    """The first ``k`` lines whose memory the window text ``held`` does not hold."""
    return [line for line in lines if not held_by(held, line.content)][:k]


def fit_lines(lines: Sequence[Line], max_tokens: int, count: Callable[[str], int]) -> list[Line]:
    """The leading whole lines whose joined text fits in ``max_tokens`` (by ``count``)."""
    kept: list[Line] = []
    for line in lines:
        if count("\n".join([*(x.text for x in kept), line.text])) > max_tokens:
            break
        kept.append(line)
    return kept


def chain_all(messages: Sequence[ChatMessage]) -> str:
    """:func:`chain_message` over ``messages``, from ``""``."""
    chain = ""
    for message in messages:
        chain = chain_message(chain, message)
    return chain


def chain_message(before: str, message: ChatMessage) -> str:
    """The conversation hash after ``message``: ``sha256(before, role, text)`` for a
    message with text, ``before`` for one without (one step per message, not the
    whole window per turn)."""
    text = message_text(message)
    if not text:
        return before
    raw = json.dumps([before, str(message.role.value), text], ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()

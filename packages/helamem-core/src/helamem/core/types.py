"""Value types of the public API: scopes, memories, search hits."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from .errors import InvalidInputError, InvalidScopeError
from .jsontext import MAX_JSON_DEPTH

__all__ = [
    "MAX_JSON_DEPTH",
    "Hit",
    "Kind",
    "Memory",
    "NewMemory",
    "NewTurn",
    "Provenance",
    "Scope",
    "SearchResult",
    "TimeLike",
    "check_role",
    "normalize_scope",
    "to_timestamp",
]

Scope: TypeAlias = tuple[str, ...]
"""A namespace tuple such as ``("users", "alice")``."""

Kind: TypeAlias = Literal["episodic", "semantic"]
Provenance: TypeAlias = Literal["base", "association", "semantic"]
TimeLike: TypeAlias = datetime | float | int

_MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z
_MIN_TIMESTAMP = -62135596800.0  # 0001-01-01T00:00:00Z


def normalize_prefix(scope: object) -> Scope:
    """A search prefix: a scope as :func:`normalize_scope` checks it, or ``()`` for every scope.

    Examples:
        >>> normalize_prefix(()), normalize_prefix(["users"])
        ((), ('users',))
    """
    if isinstance(scope, tuple | list) and not scope:
        return ()
    return normalize_scope(scope)


def normalize_scope(scope: object) -> Scope:
    """Validate a scope and return it as a tuple of strings.

    Args:
        scope: A non-empty tuple or list of non-empty strings.

    Raises:
        InvalidScopeError: If the scope is not a non-empty sequence of
            non-empty strings of valid Unicode without NUL (no backend can
            hold NUL: PostgreSQL's text refuses it, so SQLite does too).

    Examples:
        >>> normalize_scope(["users", "alice"])
        ('users', 'alice')
    """
    if isinstance(scope, str | bytes):
        raise InvalidScopeError(
            f"scope must be a tuple of strings, got the string {scope!r}; "
            f"write ({scope!r},) for a one-segment scope"
        )
    if not isinstance(scope, tuple | list):
        raise InvalidScopeError(
            f"scope must be a tuple of strings such as ('users', 'alice'), "
            f"got {type(scope).__name__}"
        )
    if not scope:
        raise InvalidScopeError("scope must have at least one segment, e.g. ('users', 'alice')")
    for i, seg in enumerate(scope):
        if not isinstance(seg, str):
            raise InvalidScopeError(
                f"scope segment {i} must be a string, got {type(seg).__name__}; "
                f"convert it with str()"
            )
        if not seg:
            raise InvalidScopeError(f"scope segment {i} is empty; every segment needs a name")
        if "\x00" in seg:
            raise InvalidScopeError(
                f"scope segment {i} ({seg!r}) contains NUL (\\x00), which no backend stores "
                f"(PostgreSQL's text cannot hold it); remove or replace it, e.g. "
                f"seg.replace('\\x00', '')"
            )
        try:
            seg.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidScopeError(
                f"scope segment {i} contains a lone surrogate ({exc.reason}); scope names must "
                f"be valid Unicode: decode bytes with errors='replace' first"
            ) from exc
    return tuple(scope)


def check_role(role: object) -> str | None:
    """A memory's role as given: ``None``, or a string of valid Unicode without NUL
    (as a scope segment: no backend can hold NUL).

    Raises:
        InvalidInputError: ``role`` is not a str, or holds NUL or a lone surrogate.

    Examples:
        >>> check_role("user"), check_role(None)
        ('user', None)
    """
    if role is None:
        return None
    if not isinstance(role, str):
        raise InvalidInputError(f"role must be a str or None, got {type(role).__name__}")
    if "\x00" in role:
        raise InvalidInputError(
            f"role {role!r} contains NUL (\\x00), which no backend stores (PostgreSQL's text "
            f"cannot hold it); remove or replace it, e.g. role.replace('\\x00', '')"
        )
    try:
        role.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"role {role!r} contains a lone surrogate ({exc.reason}); a role must be valid "
            f"Unicode: decode bytes with errors='replace' first"
        ) from exc
    return role


def to_timestamp(value: TimeLike | None, *, default: float, name: str = "event_time") -> float:
    """Convert an event time to POSIX seconds (UTC).

    Naive datetimes are taken as UTC. ``name``: the argument's name, for the errors.

    Raises:
        InvalidInputError: For NaN, infinities, out-of-range or non-time values.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a datetime or POSIX seconds, not a bool")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        ts = value.timestamp()
    elif isinstance(value, int | float):
        ts = float(value) if isinstance(value, float) or abs(value) < 2**62 else math.inf
    else:
        raise InvalidInputError(
            f"{name} must be a datetime or POSIX seconds, got {type(value).__name__}"
        )
    if not math.isfinite(ts) or not _MIN_TIMESTAMP <= ts <= _MAX_TIMESTAMP:
        raise InvalidInputError(f"{name} {value!r} is outside years 1..9999; pass a real date")
    return ts


def check_id(id: object) -> str | None:
    """A caller-chosen memory id: 1-128 printable ASCII characters (or ``None``)."""
    if id is None:
        return None
    if (
        not isinstance(id, str)
        or not 0 < len(id) <= 128
        or not id.isascii()
        or not id.isprintable()
        or id != id.strip()
    ):
        raise InvalidInputError(
            f"id must be 1-128 printable ASCII characters without surrounding spaces, "
            f"got {id!r}; or pass id=None for a generated one"
        )
    return id


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


@dataclass(frozen=True, slots=True)
class NewMemory:
    """One memory to add with :meth:`HelaMemory.add_many`.

    Examples:
        >>> NewMemory("Alice likes tea", ("users", "alice"), role="user")
        NewMemory(content='Alice likes tea', scope=('users', 'alice'), role='user', ...)
    """

    content: str
    scope: Sequence[str]
    role: str | None = None
    event_time: TimeLike | None = None
    metadata: Mapping[str, Any] | None = None
    keywords: Sequence[str] | None = None
    id: str | None = None
    """A caller-chosen memory id (1-128 printable ASCII characters, unique in the
    store); ``None`` draws a new time-sortable id. Adding an id that exists raises
    :class:`~helamem.core.errors.InvalidInputError` and writes nothing."""
    linked: bool = True
    """``True`` (default): a conversation message, linked by a temporal edge to the
    scope's previous episode (and the next one to it). ``False``: a standalone
    document (a key-value item, a note): no temporal edge either way, so its
    neighbours in insertion order never lift it, or it them, at search."""

    def __repr__(self) -> str:
        return (
            f"NewMemory(content={self.content!r}, scope={tuple(self.scope)!r}, "
            f"role={self.role!r}, ...)"
        )


@dataclass(frozen=True, slots=True)
class NewTurn:
    """One agent turn to add with :meth:`HelaMemory.add_turns`.

    Examples:
        >>> NewTurn(("users", "alice"), "I adopted a cat", "Congratulations!").user
        'I adopted a cat'
    """

    scope: Sequence[str]
    user: str
    assistant: str
    event_time: TimeLike | None = None
    metadata: Mapping[str, Any] | None = None
    used_ids: Sequence[str] = ()
    unique_on: Sequence[str] = ()
    """Keys of ``metadata`` that identify the turn (see :meth:`HelaMemory.add_turn`)."""
    revive: bool = False
    """Store it even when a turn of its ``unique_on`` key was deleted (see ``add_turn``)."""


@dataclass(frozen=True, slots=True)
class Memory:
    """A stored memory (episode or distilled fact)."""

    id: str
    scope: Scope
    kind: Kind
    content: str
    role: str | None
    event_time: datetime
    created_at: datetime
    keywords: tuple[str, ...] = ()
    access_count: int = 0
    last_access: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    provenance: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result with the scores that placed it.

    Attributes:
        memory: The memory itself.
        score: Relevance to the query in [0, 1], on one absolute scale for
            every scope and query (threshold it): the probabilistic OR of the
            embedding cosine and the share of the query's BM25 information the
            memory matches; an association hit has at most its seed's
            relevance times the path's edge weight. See
            :func:`helamem.core.retrieval.relevance`. Hits are sorted by it.
        activation: What ranked the hit among the candidates: base activation
            plus spreading boost (relative to this query's candidate pool).
        base: Base activation: fused dense/lexical z-score squashed to (0, 1),
            times recency.
        boost: What spreading activation added.
        dense: Cosine similarity of the query and the memory.
        lexical: BM25 score (0 when no query term matched).
        provenance: ``"base"`` for a candidate of the base ranking (its
            top-k, or with ``selection="learned"`` a pool member the model
            ranked in), ``"association"`` for a memory spreading reached and
            the selection lifted into the top-k, ``"semantic"`` for distilled
            facts.
        via: The seeds whose activation spread to this memory, each with the
            (decayed) weight of the path it came through: an edge's weight w,
            or w·w over two hops.
    """

    memory: Memory
    score: float
    activation: float
    base: float
    boost: float
    dense: float
    lexical: float
    provenance: Provenance
    via: tuple[tuple[str, float], ...] = ()

    @property
    def id(self) -> str:
        return self.memory.id

    @property
    def content(self) -> str:
        return self.memory.content


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The hits of one search: at most k episodic hits in score order (base and
    association hits together), then at most ``semantic_k`` facts in score order."""

    query: str
    hits: tuple[Hit, ...]

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> Hit:
        return self.hits[i]

    @property
    def ids(self) -> list[str]:
        """Ids of every hit, in order."""
        return [h.id for h in self.hits]

    @property
    def associations(self) -> list[Hit]:
        """Hits that only spreading activation surfaced."""
        return [h for h in self.hits if h.provenance == "association"]

    def to_text(
        self,
        max_tokens: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
        association_share: float = 0.5,
    ) -> str:
        """Format the hits compactly for an LLM prompt, one line per hit.

        Args:
            max_tokens: Keep whole hits, in order, while the text stays within
                this many tokens (the same rule as ``search(max_tokens=)``).
            count_tokens: The tokenizer (default: cl100k_base, offline; see
                :mod:`helamem.core.tokens`).
            association_share: As ``RetrievalConfig.association_share``, whose
                default (0.5) it takes (pass the store's value when it differs).

        Examples:
            >>> SearchResult("q", ()).to_text()
            ''
        """
        hits = (
            self.hits
            if max_tokens is None
            else fit_tokens(self.hits, max_tokens, count_tokens, association_share)
        )
        return "\n".join(context_line(h) for h in hits)


def context_line(hit: Hit) -> str:
    """One hit as a prompt line: ``- [YYYY-MM-DD] role: content``.

    A content that already opens with ``"role:"`` (a transcript line ``"Sam: ..."``
    stored with ``role="Sam"``; case aside) is not prefixed twice; the role is
    shown without surrounding spaces. A content of several lines (a reply with a
    list) is joined into one, its lines' outer whitespace dropped, so no line of it
    reads as a hit of its own.

    Examples:
        >>> from datetime import UTC, datetime
        >>> day = datetime(2026, 1, 2, tzinfo=UTC)
        >>> m = Memory("m1", ("u",), "episodic", "Options:\\n- tea\\n  - coffee", "assistant",
        ...            day, day)
        >>> context_line(Hit(m, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, "base"))
        '- [2026-01-02] assistant: Options: - tea - coffee'
        >>> m = Memory("m2", ("u",), "episodic", "A:\x0b- tea\x85- milk\x0c", "assistant", day, day)
        >>> context_line(Hit(m, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, "base"))
        '- [2026-01-02] assistant: A: - tea - milk'
    """
    m = hit.memory
    role = (m.role or "").strip()
    said = m.content[: len(role) + 1].casefold() == f"{role}:".casefold()
    who = f"{role}: " if role and not said else ""
    text = m.content
    lines = text.splitlines()  # every line break: \n, \r, \v, \f, \x1c-\x1e, \x85, \u2028/9
    if len(lines) > 1 or text != (lines[0] if lines else ""):
        text = " ".join(line.strip() for line in lines if line.strip())
    return f"- [{m.event_time:%Y-%m-%d}] {who}{text}"


def ranking_order(hits: Sequence[Hit], association_share: float = 0.5) -> list[Hit]:
    """``hits`` in the order that ranked them, for filling a context budget.

    As ``search(k)`` chooses for every k: base hits by ``base`` activation
    (the fused ranking), and association hits, by ``activation``, in every
    slot their share allows (``RetrievalConfig.association_share``: with 0.2
    the 5th, 10th, ... hit); then facts by activation.

    Examples:
        >>> ranking_order([])
        []
    """
    by_act = sorted(range(len(hits)), key=lambda i: (-hits[i].activation, i))
    base = sorted(
        (i for i in by_act if hits[i].provenance == "base"), key=lambda i: (-hits[i].base, i)
    )
    assoc = [i for i in by_act if hits[i].provenance == "association"]
    facts = [i for i in by_act if hits[i].provenance == "semantic"]
    out: list[int] = []
    taken = 0
    while base or assoc:
        room = int(association_share * (len(out) + 1) + 1e-9) > taken
        if assoc and (room or not base):  # only associations left: nothing to displace
            out.append(assoc.pop(0))
            taken += 1
        else:
            out.append(base.pop(0))
    return [hits[i] for i in [*out, *facts]]


def fit_tokens(
    hits: Sequence[Hit],
    max_tokens: int,
    count_tokens: Callable[[str], int] | None = None,
    association_share: float = 0.5,
) -> list[Hit]:
    """The hits that :meth:`SearchResult.to_text` can show within ``max_tokens``.

    Whole hits, taken in :func:`ranking_order` (the order that chose them,
    which recalls more than score order at equal tokens) until the next one
    does not fit; returned in their given order (by ``score``). Each hit
    costs the tokens of its line plus its newline.
    """
    if count_tokens is None:
        from .tokens import default_counter

        count_tokens = default_counter().count
    chosen: set[int] = set()
    used = 0
    for h in ranking_order(hits, association_share):
        cost = int(count_tokens(context_line(h) + "\n"))
        if used + cost > max_tokens:
            break
        chosen.add(id(h))
        used += cost
    return [h for h in hits if id(h) in chosen]


_STRICT_JSON = json.JSONEncoder(allow_nan=False, sort_keys=True)
"""``json.dumps(value, allow_nan=False, sort_keys=True)``, built once: ``dumps``
builds an encoder per call when given options (a third of ``prepare``'s time)."""


def _json_depth(value: Any) -> int:
    """The nesting depth of a JSON value's objects and arrays (iterative)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in children)
    return deepest


def dump_json(value: Mapping[str, Any] | Sequence[Any], what: str) -> str:
    """Serialize metadata as strict JSON (no NaN, keys sorted, non-ASCII escaped).

    Raises:
        InvalidInputError: ``value`` holds something JSON cannot carry (a set, an
            object, NaN or infinity, a cycle), or nests objects and arrays deeper
            than :data:`MAX_JSON_DEPTH`; the message names ``what``.
    """
    if type(value) is dict and not value:  # most metadata
        return "{}"
    if type(value) in (list, tuple) and not value:  # most provenance
        return "[]"
    try:
        text = _STRICT_JSON.encode(value)
    except RecursionError:
        text = ""  # deeper than the encoder goes: refused below
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be JSON-serializable without NaN/inf: {exc}") from exc
    if text and text.count("{") + text.count("[") <= MAX_JSON_DEPTH:
        return text  # no deeper than its brackets (most values): no walk needed
    depth = _json_depth(value)
    if not text or depth > MAX_JSON_DEPTH:
        raise InvalidInputError(
            f"{what} nests objects and arrays {depth} levels deep, over "
            f"{MAX_JSON_DEPTH}; store deeper structures as a JSON string value"
        )
    return text

"""Filters, paging and namespace matching of :class:`~helamem.langgraph.HelaMemStore`.

One rule for every read, with or without a query (the query only ranks):
LangGraph's ``InMemoryStore`` semantics, which its docs describe for every
store. A filter ``{field: condition}`` matches when every condition holds:

* a plain value is equality (``{"n": 3}``); lists compare element by element;
* a nested object without operators matches field by field
  (``{"meta": {"prio": 10}}`` matches ``{"meta": {"prio": 10, "x": 1}}``);
* an object of operators (``$eq $ne $gt $gte $lt $lte``) applies each one.
  ``$ne`` holds for an item that lacks the field (``None != 1``), as in
  ``InMemoryStore``; the order operators compare numbers (``float``;
  booleans as 0/1, as every LangGraph store), two strings that are not
  numbers as strings (ISO dates: ``{"date": {"$gte": "2024-01-01"}}``, as
  ``SqliteStore`` and ``PostgresStore``; ``InMemoryStore`` raises there), and
  never match a missing value, an object, a list, or a string that is not a
  number against a number (``InMemoryStore`` raises ``TypeError`` there;
  ``"10"`` against ``5`` compares as numbers).

A field name is looked up as written; when the value has no such key and the
name contains dots, it is read as a path (``"a.b"`` is ``value["a"]["b"]``),
as ``SqliteStore`` and ``PostgresStore`` read it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from helamem.core import InvalidInputError
from langgraph.store.base import MatchCondition

__all__ = ["check_paging", "matches", "namespace_matches", "select_namespaces"]

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
OPERATORS = ("$eq", "$ne", *_ORDER)


def check_paging(limit: Any, offset: Any, what: str = "search") -> None:
    """One rule for ``limit``/``offset`` of every read: integers ``>= 0``.

    Raises:
        InvalidInputError: Naming the argument and the valid range.
    """
    for name, v in (("limit", limit), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidInputError(f"{what}: {name} must be an int >= 0, got {v!r}")


def check_filter(flt: Mapping[str, Any] | None) -> None:
    """Reject unknown operators up front (with or without a query).

    Raises:
        InvalidInputError: Naming the operator and the supported ones.
    """
    if not flt:
        return
    for cond in flt.values():
        _check_condition(cond)


def _check_condition(cond: Any) -> None:
    if isinstance(cond, Mapping):
        for k, v in cond.items():
            if str(k).startswith("$"):
                if k not in OPERATORS:
                    raise InvalidInputError(
                        f"unsupported filter operator {k!r}; use {', '.join(OPERATORS)}"
                    )
            else:
                _check_condition(v)


def matches(value: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    """Whether an item's value matches a LangGraph filter (see the module docstring)."""
    return not flt or all(_compare(_lookup(value, k), v) for k, v in flt.items())


def _compare(actual: Any, expected: Any) -> bool:
    if isinstance(expected, Mapping):
        if any(str(k).startswith("$") for k in expected):
            return all(_apply(actual, op, v) for op, v in expected.items())
        return isinstance(actual, Mapping) and all(
            _compare(actual.get(k), v) for k, v in expected.items()
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(_compare(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(actual == expected)


def _apply(actual: Any, op: str, value: Any) -> bool:
    if op == "$eq":
        return bool(actual == value)
    if op == "$ne":
        return bool(actual != value)
    if op not in _ORDER:
        raise InvalidInputError(f"unsupported filter operator {op!r}; use {', '.join(OPERATORS)}")
    if actual is None or isinstance(actual, Mapping | list):
        return False
    try:  # numbers (booleans as 0/1, numeric strings too), as InMemoryStore compares them
        return _ORDER[op](float(actual), float(value))
    except (TypeError, ValueError):
        pass
    if isinstance(actual, str) and isinstance(value, str):  # ISO dates: as SqliteStore
        return _ORDER[op](actual, value)
    return False  # a non-numeric string against a number: never matches


def _lookup(value: Any, key: str) -> Any:
    """``value[key]``, else the dotted path ``a.b``."""
    if not isinstance(value, Mapping):
        return None
    if not isinstance(key, str):  # a strange key (an int) matches nothing, as in Python
        return value.get(key)
    if key in value or "." not in key:
        return value.get(key)
    head, _, rest = key.partition(".")
    return _lookup(value.get(head), rest)


def namespace_matches(conditions: Sequence[MatchCondition] | None, ns: tuple[str, ...]) -> bool:
    """Whether ``ns`` meets every prefix/suffix condition (``"*"`` matches any label)."""
    for c in conditions or ():
        path = tuple(c.path)
        if len(ns) < len(path):
            return False
        labels = ns[: len(path)] if c.match_type == "prefix" else ns[len(ns) - len(path) :]
        if any(p != "*" and k != p for k, p in zip(labels, path, strict=True)):
            return False
    return True


def select_namespaces(
    namespaces: set[tuple[str, ...]],
    conditions: Sequence[MatchCondition] | None,
    max_depth: int | None,
    limit: int,
    offset: int,
) -> list[tuple[str, ...]]:
    """``list_namespaces`` over a set: match, truncate to ``max_depth``, sort, page."""
    kept = {ns for ns in namespaces if namespace_matches(conditions, ns)}
    if max_depth is not None:
        kept = {ns[:max_depth] for ns in kept}
    return sorted(kept)[offset : offset + limit]

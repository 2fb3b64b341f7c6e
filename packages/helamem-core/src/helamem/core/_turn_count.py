"""Each scope's turns since its last consolidation, kept in the store (the meta table).

A :class:`~helamem.core.TurnRecorder` consolidates a scope every
``consolidate_every`` turns; the count lives here, not in the recorder, so
turns recorded by short-lived processes (a CLI, a serverless handler, a
script per message), by several recorders or adapters, all count toward the
scope's next consolidation. Per scope node, three meta keys:

* ``turns:<node>``: turns ever stored in the node (``add_turn``/``add_turns``;
  a turn skipped as stored already, ``unique_on``, is not). It grows only, in
  the very transaction that stores the turns (:func:`count_turns`): a killed
  process never loses a stored turn's count nor counts an unstored one.
* ``turns_consolidated:<node>``: the ``turns:`` value that the last
  consolidation covering the node had seen; it only grows too (a maximum), so
  several consolidations settling in any order never count a turn twice.
  A consolidation sets it (:func:`mark_consolidated`, in the transaction that
  writes its facts), a recorder whose consolidation ended (done or failed:
  :func:`settle`) and ``delete_scope`` too. Turns due: the difference.
* ``consolidation_claim:<node>``: a recorder that found the node due and is
  consolidating it (:func:`claim`, one write transaction: of processes racing
  to the threshold, one claims it). Another recorder does not claim it while
  the claim is younger than :data:`CLAIM_LEASE_S`; one killed mid-way leaves
  its claim, which lapses after that long: the turns, still due, are then
  consolidated by the next turn recorded.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .storage.base import GraphStore
from .types import normalize_scope

__all__ = [
    "CLAIM_LEASE_S",
    "Claim",
    "claim",
    "count_turns",
    "due",
    "forget_due",
    "mark_consolidated",
    "settle",
    "turns_seen",
]

CLAIM_LEASE_S = 600.0
"""Seconds a recorder's claim on a scope's consolidation holds off the others'."""


def _total_key(node: int) -> str:
    return f"turns:{node}"


def _done_key(node: int) -> str:
    return f"turns_consolidated:{node}"


def _claim_key(node: int) -> str:
    return f"consolidation_claim:{node}"


def _int(raw: str | None) -> int:
    """A stored count, read leniently (missing or unreadable: 0)."""
    try:
        return max(0, int(raw)) if raw is not None else 0
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class Claim:
    """A recorder's claim on a scope node's consolidation (see :func:`claim`).

    Attributes:
        node: The scope's node.
        total: The node's ``turns:`` count when claimed: what the consolidation covers.
        stamp: The claim's meta value (its time and a token), so that :func:`settle`
            removes this claim only, never a later one of another process.
    """

    node: int
    total: int
    stamp: str


def count_turns(store: GraphStore, db: Any, counts: Mapping[int, int]) -> None:
    """Add ``counts[node]`` stored turns to each node's count (inside the write
    transaction that stores them)."""
    keys = {node: _total_key(node) for node, n in counts.items() if n}
    now = store.get_metas(list(keys.values()))
    store.set_metas(db, [(k, str(_int(now.get(k)) + counts[n])) for n, k in keys.items()])


def due(store: GraphStore, node: int) -> tuple[int, int]:
    """``(turns stored ever, turns not yet consolidated)`` of a node."""
    total = _int(store.get_meta(_total_key(node)))
    return total, max(0, total - _int(store.get_meta(_done_key(node))))


def turns_seen(store: GraphStore, nodes: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Each node's ``turns:`` count now, read before a consolidation looks at its
    episodes (each turn counted here is among the episodes it then reads); one
    query per 500 nodes (a prefix over many tenants)."""
    nodes = list(nodes)
    got = store.get_metas([_total_key(n) for n in nodes])
    return tuple((n, _int(got.get(_total_key(n)))) for n in nodes)


def mark_consolidated(store: GraphStore, db: Any, seen: Sequence[tuple[int, int]]) -> None:
    """Count the turns in ``seen`` (:func:`turns_seen`) as consolidated (inside a
    write transaction; never lowers what another consolidation marked). Batched:
    a prefix over many tenants holds the write lock for a few statements, not two
    per tenant."""
    done = store.get_metas([_done_key(n) for n, _ in seen])
    store.set_metas(
        db,
        [(_done_key(n), str(total)) for n, total in seen if total > _int(done.get(_done_key(n)))],
    )


def _claimed_at(raw: str | None) -> float | None:
    try:
        at = float(raw.split()[0]) if raw else math.nan
    except ValueError:
        return None
    return at if math.isfinite(at) else None


def claim(store: GraphStore, scope: Sequence[str], every: int, now: float) -> Claim | None:
    """Claim ``scope``'s consolidation when ``every`` or more of its turns are due
    and no other claim younger than :data:`CLAIM_LEASE_S` holds it (either side of
    ``now``: a clock set back does not make a claim last).

    The check is read first without a write (the usual answer, not due, costs no
    lock), then again, with the claim, in one write transaction: of processes
    racing to the threshold, one claims it.
    """
    node = store.find_scope(normalize_scope(scope))
    if node is None or due(store, node)[1] < every:
        return None
    with store.tx() as db:
        total, pending = due(store, node)
        if pending < every:
            return None
        at = _claimed_at(store.get_meta(_claim_key(node)))
        if at is not None and abs(now - at) < CLAIM_LEASE_S:
            return None  # another recorder is consolidating it
        stamp = f"{now!r} {secrets.token_hex(8)}"
        store.set_meta(db, _claim_key(node), stamp)
    return Claim(node, total, stamp)


def settle(store: GraphStore, done: Claim) -> None:
    """The claimed consolidation ended (done or failed): its turns are no longer due
    (a failed one is tried again ``every`` turns later), and its claim goes."""
    with store.tx() as db:
        mark_consolidated(store, db, [(done.node, done.total)])
        if store.get_meta(_claim_key(done.node)) == done.stamp:
            store.delete_meta(db, [_claim_key(done.node)])


def forget_due(store: GraphStore, db: Any, nodes: Iterable[int]) -> None:
    """Nothing of these nodes is due any more (their memories are deleted)."""
    mark_consolidated(store, db, turns_seen(store, nodes))

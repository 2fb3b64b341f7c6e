"""The agent-loop replay of LoCoMo (``--ingest agent-loop``) and the learned graph's shape."""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helamem.core.dynamics import decayed
from helamem.core.engine import HelaMemory
from helamem.core.types import NewTurn

from .locomo_data import LOOP_K, Conversation, Turn

if TYPE_CHECKING:
    from helamem.core.config import PostgresConfig


def turn_pairs(turns: Sequence[Turn]) -> list[tuple[Turn, Turn | None]]:
    """The conversation as an agent sees it: consecutive turns of one session, in pairs.

    A session with an odd number of turns ends with a turn alone (``None`` reply).

    Examples:
        >>> t = lambda d, day: Turn(d, d, datetime(2023, 1, day, tzinfo=UTC))
        >>> [(a.dia_id, b and b.dia_id) for a, b in turn_pairs([t("1", 1), t("2", 1), t("3", 1),
        ...     t("4", 2), t("5", 2)])]
        [('1', '2'), ('3', None), ('4', '5')]
    """
    out: list[tuple[Turn, Turn | None]] = []
    i = 0
    while i < len(turns):
        a = turns[i]
        b = turns[i + 1] if i + 1 < len(turns) else None
        if b is not None and b.event_time == a.event_time:
            out.append((a, b))
            i += 2
        else:
            out.append((a, None))
            i += 1
    return out


def replay_agent_loop(
    mem: HelaMemory, conv: Conversation, scope: tuple[str, ...], learn: bool, k: int = LOOP_K
) -> int:
    """Replay one conversation as an agent runs it; returns the searches made.

    For each turn pair ``(a, b)`` (:func:`turn_pairs`): with ``learn``, the
    agent first calls ``search(a, k=k)`` with the defaults (learning on), then
    ``add_turns([NewTurn(a, b, used_ids=<those hits>)])``, the call
    :class:`~helamem.core.TurnRecorder` makes for every recorded turn (and so
    every adapter); without ``learn`` it records the pair with no used ids. A
    turn alone is stored with ``add``. Each memory keeps its LoCoMo id
    (``dia_id``; the reply's in ``reply_dia_id``).
    """
    searches = 0
    for a, b in turn_pairs(conv.turns):
        if b is None:
            mem.add(a.content, scope, event_time=a.event_time, metadata={"dia_id": a.dia_id})
            continue
        used: list[str] = []
        if learn:
            used = mem.search(a.content, scope, k=k).ids
            searches += 1
        meta = {"dia_id": a.dia_id, "reply_dia_id": b.dia_id}
        mem.add_turns([NewTurn(scope, a.content, b.content, a.event_time, meta, tuple(used))])
    return searches


def gini(values: Sequence[float]) -> float:
    r"""Gini coefficient of non-negative values (0: all equal; near 1: one holds all).

    :math:`G = \frac{2 \sum_i i\, x_{(i)}}{n \sum_i x_i} - \frac{n+1}{n}` over the
    values sorted ascending (:math:`i = 1..n`); 0 when they sum to 0.

    Examples:
        >>> gini([1.0, 1.0, 1.0, 1.0])
        0.0
        >>> gini([0.0, 0.0, 0.0, 4.0])
        0.75
    """
    xs = sorted(values)
    n, total = len(xs), sum(xs)
    if n == 0 or total <= 0:
        return 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return round(2 * weighted / (n * total) - (n + 1) / n, 6)


def _quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    return float(xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1 if q > 0 else 0)])


def graph_shape(
    path: Path, decay_rate: float, store: PostgresConfig | None = None
) -> dict[str, Any]:
    """The shape of a store's association graph, read from its SQLite file (or its
    PostgreSQL schema).

    Weights are decayed to their scope's current tick (``clock="turns"``).
    A node's strength is the sum of its edges' weights; every episodic
    memory counts, with or without edges.

    Args:
        path: The store directory (``HelaMemConfig.path``).
        decay_rate: δ of the store's :class:`~helamem.core.DynamicsConfig`.
        store: The store's ``HelaMemConfig.store``: ``None`` reads
            ``path/helamem.sqlite3``; a PostgreSQL config reads its schema.

    Returns:
        ``nodes``, ``edges``, ``mean_weight``, ``strength_p50``,
        ``strength_p99``, ``strength_max``, ``strength_gini`` and ``degree_max``.
    """
    nodes_sql = "SELECT n FROM memories WHERE kind = 'episodic'"
    edges_sql = (
        "SELECT e.a, e.b, e.weight, e.tick, s.tick FROM edges e JOIN scopes s ON s.id = e.scope_id"
    )
    if store is not None:
        from helamem.core.storage.postgres import connect_reader

        pg = connect_reader(store)
        try:
            nodes = [int(r[0]) for r in pg.execute(nodes_sql).fetchall()]
            rows = pg.execute(edges_sql).fetchall()
        finally:
            pg.conn.close()
    else:
        uri = f"file:{path / 'helamem.sqlite3'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            nodes = [int(r[0]) for r in db.execute(nodes_sql)]
            rows = db.execute(edges_sql).fetchall()
    strength = dict.fromkeys(nodes, 0.0)
    degree = dict.fromkeys(nodes, 0)
    weights = []
    for a, b, w, t, now in rows:
        w = decayed(float(w), int(now) - int(t), decay_rate)
        weights.append(w)
        for n in (int(a), int(b)):
            strength[n] = strength.get(n, 0.0) + w
            degree[n] = degree.get(n, 0) + 1
    xs = sorted(strength.values())
    return {
        "nodes": len(xs),
        "edges": len(weights),
        "mean_weight": round(sum(weights) / len(weights), 4) if weights else 0.0,
        "strength_p50": round(_quantile(xs, 0.5), 4),
        "strength_p99": round(_quantile(xs, 0.99), 4),
        "strength_max": round(xs[-1], 4) if xs else 0.0,
        "strength_gini": gini(xs),
        "degree_max": max(degree.values(), default=0),
    }

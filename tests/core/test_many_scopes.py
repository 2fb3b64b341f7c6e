"""A prefix over more scope nodes than a statement can bind one parameter each.

Every query over a prefix's scope nodes binds up to ``INLINE_IDS`` of them one
parameter each and a longer list as one parameter, so it stays one statement
under both engines' caps on parameters (SQLite's ``SQLITE_MAX_VARIABLE_NUMBER``,
PostgreSQL's 65,535). Building a store past those caps is slow; here the cap is
lowered instead: SQLite's own (``setlimit``) and ``INLINE_IDS``. PostgreSQL's
real cap is crossed in ``test_postgres_store.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HelaMemory, NewMemory
from helamem.core.storage import sqlite_upkeep

USERS = ("users",)
TENANTS = 12


def _fill(mem: HelaMemory) -> None:
    mem.add_many(
        [
            NewMemory(f"tenant {t} note {i} about cats", ("users", f"t{t}"), event_time=1e9 + i)
            for t in range(TENANTS)
            for i in range(3)
        ]
    )


def _key(e: Any) -> tuple[int, int]:
    return (e.a, e.b)


def _answers(mem: HelaMemory) -> dict[str, Any]:
    """Every prefix query's answer over ``USERS`` (store methods and engine calls)."""

    def read(core: Any) -> dict[str, Any]:
        s = core.store
        nodes = s.descendants(s.find_scope(list(USERS)))
        ns = sorted(r.n for r in s.rows_in_scopes(nodes))
        return {
            "nodes": len(nodes),
            "counts": s.counts(nodes),
            "scopes": s.scopes_with_memories(nodes),
            "edges": sorted(s.edges_in_scopes(nodes), key=_key),
            "rows": ns,
            "forget": [r.n for r in s.forget_candidates(nodes, 0.5, 100)],
            "newest": s.newest_event(nodes),
            "cited": s.cited_ids(nodes),
            "holding": s.nodes_holding(nodes, "episodic"),
            "edges_of": sorted(s.edges_of(ns), key=_key),
            "edges_among": s.edges_among(ns),
        }

    out = mem._call(read)
    st = mem.stats(USERS)
    out["stats"] = (st.memories, st.episodic, st.edges, st.scopes, st.unindexed)
    out["list_scopes"] = mem.list_scopes(USERS)
    report = mem.forget(USERS, older_than_s=0.5, below=1.5)  # every edge is weaker than 1.5
    out["forget_report"] = sorted(m.id for m in report.candidates)
    return out


def _cap_sqlite(mem: HelaMemory, n: int) -> None:
    """Lower SQLite's cap on a statement's parameters to ``n`` (PostgreSQL: nothing)."""

    def cap(core: Any) -> None:
        if isinstance(core.store.db, sqlite3.Connection):
            core.store.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, n)

    mem._call(cap)


def test_prefix_calls_give_the_same_answers_over_more_nodes_than_bind_inline(
    tmp_path: Path, make_mem: Callable[..., HelaMemory], monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_mem(tmp_path / "s") as mem:
        _fill(mem)
        want = _answers(mem)  # every list inline (13 nodes, 36 memories)
    assert want["nodes"] == TENANTS + 1
    assert want["stats"] == (36, 36, 24, TENANTS, 0)
    assert want["counts"]["episodic"] == 36 and want["counts"]["edges"] == 24
    assert len(want["scopes"]) == TENANTS and len(want["holding"]) == TENANTS
    assert len(want["rows"]) == 36 and want["newest"] == 1e9 + 2
    assert len(want["forget"]) == 24 and len(want["forget_report"]) == 24
    assert len(want["edges"]) == len(want["edges_of"]) == len(want["edges_among"]) == 24
    assert want["list_scopes"] == sorted(("users", f"t{t}") for t in range(TENANTS))

    # fewer parameters allowed than the prefix has nodes: each list goes as one (a
    # new connection: SQLite's cached statements keep the limit they were made under)
    monkeypatch.setattr(sqlite_upkeep, "INLINE_IDS", 3, raising=False)
    with make_mem(tmp_path / "s") as mem:
        _cap_sqlite(mem, 8)
        assert _answers(mem) == want
        assert mem.decay(USERS)["edges"] == 24
        _cap_sqlite(mem, 32_766)  # deleting batches memories 500 at a time
        assert mem.delete_scope(USERS) == 36
        assert mem.stats(USERS).memories == 0 and mem.list_scopes(USERS) == []


def test_long_id_lists_answer_in_one_statement_on_both_engines(mem: HelaMemory) -> None:
    """Lookups by memory id (text) bind up to ``INLINE_IDS`` ids one parameter each and
    a longer list as one parameter (a JSON array in SQLite, a ``TEXT[]`` in
    PostgreSQL): the answers are the same either side of that length."""
    added = mem.add_many(NewMemory(f"note {i} about cats", ("users", "t0")) for i in range(450))
    ids = [m.id for m in added]
    gone = ids[390:420]  # deleted across the inline/one-parameter line
    mem.delete(gone)

    def run(core: Any) -> None:
        s = core.store
        keys = s.keys_of(ids)
        assert set(keys) == set(ids) - set(gone)
        ns = [keys[i] for i in ids if i in keys]
        with s.tx() as db:  # known tombstones: the deleted ids
            db.execute("DELETE FROM tombstones")
            db.executemany(
                "INSERT INTO tombstones(id, scope_id, kind) VALUES (?, 1, 'episodic')",
                [(i,) for i in gone],
            )
        for size in (1, 395, 400, 401, 450):  # inline, padded, one parameter
            want = ids[:size]
            live = [i for i in want if i not in gone]
            assert set(s.keys_of([*want, "no-such-id"])) == set(live)
            assert {r.id for r in s.rows_by_id([*want, "no-such-id"]).values()} == set(live)
            assert {t[0] for t in s.tombstones([*want, "x"])} == set(want) & set(gone)
            assert {r.id for r in s.rank_rows(want, ()).values()} == set(live)
        for a, b in ((401, 0), (0, 401), (401, 19), (200, 220)):  # ids and keys both ways
            got = s.rank_rows(ids[:a], ns[-b:] if b else ())
            want_ns = {keys[i] for i in ids[:a] if i in keys} | set(ns[-b:] if b else ())
            assert set(got) == want_ns
        assert s.existing(s.db, [*ns, max(ns) + 10_000]) == set(ns)

    mem._call(run)

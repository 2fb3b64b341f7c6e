"""Load: 32 async agents in this process and 4 child processes on one data directory.

The child processes (``load_child.py``, started with ``subprocess``: a child
forked after a store was opened hangs in ``chromadb.PersistentClient``) open
the store, wait at a start barrier, then each runs a few async agents while
this process runs 32 agents (coroutines) on its own ``HelaMemory``. Every
agent records turns (``aadd_turn`` and a shared ``TurnRecorder``), searches
its own scope, the shared scopes and the shared prefix (with and without
learning) and reinforces explicit id sets, for a bounded number of
operations and a bounded time. Then, with every process closed:

* no agent saw an error; no ``database is locked`` (or any other
  ``OperationalError``) reached a caller or the library's warning log;
* every acknowledged turn is stored, once, with its scope, role and text,
  and nothing else is; the ids ``aadd_turn`` returned are those rows;
* the store passes the crash test's integrity checks after a reopen
  (``integrity_check`` or PostgreSQL's BM25 statistics, graph ids == Chroma
  ids, every vector in its collection, ``stats().unindexed == 0``);
* every edge weight is what the logged co-activations imply, exactly
  (tolerance 1e-9), and there is no other edge.

Weights. Decay is off (``decay_rate=1.0``), so an update is ``w' = min(1,
w + η)`` whatever the clock says and the final weight of a pair depends only
on how many co-activations it had, not on their order or on which process
made them. The co-activations are the acknowledged ones each agent logged:
every ``reinforce`` (pairs within one scope), every learning search (the
returned hits, pairs within one scope) and every turn with ``used_ids``
(the new user and assistant episodes with the used memories of the turn's
scope). Temporal edges depend on the interleaving of writers, so they are
checked against the stored order instead: the episodes of a scope, sorted by
row number (the commit order: write transactions are serialised and there
are no deletes), form a chain whose consecutive pairs start at
``temporal_weight``; each stored edge must equal that start (or 0) plus its
co-activations. This checks the chain (each turn linked to the scope's
previous episode, whichever process wrote it) as well as the learned weights.

On PostgreSQL (the ``backend`` fixture) every process's graph is the test
server's schema of the store's path (the vectors stay in the directory's
embedded index); the write lock is the schema's advisory lock, the row
numbers its identity column (taken inside the locked transaction: commit
order too), and the same exact weights must come out.

The default run takes about 25 s on 2 cores (on each backend). ``HELAMEM_SOAK=1``
runs the soak variant for ``HELAMEM_SOAK_SECONDS`` (default 60) with the real
MiniLM embedder (``HELAMEM_LOAD_EMBEDDER=hashing`` for the fast one) and reports
throughput and p95 latencies (printed; written as JSON to
``HELAMEM_LOAD_REPORT`` when set).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from load_child import DYNAMICS, Results, open_memory, run_agents
from test_crash import check_store

from helamem.core import dynamics

CHILD = Path(__file__).with_name("load_child.py")
PROCESSES = 4
PROCESS_AGENTS = 4  # async agents in each child process
AGENTS = 32  # async agents in this process
READY_TIMEOUT_S = 120.0  # children import and open the store on a busy CI box
SOAK = os.environ.get("HELAMEM_SOAK") == "1"
SOAK_SECONDS = float(os.environ.get("HELAMEM_SOAK_SECONDS", "60"))
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Load:
    seconds: float  # every agent stops after this long...
    max_ops: int  # ... or after this many operations
    child_max_ops: int
    embedder: str
    seed: int


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-n:] if path.exists() else ""


def run_load(tmp_path: Path, load: Load, dsn: str | None = None) -> list[Results]:
    """Start the children, release everyone at once, return every process's log
    (with ``dsn``, the graph in that PostgreSQL server)."""
    store = tmp_path / "store"
    go = tmp_path / "GO"
    launched = time.monotonic()
    procs = []  # every process opens (and the first creates) the store at the same time
    for p in range(PROCESSES):
        out = tmp_path / f"p{p}.json"
        err = tmp_path / f"p{p}.err"
        args = [str(store), str(out), f"p{p}", str(PROCESS_AGENTS), str(load.seed * 10 + p)]
        args += [str(load.child_max_ops), str(load.seconds), load.embedder, str(go)]
        args += [dsn] if dsn else []
        with open(err, "wb") as err_f:
            proc = subprocess.Popen(
                [sys.executable, str(CHILD), *args],
                stdout=subprocess.DEVNULL,
                stderr=err_f,
                cwd=str(CHILD.parent),
            )
        procs.append((proc, out, err))
    try:
        mem = open_memory(store, load.embedder, dsn).open()
        try:
            start = time.monotonic()
            for proc, out, err in procs:
                while not Path(str(out) + ".ready").exists():
                    if proc.poll() is not None:
                        pytest.fail(f"child exited with {proc.returncode}:\n{_tail(err)}")
                    if time.monotonic() - start > READY_TIMEOUT_S:
                        pytest.fail(f"child did not open the store in time:\n{_tail(err)}")
                    time.sleep(0.02)
            go.touch()
            opened = time.monotonic() - launched
            print(f"\nall {1 + PROCESSES} processes had the store open after {opened:.1f}s")
            mine = asyncio.run(
                run_agents(mem, "main", AGENTS, load.seed, load.max_ops, load.seconds)
            )
        finally:
            mem.close()
        results = [mine]
        for proc, out, err in procs:
            rc = proc.wait(timeout=load.seconds + READY_TIMEOUT_S)
            if rc != 0 or not out.exists():
                pytest.fail(f"child failed with {rc}:\n{_tail(err)}")
            res = Results(**json.loads(out.read_text(encoding="utf-8")))
            results.append(res)
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return results


def _ro(db_file: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)


def _chain(w: float, times: int) -> float:
    """``times`` co-activations from weight ``w``, exactly as the engine applies them."""
    for _ in range(times):
        w = dynamics.reinforced(w, DYNAMICS.learning_rate)
    return w


def verify(store: Path, results: list[Results], graph: Any = None) -> dict[str, int]:
    """Turns, edge weights (from the graph store as the writers left it: SQLite's file,
    or with ``graph``, the ``store_db`` fixture, PostgreSQL); numbers for the report."""
    with closing(_ro(store / "helamem.sqlite3") if graph is None else graph(store)) as db:
        scope_path = {
            int(i): tuple(json.loads(p)) for i, p in db.execute("SELECT id, path FROM scopes")
        }
        rows = db.execute("SELECT n, id, scope_id, kind, role, content FROM memories").fetchall()
        edges = {
            (int(a), int(b)): (int(s), float(w))
            for a, b, s, w in db.execute("SELECT a, b, scope_id, weight FROM edges")
        }
        unindexed = int(db.execute("SELECT COUNT(*) FROM memories WHERE indexed = 0").fetchone()[0])
    n_of = {str(r[1]): int(r[0]) for r in rows}
    scope_of = {int(r[0]): int(r[2]) for r in rows}
    by_content: dict[str, list[tuple[int, str, tuple[str, ...], str]]] = defaultdict(list)
    for n, mid, sid, kind, role, content in rows:
        assert kind == "episodic"
        by_content[str(content)].append((int(n), str(mid), scope_path[int(sid)], str(role)))

    # every acknowledged turn, exactly once, and nothing else
    turns = [t for r in results for t in r.turns]
    counts: Counter[tuple[int, int]] = Counter()

    def co_activate(ns: list[int]) -> None:
        per_scope: dict[int, list[int]] = defaultdict(list)
        for n in ns:
            per_scope[scope_of[n]].append(n)
        for group in per_scope.values():
            counts.update(dynamics.co_activation_pairs(group))

    for t in turns:
        found = []
        for role in ("user", "assistant"):
            stored = by_content.get(t[role], [])
            assert len(stored) == 1, f"acknowledged {role} message stored {len(stored)} times"
            n, mid, scope, stored_role = stored[0]
            assert (scope, stored_role) == (tuple(t["scope"]), role)
            found.append((n, mid))
        if "ids" in t:
            assert [mid for _, mid in found] == t["ids"]
        u, a = (n for n, _ in found)
        used = [n_of[i] for i in t["used"] if scope_of[n_of[i]] == scope_of[u]]
        if used:
            counts.update(dynamics.co_activation_pairs([u, a, *used]))
    assert len(rows) == 2 * len(turns), "rows that no acknowledged turn explains"
    for r in results:
        for ids in r.reinforces + r.searches:
            co_activate([n_of[i] for i in ids])

    # temporal chains in commit order
    chain: dict[int, list[int]] = defaultdict(list)
    for n in sorted(scope_of):
        chain[scope_of[n]].append(n)
    temporal = {dynamics.edge_key(a, b) for ns in chain.values() for a, b in itertools.pairwise(ns)}
    expected = {
        key: _chain(DYNAMICS.temporal_weight if key in temporal else 0.0, counts[key])
        for key in temporal | set(counts)
    }
    missing = sorted(set(expected) - set(edges))
    extra = sorted(set(edges) - set(expected))
    assert not missing, f"{len(missing)} edges missing, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} unexplained edges, e.g. {extra[:3]}"
    wrong = [
        (key, edges[key][1], w)
        for key, w in expected.items()
        if abs(edges[key][1] - w) > TOLERANCE or edges[key][0] != scope_of[key[0]]
    ]
    assert not wrong, f"{len(wrong)} wrong weights (edge, stored, expected), e.g. {wrong[:3]}"
    return {
        "memories": len(rows),
        "turns": len(turns),
        "edges": len(edges),
        "temporal_edges": len(temporal),
        "learned_edges": len(set(counts)),
        "co_activations": sum(counts.values()),
        "unindexed_at_close": unindexed,
    }


def _ms(xs: list[float], q: int) -> float | None:
    return round(float(np.percentile(xs, q)) * 1000, 2) if xs else None


def report(load: Load, results: list[Results], checked: dict[str, int]) -> dict[str, Any]:
    wall = max(r.ended for r in results) - min(r.started for r in results)
    ops = sum(len(v) for r in results for v in r.latency.values())
    out: dict[str, Any] = {
        "embedder": load.embedder,
        "processes": 1 + PROCESSES,
        "agents": AGENTS + PROCESSES * PROCESS_AGENTS,
        "seconds": round(wall, 2),
        "turns_acknowledged": sum(len(r.turns) for r in results),
        "turns_verified": checked["turns"],
        "turns_per_s": round(checked["turns"] / wall, 1),
        "ops_per_s": round(ops / wall, 1),
        "learning_searches": sum(len(r.searches) for r in results),
        "read_searches": sum(r.reads for r in results),
        "reinforces": sum(len(r.reinforces) for r in results),
        "errors": sum(len(r.errors) for r in results),
        "warnings": sum(len(r.warnings) for r in results),
        **checked,
    }
    for where, rs in (("in_process", results[:1]), ("children", results[1:])):
        for what in ("add_turn", "record_turn", "search", "reinforce"):
            xs = [x for r in rs for x in r.latency[what]]
            out[f"calls_{what}_{where}"] = len(xs)
            for q in (50, 95):
                out[f"p{q}_ms_{what}_{where}"] = _ms(xs, q)
    return out


def load_test(
    tmp_path: Path, load: Load, dsn: str | None = None, graph: Any = None
) -> dict[str, Any]:
    """Run ``load`` (with ``dsn`` and ``graph``, the ``store_db`` fixture: on PostgreSQL)
    and check everything; returns the report."""
    graph = graph if dsn else None
    t0 = time.monotonic()
    results = run_load(tmp_path, load, dsn)
    t1 = time.monotonic()
    errors = [f"{r.name}: {e}" for r in results for e in r.errors]
    warnings = [f"{r.name}: {w}" for r in results for w in r.warnings]
    assert not errors, f"{len(errors)} errors under load:\n" + "\n".join(errors[:10])
    locked = [w for w in warnings if "locked" in w or "OperationalError" in w]
    assert not locked, "lock errors in the log:\n" + "\n".join(locked[:10])
    assert not warnings, f"{len(warnings)} warnings under load:\n" + "\n".join(warnings[:10])

    checked = verify(tmp_path / "store", results, graph)
    acked = {i for r in results for t in r.turns for i in t.get("ids", ())}
    info = check_store(
        tmp_path / "store",
        acked,
        set(),
        opener=lambda p: open_memory(p, load.embedder, dsn),
        graph=graph,
    )
    assert info["memories"] == checked["memories"]
    out = report(load, results, checked)
    out["run_s"] = round(t1 - t0, 2)  # with the children's start
    out["verify_s"] = round(time.monotonic() - t1, 2)
    print(
        "\nload: {turns_verified} turns verified of {turns_acknowledged} acknowledged in "
        "{seconds}s by {agents} agents in {processes} processes ({embedder}): {turns_per_s} "
        "turns/s, {ops_per_s} ops/s; p95 ms add_turn {p95_ms_add_turn_in_process}/"
        "{p95_ms_add_turn_children}, search {p95_ms_search_in_process}/"
        "{p95_ms_search_children} (in process/children); {edges} edges checked; "
        "{errors} errors (run {run_s}s, verify {verify_s}s)".format(**out)
    )
    path = os.environ.get("HELAMEM_LOAD_REPORT")
    if path:
        Path(path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


def test_load_many_agents_and_processes(tmp_path: Path, pg_dsn: str | None, store_db: Any) -> None:
    load = Load(seconds=4.0, max_ops=8, child_max_ops=30, embedder="hashing", seed=9)
    out = load_test(tmp_path, load, pg_dsn, store_db)
    assert out["turns_verified"] > 100
    assert out["learned_edges"] > 0 and out["temporal_edges"] > 0


@pytest.mark.skipif(not SOAK, reason="soak: set HELAMEM_SOAK=1 (HELAMEM_SOAK_SECONDS, default 60)")
def test_load_soak(tmp_path: Path, pg_dsn: str | None, store_db: Any) -> None:
    embedder = os.environ.get("HELAMEM_LOAD_EMBEDDER", "minilm")
    seed = int(os.environ.get("HELAMEM_SOAK_SEED", "2024"))
    load_test(
        tmp_path,
        Load(
            seconds=SOAK_SECONDS,
            max_ops=1_000_000,
            child_max_ops=1_000_000,
            embedder=embedder,
            seed=seed,
        ),
        pg_dsn,
        store_db,
    )

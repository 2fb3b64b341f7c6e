"""A writer-searcher process of the multi-process Chroma-server test.

Run as ``python mp_server_child.py STORE PORT NAME SEED SECONDS LOG_DIR NPROCS [DSN]``.
The child opens the store with ``ChromaConfig(mode="http", exact_below=EXACT_BELOW)``
(large scopes in HNSW collections on the server) and, given ``DSN``, its graph in
PostgreSQL (one schema per store path), writes ``NAME.ready`` to
``LOG_DIR`` and waits for ``LOG_DIR/go`` (the start barrier). Then, for
``SECONDS``, it loops over random operations:

* ``add`` (one memory) in a shared large scope or one of its own small scopes;
* ``add_many`` (a batch of 5) in a shared large scope;
* ``add_turn`` (a user and an assistant episode) in any of those scopes;
* ``delete`` of one of its own acknowledged memories;
* a *dense check*: a memory acknowledged by this process or by another one
  (read from that process's log) is searched by its own vector (the content
  embedded again, the vector index queried over its scope, ``K`` results);
* a full ``search`` (lexical + dense + spreading) of a scope or of the
  ``("mp",)`` prefix, learning or not;
* ``reinforce`` of two of the ``HEBB`` scope's memories (written by the test
  before the start; nothing else learns there, and edges do not decay: every
  edge's weight there is exactly what the logged co-activations imply).

Acknowledged operations are appended to ``LOG_DIR/NAME.log`` after the call
returned, one line each, flushed to the OS:

* ``A<TAB>id<TAB>scope (``/``-joined)<TAB>content``: a memory was stored;
* ``D<TAB>id``: a memory was deleted (``d<TAB>id`` is written before the call);
* ``R<TAB>id<TAB>id``: a ``reinforce`` of the two returned.

Then the child writes ``NAME.done`` and waits (bounded) until every one of the
``NPROCS`` processes is done, and verifies the union of all logs from its own,
still open, store: every acknowledged, not deleted memory is found by its own
vector (``K`` nearest, ``learn=False``: the index is queried directly) and by a
full ``search(content, scope, k=K, learn=False)``; no deleted memory is ever
returned. It writes a JSON summary to ``LOG_DIR/NAME.json``; errors are
recorded there (type and message), never swallowed.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from crash_child import WORDS  # the crash child's vocabulary

from helamem.core import (
    ChromaConfig,
    DynamicsConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    MemoryNotFoundError,
    NewMemory,
    PostgresConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the schema's name
from pg_server import schema_for

DIMENSION = 128
EXACT_BELOW = 50  # small: the shared scopes are promoted to HNSW collections early
K = 5
LARGE: tuple[tuple[str, str], ...] = (("mp", "big0"), ("mp", "big1"), ("mp", "big2"))
PREFIX = ("mp",)
HEBB = ("hebb",)  # only reinforce() learns here (not under PREFIX: searches never learn here)
LEARNING_RATE = 0.05
WAIT_S = 180.0


def config(path: Path, port: int, dsn: str | None = None) -> HelaMemConfig:
    """The store as every process of the test opens it (its graph in PostgreSQL given ``dsn``).

    Edges do not decay (``decay_rate=1``), so a co-activated edge's weight is
    ``min(1, count · learning_rate)`` whatever the interleaving of processes.
    """
    chroma = ChromaConfig(
        mode="http", host="127.0.0.1", port=port, collection="mp-test", exact_below=EXACT_BELOW
    )
    store = None if dsn is None else PostgresConfig(dsn=dsn, schema_name=schema_for(path))  # type: ignore[arg-type]
    dyn = DynamicsConfig(decay_rate=1.0, learning_rate=LEARNING_RATE)
    return HelaMemConfig(path=path, chroma=chroma, store=store, dynamics=dyn)


def small_scopes(name: str) -> list[tuple[str, ...]]:
    return [("mp", name, f"s{j}") for j in range(3)]


@dataclass
class Entry:
    id: str
    scope: tuple[str, ...]
    content: str


@dataclass
class Log:
    """What one process's log acknowledges."""

    added: dict[str, Entry] = field(default_factory=dict)
    deleting: set[str] = field(default_factory=set)  # a delete started (may have committed)
    deleted: set[str] = field(default_factory=set)  # a delete returned
    reinforced: Counter[tuple[str, str]] = field(default_factory=Counter)  # pair -> times


def read_log(path: Path) -> Log:
    """Parse a log; a last line without its newline (still being written) is ignored."""
    out = Log()
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return out
    for line in text.split("\n")[:-1]:
        parts = line.split("\t")
        if parts[0] == "A":
            out.added[parts[1]] = Entry(parts[1], tuple(parts[2].split("/")), parts[3])
        elif parts[0] == "d":
            out.deleting.add(parts[1])
        elif parts[0] == "D":
            out.deleted.add(parts[1])
        elif parts[0] == "R":
            a, b = sorted(parts[1:3])
            out.reinforced[(a, b)] += 1
    return out


def read_logs(log_dir: Path) -> Log:
    out = Log()
    for p in sorted(log_dir.glob("*.log")):
        one = read_log(p)
        out.added.update(one.added)
        out.deleting |= one.deleting
        out.deleted |= one.deleted
        out.reinforced += one.reinforced
    return out


def dense_ids(m: HelaMemory, emb: HashingEmbedder, entries: list[Entry], k: int) -> list[list[str]]:
    """For each entry, the ids of the ``k`` nearest vectors to its content, in its scope."""
    vecs = emb.embed([e.content for e in entries])

    def run(core: Any) -> list[list[str]]:
        out: list[list[str]] = []
        for e, v in zip(entries, vecs, strict=True):
            sid = core.store.find_scope(e.scope)
            if sid is None:
                out.append([])
                continue
            hits = core.index.query(np.asarray(v, dtype=np.float32), k, [sid], "episodic")
            out.append([i for i, _ in hits])
        return out

    result: list[list[str]] = m._call(run)
    return result


@dataclass
class Summary:
    name: str
    ops: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    deleted: int = 0
    live_checked: int = 0
    live_missed: list[str] = field(default_factory=list)  # id: found by no dense check
    live_deleted_seen: list[str] = field(default_factory=list)
    verified_live: int = 0
    verified_deleted: int = 0
    missed_dense: list[str] = field(default_factory=list)
    missed_search: list[str] = field(default_factory=list)
    deleted_returned: list[str] = field(default_factory=list)  # by the index (dense)
    deleted_searched: list[str] = field(default_factory=list)  # by a full search
    deleted_gettable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    verify_seconds: float = 0.0


class Writer:
    def __init__(self, m: HelaMemory, name: str, seed: int, log: TextIO, log_dir: Path) -> None:
        self.hebb: list[str] = json.loads((log_dir / "hebb.json").read_text("utf-8"))
        self.m = m
        self.name = name
        self.rng = random.Random(seed)
        self.log = log
        self.log_dir = log_dir
        self.emb = HashingEmbedder(DIMENSION)
        self.mine: dict[str, Entry] = {}  # acknowledged, not deleted
        self.gone: set[str] = set()
        self.counter = 0
        self.s = Summary(name)

    def _text(self) -> str:
        self.counter += 1
        words = " ".join(self.rng.sample(WORDS, self.rng.randint(3, 6)))
        return f"{self.name}x{self.counter} {words} tag{self.rng.randrange(10**9)}"

    def _scope(self) -> tuple[str, ...]:
        if self.rng.random() < 0.7:
            return self.rng.choice(LARGE)
        return self.rng.choice(small_scopes(self.name))

    def _ack(self, entries: list[Entry]) -> None:
        self.log.write("".join(f"A\t{e.id}\t{'/'.join(e.scope)}\t{e.content}\n" for e in entries))
        self.log.flush()
        for e in entries:
            self.mine[e.id] = e
        self.s.acked += len(entries)

    def _count(self, op: str) -> None:
        self.s.ops[op] = self.s.ops.get(op, 0) + 1

    def step(self) -> None:
        r = self.rng.random()
        if r < 0.30:
            scope, text = self._scope(), self._text()
            self._ack([Entry(self.m.add(text, scope).id, scope, text)])
            self._count("add")
        elif r < 0.40:
            scope = self.rng.choice(LARGE)
            texts = [self._text() for _ in range(5)]
            got = self.m.add_many([NewMemory(t, scope) for t in texts])
            self._ack([Entry(g.id, scope, t) for g, t in zip(got, texts, strict=True)])
            self._count("add_many")
        elif r < 0.55:
            scope, u, a = self._scope(), self._text(), self._text()
            mu, ma = self.m.add_turn(scope, u, a)
            self._ack([Entry(mu.id, scope, u), Entry(ma.id, scope, a)])
            self._count("add_turn")
        elif r < 0.62 and len(self.mine) > 10:
            victim = self.rng.choice(sorted(self.mine))
            self.log.write(f"d\t{victim}\n")
            self.log.flush()
            assert self.m.delete(victim) == 1
            self.log.write(f"D\t{victim}\n")
            self.log.flush()
            del self.mine[victim]
            self.gone.add(victim)
            self.s.deleted += 1
            self._count("delete")
        elif r < 0.85:
            self._live_check()
            self._count("dense_check")
        elif r < 0.90:
            a, b = self.rng.sample(self.hebb, 2)
            self.m.reinforce([a, b])
            self.log.write(f"R\t{a}\t{b}\n")
            self.log.flush()
            self._count("reinforce")
        else:
            scope = PREFIX if self.rng.random() < 0.3 else self._scope()
            self.m.search(" ".join(self.rng.sample(WORDS, 3)), scope, k=K, learn=r < 0.96)
            self._count("search")

    def _live_check(self) -> None:
        """A memory this or another process acknowledged is found by its own vector now."""
        if self.rng.random() < 0.5 or not self.mine:
            others = [p for p in self.log_dir.glob("*.log") if p.stem != self.name]
            log = read_log(self.rng.choice(others)) if others else Log()
            pool = [e for i, e in log.added.items() if i not in log.deleting]
        else:
            pool = list(self.mine.values())
        if not pool:
            return
        picks = self.rng.sample(pool, min(3, len(pool)))
        for e, ids in zip(picks, dense_ids(self.m, self.emb, picks, K), strict=True):
            self.s.live_checked += 1
            if e.id in ids:
                continue
            # deleted meanwhile by its writer? (deletes only ever remove the writer's own ids)
            if e.id in read_logs(self.log_dir).deleting:
                continue
            self.s.live_missed.append(e.id)

    def verify(self) -> None:
        """Every acknowledged memory of every process, from this process's open store."""
        logs = read_logs(self.log_dir)
        assert logs.deleting == logs.deleted, "a process ended inside a delete"
        live = [e for i, e in logs.added.items() if i not in logs.deleted]
        dead = [logs.added[i] for i in sorted(logs.deleted)]
        for start in range(0, len(live), 200):
            part = live[start : start + 200]
            for e, ids in zip(part, dense_ids(self.m, self.emb, part, K), strict=True):
                if e.id not in ids:
                    self.s.missed_dense.append(e.id)
        for start in range(0, len(dead), 200):
            part = dead[start : start + 200]
            for e, ids in zip(part, dense_ids(self.m, self.emb, part, K), strict=True):
                if e.id in ids:
                    self.s.deleted_returned.append(e.id)
        # the full search path (lexical + dense + spreading), on a sample and on every deleted one
        for e in self.rng.sample(live, min(150, len(live))):
            if e.id not in self.m.search(e.content, e.scope, k=K, learn=False).ids:
                self.s.missed_search.append(e.id)
        for e in dead:
            if e.id in self.m.search(e.content, e.scope, k=K, learn=False).ids:
                self.s.deleted_searched.append(e.id)
            try:
                self.m.get(e.id)
                self.s.deleted_gettable.append(e.id)
            except MemoryNotFoundError:
                pass
        self.s.verified_live = len(live)
        self.s.verified_deleted = len(dead)


def _wait(path: Path, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {path} did not appear within {WAIT_S} s")
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    store, port, name, seed, seconds, log_dir, nprocs = argv[:7]
    dsn = argv[7] if len(argv) > 7 else None
    log_dir_p = Path(log_dir)
    summary = Summary(name)
    with (
        open(log_dir_p / f"{name}.log", "a", encoding="utf-8") as log,
        HelaMemory(config(Path(store), int(port), dsn), embedder=HashingEmbedder(DIMENSION)) as m,
    ):
        m.open()
        w = Writer(m, name, int(seed), log, log_dir_p)
        summary = w.s
        (log_dir_p / f"{name}.ready").touch()
        try:
            _wait(log_dir_p / "go", "start barrier")
            t0 = time.monotonic()
            extra = 0  # past the time, steps until this process has deleted (a loaded
            # machine may run too few steps for one): bounded in count
            while time.monotonic() - t0 < float(seconds) or (summary.deleted == 0 and extra < 500):
                extra += time.monotonic() - t0 >= float(seconds)
                w.step()
            summary.seconds = time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - recorded; the test fails on any
            summary.errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        (log_dir_p / f"{name}.done").touch()
        try:
            for i in range(int(nprocs)):
                _wait(log_dir_p / f"p{i}.done", "end barrier")
            t1 = time.monotonic()
            w.verify()
            summary.verify_seconds = time.monotonic() - t1
        except Exception as exc:  # noqa: BLE001 - recorded; the test fails on any
            summary.errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    (log_dir_p / f"{name}.json").write_text(json.dumps(asdict(summary)), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

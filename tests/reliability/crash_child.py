"""Child process for the crash test: ingest, search and reinforce until killed.

Run as ``python crash_child.py STORE_DIR LOG_FILE SEED MAX_OPS MAX_SECONDS [DSN]``.
It opens the store (given ``DSN``, its graph in that PostgreSQL server, in the
schema of ``STORE_DIR``: :func:`store_for`), writes ``READY`` to the log, then
loops over random operations. After a call has *returned* (the memory is
acknowledged to the caller) it appends one line per id and flushes to the OS:

* ``A <id>``: the memory was added;
* ``d <id>``: a delete is about to start (it may or may not commit before a kill);
* ``D <id>``: the memory was deleted.

The parent kills it with SIGKILL at a random point and checks that every
acknowledged line holds in the reopened store. A line cut short by the kill
has no trailing newline and is ignored. The loop is bounded by ``MAX_OPS`` and
``MAX_SECONDS``; if it ends on its own it writes ``DONE`` and closes the store.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import TextIO

from helamem.core import (
    ChromaConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    NewMemory,
    PostgresConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the schema's name
from pg_server import schema_for

DIMENSION = 64
SCOPES: tuple[tuple[str, str], ...] = (("users", "u1"), ("users", "u2"), ("users", "u10"))
WORDS = (
    "cat",
    "dog",
    "tea",
    "coffee",
    "garden",
    "piano",
    "paris",
    "tokyo",
    "river",
    "mountain",
    "book",
    "movie",
    "soccer",
    "chess",
    "bread",
    "cheese",
    "rain",
    "snow",
    "train",
    "bicycle",
    "guitar",
    "painting",
    "sister",
    "brother",
    "doctor",
    "school",
    "birthday",
    "holiday",
    "kitchen",
    "window",
    "ocean",
    "forest",
    ").split(",
)


def store_for(path: Path, dsn: str | None) -> PostgresConfig | None:
    """The graph store of the memory at ``path``: SQLite's file (``dsn`` None), or the
    schema of ``path`` on the PostgreSQL server ``dsn`` (as the tests' ``store_config``)."""
    if dsn is None:
        return None
    return PostgresConfig(dsn=dsn, schema_name=schema_for(path))  # type: ignore[arg-type]


def open_memory(path: Path, dsn: str | None = None) -> HelaMemory:
    """The store exactly as the test reopens it (same config and embedder; with
    ``HELAMEM_CRASH_EXACT_BELOW`` set, scopes of that many memories get an HNSW
    collection, so kills land in Chroma's writes too)."""
    below = int(os.environ.get("HELAMEM_CRASH_EXACT_BELOW", "2000"))
    cfg = HelaMemConfig(
        path=path, store=store_for(path, dsn), chroma=ChromaConfig(exact_below=below)
    )
    return HelaMemory(cfg, embedder=HashingEmbedder(DIMENSION)).open()


def _text(rng: random.Random, tag: str) -> str:
    return f"{tag} " + " ".join(rng.sample(WORDS, rng.randint(3, 7)))


def _ack(log: TextIO, lines: list[str]) -> None:
    log.write("".join(f"{line}\n" for line in lines))
    log.flush()  # to the OS: survives SIGKILL of this process


def run(
    path: Path, log: TextIO, seed: int, max_ops: int, max_seconds: float, dsn: str | None = None
) -> None:
    rng = random.Random(seed)
    mem = open_memory(path, dsn)
    _ack(log, ["READY"])
    known: dict[tuple[str, str], list[str]] = {s: [] for s in SCOPES}
    deadline = time.monotonic() + max_seconds
    for op in range(max_ops):
        if time.monotonic() > deadline:
            break
        tag = f"s{seed}o{op}"
        scope = rng.choice(SCOPES)
        ids = known[scope]
        roll = rng.random()
        if roll < 0.35:
            used = rng.sample(ids, min(len(ids), rng.randint(0, 3)))
            u, a = mem.add_turn(scope, _text(rng, tag + "u"), _text(rng, tag + "a"), used_ids=used)
            ids += [u.id, a.id]
            _ack(log, [f"A {u.id}", f"A {a.id}"])
        elif roll < 0.5:
            items = [
                NewMemory(_text(rng, f"{tag}m{i}"), rng.choice(SCOPES))
                for i in range(rng.randint(1, 8))
            ]
            added = mem.add_many(items)
            for m in added:
                known[(m.scope[0], m.scope[1])].append(m.id)
            _ack(log, [f"A {m.id}" for m in added])
        elif roll < 0.8:
            prefix = scope if rng.random() < 0.7 else ("users",)
            mem.search(" ".join(rng.sample(WORDS, 3)), prefix, k=5, learn=True)
        elif roll < 0.95:
            if len(ids) >= 2:
                mem.reinforce(rng.sample(ids, min(len(ids), rng.randint(2, 5))))
        elif ids:
            victim = ids.pop(rng.randrange(len(ids)))
            _ack(log, [f"d {victim}"])
            mem.delete(victim)
            _ack(log, [f"D {victim}"])
    _ack(log, ["DONE"])
    mem.close()


def main(argv: list[str]) -> None:
    path, log_file, seed, max_ops, max_seconds, *dsn = argv
    with open(log_file, "a", encoding="utf-8") as log:
        run(Path(path), log, int(seed), int(max_ops), float(max_seconds), *dsn)


if __name__ == "__main__":
    main(sys.argv[1:])

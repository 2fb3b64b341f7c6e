"""Child process for the HelaMemStore crash test: put, replace, delete and search until killed.

Run as ``python store_crash_child.py STORE_DIR LOG_FILE SEED MAX_OPS MAX_SECONDS CHILD [DSN]``.
It opens a ``HelaMemory`` (given ``DSN``, its graph in that PostgreSQL server,
in the schema of ``STORE_DIR``) and a ``HelaMemStore`` on it, writes ``READY`` to
the log, then loops over random operations on its own keys (``c<CHILD>k<i>``,
so several children may share one store), logging one line per key:

* ``p <key> <tag>`` before a put of value ``{"text": "<tag> ...", "tag": <tag>}``
  starts, ``P <key> <tag>`` after it returned (acknowledged);
* ``x <key>`` before a delete starts, ``X <key>`` after it returned.

Puts come one by one or as a batch of up to 8 keys (one ``store.batch``).
Lines are flushed to the OS, so they survive SIGKILL; a line cut short by the
kill has no newline and is ignored. If the loop ends on its own (``MAX_OPS``,
``MAX_SECONDS``) it writes ``DONE`` and closes the store.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from crash_child import store_for
from langgraph.store.base import BaseStore, PutOp

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
from helamem.langgraph import ID_FIELD, HelaMemStore

DIMENSION = 64
KEYS = 40
NAMESPACES: tuple[tuple[str, str], ...] = (("users", "u1"), ("users", "u2"), ("users", "u10"))
WORDS: tuple[str, ...] = ("cat", "dog", "tea", "coffee", "garden", "piano", "paris", "tokyo")
WORDS += ("river", "mountain", "book", "movie", "soccer", "chess", "bread", "cheese")


def open_memory(path: Path, dsn: str | None = None) -> HelaMemory:
    """The memory exactly as the test reopens it (same config and embedder)."""
    cfg = HelaMemConfig(path=path, store=store_for(path, dsn))
    return HelaMemory(cfg, embedder=HashingEmbedder(DIMENSION)).open()


def namespace(key: str) -> tuple[str, str]:
    """A key's namespace: fixed per key, so a key has one address."""
    return NAMESPACES[int(key.rsplit("k", 1)[1]) % len(NAMESPACES)]


def integrity(db: Any, docs: BaseStore) -> tuple[int, int]:
    """``(orphans, dangling)``: memories with store metadata that their document
    does not name, and documents naming a memory that does not exist (``db``: a
    connection to the memory's graph store, SQLite or PostgreSQL)."""
    rows = db.execute("SELECT id, metadata FROM memories").fetchall()
    mems = {str(mid): json.loads(raw)["langgraph"] for mid, raw in rows if "langgraph" in raw}
    orphans = 0
    for mid, where in mems.items():
        d = docs.get(tuple(where["namespace"]), where["key"], refresh_ttl=False)
        orphans += d is None or d.value[ID_FIELD]["id"] != mid.split(".", 1)[0]  # X.1: X's field
    listed = docs.search((), limit=100_000, refresh_ttl=False)
    primaries = {mid for mid in mems if "." not in mid}
    dangling = sum(1 for d in listed if d.value[ID_FIELD]["id"] not in (None, *primaries))
    return orphans, dangling


def _ack(log: TextIO, lines: list[str]) -> None:
    log.write("".join(f"{line}\n" for line in lines))
    log.flush()  # to the OS: survives SIGKILL of this process


def _value(rng: random.Random, tag: str) -> dict[str, str]:
    return {"text": f"{tag} " + " ".join(rng.sample(WORDS, rng.randint(3, 6))), "tag": tag}


def run(
    path: Path,
    log: TextIO,
    seed: int,
    max_ops: int,
    max_seconds: float,
    child: int,
    dsn: str | None = None,
) -> None:
    rng = random.Random(seed)
    mem = open_memory(path, dsn)
    store = HelaMemStore(mem)
    store.search(NAMESPACES[0], limit=1)  # first use: settles a killed writer's journal
    _ack(log, ["READY"])
    keys = [f"c{child}k{i}" for i in range(KEYS)]
    deadline = time.monotonic() + max_seconds
    for op in range(max_ops):
        if time.monotonic() > deadline:
            break
        roll = rng.random()
        if roll < 0.4:
            key = rng.choice(keys)
            tag = f"t{seed}x{op}"
            _ack(log, [f"p {key} {tag}"])
            store.put(namespace(key), key, _value(rng, tag))
            _ack(log, [f"P {key} {tag}"])
        elif roll < 0.6:
            batch = rng.sample(keys, rng.randint(2, 8))
            tags = [f"t{seed}x{op}y{j}" for j in range(len(batch))]
            _ack(log, [f"p {k} {t}" for k, t in zip(batch, tags, strict=True)])
            store.batch(
                [PutOp(namespace(k), k, _value(rng, t)) for k, t in zip(batch, tags, strict=True)]
            )
            _ack(log, [f"P {k} {t}" for k, t in zip(batch, tags, strict=True)])
        elif roll < 0.7:
            key = rng.choice(keys)
            _ack(log, [f"x {key}"])
            store.delete(namespace(key), key)
            _ack(log, [f"X {key}"])
        else:
            prefix = rng.choice(NAMESPACES) if rng.random() < 0.7 else ("users",)
            store.search(prefix, query=" ".join(rng.sample(WORDS, 2)), limit=5)
    _ack(log, ["DONE"])
    store.close()
    mem.close()


def main(argv: list[str]) -> None:
    path, log_file, seed, max_ops, max_seconds, child, *dsn = argv
    with open(log_file, "a", encoding="utf-8") as log:
        run(Path(path), log, int(seed), int(max_ops), float(max_seconds), int(child), *dsn)


if __name__ == "__main__":
    main(sys.argv[1:])

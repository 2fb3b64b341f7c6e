"""Load agents: the coroutines of the load test, in the test process and in child processes.

Run as a child: ``python load_child.py STORE OUT_JSON NAME AGENTS SEED MAX_OPS SECONDS
EMBEDDER GO_FILE [DSN]``. The child opens the store (given ``DSN``, its graph in
that PostgreSQL server, in the schema of ``STORE``), touches ``OUT_JSON.ready``,
waits for ``GO_FILE`` (the start barrier, so every process loads the store at
once), runs ``AGENTS`` agents for at most ``MAX_OPS`` operations each and at
most ``SECONDS``, closes the store and writes its log as JSON to ``OUT_JSON``.

Each agent loops over random operations, in its own scope
``("load", NAME, "a<i>")`` and in the shared scopes ``("shared", "s<j>")``:

* a turn through :meth:`HelaMemory.aadd_turn` (acknowledged when it returns);
* a turn through the process's :class:`TurnRecorder` (acknowledged by the
  final ``flush``/``close``, which raises if any turn failed);
* a search of its own scope, a shared scope or the ``("shared",)`` prefix,
  with or without learning;
* a ``reinforce`` of an explicit id set (ids it added or was shown by a search).

It logs exactly what it was acknowledged: each turn (scope, texts, used ids,
ids when known), each reinforce (the ids), each learning search (the ids it
returned, which the search co-activated). Errors are caught, logged with
their type and message, and end that agent; the test requires none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crash_child import WORDS, store_for  # the same vocabulary as the crash child

from helamem.core import (
    DynamicsConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    MiniLMEmbedder,
    RetrievalConfig,
    TurnRecorder,
)

HASHING_DIMENSION = 64  # as crash_child.py, so its integrity checks reopen the store as is
SHARED: tuple[tuple[str, str], ...] = (("shared", "s0"), ("shared", "s1"), ("shared", "s2"))
SHARED_PREFIX = ("shared",)
# no decay: a weight depends only on how many co-activations a pair had, not on when
# the test checks every edge weight against the logged co-activations, so it pins
# the rule that links a turn with all its used memories and them with each other
DYNAMICS = DynamicsConfig(decay_rate=1.0, used_pairs="all", attribution_margin=2.0)
READY_TIMEOUT_S = 120.0


def make_embedder(name: str) -> Any:
    if name == "minilm":
        return MiniLMEmbedder(threads=1)  # several processes share few cores
    return HashingEmbedder(HASHING_DIMENSION)


def open_memory(path: Path, embedder: str = "hashing", dsn: str | None = None) -> HelaMemory:
    # every hit of a learning search co-activates (learn_top=0), as the agents log them
    cfg = HelaMemConfig(
        path=path,
        store=store_for(path, dsn),
        dynamics=DYNAMICS,
        retrieval=RetrievalConfig(learn_top=0),
    )
    return HelaMemory(cfg, embedder=make_embedder(embedder))


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}"[:500])


@dataclass
class Results:
    """What the agents of one process did and how long it took."""

    name: str
    turns: list[dict[str, Any]] = field(default_factory=list)
    reinforces: list[list[str]] = field(default_factory=list)
    searches: list[list[str]] = field(default_factory=list)  # learning searches: ids returned
    reads: int = 0  # searches without learning
    latency: dict[str, list[float]] = field(
        default_factory=lambda: {"add_turn": [], "record_turn": [], "search": [], "reinforce": []}
    )
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "turns": self.turns,
            "reinforces": self.reinforces,
            "searches": self.searches,
            "reads": self.reads,
            "latency": self.latency,
            "errors": self.errors,
            "warnings": self.warnings,
            "started": self.started,
            "ended": self.ended,
        }


def _text(rng: random.Random, tag: str) -> str:
    return f"{tag} " + " ".join(rng.sample(WORDS, rng.randint(3, 7)))


async def agent(
    mem: HelaMemory,
    rec: TurnRecorder,
    res: Results,
    index: int,
    seed: int,
    max_ops: int,
    deadline: float,
) -> None:
    """One agent: at most ``max_ops`` operations and never past ``deadline``."""
    rng = random.Random(seed)
    own = ("load", res.name, f"a{index}")
    known: dict[tuple[str, ...], list[str]] = {own: [], **{s: [] for s in SHARED}}
    pending: list[dict[str, Any]] = []  # recorder turns, acknowledged by the final flush
    op = 0
    try:
        for op in range(max_ops):
            if time.monotonic() > deadline:
                break
            tag = f"{res.name}a{index}o{op}"
            scope = own if rng.random() < 0.6 else rng.choice(SHARED)
            ids = known[scope]
            roll = rng.random()
            if roll < 0.5:
                used = rng.sample(ids, min(len(ids), rng.randint(0, 3)))
                user, assistant = _text(rng, tag + "u"), _text(rng, tag + "a")
                turn = {"scope": list(scope), "user": user, "assistant": assistant, "used": used}
                t0 = time.perf_counter()
                if roll < 0.35:
                    u, a = await mem.aadd_turn(scope, user, assistant, used_ids=used)
                    res.latency["add_turn"].append(time.perf_counter() - t0)
                    turn["ids"] = [u.id, a.id]
                    res.turns.append(turn)
                    ids += [u.id, a.id]
                else:
                    await rec.record_turn(scope, user, assistant, used_ids=used)
                    res.latency["record_turn"].append(time.perf_counter() - t0)
                    pending.append(turn)
            elif roll < 0.8:
                where = own if scope == own else scope if rng.random() < 0.6 else SHARED_PREFIX
                learn = rng.random() < 0.6
                query = " ".join(rng.sample(WORDS, 3))
                t0 = time.perf_counter()
                found = await mem.asearch(query, where, k=rng.randint(2, 6), learn=learn)
                res.latency["search"].append(time.perf_counter() - t0)
                if learn:
                    res.searches.append(found.ids)
                else:
                    res.reads += 1
                for hit in found:
                    key = tuple(hit.memory.scope)
                    if key in known and hit.memory.id not in known[key]:
                        known[key].append(hit.memory.id)
            elif len(ids) >= 2:
                chosen = rng.sample(ids, min(len(ids), rng.randint(2, 4)))
                other = known[rng.choice(list(known))]
                if other and rng.random() < 0.2:  # across scopes: only same-scope pairs learn
                    chosen.append(rng.choice(other))
                chosen = list(dict.fromkeys(chosen))
                t0 = time.perf_counter()
                await mem.areinforce(chosen)
                res.latency["reinforce"].append(time.perf_counter() - t0)
                res.reinforces.append(chosen)
            await asyncio.sleep(0)  # let the other agents in even when a call did not wait
    except Exception as exc:  # noqa: BLE001 - reported, and the test fails on any
        res.errors.append(f"agent {index} op {op}: {type(exc).__name__}: {exc}"[:2000])
    finally:
        res.turns.extend(dict(t, recorder=True) for t in pending)


async def run_agents(
    mem: HelaMemory, name: str, agents: int, seed: int, max_ops: int, seconds: float
) -> Results:
    """Run ``agents`` concurrent agents on ``mem``; the store must be open."""
    res = Results(name)
    handler = _CountWarnings()
    logging.getLogger("helamem").addHandler(handler)
    try:
        res.started = time.time()
        deadline = time.monotonic() + seconds
        rec = TurnRecorder(mem, max_pending=64, consolidate_every=None)
        try:
            await asyncio.gather(
                *(
                    agent(mem, rec, res, i, seed * 1000 + i, max_ops, deadline)
                    for i in range(agents)
                )
            )
        finally:
            try:
                await rec.close()  # flushes: every queued turn stored, or raises
            except Exception as exc:  # noqa: BLE001 - reported, and the test fails on any
                res.errors.append(f"recorder: {type(exc).__name__}: {exc}"[:2000])
        res.ended = time.time()
    finally:
        logging.getLogger("helamem").removeHandler(handler)
    res.warnings = handler.messages
    return res


def main(argv: list[str]) -> None:
    store, out, name, agents, seed, max_ops, seconds, embedder, go, *dsn = argv
    mem = open_memory(Path(store), embedder, *dsn).open()
    try:
        Path(out + ".ready").touch()
        start = time.monotonic()
        while not Path(go).exists():  # the start barrier
            if time.monotonic() - start > READY_TIMEOUT_S:
                raise TimeoutError("no GO from the test")
            time.sleep(0.01)
        res = asyncio.run(
            run_agents(mem, name, int(agents), int(seed), int(max_ops), float(seconds))
        )
    finally:
        mem.close()
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(res.to_json()), encoding="utf-8")
    tmp.replace(out)


if __name__ == "__main__":
    main(sys.argv[1:])

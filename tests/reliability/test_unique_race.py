"""README (add_turn): ``unique_on`` is "checked in the write transaction, so racing
processes store it once". Four processes, released together, record the same keyed
turns in shuffled orders on one store: every key is stored once, and every process
gets back the same memories for it (audit 122: only two objects in one process were
tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, PostgresConfig

KEYS = 30
PROCESSES = 4
SCOPE = ("users", "alice")

_CHILD = textwrap.dedent(
    """
    import json, os, random, sys, time
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from pathlib import Path
    from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, PostgresConfig
    path, gate, me, keys = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    pg = json.loads(sys.argv[5])
    store = None if pg is None else PostgresConfig(dsn=pg[0], schema_name=pg[1])
    mem = HelaMemory(HelaMemConfig(path=path, store=store), embedder=HashingEmbedder(64)).open()
    order = list(range(keys))
    random.Random(me).shuffle(order)
    (gate / f"ready-{me}").touch()
    deadline = time.monotonic() + 60
    while not (gate / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    out = {}
    for k in order:
        u, a = mem.add_turn(("users", "alice"), f"question {k}", f"answer {k}",
                            metadata={"request": f"r{k}"}, unique_on=("request",))
        out[k] = [u.id, a.id]
    mem.close()
    print(json.dumps(out))
    """
)


def test_racing_processes_store_a_keyed_turn_once(
    tmp_path: Path, store_config: Callable[[Path], PostgresConfig | None]
) -> None:
    """On both graph stores (review 135: the race ran on SQLite only)."""
    path, gate = tmp_path / "store", tmp_path / "gate"
    gate.mkdir()
    store = store_config(path)
    pg = None if store is None else [store.dsn.get_secret_value(), store.schema_name]
    cfg = HelaMemConfig(path=path, store=store)
    with HelaMemory(cfg, embedder=HashingEmbedder(64)):
        pass  # the store exists before they race
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(gate), str(i), str(KEYS), json.dumps(pg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 90
        while len(list(gate.glob("ready-*"))) < PROCESSES and time.monotonic() < deadline:
            time.sleep(0.01)
        (gate / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    results = [json.loads(out) for out, _ in outs]
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        assert mem.stats(SCOPE).episodic == 2 * KEYS
        for k in range(KEYS):
            stored = mem.find_ids(SCOPE, metadata={"request": f"r{k}"})
            assert len(stored) == 2, (k, stored)
            assert len({tuple(r[str(k)]) for r in results}) == 1  # the same pair for all
            assert set(results[0][str(k)]) == set(stored)

"""Turn-hook benchmark: what ``TurnRecorder.record_turn`` costs the agent.

Not a test: it measures one run and reports, beside a baseline taken in the
same process (on a shared 2-core machine timings are noisy; read the ratios
first).

    .venv/bin/python benchmarks/hooks_bench.py                 # 500 turns, MiniLM
    .venv/bin/python benchmarks/hooks_bench.py --turns 200 --embedder hashing

What it reports, each on a fresh store with the chosen embedder (default: the
real offline MiniLM, ``HelaMemory(HelaMemConfig(path=tmpdir))``):

* baseline: ``await mem.aadd_turn(...)`` called directly, one turn after the
  other: per-call latency p50/p95 (what an agent waits for without the
  recorder) and turns/s.
* recorder (async): ``await rec.record_turn(...)`` in a tight loop: the
  agent-visible cost p50/p95/max, then ``flush()``; background throughput
  (turns/s from the first turn to the end of the flush); and the worst lateness
  of a 5 ms ticker on the same event loop meanwhile.
* recorder (sync): ``rec.record_turn_sync(...)`` from a plain thread, the
  same measurements without an event loop.

Consolidation is off in all runs (it measures recording, not distillation);
``--consolidate-every N`` turns it on for the recorder runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
from helamem.core.hooks import TurnRecorder

NAMES = ["Alice", "Bob", "Caroline", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon"]
ACTS = [
    "went to a pottery class",
    "ran the Berlin marathon",
    "planned a camping trip to Yosemite",
    "bought a new violin",
    "joined a support group",
    "cooked her grandmother's recipes",
    "had a job interview",
    "read a book by Ursula Le Guin",
    "visited the adoption agency",
    "adopted a cat named Miso",
]
WHEN = ["last weekend", "yesterday", "on Tuesday evening", "after a long week", "this morning"]


def turn_texts(rng: random.Random, i: int) -> tuple[str, str]:
    name, act, when = rng.choice(NAMES), rng.choice(ACTS), rng.choice(WHEN)
    user = f"{name} here: I {act} {when}, and I keep thinking about it (turn {i})."
    assistant = f"That sounds meaningful, {name}. What did you enjoy most about it? ({i})"
    return user, assistant


def stats_us(xs: list[float]) -> dict[str, float]:
    arr = np.asarray(xs) * 1e6
    return {
        "p50_us": round(float(np.percentile(arr, 50)), 1),
        "p95_us": round(float(np.percentile(arr, 95)), 1),
        "max_us": round(float(arr.max()), 1),
    }


def make_memory(path: Path, embedder: str) -> HelaMemory:
    cfg = HelaMemConfig(path=path)
    return HelaMemory(cfg, embedder=HashingEmbedder(384) if embedder == "hashing" else None)


async def warm(mem: HelaMemory) -> None:
    await mem.aopen()
    await mem.aadd_turn(("warmup",), "load the model", "and open the store")


class Ticker:
    """A 5 ms sleep loop on the event loop; ``worst``/``lates``: its lateness (s)."""

    def __init__(self) -> None:
        self.lates: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def worst(self) -> float:
        return max(self.lates, default=0.0)

    def report(self) -> dict[str, float]:
        arr = np.asarray(self.lates or [0.0]) * 1e3
        return {
            "ticks": len(self.lates),
            "late_p50_ms": round(float(np.percentile(arr, 50)), 2),
            "late_p99_ms": round(float(np.percentile(arr, 99)), 2),
            "late_max_ms": round(float(arr.max()), 2),
        }

    async def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lates.append(time.perf_counter() - t - 0.005)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def bench_baseline(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    mem = make_memory(path, args.embedder)
    await warm(mem)
    lat: list[float] = []
    async with Ticker() as ticker:
        t0 = time.perf_counter()
        for i in range(args.turns):
            user, assistant = turn_texts(rng, i)
            t = time.perf_counter()
            await mem.aadd_turn(("bench", f"s{i % args.scopes}"), user, assistant)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    st = await mem.astats(("bench",))
    await mem.aclose()
    assert st.episodic == 2 * args.turns, st
    return {
        "call": stats_us(lat),
        "turns_per_s": round(args.turns / total, 1),
        "total_s": total,
        "ticker": ticker.report(),
    }


async def bench_recorder_async(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    mem = make_memory(path, args.embedder)
    await warm(mem)
    lat: list[float] = []
    rec = TurnRecorder(mem, max_pending=args.max_pending, consolidate_every=args.consolidate_every)
    async with Ticker() as ticker:
        t0 = time.perf_counter()
        for i in range(args.turns):
            user, assistant = turn_texts(rng, i)
            t = time.perf_counter()
            await rec.record_turn(("bench", f"s{i % args.scopes}"), user, assistant)
            lat.append(time.perf_counter() - t)
        enqueued = time.perf_counter() - t0
        await rec.flush()
        total = time.perf_counter() - t0
        await rec.close()
    st = await mem.astats(("bench",))
    await mem.aclose()
    assert st.episodic == 2 * args.turns, st
    return {
        "record_turn": stats_us(lat),
        "all_enqueued_s": round(enqueued, 3),
        "turns_per_s": round(args.turns / total, 1),
        "total_s": total,
        "ticker": ticker.report(),
    }


def bench_recorder_sync(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    mem = make_memory(path, args.embedder)
    mem.open()
    mem.add_turn(("warmup",), "load the model", "and open the store")
    out: dict[str, Any] = {}

    def agent() -> None:  # a plain thread: no event loop anywhere in it
        lat: list[float] = []
        rec = TurnRecorder(
            mem, max_pending=args.max_pending, consolidate_every=args.consolidate_every
        )
        t0 = time.perf_counter()
        for i in range(args.turns):
            user, assistant = turn_texts(rng, i)
            t = time.perf_counter()
            rec.record_turn_sync(("bench", f"s{i % args.scopes}"), user, assistant)
            lat.append(time.perf_counter() - t)
        rec.flush_sync()
        total = time.perf_counter() - t0
        rec.close_sync()
        out.update(
            record_turn_sync=stats_us(lat),
            turns_per_s=round(args.turns / total, 1),
            total_s=total,
        )

    t = threading.Thread(target=agent)
    t.start()
    t.join()
    st = mem.stats(("bench",))
    mem.close()
    assert st.episodic == 2 * args.turns, st
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--turns", type=int, default=500)
    ap.add_argument("--scopes", type=int, default=5)
    ap.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    ap.add_argument("--max-pending", type=int, default=1000)
    ap.add_argument("--consolidate-every", type=int, default=None)
    ap.add_argument("--no-sync", action="store_true", help="skip the record_turn_sync run")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "turns": args.turns,
        "scopes": args.scopes,
        "embedder": args.embedder,
    }
    with tempfile.TemporaryDirectory() as d:
        results["baseline_aadd_turn"] = asyncio.run(bench_baseline(Path(d) / "base", args))
        results["recorder_async"] = asyncio.run(bench_recorder_async(Path(d) / "rec", args))
        if not args.no_sync:
            results["recorder_sync"] = bench_recorder_sync(Path(d) / "sync", args)

    base = results["baseline_aadd_turn"]
    ra = results["recorder_async"]
    print(f"{args.turns} turns over {args.scopes} scopes, embedder={args.embedder}")
    print(
        f"  baseline  await mem.aadd_turn     p50 {base['call']['p50_us'] / 1e3:8.2f} ms"
        f"  p95 {base['call']['p95_us'] / 1e3:8.2f} ms   {base['turns_per_s']:7.1f} turns/s"
    )
    print(
        f"  recorder  await rec.record_turn   p50 {ra['record_turn']['p50_us']:8.1f} us"
        f"  p95 {ra['record_turn']['p95_us']:8.1f} us   {ra['turns_per_s']:7.1f} turns/s"
        f" (background)   max {ra['record_turn']['max_us']:.0f} us"
    )
    for name, r in (("baseline", base), ("recorder", ra)):
        t = r["ticker"]
        print(
            f"  5 ms ticker on the loop during {name}: late p50 {t['late_p50_ms']} ms,"
            f" p99 {t['late_p99_ms']} ms, max {t['late_max_ms']} ms ({t['ticks']} ticks)"
        )
    if "recorder_sync" in results:
        rs = results["recorder_sync"]
        print(
            f"  recorder  rec.record_turn_sync    p50 {rs['record_turn_sync']['p50_us']:8.1f} us"
            f"  p95 {rs['record_turn_sync']['p95_us']:8.1f} us   {rs['turns_per_s']:7.1f} turns/s"
            f" (background)   max {rs['record_turn_sync']['max_us']:.0f} us"
        )
    ratio = base["call"]["p50_us"] / max(ra["record_turn"]["p50_us"], 1e-3)
    print(f"  agent-visible p50: {ratio:,.0f}x less than calling aadd_turn directly")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

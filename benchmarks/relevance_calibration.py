"""Is ``hit.score`` an absolute relevance? Its distribution on LoCoMo, matching vs nonsense.

Not a test: one run on a LoCoMo file (MiniLM, or ``--embedder hashing``), the
default configuration. Every conversation goes into its own scope; then, per
conversation, the best hit's score is recorded for three kinds of query:

* ``exact``: a stored turn's own text (every ``--every``-th turn);
* ``question``: LoCoMo's questions of categories 1-4 (real, answerable queries;
  reported with whether the best hit is an evidence turn);
* ``nonsense``: strings of random letters, 2-4 "words" each (seeded).

The same for the demo's story (``examples/core_demo.py``, ``./dev demo``): its
every user and assistant message as ``demo exact`` and as many nonsense
queries as a conversation gets as ``demo nonsense``; without ``--data`` only
the demo runs.

It prints p5/p50/p95/max of the best score per kind. The README quotes it.

    .venv/bin/python benchmarks/relevance_calibration.py \
        --data ../shared/data/locomo/locomo-dev.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import string
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from helamem.bench import CachingEmbedder
from helamem.bench.locomo import load_locomo
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, MiniLMEmbedder, NewMemory


def _nonsense(rng: random.Random) -> str:
    return " ".join(
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9)))
        for _ in range(rng.randint(2, 4))
    )


def _demo_story() -> list[tuple[Any, str, str]]:
    """``examples/core_demo.py``'s STORY: (event time, user message, assistant message)."""
    path = Path(__file__).parents[1] / "examples" / "core_demo.py"
    spec = importlib.util.spec_from_file_location("_helamem_demo", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.STORY)


def _dist(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    return {
        "n": len(xs),
        "p5": round(float(np.percentile(a, 5)), 3),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
        "min": round(float(a.min()), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="LoCoMo JSON (locomo10 schema); omitted: demo only")
    p.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--every", type=int, default=10, help="every n-th turn is an exact query")
    p.add_argument("--nonsense", type=int, default=100, help="nonsense queries per conversation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    convs = load_locomo(args.data)[0] if args.data is not None else []
    inner = MiniLMEmbedder() if args.embedder == "minilm" else HashingEmbedder()
    rng = random.Random(args.seed)
    best: dict[str, list[float]] = {"exact": [], "question": [], "nonsense": []}
    best.update({"demo exact": [], "demo nonsense": []})
    evidence_top = 0
    with tempfile.TemporaryDirectory(prefix="helamem-relevance-") as tmp:
        cfg = HelaMemConfig(path=Path(tmp))
        with HelaMemory(cfg, embedder=CachingEmbedder(inner)) as mem:
            for conv in convs:
                scope = ("locomo", conv.sample_id)
                mem.add_many(
                    NewMemory(t.content, scope, event_time=t.event_time, metadata={"d": t.dia_id})
                    for t in conv.turns
                )
            for conv in convs:
                scope = ("locomo", conv.sample_id)

                def top(q: str, scope: tuple[str, ...] = scope) -> Any:
                    return mem.search(q, scope, k=10, learn=False, semantic_k=0)[0]

                for t in conv.turns[:: args.every]:
                    best["exact"].append(top(t.content).score)
                for q in conv.questions:
                    if 1 <= q.category <= 4:
                        h = top(q.text)
                        best["question"].append(h.score)
                        evidence_top += h.memory.metadata.get("d") in set(q.evidence)
                for _ in range(args.nonsense):
                    best["nonsense"].append(top(_nonsense(rng)).score)
            demo = ("users", "dana")
            story = _demo_story()
            for when, user, assistant in story:
                mem.add_turn(demo, user, assistant, event_time=when)
            for _, user, assistant in story:
                for text in (user, assistant):
                    best["demo exact"].append(
                        mem.search(text, demo, k=10, learn=False, semantic_k=0)[0].score
                    )
            for _ in range(args.nonsense):
                q = _nonsense(rng)
                best["demo nonsense"].append(
                    mem.search(q, demo, k=10, learn=False, semantic_k=0)[0].score
                )
    results: dict[str, Any] = {
        "data": None if args.data is None else str(args.data),
        "embedder": inner.name,
        "best_score": {kind: _dist(xs) for kind, xs in best.items() if xs},
        "questions_with_evidence_first": evidence_top,
    }
    print("| queries | n | p5 | p50 | p95 | min | max |")
    print("|---|---|---|---|---|---|---|")
    for kind, d in results["best_score"].items():
        print(
            f"| {kind} | {d['n']} | {d['p5']} | {d['p50']} | {d['p95']} | {d['min']} | {d['max']} |"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

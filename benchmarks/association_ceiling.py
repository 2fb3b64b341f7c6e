"""How much can association hits lift LoCoMo R@10 at exactly 10 hits? An upper bound.

Not a test: one run on the LoCoMo dev split (MiniLM, or ``--embedder
hashing``), every setting at its default, every search read-only. Per
question it takes the base ranking (``spread=False``: HeLa-Mem's fusion) and
the default ``search(k=10)`` (spreading on), and scores:

* ``fusion``: the base top 10;
* ``helamem``: the default search's 10 hits (association hits take some slots);
* ``oracle``: the base top ``10 - slots`` plus ``slots`` association hits
  chosen perfectly among the temporal neighbours (within ``window`` turns, the
  edges ingest lays) of the best ``seeds`` base hits: a question counts when
  any of those neighbours is an evidence turn. No ranking rule can do better
  with those slots, seeds and edges.

The gap between ``helamem`` and ``oracle`` is what a better choice of
association hits could still win; the gap between ``fusion`` and ``oracle``
bounds what spreading over the ingest edges can add at all.

    .venv/bin/python benchmarks/association_ceiling.py --data ../shared/data/locomo/locomo-dev.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from helamem.bench import CachingEmbedder
from helamem.bench.locomo import load_locomo
from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, MiniLMEmbedder

SEEDS = (3, 8)
WINDOWS = (1, 2)
SLOTS = (1, 2)


def measure(data: Path, embedder: CachingEmbedder, work: Path) -> dict[str, Any]:
    """R@10 of fusion, helamem and every oracle cell over categories 1-4."""
    convs, _ = load_locomo(data)
    n = fusion = helamem = 0
    oracle = {(s, w, a): 0 for s in SEEDS for w in WINDOWS for a in SLOTS}
    with HelaMemory(HelaMemConfig(path=work), embedder=embedder) as mem:
        for conv in convs:  # every conversation first, as `bench locomo` stores them
            mem.add_many(t.memory(("locomo", conv.sample_id)) for t in conv.turns)
        for conv in convs:
            scope = ("locomo", conv.sample_id)
            turns = [t.dia_id for t in conv.turns]
            where = {d: i for i, d in enumerate(turns)}
            for q in conv.questions:
                if not 1 <= q.category <= 4:
                    continue
                opts: dict[str, Any] = {
                    "learn": False,
                    "reference_time": conv.reference_time,
                    "semantic_k": 0,
                }
                base = mem.search(q.text, scope, k=10, spread=False, **opts)
                ranked = [
                    str(h.memory.metadata["dia_id"]) for h in sorted(base, key=lambda h: -h.base)
                ]
                spread = mem.search(q.text, scope, k=10, **opts)
                evidence = set(q.evidence)
                n += 1
                fusion += bool(evidence & set(ranked[:10]))
                helamem += bool(evidence & {str(h.memory.metadata["dia_id"]) for h in spread})
                for s, w, a in oracle:
                    kept = ranked[: 10 - a]
                    near = {
                        turns[j]
                        for d in kept[:s]
                        for j in range(where[d] - w, where[d] + w + 1)
                        if 0 <= j < len(turns)
                    }
                    oracle[(s, w, a)] += bool(evidence & (set(kept) | near))
    return {
        "questions": n,
        "fusion": round(fusion / n, 4),
        "helamem": round(helamem / n, 4),
        "oracle": [
            {"seeds": s, "window": w, "slots": a, "r@10": round(hits / n, 4)}
            for (s, w, a), hits in oracle.items()
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="LoCoMo JSON (locomo10 schema)")
    p.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    inner = MiniLMEmbedder() if args.embedder == "minilm" else HashingEmbedder()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="helamem-ceiling-") as tmp:
        res = measure(args.data, CachingEmbedder(inner), Path(tmp) / "store")
    res.update(data=str(args.data), embedder=inner.name, seconds=round(time.perf_counter() - start))
    print(f"{res['questions']} questions, R@10 at exactly 10 hits")
    print(
        f"fusion (base top 10): {res['fusion']:.3f}; helamem (default search): {res['helamem']:.3f}"
    )
    print("\n| oracle: seeds | window (turns) | association slots | R@10 |")
    print("|---|---|---|---|")
    for o in res["oracle"]:
        print(f"| {o['seeds']} | ±{o['window']} | {o['slots']} | {o['r@10']:.3f} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

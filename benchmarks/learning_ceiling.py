"""How much can learning from the question stream lift LoCoMo R@10? An upper bound.

Not a test: one run on the LoCoMo dev split, three passes over the same
stores and embeddings (MiniLM, or ``--embedder hashing``), all with the
default configuration and spreading on:

* ``read-only``: every question is a ``search(learn=False)``; the graph holds
  only the temporal edges of ingest (this is ``helamem-no-learn`` of
  ``helamem bench locomo``).
* ``learn``: ``search()`` with its defaults, questions asked in file order,
  so each question learns from the ones before it (``helamem``).
* ``oracle``: read-only searches, then the question's *evidence* turns are
  co-activated together with its top hit (``reinforce``), at learning rate
  ``--oracle-rate``: learning told the right answer after every question,
  which no real agent gets.

It also counts the questions the read-only pass misses at R@10 that share an
evidence turn with an earlier question of their conversation: only those can
be helped by anything learned from earlier questions.

    .venv/bin/python benchmarks/learning_ceiling.py --data ../shared/data/locomo/locomo-dev.json
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
from helamem.bench.locomo import Conversation, load_locomo
from helamem.core import (
    DynamicsConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    MiniLMEmbedder,
)

MODES = ("read-only", "learn", "oracle")


def run_mode(
    mode: str, convs: list[Conversation], embedder: CachingEmbedder, work: Path, rate: float
) -> dict[str, Any]:
    """One pass: ingest every conversation, then ask its questions in order."""
    dynamics = DynamicsConfig(learning_rate=rate) if mode == "oracle" else DynamicsConfig()
    cfg = HelaMemConfig(path=work / mode, dynamics=dynamics)
    hit = recall = 0.0
    n = missed = missed_shared = 0
    with HelaMemory(cfg, embedder=embedder) as mem:
        ids: dict[str, dict[str, str]] = {}
        for conv in convs:
            scope = ("locomo", conv.sample_id)
            stored = mem.add_many(t.memory(scope) for t in conv.turns)
            ids[conv.sample_id] = {str(m.metadata["dia_id"]): m.id for m in stored}
        for conv in convs:
            scope = ("locomo", conv.sample_id)
            seen: set[str] = set()
            for q in conv.questions:
                res = mem.search(
                    q.text,
                    scope,
                    k=10,
                    learn=mode == "learn",
                    reference_time=conv.reference_time,
                    semantic_k=0,
                )
                got = {str(h.memory.metadata.get("dia_id")) for h in res}
                evidence = set(q.evidence)
                if 1 <= q.category <= 4:
                    n += 1
                    found = got & evidence
                    hit += bool(found)
                    recall += len(found) / len(evidence)
                    if not found:
                        missed += 1
                        missed_shared += bool(evidence & seen)
                seen |= evidence
                if mode == "oracle":
                    used = [ids[conv.sample_id][e] for e in q.evidence]
                    top = [h.memory.id for h in res][:1]
                    mem.reinforce(list(dict.fromkeys(used + top)))
    return {
        "questions": n,
        "r@10": round(hit / n, 4),
        "recall@10": round(recall / n, 4),
        "missed": missed,
        "missed_sharing_earlier_evidence": missed_shared,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="LoCoMo JSON (locomo10 schema)")
    p.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--oracle-rate", type=float, default=0.3, help="learning rate of the oracle")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    convs, _ = load_locomo(args.data)
    inner = MiniLMEmbedder() if args.embedder == "minilm" else HashingEmbedder()
    embedder = CachingEmbedder(inner)
    results: dict[str, Any] = {"data": str(args.data), "embedder": inner.name, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="helamem-ceiling-") as tmp:
        for mode in MODES:
            start = time.perf_counter()
            results["modes"][mode] = run_mode(mode, convs, embedder, Path(tmp), args.oracle_rate)
            results["modes"][mode]["seconds"] = round(time.perf_counter() - start, 1)
    base = results["modes"]["read-only"]
    print("| pass | R@10 | recall@10 | vs read-only R@10 |")
    print("|---|---|---|---|")
    for mode, r in results["modes"].items():
        delta = r["r@10"] - base["r@10"]
        print(f"| {mode} | {r['r@10']:.4f} | {r['recall@10']:.4f} | {delta:+.4f} |")
    print(
        f"\nread-only misses {base['missed']} of {base['questions']} questions at R@10; "
        f"{base['missed_sharing_earlier_evidence']} of them share an evidence turn with an "
        "earlier question (the most that learning from earlier questions could fix)."
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

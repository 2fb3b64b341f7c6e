"""Can a learned choice of association hits reach issue 15's bar? A measurement.

Not a test, and not (yet) the product's ranking: one run on the LoCoMo dev
split (MiniLM, or ``--embedder hashing``), every store setting at its
default, every search read-only. Per question it takes the base ranking
(``spread=False``: HeLa-Mem's fusion) and scores, at exactly 10 hits:

* ``fusion``: the base top 10;
* ``helamem``: the default ``search(k=10)`` (spreading on);
* ``rerank``: the 10 best of a candidate set by a logistic model of
  whether a candidate is an evidence turn. The candidates are the base top
  50 and, with association, the temporal neighbours (within ``window``
  turns, the edges ingest lays) of the best ``seeds`` base hits. The model's
  weights are fitted by leave-one-conversation-out: each conversation is
  scored by a model fitted on the others only.

Features of a candidate: its own signals (MaxSim, cosine, BM25 share of the
best, whether BM25 matched, whether it ends with "?", base activation, base
rank, in the base top 10, length) and, for a neighbour, its association
(that it is one; the seed's MaxSim, base activation and rank; the offset
from the seed, -2..+2; the turn after a seed that asks a question). The
``speaker`` variant adds whether the candidate's speaker (LoCoMo's
``"Name: text"``) is named in the question: a LoCoMo-shaped signal, reported
apart. ``rerank`` without association is a plain learned reranker of the
base top 50: the gap between the two is what association adds.

    .venv/bin/python benchmarks/association_reranker.py --data ../shared/data/locomo/locomo-dev.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from helamem.bench import CachingEmbedder
from helamem.bench.locomo import load_locomo
from helamem.core import (
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    MiniLMEmbedder,
    NewMemory,
    RetrievalConfig,
)

POOL = 50  # base candidates
SEEDS = 8  # best base hits whose neighbours are candidates
WINDOW = 2  # neighbours within this many turns
K = 10
OWN = ("maxsim", "cosine", "bm25_share", "bm25_match", "question", "base", "base_rank", "top10")
ASSOC = (
    "neighbour",
    "seed_maxsim",
    "seed_base",
    "seed_rank",
    "before_2",
    "before_1",
    "after_1",
    "after_2",
    "answer",
)


@dataclass
class Question:
    conv: str
    evidence: set[str]
    fusion: list[str]
    helamem: set[str]
    cands: dict[str, dict[str, float]]


def _features(
    q_text: str,
    turns: Sequence[str],
    texts: Sequence[str],
    base: list[tuple[str, float]],
    cos: npt.NDArray[np.float64],
    late: npt.NDArray[np.float64],
    lex: npt.NDArray[np.float64],
) -> dict[str, dict[str, float]]:
    where = {t: i for i, t in enumerate(turns)}
    rank = {t: r for r, (t, _) in enumerate(base)}
    value = dict(base)
    best = max(float(lex.max()), 1e-9)

    def own(j: int) -> dict[str, float]:
        t = turns[j]
        return {
            "maxsim": float(late[j]),
            "cosine": float(cos[j]),
            "bm25_share": float(lex[j]) / best,
            "bm25_match": float(lex[j] > 0),
            "question": float(texts[j].rstrip().endswith("?")),
            "base": value.get(t, 0.0),
            "base_rank": 1 / (1 + rank[t]) if t in rank else 0.0,
            "top10": float(rank.get(t, K) < K),
            "length": len(texts[j]) / 200,
            "speaker": float(texts[j].split(":")[0] in q_text),
        }

    cands = {t: {**own(where[t]), "pool": 1.0} for t, _ in base[:POOL]}
    for r, (t, v) in enumerate(base[:SEEDS]):
        i = where[t]
        for o in range(-WINDOW, WINDOW + 1):
            j = i + o
            if o == 0 or not 0 <= j < len(turns) or cands.get(turns[j], {}).get("neighbour"):
                continue
            f = cands.get(turns[j]) or own(j)
            f.update(
                neighbour=1.0,
                seed_maxsim=float(late[i]),
                seed_base=v,
                seed_rank=1 / (1 + r),
                before_2=float(o == -2),
                before_1=float(o == -1),
                after_1=float(o == 1),
                after_2=float(o == 2),
                answer=float(o == 1 and texts[i].rstrip().endswith("?")),  # a question's reply
            )
            cands[turns[j]] = f
    return cands


def collect(data: Path, embedder: CachingEmbedder, work: Path) -> list[Question]:
    """Every category 1-4 question's rankings and candidate features."""
    convs, _ = load_locomo(data)
    out: list[Question] = []
    wide = RetrievalConfig(candidates=10_000)  # every turn in the pool: BM25 of each
    with (
        HelaMemory(HelaMemConfig(path=work / "a"), embedder=embedder) as mem,
        HelaMemory(HelaMemConfig(path=work / "b", retrieval=wide), embedder=embedder) as every,
    ):
        for conv in convs:
            scope = ("locomo", conv.sample_id)
            for m in (mem, every):
                m.add_many(
                    NewMemory(
                        t.content, scope, event_time=t.event_time, metadata={"dia_id": t.dia_id}
                    )
                    for t in conv.turns
                )
            turns = [t.dia_id for t in conv.turns]
            texts = [t.content for t in conv.turns]
            vecs, toks = embedder.embed_with_tokens(texts)
            qs = [q for q in conv.questions if 1 <= q.category <= 4]
            if not qs:
                continue
            qvecs, qtoks = embedder.embed_with_tokens([q.text for q in qs])
            for q, qv, qt in zip(qs, qvecs, qtoks, strict=True):
                opts: dict[str, Any] = {
                    "learn": False,
                    "reference_time": conv.reference_time,
                    "semantic_k": 0,
                }
                base = mem.search(q.text, scope, k=POOL, spread=False, **opts)
                ranked = [
                    (str(h.memory.metadata["dia_id"]), h.base)
                    for h in sorted(base, key=lambda h: -h.base)
                ]
                spread = mem.search(q.text, scope, k=K, **opts)
                full = every.search(q.text, scope, k=len(turns), spread=False, **opts)
                lex = {str(h.memory.metadata["dia_id"]): h.lexical for h in full}
                late = np.array([float((qt @ d.T).max(axis=1).mean()) for d in toks])
                out.append(
                    Question(
                        conv.sample_id,
                        set(q.evidence),
                        [t for t, _ in ranked[:K]],
                        {str(h.memory.metadata["dia_id"]) for h in spread},
                        _features(
                            q.text,
                            turns,
                            texts,
                            ranked,
                            np.asarray(vecs @ qv, dtype=np.float64),
                            late,
                            np.array([lex.get(t, 0.0) for t in turns]),
                        ),
                    )
                )
    return out


def _fit(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float = 1.0) -> Any:
    """L2-regularised logistic regression by Newton's method."""
    w = np.zeros(x.shape[1])
    for _ in range(40):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def rerank(questions: list[Question], names: Sequence[str], assoc: bool) -> dict[str, float]:
    """R@10 per conversation and overall of the model over ``names``, leave-one-out."""

    def rows(q: Question) -> tuple[list[str], npt.NDArray[np.float64]]:
        keys = [t for t, f in q.cands.items() if assoc or f.get("pool")]
        x = np.array(
            [[1.0, *(q.cands[t].get(n, 0.0) for n in names)] for t in keys], dtype=np.float64
        ).reshape(len(keys), 1 + len(names))
        return keys, x

    convs = sorted({q.conv for q in questions})
    found = {c: [0, 0] for c in convs}
    for c in convs:
        train = [q for q in questions if q.conv != c] or questions  # one conversation: in-sample
        xs: list[npt.NDArray[np.float64]] = []
        ys: list[bool] = []
        for q in train:
            keys, x = rows(q)
            xs.append(x)
            ys.extend(t in q.evidence for t in keys)
        x = np.concatenate(xs)
        mu, sd = x.mean(axis=0), x.std(axis=0)
        mu[0], sd[0] = 0.0, 1.0
        sd[sd == 0] = 1.0
        w = _fit((x - mu) / sd, np.array(ys, dtype=np.float64))
        for q in questions:
            if q.conv != c:
                continue
            keys, x = rows(q)
            score = ((x - mu) / sd) @ w
            top = {keys[i] for i in np.argsort(-score, kind="stable")[:K]}
            found[c][0] += bool(q.evidence & top)
            found[c][1] += 1
    res = {c: round(h / n, 4) for c, (h, n) in found.items()}
    res["all"] = round(sum(h for h, _ in found.values()) / len(questions), 4)
    return res


def measure(data: Path, embedder: CachingEmbedder, work: Path) -> dict[str, Any]:
    qs = collect(data, embedder, work)
    n = len(qs)
    own = [*OWN, "length"]
    return {
        "questions": n,
        "conversations": len({q.conv for q in qs}),
        "fusion": round(sum(bool(q.evidence & set(q.fusion)) for q in qs) / n, 4),
        "helamem": round(sum(bool(q.evidence & q.helamem) for q in qs) / n, 4),
        "rerank": {
            "own only": rerank(qs, own, assoc=False),
            "own + association": rerank(qs, [*own, *ASSOC], assoc=True),
            "own + association + speaker": rerank(qs, [*own, *ASSOC, "speaker"], assoc=True),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="LoCoMo JSON (locomo10 schema)")
    p.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    inner = MiniLMEmbedder() if args.embedder == "minilm" else HashingEmbedder(token_vectors=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="helamem-rerank-") as tmp:
        res = measure(args.data, CachingEmbedder(inner), Path(tmp))
    res.update(data=str(args.data), embedder=inner.name, seconds=round(time.perf_counter() - start))
    print(f"{res['questions']} questions, R@10 at exactly 10 hits (leave-one-conversation-out)")
    print(f"fusion: {res['fusion']:.3f}; helamem (default search): {res['helamem']:.3f}")
    print("\n| learned rerank | R@10 | per conversation |")
    print("|---|---|---|")
    for name, r in res["rerank"].items():
        per = ", ".join(f"{v:.3f}" for c, v in r.items() if c != "all")
        print(f"| {name} | {r['all']:.3f} | {per} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

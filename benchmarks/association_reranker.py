"""Fit and score ``selection="learned"``: the association model, leave-one-conversation-out.

One run on the LoCoMo dev split (MiniLM, or ``--embedder hashing``), every
store setting at its default, every search read-only, categories 1-4, at
exactly 10 hits, every conversation stored before any question is asked (as
``bench locomo`` asks them). Each question is searched once with the product's own
pipeline; the arguments of its ranking (:func:`helamem.core.retrieval.rank`)
are kept and replayed with other settings, so every figure is what
``search(k=10)`` returns with those settings:

* ``fusion``: the base top 10 (no spreading);
* ``final``: ``selection="final"``, association hits climbing by spread
  activation, at the share and gate chosen for it (0.2, 0.2: the previous
  defaults);
* ``learned``: ``selection="learned"`` with a model fitted on the other six
  conversations only, per variant (features, ``association_share``,
  ``association_gate``), and the variant chosen per conversation by its
  score on the other six;
* ``shipped``: the default ``association_model`` (fitted on all seven: in
  sample, for reference only).

The model is a pairwise (RankNet) L2-regularised logistic regression
(Newton's method) of "the evidence turn outscores that other candidate of its
question" on the differences of :data:`helamem.core.association.FEATURES`,
standardised, then folded back to raw weights. ``--fit`` prints the weights
fitted on every conversation, as ``RetrievalConfig.association_model`` takes
them.

    .venv/bin/python benchmarks/association_reranker.py --data ../shared/data/locomo/locomo-dev.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
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
    RetrievalConfig,
    association,
    retrieval,
)

K = 10
# the spread-activation rule at the share and gate chosen for it (the previous defaults)
FINAL = RetrievalConfig(selection="final", association_share=0.2, association_gate=0.2)
TEXT = ("question", "answer", "length")  # features that read the memory's text
VARIANTS: dict[str, tuple[tuple[str, ...], float, float]] = {
    # name: (features, association_share, association_gate)
    **{
        f"share {share}, gate {gate}": (association.FEATURES, share, gate)
        for share in (0.2, 0.5)
        for gate in (0.2, 0.5, 1.0)
    },
    "no text features, share 0.5, gate 0.5": (
        tuple(f for f in association.FEATURES if f not in TEXT),
        0.5,
        0.5,
    ),
}


@dataclass
class Question:
    conv: str
    evidence: set[str]
    fusion: set[str]
    args: dict[str, Any]  # retrieval.rank's keyword arguments, as the search called it
    dia: dict[int, str]  # memory key -> LoCoMo turn id
    x: npt.NDArray[np.float64]  # candidates' features
    y: npt.NDArray[np.float64]  # 1 for an evidence turn


def collect(
    data: Path,
    embedder: CachingEmbedder,
    work: Path,
    retrieval_config: RetrievalConfig | None = None,
) -> list[Question]:
    """Every category 1-4 question's ranking inputs and candidate features."""
    convs, _ = load_locomo(data)
    out: list[Question] = []
    seen: list[dict[str, Any]] = []
    real = retrieval.rank

    def keep(pool: retrieval.Pool, **kw: Any) -> retrieval.Ranking:
        seen.append({"pool": pool, **kw})
        return real(pool, **kw)

    retrieval.rank = keep  # type: ignore[assignment]  # the product calls it by module
    try:
        cfg = HelaMemConfig(path=work / "m", retrieval=retrieval_config or RetrievalConfig())
        with HelaMemory(cfg, embedder=embedder) as mem:
            # every conversation first, then the questions, as `bench locomo` does: BM25's
            # statistics are the store's, so a scope's ranking depends on the whole store
            dias: list[dict[int, str]] = []
            for conv in convs:
                scope = ("locomo", conv.sample_id)
                added = mem.add_many(t.memory(scope) for t in conv.turns)
                dia_of = {m.id: t.dia_id for m, t in zip(added, conv.turns, strict=True)}
                keys = mem._call(lambda c: c.store.rows_by_id(list(dia_of)))  # noqa: B023
                dias.append({r.n: dia_of[i] for i, r in keys.items()})
            for conv, dia in zip(convs, dias, strict=True):
                scope = ("locomo", conv.sample_id)
                for q in conv.questions:
                    if not 1 <= q.category <= 4:
                        continue
                    opts: dict[str, Any] = {
                        "learn": False,
                        "reference_time": conv.reference_time,
                        "semantic_k": 0,
                    }
                    seen.clear()
                    got = mem.search(q.text, scope, k=K, **opts)
                    args = seen[-1]
                    ranking = real(**args)
                    base = sorted(args["pool"].ns, key=lambda n: (-ranking.base[n], n))[:K]
                    cands = ranking.candidates
                    if cands is None:  # no edges from a seed: the base ranking answers
                        x = np.zeros((0, len(association.FEATURES)))
                        y = np.zeros(0)
                    else:
                        x = cands.x
                        y = np.array([dia.get(n) in q.evidence for n in cands.ns], dtype=float)
                    assert {dia[n] for n in [*ranking.base_top, *ranking.associations]} == {
                        str(h.memory.metadata["dia_id"]) for h in got
                    }  # the replay is the search
                    out.append(
                        Question(
                            conv.sample_id, set(q.evidence), {dia[n] for n in base}, args, dia, x, y
                        )
                    )
    finally:
        retrieval.rank = real  # type: ignore[assignment]
    return out


L2 = 0.1
"""Ridge on the standardised pairwise weights (chosen leave-one-conversation-out
among 0.1, 0.3, 1 and 3, each with pair weights 1/n and 1/sqrt(n): 0.1 and 1/sqrt(n)
on every fold's other six)."""


def _pairs(
    questions: Sequence[Question], cols: Sequence[int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Every (evidence, other) candidate pair's feature difference, and its weight:
    a question's n pairs weigh 1/sqrt(n) each (a question with many pairs counts
    more than one with few, but not n times more)."""
    diffs, weights = [], []
    for q in questions:
        pos, neg = q.x[q.y > 0][:, cols], q.x[q.y == 0][:, cols]
        if not len(pos) or not len(neg):
            continue
        d = (pos[:, None, :] - neg[None, :, :]).reshape(-1, len(cols))
        diffs.append(d)
        weights.append(np.full(len(d), len(d) ** -0.5))
    if not diffs:
        return np.zeros((0, len(cols))), np.zeros(0)
    return np.concatenate(diffs), np.concatenate(weights)


def _fit(
    d: npt.NDArray[np.float64],
    wt: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64] | None = None,
    l2: float = L2,
) -> Any:
    """Weighted, L2-regularised logistic regression of "the first of the pair is the
    evidence" on the pairs' differences (no intercept), by Newton's method."""
    w = np.zeros(d.shape[1])
    off = np.zeros(len(d)) if offset is None else offset
    for _ in range(40):
        p = 1 / (1 + np.exp(-(off + d @ w)))
        grad = d.T @ (wt * (p - 1)) + l2 * w
        hess = (d * (wt * p * (1 - p))[:, None]).T @ d + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def fit(questions: Sequence[Question], names: Sequence[str]) -> tuple[tuple[str, float], ...]:
    """Raw-feature weights fitted on ``questions`` over ``names``, pairwise (RankNet):
    every evidence turn should outscore every other candidate of its question.

    The selection compares candidates of one question only, so the objective does
    too (held out 0.835 against 0.826 for the pointwise logistic regression of "is
    an evidence turn" over the same features). The ranking ignores the bias (0).
    ``named`` is fitted last, alone, with every other weight frozen at the fit
    without it (:func:`_fit_named`): fitted jointly, the other weights leaned on
    it, and a store whose roles no query names (agents' "user"/"assistant")
    ranked worse than without the feature.
    """
    if "named" in names:
        return _fit_named(questions, fit(questions, [n for n in names if n != "named"]))
    cols = [association.FEATURES.index(n) for n in names]
    d, wt = _pairs(questions, cols)
    if not len(d):
        return (("bias", 0.0),)
    sd = d.std(axis=0)
    sd[sd == 0] = 1.0
    raw = _fit(d / sd, wt) / sd
    return (("bias", 0.0), *((n, round(float(v), 4)) for n, v in zip(names, raw, strict=True)))


def _fit_named(
    questions: Sequence[Question], plain: tuple[tuple[str, float], ...]
) -> tuple[tuple[str, float], ...]:
    """``plain`` plus the ``named`` weight of the pairwise regression whose other
    terms are ``plain``'s, held fixed."""
    weights = dict(plain)
    w = np.array([weights.get(f, 0.0) for f in association.FEATURES])
    named = association.FEATURES.index("named")
    w[named] = 0.0
    d, wt = _pairs(questions, list(range(len(association.FEATURES))))
    if not len(d):
        return (*plain, ("named", 0.0))
    theta = _fit(d[:, [named]], wt, offset=d @ w)
    return (*plain, ("named", round(float(theta[0]), 4)))


def recall(questions: Sequence[Question], config: RetrievalConfig | None) -> dict[str, float]:
    """R@10 per conversation of replaying each ranking with ``config`` (``None``: fusion)."""
    found: dict[str, list[int]] = {}
    for q in questions:
        if config is None:
            top = q.fusion
        else:
            r = retrieval.rank(**{**q.args, "config": config})
            top = {q.dia[n] for n in [*r.base_top, *r.associations]}
        f = found.setdefault(q.conv, [0, 0])
        f[0] += bool(q.evidence & top)
        f[1] += 1
    return {c: h / n for c, (h, n) in sorted(found.items())}


def _overall(per: dict[str, float], questions: Sequence[Question]) -> float:
    size = {c: sum(q.conv == c for q in questions) for c in per}
    return sum(per[c] * size[c] for c in per) / sum(size.values())


def loco(
    questions: Sequence[Question], variant: tuple[tuple[str, ...], float, float]
) -> dict[str, float]:
    """Each conversation's R@10 under a model fitted on the other conversations."""
    names, share, gate = variant
    convs = sorted({q.conv for q in questions})
    out: dict[str, float] = {}
    for c in convs:
        train = [q for q in questions if q.conv != c] or list(questions)
        model = fit(train, names)
        cfg = RetrievalConfig(
            association_model=model, association_share=share, association_gate=gate
        )
        out.update(recall([q for q in questions if q.conv == c], cfg))
    return out


def measure(data: Path, embedder: CachingEmbedder, work: Path) -> dict[str, Any]:
    return evaluate(collect(data, embedder, work))


def evaluate(qs: list[Question]) -> dict[str, Any]:
    """Every figure of :func:`measure` from the collected questions."""
    n = len(qs)
    per = {name: loco(qs, v) for name, v in VARIANTS.items()}
    convs = sorted({q.conv for q in qs})
    chosen: dict[str, str] = {}
    held: dict[str, float] = {}
    for c in convs:  # the variant best on the other six
        others = [q for q in qs if q.conv != c] or qs

        def score(name: str, others: list[Question] = others, c: str = c) -> float:
            return _overall({d: v for d, v in per[name].items() if d != c} or per[name], others)

        chosen[c] = max(VARIANTS, key=score)
        held[c] = per[chosen[c]][c]
    results: dict[str, Any] = {
        "questions": n,
        "conversations": len(convs),
        "fusion": round(_overall(recall(qs, None), qs), 4),
        "final": round(_overall(recall(qs, FINAL), qs), 4),
        "learned": {
            name: {"all": round(_overall(p, qs), 4), **{c: round(v, 4) for c, v in p.items()}}
            for name, p in per.items()
        },
        "learned, variant chosen leave-one-out": round(_overall(held, qs), 4),
        "chosen": chosen,
        "shipped (in sample)": round(_overall(recall(qs, RetrievalConfig()), qs), 4),
    }
    best = max(VARIANTS, key=lambda v: sum(chosen[c] == v for c in convs))
    results["fit on all"] = {"variant": best, "model": fit(qs, VARIANTS[best][0])}
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="LoCoMo JSON (locomo10 schema)")
    p.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument(
        "--fit", action="store_true", help="print the model fitted on every conversation"
    )
    args = p.parse_args()
    inner = MiniLMEmbedder() if args.embedder == "minilm" else HashingEmbedder(token_vectors=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="helamem-rerank-") as tmp:
        res = measure(args.data, CachingEmbedder(inner), Path(tmp))
    res.update(data=str(args.data), embedder=inner.name, seconds=round(time.perf_counter() - start))
    show: Callable[[float], str] = lambda v: f"{v:.3f}"  # noqa: E731
    print(f"{res['questions']} questions, R@10 at exactly 10 hits")
    print(
        f"fusion {show(res['fusion'])}; selection='final' {show(res['final'])}; "
        f"shipped model (in sample) {show(res['shipped (in sample)'])}"
    )
    print("\n| selection='learned', leave-one-conversation-out | R@10 | per conversation |")
    print("|---|---|---|")
    for name, r in res["learned"].items():
        per = ", ".join(show(v) for c, v in r.items() if c != "all")
        print(f"| {name} | {show(r['all'])} | {per} |")
    chosen = show(res["learned, variant chosen leave-one-out"])
    print(f"| variant chosen on the other six | {chosen} | |")
    if args.fit:
        print(f"\nfitted on all ({res['fit on all']['variant']}):")
        print(repr(res["fit on all"]["model"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

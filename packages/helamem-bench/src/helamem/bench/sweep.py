"""Parameter sweep over the LoCoMo retrieval benchmark, with leave-one-out selection.

Every grid point runs the ``helamem`` method of :func:`~.locomo.run_locomo`
on the same embeddings (one embedding pass for the whole sweep); ``fusion``,
which spreading and learning parameters do not change, runs once as the
reference. Defaults are chosen by leave-one-conversation-out: for each
conversation, the point that is best on the *other* conversations is scored
on the held-out one, so the reported estimate never saw its own test data.

Examples:
    From the command line::

        helamem bench sweep --data ../shared/data/locomo/locomo-dev.json \\
            --grid activation_alpha=0.3,1,2 --grid max_flipped=3,5

    From Python:

    >>> pts = grid_points({"activation_alpha": [0.3, 1.0], "max_flipped": [3]})
    >>> [p["activation_alpha"] for p in pts]
    [0.3, 1.0]
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from helamem.core.embeddings import Embedder, MiniLMEmbedder

from ._common import CachingEmbedder, Progress, config_overrides, versions
from ._stores import BenchStores
from .locomo import run_locomo
from .locomo_report import backend_line

__all__ = ["FUSION_INVARIANT", "grid_points", "leave_one_out", "render_sweep", "run_sweep"]

FUSION_INVARIANT = frozenset(
    {
        "activation_alpha",
        "spreading_threshold",
        "spread_seeds",
        "neighbors_per_seed",
        "spread_hops",
        "max_boost",
        "max_flipped",
        "selection",
        "association_share",
        "semantic_k",
    }
)
"""Overrides that leave the ``fusion`` baseline unchanged (it neither spreads nor learns)."""


def _fusion_invariant(key: str) -> bool:
    return key in FUSION_INVARIANT or key.startswith("dynamics.")


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the order given.

    Args:
        grid: Override key → values to try.

    Returns:
        One override mapping per point.

    Raises:
        ValueError: A key has no values.

    Examples:
        >>> grid_points({"a": [1, 2], "b": [3]})
        [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]
    """
    for key, values in grid.items():
        if not values:
            raise ValueError(f"grid key {key!r} has no values; give KEY=V1,V2,...")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _point_name(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "(base)"


def leave_one_out(per_conv: Sequence[Mapping[str, tuple[float, int]]]) -> dict[str, Any]:
    """Leave-one-conversation-out choice among grid points.

    Args:
        per_conv: For each point (same order as the grid), conversation →
            ``(hits, questions)``.

    Returns:
        ``folds`` (held-out conversation, chosen point index, its held-out
        R), ``estimate`` (question-weighted held-out R), ``chosen`` (the
        point best on all conversations) and ``stable`` (folds that chose it).

    Examples:
        >>> a = {"c1": (8.0, 10), "c2": (5.0, 10)}
        >>> b = {"c1": (6.0, 10), "c2": (6.0, 10)}
        >>> loo = leave_one_out([a, b])
        >>> [f["point"] for f in loo["folds"]], loo["estimate"], loo["chosen"]
        ([1, 0], 0.55, 0)
    """
    if not per_conv:
        raise ValueError("leave_one_out needs at least one grid point")
    convs = sorted(per_conv[0])

    def rate(i: int, keep: Sequence[str]) -> float:
        hits = sum(per_conv[i][c][0] for c in keep)
        n = sum(per_conv[i][c][1] for c in keep)
        return hits / n if n else 0.0

    def best(keep: Sequence[str]) -> int:
        return max(range(len(per_conv)), key=lambda i: (rate(i, keep), -i))

    folds = []
    held_hits = held_n = 0.0
    for c in convs:
        others = [o for o in convs if o != c] or [c]
        i = best(others)
        hits, n = per_conv[i][c]
        held_hits += hits
        held_n += n
        folds.append({"held_out": c, "point": i, "r": round(hits / n, 4) if n else None})
    chosen = best(convs)
    return {
        "folds": folds,
        "estimate": round(held_hits / held_n, 4) if held_n else None,
        "chosen": chosen,
        "chosen_r": round(rate(chosen, convs), 4),
        "stable": sum(1 for f in folds if f["point"] == chosen),
    }


def _per_conv(method: Mapping[str, Any], k: int) -> dict[str, tuple[float, int]]:
    out = {}
    for conv, s in method["conversations"].items():
        n = int(s["questions"])
        out[conv] = ((s[f"r@{k}"] or 0.0) * n, n)
    return out


def run_sweep(
    data: Path,
    *,
    grid: Mapping[str, Sequence[Any]],
    base: Mapping[str, Any] | None = None,
    conversations: int | None = None,
    questions: int | None = None,
    seed: int = 0,
    k: int = 10,
    embedder: Embedder | None = None,
    tokenizer_file: Path | None = None,
    progress: TextIO | None = None,
    out: Path | None = None,
    stores: BenchStores | None = None,
) -> dict[str, Any]:
    """Run ``helamem`` at every grid point, ``fusion`` as reference, and choose by LOO.

    Args:
        data: The LoCoMo JSON file.
        grid: Override key → values (keys as in ``bench locomo --set``,
            ``dynamics.KEY`` included).
        base: Overrides applied at every point.
        conversations: Use only the first N conversations.
        questions: At most N questions per conversation (seeded sample).
        seed: Seed of the question sample.
        k: The cut-off scored (R@k, categories 1-4).
        embedder: Embedder (default: MiniLM); texts are embedded once.
        tokenizer_file: Local ``cl100k_base`` file for token counts.
        progress: Stream for progress lines.
        out: Directory for ``sweep.json`` and ``sweep.md``.
        stores: Where the stores keep their graph (default: SQLite); see
            :class:`~._stores.BenchStores`. Recorded under ``config.backend``.

    Returns:
        The sweep results (as written to ``sweep.json``).
    """
    base = dict(base or {})
    points = grid_points(grid)
    for point in points:  # every point's config is valid before the first one runs
        config_overrides({**base, **point})
    cache = CachingEmbedder(embedder if embedder is not None else MiniLMEmbedder())
    fusion_once = all(_fusion_invariant(key) for key in grid)
    rows: list[dict[str, Any]] = []
    per_conv: list[dict[str, tuple[float, int]]] = []
    fusion: dict[str, Any] | None = None
    fusions: list[dict[str, Any]] = []  # fusion at each point (the same one when it never varies)
    bar = Progress("sweep", len(points), progress)
    started = time.perf_counter()
    for point in points:
        methods = ["helamem"] if fusion is not None and fusion_once else ["fusion", "helamem"]
        res = run_locomo(
            data,
            conversations=conversations,
            questions=questions,
            methods=methods,
            seed=seed,
            ks=[k],
            retrieval={**base, **point},
            embedder=cache,
            tokenizer_file=tokenizer_file,
            stores=stores,
        )
        hm = res["methods"]["helamem"]
        if "fusion" in res["methods"]:
            f = res["methods"]["fusion"]
            fusion = {
                "r": f["categories"]["1-4"][f"r@{k}"],
                "tokens": f["categories"]["1-4"][f"tokens@{k}"],
                "conversations": _per_conv(f, k),
            }
        assert fusion is not None
        fusions.append(fusion)
        cat = hm["categories"]["1-4"]
        rows.append(
            {
                "point": point,
                "r": cat[f"r@{k}"],
                "fusion_r": fusion["r"],
                "gain": round(cat[f"r@{k}"] - fusion["r"], 4),
                "hits": cat[f"hits@{k}"],
                "tokens": cat[f"tokens@{k}"],
                "query_ms_per_question": hm["query_ms_per_question"],
            }
        )
        per_conv.append(_per_conv(hm, k))
        bar.update()
    bar.close()
    assert fusion is not None
    loo = leave_one_out(per_conv)
    # each fold's reference is fusion at the point that fold chose (the base ranking that
    # helamem ran on there), not fusion at the grid's last point: a grid over fusion's own
    # weights (late_weight, keyword_weight) changes it from point to point
    fusion_hits = fusion_n = 0.0
    for fold in loo["folds"]:
        h, n = fusions[fold["point"]]["conversations"][fold["held_out"]]
        fusion_hits, fusion_n = fusion_hits + h, fusion_n + n
        fold["fusion_r"] = round(h / n, 4) if n else None
        fold["point_name"] = _point_name(points[fold["point"]])
    fusion_total = fusion_hits / max(1.0, fusion_n)
    fusion = fusions[loo["chosen"]]
    results = {
        "benchmark": "locomo-sweep",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(data),
        "config": {
            "k": k,
            "base": base,
            "grid": {key: list(v) for key, v in grid.items()},
            "conversations": conversations,
            "questions_per_conversation": questions,
            "embedder": cache.name,
            "metric": f"R@{k}, categories 1-4, method helamem (fusion as reference)",
            "backend": (stores or BenchStores()).describe(),
        },
        "seed": seed,
        "versions": versions(),
        "seconds": round(time.perf_counter() - started, 1),
        "fusion": {"r": fusion["r"], "tokens": fusion["tokens"]},
        "points": rows,
        "loo": {
            **loo,
            "fusion_r": round(fusion_total, 4),
            "gain": (
                round(loo["estimate"] - fusion_total, 4) if loo["estimate"] is not None else None
            ),
            "chosen_point": points[loo["chosen"]],
        },
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out / "sweep.md").write_text(render_sweep(results) + "\n", encoding="utf-8")
    return results


def render_sweep(results: Mapping[str, Any]) -> str:
    """The sweep as markdown: every point, then the leave-one-out folds.

    Args:
        results: What :func:`run_sweep` returned.

    Returns:
        Markdown text.
    """
    k = results["config"]["k"]
    loo = results["loo"]
    lines = [
        "# LoCoMo parameter sweep (helamem)",
        "",
        f"- data: `{Path(results['data']).name}`; metric: {results['config']['metric']}",
        f"- stores: {backend_line(results['config'].get('backend'))}",
        f"- base overrides: {results['config']['base'] or 'none'}; fusion R@{k} at the "
        f"chosen point = {results['fusion']['r']:.3f} ({results['fusion']['tokens']:.0f} tokens)",
        "",
        f"| point | R@{k} | gain over fusion | hits | tokens | ms/q |",
        "|---|---|---|---|---|---|",
    ]
    order = sorted(range(len(results["points"])), key=lambda i: -results["points"][i]["r"])
    for i in order:
        p = results["points"][i]
        mark = " **(chosen)**" if i == loo["chosen"] else ""
        lines.append(
            f"| {_point_name(p['point'])}{mark} | {p['r']:.3f} | {p['gain']:+.3f} | "
            f"{p['hits']:.1f} | {p['tokens']:.0f} | {p['query_ms_per_question']} |"
        )
    lines += [
        "",
        "## Leave one conversation out",
        "",
        f"| held out | chosen on the others | helamem R@{k} | fusion R@{k} |",
        "|---|---|---|---|",
    ]
    for f in loo["folds"]:
        lines.append(
            f"| {f['held_out']} | {f['point_name']} | {f['r']:.3f} | {f['fusion_r']:.3f} |"
        )
    lines += [
        "",
        f"Held-out estimate: helamem R@{k} {loo['estimate']:.3f} vs fusion "
        f"{loo['fusion_r']:.3f} ({loo['gain']:+.3f}). Chosen on all conversations: "
        f"{_point_name(loo['chosen_point'])} (R@{k} {loo['chosen_r']:.3f}; "
        f"{loo['stable']} of {len(loo['folds'])} folds chose it).",
    ]
    return "\n".join(lines)

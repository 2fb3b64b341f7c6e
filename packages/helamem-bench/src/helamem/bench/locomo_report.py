"""The LoCoMo report: markdown tables, the recall@k plot and the written results files."""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .locomo_data import LOOP_K
from .qa import render_qa_markdown


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def backend_line(backend: Mapping[str, Any] | None) -> str:
    """Where the benchmark's stores kept their graph and vectors, in words.

    Examples:
        >>> backend_line({"backend": "postgres", "postgres": "db:5432/x", "chroma": "embedded"})
        'graph in PostgreSQL (db:5432/x, a schema per store), vectors in embedded Chroma'
        >>> backend_line(None)
        'graph in SQLite, vectors in embedded Chroma'
    """
    b = dict(backend or {"backend": "sqlite", "chroma": "embedded"})
    graph = (
        f"PostgreSQL ({b.get('postgres', '?')}, a schema per store)"
        if b.get("backend") == "postgres"
        else "SQLite"
    )
    chroma = str(b.get("chroma", "embedded"))
    where = "embedded Chroma" if chroma == "embedded" else f"a Chroma server ({chroma[5:]})"
    return f"graph in {graph}, vectors in {where}"


def render_markdown(results: Mapping[str, Any]) -> str:
    """The results as markdown tables.

    Args:
        results: What :func:`run_locomo` returned.

    Returns:
        A markdown document: cat 1-4 metrics per method, then R@k per category.
    """
    ks = results["config"]["ks"]
    methods = results["methods"]
    ds = results["dataset"]
    ev = ds["evidence"]
    tok = results["token_counter"]["name"]
    lines = [
        "# LoCoMo retrieval benchmark",
        "",
        f"- data: `{Path(results['data']).name}`, conversations: {', '.join(ds['conversations'])}"
        f" ({ds['turns']} turns, {ds['questions']} scored questions)",
        f"- embedder: {results['config']['embedder']}; tokens: {tok}",
        f"- stores: {backend_line(results['config'].get('backend'))}",
        f"- evidence in the file: {ev['entries']} entries, {ev['split']} split, "
        f"{ev['repaired']} repaired, "
        f"{ev['skipped_unparseable']} unparseable and {ev['skipped_unknown']} unknown skipped; "
        f"{ev['questions_without_evidence']} questions without usable evidence not scored",
        f"- seed {results['seed']}; retrieval overrides: "
        f"{results['config']['retrieval_overrides'] or 'none'}",
        "",
        "## Categories 1-4",
        "",
    ]
    head = (
        ["method"]
        + [f"R@{k}" for k in ks]
        + [f"recall@{k}" for k in ks]
        + [f"tokens@{k}" for k in ks]
        + [f"hits@{ks[-1]}", "ingest s", "query ms/q", "calls/q", "ms/call"]
    )
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in methods.items():
        c = m["categories"]["1-4"]
        row = (
            [name]
            + [_fmt(c[f"r@{k}"]) for k in ks]
            + [_fmt(c[f"recall@{k}"]) for k in ks]
            + [_fmt(c[f"tokens@{k}"], 0) for k in ks]
            + [_fmt(c[f"hits@{ks[-1]}"], 1), _fmt(m["ingest_s"], 1)]
            + [_fmt(m["query_ms_per_question"], 1)]
            + [_fmt(m.get("calls_per_question"), 1), _fmt(m.get("query_ms_per_call"), 1)]
        )
        lines.append("| " + " | ".join(row) + " |")
    for k in ks:
        lines += ["", f"## R@{k} by category", ""]
        first = next(iter(methods.values()))["categories"]
        head = ["method"] + [
            f"{key} {v['name']} (n={v['questions']})" if key not in ("1-4", "all") else key
            for key, v in first.items()
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, m in methods.items():
            row = [name] + [_fmt(v[f"r@{k}"]) for v in m["categories"].values()]
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "R@k: any evidence turn among the hits of `search(k=k)`; recall@k: share of the "
        "evidence found; hits@k: hits returned (at most k; association hits take some of the k). "
        "query ms/q: wall time per question, over calls/q search calls (a spreading method makes "
        "one per k and per token budget, a budget call running several searches inside; the "
        "others one for all); ms/call: per call.",
        "",
    ]
    if results.get("graph"):
        lines += _render_loop(results)
    budgets = results["config"].get("token_budgets") or []
    if budgets:
        lines += [
            "## Equal tokens (categories 1-4)",
            "",
            "Each method's ranked hits, whole hits in order, while their contents fit T tokens.",
            "",
            "| method | " + " | ".join(f"R@{t} tokens | hits@{t}" for t in budgets) + " |",
            "|---|" + "---|---|" * len(budgets),
        ]
        for name, m in methods.items():
            c = m["categories"]["1-4"]
            cells = [f"{_fmt(c[f'r@{t}t'])} | {_fmt(c[f'hits@{t}t'], 1)}" for t in budgets]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    with_facts = {
        n: m for n, m in methods.items() if any(f["returned"] for f in m["facts"].values())
    }
    if with_facts:
        lines += [
            "## Distilled facts",
            "",
            "Facts returned among the hits (at k: among the k best by score of episodes "
            "and facts together), and how many cite an evidence turn among their sources "
            "(a fact counts as hitting its source turns in every R above).",
            "",
            "| method | at | facts/question | citing evidence |",
            "|---|---|---|---|",
        ]
        n_q = next(iter(methods.values()))["categories"]["1-4"]["questions"] or 1
        for name, m in with_facts.items():
            for key, f in m["facts"].items():
                at = f"{key[:-1]} tokens" if key.endswith("t") else f"k={key}"
                lines.append(
                    f"| {name} | {at} | {_fmt(f['returned'] / n_q, 2)} | {_fmt(f['citing_rate'])} |"
                )
        lines.append("")
    parity = results.get("token_parity")
    if parity:
        lines += [
            f"## Context at equal recall (match {parity['reference']} R@{parity['k']} = "
            f"{_fmt(parity['r'])}, {_fmt(parity['tokens'], 0)} tokens)",
            "",
            "| method | smallest k | R@k | hits | tokens | no more tokens |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in parity["methods"].items():
            if p is None:
                lines.append(f"| {name} | – | – | – | – | never reached |")
                continue
            lines.append(
                f"| {name} | {p['k']} | {_fmt(p['r'])} | {_fmt(p['hits'], 1)} | "
                f"{_fmt(p['tokens'], 0)} | {'yes' if p['no_more_tokens'] else 'no'} |"
            )
        lines.append("")
    if results.get("qa"):
        lines += render_qa_markdown(results["qa"])
    return "\n".join(lines)


def _render_loop(results: Mapping[str, Any]) -> list[str]:
    """The agent-loop section: recall per category and the graph's shape per replay."""
    ks = results["config"]["ks"]
    methods = results["methods"]
    k = 10 if 10 in ks else ks[-1]
    first = next(iter(methods.values()))["categories"]
    cats = [key for key in first if key in ("1", "2", "3", "4")]
    lines = [
        f"## Agent loop (search(a, k={results['config'].get('loop_k', LOOP_K)}) then "
        "add_turns(a, b, used_ids=hits); questions read-only)",
        "",
        "| replay | "
        + " | ".join(f"R@{x} | recall@{x}" for x in ks)
        + " | "
        + " | ".join(f"R@{k} / recall@{k} {first[c]['name']}" for c in cats)
        + " |",
        "|---|" + "---|---|" * len(ks) + "---|" * len(cats),
    ]
    for name, m in methods.items():
        c = m["categories"]
        cells = [f"{_fmt(c['1-4'][f'r@{x}'])} | {_fmt(c['1-4'][f'recall@{x}'])}" for x in ks]
        cells += [f"{_fmt(c[key][f'r@{k}'])} / {_fmt(c[key][f'recall@{k}'])}" for key in cats]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Graph shape after ingest (node strength: the sum of a memory's edge weights):",
        "",
        "| replay | edges | mean weight | strength p50 | p99 | max | Gini | max degree |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in results["graph"].items():
        lines.append(
            f"| {name} | {g['edges']} | {_fmt(g['mean_weight'])} | {_fmt(g['strength_p50'])} | "
            f"{_fmt(g['strength_p99'])} | {_fmt(g['strength_max'])} | "
            f"{_fmt(g['strength_gini'])} | {g['degree_max']} |"
        )
    return [*lines, ""]


def _plot(results: Mapping[str, Any], path: Path) -> dict[str, Any]:
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return {"written": False, "reason": "matplotlib is not installed; no plot"}
    ks = results["config"]["ks"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in results["methods"].items():
        c = m["categories"]["1-4"]
        ax.plot(ks, [c[f"recall@{k}"] for k in ks], marker="o", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("evidence recall@k (categories 1-4)")
    ax.set_xticks(ks)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"written": True, "path": path.name}


def write_results(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (with matplotlib) the plot.

    Args:
        results: What :func:`run_locomo` returned; its ``plot`` entry is filled in.
        out: The directory (created when missing).

    Returns:
        The paths written, by kind.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    results["plot"] = _plot(results, out / "recall_at_k.png")
    if results["plot"]["written"]:
        paths["plot"] = out / "recall_at_k.png"
    paths["json"].write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(results), encoding="utf-8")
    return paths

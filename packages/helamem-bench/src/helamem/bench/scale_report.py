"""The scale benchmark's report: the markdown table and the written results files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .locomo_report import backend_line


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _layout(cell: Mapping[str, Any]) -> str:
    return "1 scope" if cell["scopes"] == 1 else f"{cell['scopes']} scopes"


def render_markdown(results: Mapping[str, Any]) -> str:
    """The results as a markdown report (one row per size and layout)."""
    cfg = results["config"]
    lines = [
        "# Scale benchmark",
        "",
        f"Embedder `{cfg['embedder']}`, k={cfg['k']}, {cfg['queries']} queries x "
        f"{cfg['repeats']} passes (medians of per-pass p50/p95), seed {results['seed']}, "
        f"{cfg['cpus']} CPUs. Vectors are precomputed: neither side pays for the query "
        f"embedding, and ingest is the store's throughput (the embedder alone: "
        f"{_f(results['embedding']['texts_per_s'])} texts/s). Late interaction (MaxSim over "
        f"stored token vectors, the default retrieval's third leg): "
        f"{'on' if cfg.get('late_interaction') else 'off (no token vectors stored)'}; HeLa-Mem "
        f"computes the token vectors at ingest, so its ingest includes that work (the "
        f"queries' token vectors are precomputed, as their vectors).",
        "",
        f"Stores: {backend_line(cfg.get('backend'))}.",
        "",
        (
            "Config overrides (`--set`): "
            + ", ".join(f"`{k}={v}`" for k, v in cfg["retrieval_overrides"].items())
            + "; every other setting at its default."
            if cfg.get("retrieval_overrides")
            else "Every setting at its default."
        ),
        "",
        "`search` is `search()` with its defaults (spreading and learning on); `read-only` "
        "adds `learn=False`; `no spread` adds `spread=False` too. Ratio = HeLa-Mem p50 / "
        "plain Chroma p50 (same vectors, same query vector, same k, same run).",
        "",
        "| memories | layout | ingest turns/s (Chroma add) | search p50 / p95 ms "
        "| read-only p50 / p95 | no spread p50 / p95 | Chroma p50 / p95 "
        "| ratio search / read-only / no spread | record_turn p50 / p95 µs "
        "| RSS B/memory (Chroma) | disk B/memory (Chroma) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results["cells"]:
        s = c["search_ms"]
        ratio = c["ratio_p50"]
        rt = c["record_turn"]["record_turn_sync_us"]

        def pair(m: str, s: Mapping[str, Any] = s) -> str:
            return f"{_f(s[m]['p50'], 2)} / {_f(s[m]['p95'], 2)}"

        lines.append(
            f"| {c['size']:,} | {_layout(c)} "
            f"| {_f(c['ingest']['turns_per_s'], 0)} ({_f(c['ingest']['chroma_turns_per_s'], 0)}) "
            f"| {pair('search')} | {pair('search_learn_false')} | {pair('search_no_spread')} "
            f"| {pair('chroma')} "
            f"| **{_f(ratio['search'], 2)}x** / {_f(ratio['search_learn_false'], 2)}x"
            f" / {_f(ratio['search_no_spread'], 2)}x "
            f"| {_f(rt['p50'], 0)} / {_f(rt['p95'], 0)} "
            f"| {_f(c['rss']['helamem_bytes_per_memory'], 0)}"
            f" ({_f(c['rss']['chroma_bytes_per_memory'], 0)}) "
            f"| {_f(c['disk']['helamem_bytes_per_memory'], 0)}"
            f" ({_f(c['disk']['chroma_bytes_per_memory'], 0)}) |"
        )
    timed = [c for c in results["cells"] if c.get("search_legs_ms")]
    on_pg = (cfg.get("backend") or {}).get("backend") == "postgres"
    bm25 = "PostgreSQL's postings table" if on_pg else "FTS5"
    if timed:
        lines += [
            "",
            "Where the default `search` spends its time (p50 / p95 ms, engine side): the "
            f"lexical leg (BM25 over {bm25}) and the lexical candidates' rows run on the "
            "store's thread while the ANN query runs on a second one (the query embedding, "
            "here a table lookup, first); the dense leg is the wait for the ANN query after "
            "them; late is MaxSim scoring (the token vectors come with the candidate rows); "
            "rest is the candidate rows, the pool, fusion, spreading and the hits. The "
            "learning write runs after the hits are handed back (before the store's next "
            "call), so neither engine nor search "
            "includes it: the leg times are read from the store after search's clock stopped, "
            "which waits for it. Engine = the time until both legs were done (the scope "
            "lookup, lexical, dense), plus late, plus rest, as the owner thread saw it; "
            "search, the caller's time, adds the hop to that thread.",
            "",
            "| memories | layout | dense | lexical | late (MaxSim) | rest | engine | search |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in timed:
            g = c["search_legs_ms"]
            cols = [
                f"{_f(g[leg]['p50'], 2)} / {_f(g[leg]['p95'], 2)}" if leg in g else "–"
                for leg in ("dense", "lexical", "late", "rest", "engine")
            ]
            s = c["search_ms"]["search"]
            lines.append(
                f"| {c['size']:,} | {_layout(c)} | "
                + " | ".join(cols)
                + f" | {_f(s['p50'], 2)} / {_f(s['p95'], 2)} |"
            )
    lines += [
        "",
        "record_turn: agent-visible latency of `TurnRecorder.record_turn_sync` (stored in the "
        "background, consolidation off); beside it, per cell: background turns/s and a direct "
        "`add_turn` p50.",
        "",
        "| memories | layout | background turns/s | add_turn p50 / p95 ms |",
        "|---:|---|---:|---:|",
    ]
    for c in results["cells"]:
        r = c["record_turn"]
        lines.append(
            f"| {c['size']:,} | {_layout(c)} | {_f(r['background_turns_per_s'])} "
            f"| {_f(r['add_turn_direct_ms']['p50'], 2)} / {_f(r['add_turn_direct_ms']['p95'], 2)} |"
        )
    failures = [
        c
        for c in results["cells"]
        if c.get("chroma_query_failed") or c["ingest"].get("chroma_add_failed")
    ]
    for c in failures:
        lines += [
            "",
            f"Plain Chroma at {c['size']:,} memories over {c['scopes']:,} collections "
            f"(open-file limit {c.get('nofile_soft_limit')}): "
            f"{c['ingest'].get('chroma_add_failed', 0):,} vectors failed to add and "
            f"{c.get('chroma_query_failed', 0):,} queries failed (its timings include them).",
        ]
    backend = cfg.get("backend") or {}
    graph = (
        "its PostgreSQL schema's tables with their indexes"
        if backend.get("backend") == "postgres"
        else "SQLite with WAL"
    )
    vectors = (
        "; the Chroma server's files are not counted, so plain Chroma's show as -"
        if backend.get("chroma", "embedded") != "embedded"
        else ", and Chroma"
    )
    servers = (
        "; this process only, not the servers'"
        if backend.get("backend") == "postgres" or backend.get("chroma", "embedded") != "embedded"
        else ""
    )
    lines += [
        "",
        "RSS per memory: growth of the process's resident memory while building each store, "
        f"divided by its memories (approximate: allocators reuse freed memory{servers}; it "
        "counts the pages of the SQLite file read through its memory map, `sqlite_mmap_mb`, "
        "which the OS reclaims under pressure). Disk: "
        f"every file of the store ({graph}{vectors}) per memory. "
        f"Peak RSS of the run: {_f(results['peak_rss_mb'])} MB.",
    ]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``results.json`` and ``results.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    paths["markdown"].write_text(render_markdown(results), encoding="utf-8")
    return paths

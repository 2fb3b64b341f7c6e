"""The lexical leg keeps the best BM25 rows of the kind and scope searched.

Where every memory of the searched kind lies under the prefix (as this process
last saw the store), the lexical query runs without the scope filter and
over-fetches. Rows of another kind (facts beside episodes) or of a scope
another process added since must never crowd the best rows of the searched
kind and scope out of it: a probe found an episode missing from the candidates
of an episodic search when 120 matching facts sat under the same prefix, and
when another process had added 150 matching memories to another scope.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, NewMemory, RetrievalConfig
from helamem.core._core import Core
from lexical_probe import lexical

MODES = {
    "fts5": {"lexical_index": "fts5"},
    "tantivy-tail": {
        "lexical_index_min": 20,
        "lexical_index_tail": 1000,
        "lexical_index_fold_s": 0,
    },
    "tantivy-folded": {"lexical_index_min": 20, "lexical_index_tail": 0, "lexical_index_fold_s": 0},
}
ZEBRA = "the zebra crossed the long road at dawn near the river"


def _add_facts(mem: HelaMemory, tmp: Path, scope: tuple[str, ...], text: str, n: int) -> None:
    """``n`` semantic memories ``text`` under ``scope``, as an import of facts brings them."""
    mem.add_many(NewMemory(text, ("scratch",), linked=False) for _ in range(n))
    mem.export_scope(("scratch",), tmp / "x.jsonl")
    mem.delete_scope(("scratch",))
    lines = []
    for line in (tmp / "x.jsonl").read_text().splitlines():
        o = json.loads(line)
        if o["type"] == "memory":
            o["kind"], o["id"] = "semantic", "f" + o["id"]
        lines.append(json.dumps(o))
    (tmp / "facts.jsonl").write_text("\n".join(lines) + "\n")
    mem.import_scope(tmp / "facts.jsonl", scope=scope)


@pytest.mark.parametrize("mode", list(MODES))
def test_facts_under_the_prefix_never_crowd_out_an_episode(
    make_mem: Any, tmp_path: Path, mode: str
) -> None:
    with make_mem(tmp_path / "s", **MODES[mode]) as mem:
        mem.add_many(NewMemory(f"filler {i} words here", ("a",)) for i in range(30))
        episode = mem.add(ZEBRA, ("a",)).id
        _add_facts(mem, tmp_path, ("a", "facts"), "zebra zebra", 120)
        assert mem.stats().semantic == 120
        assert ZEBRA in lexical(mem, ("a",), "zebra", k=5)
        assert ZEBRA in lexical(mem, (), "zebra", k=5)  # every scope: no scope filter at all
        hits = mem.search("zebra", ("a",), k=5, semantic_k=0, learn=False)
        assert hits.ids[0] == episode


def _other_tenant(path: Path, mode: str) -> None:
    cfg = HelaMemConfig(path=path, retrieval=RetrievalConfig(**MODES[mode]))  # type: ignore[arg-type]
    with HelaMemory(cfg, embedder=HashingEmbedder(256)) as mem:
        mem.add_many(NewMemory("zebra zebra", ("b",), linked=False) for _ in range(150))


@pytest.mark.parametrize("mode", ["fts5", "tantivy-tail"])
def test_another_processs_new_scope_never_crowds_out_this_scopes_memory(
    tmp_path: Path, mode: str
) -> None:
    path = tmp_path / "s"
    cfg = HelaMemConfig(path=path, retrieval=RetrievalConfig(**MODES[mode]))  # type: ignore[arg-type]
    with HelaMemory(cfg, embedder=HashingEmbedder(256)) as mem:
        mem.add_many(NewMemory(f"filler {i} words here", ("a",)) for i in range(30))
        mem.search("filler", ("a",), k=3, learn=False)  # this process sees one scope
        mine = mem.add(ZEBRA, ("a",)).id
        child = mp.get_context("spawn").Process(target=_other_tenant, args=(path, mode))
        child.start()
        child.join(120)
        assert child.exitcode == 0
        assert mem.stats().memories == 181
        assert ZEBRA in lexical(mem, ("a",), "zebra", k=5)
        assert mem.search("zebra", ("a",), k=5, learn=False).ids[0] == mine


def test_a_kind_with_few_matches_costs_one_filtered_query_not_every_match(
    make_mem: Any, tmp_path: Path
) -> None:
    """Fewer than m facts match among many matching episodes (the semantic leg of
    most searches): the shortfall is settled by the scope's filtered query (at most
    m rows), never by reading every match; over every scope, by at most
    ``DEEPEN_ROUNDS`` larger queries."""
    from helamem.core._lexical_leg import DEEPEN_ROUNDS

    with make_mem(tmp_path / "s", lexical_index="fts5") as mem:
        mem.add_many(NewMemory(f"my cats number {i}", ("a",)) for i in range(1700))
        _add_facts(mem, tmp_path, ("a", "facts"), "cats like warm sunny windows", 1)
        core = mem._call(lambda c: c)
        m = core.config.retrieval.candidates
        limits: list[tuple[str | None, int]] = []
        real = core.store.lexical

        def spy(match: str, tag: str | None, limit: int, after: int = 0) -> Any:
            limits.append((tag, limit))
            return real(match, tag, limit, after)

        def facts(scope: tuple[str, ...]) -> set[str]:
            def run(c: Core) -> set[str]:
                node = c.store.find_scope(scope) if scope else None
                nodes = c.store.descendants(node) if node else c.store.all_scope_ids()
                c.store.lexical = spy  # type: ignore[method-assign]
                try:
                    got = c._lexical("cats", node, nodes, "semantic", 3, c._term_stats("cats"))
                finally:
                    del c.store.lexical
                return {r.content for r in c.store.rows_by_n(list(got)).values()}

            return mem._call(run)

        assert facts(("a",)) == {"cats like warm sunny windows"}
        assert [t is None for t, _ in limits] == [True, False]  # unfiltered, then the tag
        assert max(limit for _, limit in limits) == 2 * m  # not the 1,701 matches
        limits.clear()
        assert facts(()) == set()  # the fact ranks below 32m = 1,600 episodes: bounded
        assert len(limits) == DEEPEN_ROUNDS + 1
        assert max(limit for _, limit in limits) == 2 * m * 4**DEEPEN_ROUNDS

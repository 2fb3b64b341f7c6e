"""Two-hop spreading and the ``learn_top`` co-activation limit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from helamem.core import (
    DynamicsConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    PostgresConfig,
    RetrievalConfig,
)

StoreConfig = Callable[[Path], PostgresConfig | None]

ALICE = ("users", "alice")
T = datetime(2024, 5, 1, tzinfo=UTC)


def _open(path: Path, store: StoreConfig, **retrieval: object) -> HelaMemory:
    cfg = HelaMemConfig(
        path=path,
        store=store(path),
        retrieval=RetrievalConfig(**retrieval),  # type: ignore[arg-type]
        dynamics=DynamicsConfig(decay_rate=1.0),
    )
    return HelaMemory(cfg, embedder=HashingEmbedder(256))


def _chain(mem: HelaMemory) -> tuple[str, str, str]:
    """cat → weather → vet, linked only by temporal edges (0.5 each), then fillers.

    The fillers share a word with the query, so the base ranking puts them
    above ``weather`` and ``vet``; only spreading can lift those two.
    """
    cat = mem.add("alice adopted a cat named miso", ALICE, event_time=T).id
    weather = mem.add("the weather was grey and wet", ALICE, event_time=T).id
    vet = mem.add("vet appointment friday morning", ALICE, event_time=T).id
    for i in range(12):
        mem.add(f"cat food prices list number {i}", ALICE, event_time=T)
    return cat, weather, vet


def test_two_hops_reach_the_neighbours_neighbour(tmp_path: Path, store_config: StoreConfig) -> None:
    params = {
        "activation_alpha": 2.0,
        "spreading_threshold": 0.0,
        "spread_seeds": 1,
        "max_boost": 1.0,
        "association_share": 1.0,  # k=3: room for both lifted memories
        "selection": "final",  # the spread activation lifts them
    }
    with _open(tmp_path / "one", store_config, spread_hops=1, **params) as one:
        cat, weather, vet = _chain(one)
        plain = one.search("cat miso", ALICE, k=3, learn=False, spread=False)
        assert plain.ids[0] == cat
        assert not {weather, vet} & set(plain.ids)
        res = one.search("cat miso", ALICE, k=3, learn=False)
        assert weather in res.ids
        assert vet not in res.ids  # two steps away: one hop cannot reach it
    with _open(tmp_path / "two", store_config, spread_hops=2, **params) as two:
        cat, weather, vet = _chain(two)
        res = two.search("cat miso", ALICE, k=3, learn=False)
        assert res.ids[0] == cat
        hit = next(h for h in res if h.id == vet)
        assert hit.provenance == "association"
        # the path weight w(cat, weather) * w(weather, vet), credited to the seed
        assert hit.via == ((cat, 0.25),)
        assert hit.lexical == 0.0


def test_learn_top_limits_which_hits_co_activate(tmp_path: Path, store_config: StoreConfig) -> None:
    def edges_after_search(path: Path, learn_top: int) -> int:
        with _open(path, store_config, learn_top=learn_top) as mem:
            for i in range(4):  # relevant memories never adjacent: fillers between
                mem.add(f"garden tomato harvest report {i}", ALICE, event_time=T)
                mem.add(f"unrelated filler about trains {i}", ALICE, event_time=T)
            before = mem.stats(ALICE).edges
            res = mem.search("garden tomato harvest", ALICE, k=4, spread=False)
            assert len(res) == 4
            return mem.stats(ALICE).edges - before

    assert edges_after_search(tmp_path / "all", 0) == 6  # every pair of 4 hits
    assert edges_after_search(tmp_path / "top2", 2) == 1  # only the best two

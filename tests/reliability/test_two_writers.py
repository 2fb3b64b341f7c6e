"""Two writers on one store: maintenance and learning never undo the other's commits.

Two ``HelaMemory`` objects on one path stand for two processes (each has its
own connection). The interleaving is forced, not waited for: one writer's
step is wrapped so that the other writer's calls commit in the window between
what the first one read and its write transaction. Both graph stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helamem.core import DynamicsConfig, HashingEmbedder, HelaMemConfig, HelaMemory, PostgresConfig

S = ("t", "1")


def _open(path: Path, store: PostgresConfig | None, **kw: Any) -> HelaMemory:
    return HelaMemory(HelaMemConfig(path=path, store=store, **kw), embedder=HashingEmbedder(256))


@pytest.fixture
def two(
    tmp_path: Path, store_config: Callable[[Path], PostgresConfig | None]
) -> Iterator[Callable[..., tuple[HelaMemory, HelaMemory]]]:
    """``two(**config)`` -> two memories on one store (closed after the test)."""
    opened: list[HelaMemory] = []

    def make(**kw: Any) -> tuple[HelaMemory, HelaMemory]:
        path = tmp_path / "store"
        opened.extend(_open(path, store_config(path), **kw) for _ in range(2))
        return opened[-2], opened[-1]

    yield make
    for m in opened:
        m.close()


def _edges(mem: HelaMemory) -> dict[frozenset[str], float]:
    """``{frozenset((id_a, id_b)): weight}`` of scope ``S``'s edges, as stored now."""

    def read(core: Any) -> dict[frozenset[str], float]:
        node = core.store.find_scope(S)
        batches = core.store.iter_edges_under(node)
        return {frozenset((a, b)): w for batch in batches for a, b, w, _ in batch}

    return mem._call(read)


def _first_call_after(obj: Any, name: str, step: Callable[..., None]) -> None:
    """Run ``step`` once, right before ``obj.name`` next runs: with no arguments
    before a ``tx()`` (the store's write transaction), else with the call's."""
    real = getattr(obj, name)

    if name == "tx":

        @contextmanager
        def tx() -> Iterator[Any]:
            delattr(obj, name)  # the class's method again
            step()
            with real() as db:
                yield db

        setattr(obj, name, tx)
    else:

        def call(*args: Any) -> Any:
            delattr(obj, name)
            step(*args)
            return real(*args)

        setattr(obj, name, call)


def test_decay_never_resurrects_a_deleted_edge_nor_loses_a_reinforce(two: Any) -> None:
    a_mem, b_mem = two()
    x, y, z = (a_mem.add(t, S).id for t in ("alpha one", "beta two", "gamma three"))
    a_mem.reinforce([x, z])
    seen: dict[frozenset[str], float] = {}

    def other_writer() -> None:  # commits after decay's read would have been made
        b_mem.delete(y)  # its edges x-y and y-z go with it
        b_mem.reinforce([x, z])  # acknowledged: x-z is stronger now
        seen.update(_edges(b_mem))

    _first_call_after(a_mem._call(lambda c: c.store), "tx", other_writer)
    assert a_mem.decay(S) == {"pruned": 0, "edges": 1}
    assert set(seen) == {frozenset((x, z))}
    # same tick: decay keeps the weight B wrote; the deleted memory's edges stay gone
    assert _edges(a_mem) == pytest.approx(seen)
    assert _edges(b_mem) == pytest.approx(seen)


def test_a_searchs_pruning_keeps_an_edge_another_writer_reinforced(two: Any) -> None:
    d = DynamicsConfig(decay_rate=0.5)
    a_mem, b_mem = two(dynamics=d)
    x = a_mem.add("zebra xylophone quartz", S).id
    y = a_mem.add("unrelated banana note", S).id
    for i in range(8):  # eight ticks: x-y decays to 0.5 * 0.5**8, under prune_below
        a_mem.add(f"filler {i} kettle", S)
    core = a_mem._call(lambda c: c)
    keys = a_mem._call(lambda c: c.store.keys_of([x, y]))
    pair = (min(keys.values()), max(keys.values()))
    seen: dict[frozenset[str], float] = {}
    pruned: list[tuple[int, int]] = []

    def other_writer(groups: Any, rows: Any, prunable: list[tuple[int, int]]) -> None:
        pruned.extend(prunable)  # what the search read as decayed away
        assert b_mem.reinforce([x, y]) == 1  # acknowledged before the learning write
        seen.update(_edges(b_mem))

    _first_call_after(core, "_learn", other_writer)
    a_mem.search("zebra xylophone", S, k=1)
    after = _edges(a_mem)  # a later call: the search's learning step is written
    assert pair in pruned
    w = d.temporal_weight * d.decay_rate**8 + d.learning_rate
    assert seen[frozenset((x, y))] == pytest.approx(w)
    assert after[frozenset((x, y))] == pytest.approx(w)

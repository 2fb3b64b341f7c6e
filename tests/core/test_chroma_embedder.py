"""Any Chroma embedding function works as an embedder, with or without a usable ``name()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory

ALICE = ("users", "alice")


@pytest.mark.parametrize("kind", ["no name()", "name() raises", "name() not a str", "a function"])
def test_a_chroma_embedding_function_without_a_usable_name_gets_a_derived_one(
    tmp_path: Path, kind: str
) -> None:
    inner = HashingEmbedder(32)

    def embed(input: list[str]) -> list[Any]:
        return list(inner.embed(list(input)))

    class Plain:  # no name() at all, as in AutoGen's and older Chroma examples
        def __call__(self, input: list[str]) -> list[Any]:
            return embed(input)

    class Raising(Plain):
        def name(self) -> str:
            raise NotImplementedError

    class NotAStr(Plain):
        def name(self) -> object:
            return None

    fn: Any = {"no name()": Plain(), "name() raises": Raising(), "name() not a str": NotAStr()}.get(
        kind, embed
    )
    expected = {"no name()": "Plain", "name() raises": "Raising", "name() not a str": "NotAStr"}
    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=fn) as m:
        mid = m.add("sunflowers in the garden", ALICE).id
        assert m.search("garden sunflowers", ALICE, k=1).ids == [mid]
        name = m.stats().embedder
    assert name == f"chroma:{expected.get(kind, embed.__qualname__)}"
    with HelaMemory(HelaMemConfig(path=tmp_path / "s"), embedder=fn) as m:  # same name: reopens
        assert m.get(mid).content == "sunflowers in the garden"

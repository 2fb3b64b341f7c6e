"""``delete_scope`` of a scope the store never held refuses it (``UnknownScopeError``)
instead of reading as done (a misspelt GDPR delete returned 0, as an emptied scope
does; ``missing_ok=True`` asks for 0), and ``stats`` of one says so (``Stats.known``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, InvalidInputError

A = ("users", "alice")
TYPO = ("users", "alcie")


def test_a_scope_never_held_is_refused_unless_missing_ok(tmp_path: Path) -> None:
    from helamem.core import UnknownScopeError

    with HelaMemory(HelaMemConfig(path=tmp_path), embedder=HashingEmbedder(64)) as m:
        m.add("tea with milk", A)
        with pytest.raises(UnknownScopeError, match="missing_ok=True") as info:
            m.delete_scope(TYPO)
        assert isinstance(info.value, InvalidInputError) and "alcie" in str(info.value)
        with pytest.raises(UnknownScopeError):
            asyncio.run(m.adelete_scope(TYPO))
        assert m.stats(A).memories == 1  # nothing was deleted
        assert m.delete_scope(TYPO, missing_ok=True) == 0
        typo = m.stats(TYPO)
        assert typo.memories == 0 and not typo.known and not asyncio.run(m.astats(TYPO)).known
        assert m.stats(A).known and m.stats().known and m.stats(()).known
        assert asyncio.run(m.adelete_scope(TYPO, missing_ok=True)) == 0
        assert m.stats(("users",)).memories == 1  # a prefix of a held scope is known
        assert m.delete_scope(A) == 1
        assert m.delete_scope(A) == 0  # held once: emptied, not unknown
        assert m.stats(A).memories == 0 and m.stats(A).known  # emptied, still known

"""``HelaMemory.find_ids`` / ``afind_ids``: exact matches on top-level metadata keys,
on both graph stores (the ``mem`` fixture runs each test on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helamem.core import HelaMemory, InvalidInputError, StoreClosedError, TurnRecorder

ALICE = ("users", "alice")
BOB = ("users", "bob")


def test_it_finds_exactly_the_memories_whose_metadata_holds_every_pair(mem: HelaMemory) -> None:
    a = mem.add("one", ALICE, metadata={"turn": "k1", "tag": "x"})
    b = mem.add("two", ALICE, metadata={"turn": "k1", "tag": "y"})
    mem.add("three", ALICE, metadata={"turn": "k2", "tag": "x"})
    mem.add("four", ALICE, metadata={"other": "k1"})  # the value under another key
    mem.add("five", ALICE)

    assert mem.find_ids(ALICE, metadata={"turn": "k1"}) == [a.id, b.id]  # oldest first
    assert mem.find_ids(ALICE, metadata={"turn": "k1", "tag": "y"}) == [b.id]
    assert mem.find_ids(ALICE, metadata={"turn": "k1"}, limit=1) == [a.id]
    assert mem.find_ids(ALICE, metadata={"turn": "K1"}) == []  # case matters
    assert mem.find_ids(ALICE, metadata={"turn": "k"}) == []  # no prefix match
    assert mem.find_ids(ALICE, metadata={"missing": "k1"}) == []


def test_only_a_string_value_matches_a_string(mem: HelaMemory) -> None:
    s = mem.add("string", ALICE, metadata={"v": "5"})
    mem.add("number", ALICE, metadata={"v": 5})
    mem.add("boolean", ALICE, metadata={"v": True, "w": "true"})
    mem.add("nested", ALICE, metadata={"v": {"v": "5"}})
    mem.add("null", ALICE, metadata={"v": None})

    assert mem.find_ids(ALICE, metadata={"v": "5"}) == [s.id]
    assert mem.find_ids(ALICE, metadata={"v": "true"}) == []
    assert mem.find_ids(ALICE, metadata={"v": "null"}) == []
    assert mem.find_ids(ALICE, metadata={"v": ""}) == []


def test_scope_is_a_prefix_of_whole_segments(mem: HelaMemory) -> None:
    a = mem.add("a", ALICE, metadata={"k": "same"})
    b = mem.add("b", BOB, metadata={"k": "same"})
    sub = mem.add("c", (*ALICE, "sub"), metadata={"k": "same"})
    mem.add("d", ("users", "alice2"), metadata={"k": "same"})

    assert mem.find_ids(BOB, metadata={"k": "same"}) == [b.id]
    assert mem.find_ids(ALICE, metadata={"k": "same"}) == [a.id, sub.id]
    assert len(mem.find_ids(("users",), metadata={"k": "same"})) == 4
    assert len(mem.find_ids((), metadata={"k": "same"})) == 4  # () is every scope
    assert mem.find_ids(("nobody",), metadata={"k": "same"}) == []


def test_a_turn_gives_its_metadata_to_both_messages(mem: HelaMemory) -> None:
    u, a = mem.add_turn(ALICE, "hi", "hello", metadata={"turn": "t1"})
    assert mem.find_ids(ALICE, metadata={"turn": "t1"}) == [u.id, a.id]


async def test_async_twin_sees_the_turns_a_recorder_accepted_before_it(
    mem: HelaMemory,
) -> None:
    rec = TurnRecorder(mem)
    await rec.record_turn(ALICE, "hi", "hello", metadata={"turn": "t1"})
    found = await mem.afind_ids(ALICE, metadata={"turn": "t1"})  # no flush: it waits
    assert len(found) == 2
    assert await mem.afind_ids(ALICE, metadata={"turn": "t1"}, limit=1) == found[:1]
    await rec.close()


def test_many_matches_are_read_in_batches(mem: HelaMemory) -> None:
    from helamem.core import NewMemory

    added = mem.add_many(
        [NewMemory(f"memory {i}", ALICE, metadata={"k": "v", "i": str(i)}) for i in range(600)]
    )
    assert mem.find_ids(ALICE, metadata={"k": "v"}) == [m.id for m in added]
    assert mem.find_ids(ALICE, metadata={"k": "v"}, limit=300) == [m.id for m in added[:300]]
    assert mem.find_ids(ALICE, metadata={"i": "599"}) == [added[-1].id]


@pytest.mark.parametrize(
    ("metadata", "limit", "match"),
    [
        ({}, None, "non-empty dict"),
        (None, None, "non-empty dict"),
        ({"a-b": "x"}, None, "plain identifier"),
        ({"$.a": "x"}, None, "plain identifier"),
        ({"a": 1}, None, "must be a str"),
        ({"a": None}, None, "must be a str"),
        ({"a": "x"}, 0, "limit"),
        ({"a": "x"}, True, "limit"),
        ({"a": "x"}, 1.5, "limit"),
    ],
)
def test_bad_input_raises_before_anything_runs(
    mem: HelaMemory, metadata: Any, limit: Any, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        mem.find_ids(ALICE, metadata=metadata, limit=limit)
    with pytest.raises(InvalidInputError, match=match):
        asyncio.run(mem.afind_ids(ALICE, metadata=metadata, limit=limit))


def test_bad_scope_raises(mem: HelaMemory) -> None:
    with pytest.raises(InvalidInputError):
        mem.find_ids(("users", ""), metadata={"a": "x"})


def test_closed_memory_raises(mem: HelaMemory) -> None:
    mem.add("x", ALICE, metadata={"a": "x"})
    mem.close()
    with pytest.raises(StoreClosedError):
        mem.find_ids(ALICE, metadata={"a": "x"})


ODD = ["a\x00b", "x\udc80y", "\ud800", "emoji \U0001f600 here", "\\u0000 as text", "\\\x00", ""]


def test_metadata_holding_nul_or_surrogates_fails_no_lookup_and_is_found(mem: HelaMemory) -> None:
    """Helper 132: on PostgreSQL one memory whose metadata held a NUL or a lone surrogate
    (``add`` takes any text) made every ``find_ids`` over it raise (PostgreSQL refuses to
    decode those JSON escapes), for every tenant under the prefix; a NUL in the value
    looked for raised too. Now each is found, and only where it is."""
    plain = mem.add("plain", ALICE, metadata={"session": "s1"})
    odd = {
        v: mem.add(f"odd {i}", BOB, metadata={"note": v, "session": "s1"}).id
        for i, v in enumerate(ODD)
    }
    assert mem.find_ids(ALICE, metadata={"session": "s1"}) == [plain.id]
    assert mem.find_ids((), metadata={"session": "s1"}) == [plain.id, *odd.values()]
    for value, mid in odd.items():
        assert mem.find_ids(("users",), metadata={"note": value}) == [mid], repr(value)
    assert mem.find_ids((), metadata={"note": "a\ufffdb"}) == []  # no false match
    assert mem.find_ids((), metadata={"note": "\\ufffd as text"}) == []

"""``add_turn(..., unique_on=...)``: a turn identified by metadata values (an idempotency
key, stored with the turn and found through an index) is stored once per scope, checked
in the write transaction, on both graph stores (the ``mem`` / ``make_mem`` fixtures run
each test on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from helamem.core import (
    HelaMemory,
    InvalidInputError,
    MemoryNotFoundError,
    NewTurn,
    TurnRecorder,
)
from helamem.core.storage.unique import unique_key
from races import racing_tx

ALICE = ("users", "alice")
BOB = ("users", "bob")
KEY = {"request": "r1"}


def test_a_repeated_turn_is_stored_once_and_returns_the_stored_pair(mem: HelaMemory) -> None:
    first = mem.add_turn(
        ALICE, "I adopted a cat", "Congratulations!", metadata=KEY, unique_on=("request",)
    )
    again = mem.add_turn(
        ALICE, "I adopted a cat", "Congratulations!", metadata=KEY, unique_on=("request",)
    )

    assert [m.id for m in again] == [m.id for m in first]
    assert (again[0].role, again[1].role) == ("user", "assistant")
    st = mem.stats(ALICE)
    assert (st.memories, st.edges) == (2, 1)
    assert mem.find_ids(ALICE, metadata=KEY) == [first[0].id, first[1].id]


def test_another_value_another_scope_or_no_unique_on_stores_again(mem: HelaMemory) -> None:
    mem.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))
    mem.add_turn(ALICE, "hi", "hello", metadata={"request": "r2"}, unique_on=("request",))
    mem.add_turn((*ALICE, "sub"), "hi", "hello", metadata=KEY, unique_on=("request",))
    mem.add_turn(ALICE, "hi", "hello", metadata=KEY)  # not asked: stored

    assert mem.stats(ALICE).memories == 8  # the sub-scope's pair included
    assert len(mem.find_ids(ALICE, metadata=KEY)) == 6


def test_every_unique_on_key_must_match(mem: HelaMemory) -> None:
    mem.add_turn(ALICE, "a", "b", metadata={"x": "1", "y": "1"}, unique_on=("x", "y"))
    mem.add_turn(ALICE, "a", "b", metadata={"x": "1", "y": "2"}, unique_on=("x", "y"))
    mem.add_turn(ALICE, "a", "b", metadata={"x": "1", "y": "2"}, unique_on=("x", "y"))

    assert mem.stats(ALICE).memories == 4


def test_one_batch_stores_a_repeated_turn_once_and_links_the_rest(mem: HelaMemory) -> None:
    turns = [
        NewTurn(ALICE, "one", "1", metadata=KEY, unique_on=("request",)),
        NewTurn(ALICE, "one again", "1 again", metadata=KEY, unique_on=("request",)),
        NewTurn(ALICE, "two", "2", metadata={"request": "r2"}, unique_on=("request",)),
    ]
    out = mem.add_turns(turns)

    assert [m.id for m in out[1]] == [m.id for m in out[0]]
    assert out[1][0].content == "one"  # the stored pair, not the skipped text
    assert out[2][0].content == "two"
    st = mem.stats(ALICE)
    assert (st.memories, st.edges) == (4, 3)  # two turns, linked in order
    hits = mem.search("two", ALICE, k=4, learn=False)
    assert "two" in [h.memory.content for h in hits.hits]  # the kept turn is indexed
    assert "one again" not in [h.memory.content for h in hits.hits]


def test_the_check_sees_another_writers_commit_just_before_its_transaction(
    tmp_path: Path, make_mem: Any
) -> None:
    """Two processes recording one loaded turn: two's copy lands between one's call and
    its write transaction (a lookup before the transaction would have missed it)."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:
        theirs: list[Any] = []
        racing_tx(
            one,
            lambda: theirs.append(
                two.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))
            ),
        )
        mine = one.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))

        assert [m.id for m in mine] == [m.id for m in theirs[0]]
        for m in (one, two):
            assert m.stats(ALICE).memories == 2


@pytest.mark.parametrize(
    ("metadata", "unique_on", "says"),
    [
        (KEY, ("missing",), "'missing' is not in the turn's metadata"),
        (None, ("request",), "'request' is not in the turn's metadata"),
        ({"request": 5}, ("request",), "must be a str"),
        (KEY, "request", "must be a tuple of metadata keys"),
        ({"a-b": "x"}, ("a-b",), "not a plain identifier"),
    ],
)
def test_a_bad_unique_on_raises_before_anything_is_stored(
    mem: HelaMemory, metadata: Any, unique_on: Any, says: str
) -> None:
    with pytest.raises(InvalidInputError, match=says):
        mem.add_turn(ALICE, "hi", "hello", metadata=metadata, unique_on=unique_on)
    with pytest.raises(InvalidInputError, match=says):
        TurnRecorder(mem).record_turn_nowait(
            ALICE, "hi", "hello", metadata=metadata, unique_on=unique_on
        )
    assert mem.stats(ALICE).memories == 0


def test_the_recorder_passes_unique_on(mem: HelaMemory) -> None:
    async def run() -> None:
        async with TurnRecorder(mem) as rec:
            for _ in range(3):
                await rec.record_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))
            rec.record_turn_nowait(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))
            await rec.flush()

    asyncio.run(run())
    assert mem.stats(ALICE).memories == 2
    mem.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))
    assert mem.stats(ALICE).memories == 2


def test_only_a_turn_stored_with_unique_on_counts_not_other_memories(mem: HelaMemory) -> None:
    """A memory of ``add()`` (or a turn without ``unique_on``) with the same metadata
    made the turn return ``(note, note)`` and store nothing (review)."""
    note = mem.add("a note", ALICE, metadata=KEY)
    mem.add_turn(ALICE, "hi", "hello", metadata=KEY)
    u, a = mem.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))

    assert (u.role, a.role) == ("user", "assistant") and note.id not in (u.id, a.id)
    assert mem.stats(ALICE).memories == 5


def test_a_turn_missing_a_half_is_not_stored_again_and_returns_the_half_left(
    mem: HelaMemory,
) -> None:
    """A retry after the user half was deleted returned ``(assistant, assistant)`` and
    never stored the user message again (review); then it stored the deleted half again
    (helper 164: a forgotten message came back): now the stored half is returned and the
    deleted one as given, never stored."""
    u, a = mem.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))
    mem.delete([u.id])
    u2, a2 = mem.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))

    assert (u2.role, u2.content, a2.id) == ("user", "hi", a.id)
    with pytest.raises(MemoryNotFoundError):
        mem.get(u2.id)
    assert mem.stats(ALICE).memories == 1
    assert mem.find_ids(ALICE, metadata=KEY) == [a.id]


@pytest.mark.parametrize(
    "metadata",
    [
        {"request": "a\x00b"},  # a NUL: PostgreSQL's JSON refused it, SQLite cut it off
        {"clé": "v"},  # a non-ASCII key: SQLite's json_extract never matched it
        {"request": 'ü \ud800 "quoted" \\'},  # non-ASCII, a lone surrogate, escapes
    ],
)
def test_any_text_value_and_key_match_alike_on_both_stores(
    mem: HelaMemory, metadata: dict[str, str]
) -> None:
    mem.add("x", ALICE, metadata={"other": "a\x00b"})  # a NUL elsewhere stopped PostgreSQL
    keys = tuple(metadata)
    first = mem.add_turn(ALICE, "hi", "hello", metadata=metadata, unique_on=keys)
    again = mem.add_turn(ALICE, "hi", "hello", metadata=metadata, unique_on=keys)

    assert [m.id for m in again] == [m.id for m in first]
    assert mem.stats(ALICE).memories == 3


def test_the_recorder_takes_a_generator_and_checks_the_metadata_first(mem: HelaMemory) -> None:
    """A generator was used up by the check and stored as no key (duplicates); a str
    metadata with ``unique_on`` raised a bare ``TypeError`` (review)."""
    rec = TurnRecorder(mem)
    for _ in range(2):
        rec.record_turn_nowait(
            ALICE, "hi", "hello", metadata=KEY, unique_on=(k for k in ["request"])
        )
    with pytest.raises(InvalidInputError, match="metadata must be a dict"):
        rec.record_turn_nowait(ALICE, "hi", "hello", metadata="request", unique_on=("request",))  # type: ignore[arg-type]
    rec.close_sync()
    assert mem.stats(ALICE).memories == 2


def test_a_store_of_before_unique_keys_finds_the_autogen_turns_it_holds(
    tmp_path: Path, make_mem: Any, store_db: Any, backend: str
) -> None:
    """Migration 9 (PostgreSQL: 5) gives the AutoGen adapter's turns, recorded with
    their identity in metadata ``_helamem_turn`` before unique keys existed, that key."""
    path = tmp_path / "s"
    turn = {"_helamem_turn": "ab" * 32}
    with make_mem(path) as m:
        m.add_turn(ALICE, "hi", "hello", metadata=turn)  # as the adapter stored it then
        m.add("a note", ALICE, metadata={"_helamem_turn": 5})  # not a str: no key
        # rows PostgreSQL's JSON cast refused (the migration failed, the store stayed
        # closed) and values whose key the SQL spelled otherwise than unique_key()
        m.add("nul", ALICE, metadata={"about": "_helamem_turn", "x": "\x00"})
        m.add("surrogate", ALICE, metadata={"_helamem_turn": "ab" * 32, "y": "\ud800"})
        m.add("é", ALICE, metadata={"_helamem_turn": "é"})
        m.add("nested", BOB, metadata={"n": {"_helamem_turn": "cd" * 32}})
    before = 8 if backend == "sqlite" else 4
    db = store_db(path)
    try:
        db.execute("DROP TABLE forgotten_turns")  # migration 10 (PostgreSQL: 6)
        db.execute("DROP INDEX memories_unique")
        db.execute("ALTER TABLE memories DROP COLUMN unique_key")
        db.execute("DELETE FROM schema_version WHERE version > ?", (before,))
        if backend == "sqlite":
            db.commit() if db.in_transaction else None
    finally:
        db.close()
    with make_mem(path) as m:  # opening migrates
        again = m.add_turn(ALICE, "hi", "hello", metadata=turn, unique_on=("_helamem_turn",))
        assert m.stats(ALICE).memories == 6  # nothing stored again
        assert [x.content for x in again] == ["hi", "hello"]
    db = store_db(path)
    try:
        keyed = db.execute(
            "SELECT content, unique_key FROM memories WHERE unique_key IS NOT NULL ORDER BY n"
        ).fetchall()
    finally:
        db.close()
    want = unique_key(turn)
    # only AutoGen's own turns (their metadata is exactly the identity) are keyed
    assert [tuple(r) for r in keyed] == [("hi", want), ("hello", want)]


def test_an_import_of_an_older_export_keys_the_autogen_turns(tmp_path: Path, make_mem: Any) -> None:
    """An export written before unique keys has no ``unique_key`` field: the importer
    keys AutoGen's turns as migration 9 does (else a reload after a move stored the
    loaded turn twice; review)."""
    turn = {"_helamem_turn": "ef" * 32}
    with make_mem(tmp_path / "a") as a:
        a.add_turn(ALICE, "hi", "hello", metadata=turn)  # no unique_on: as before
        a.export_scope(ALICE, tmp_path / "old.jsonl")
    assert '"unique_key"' not in (tmp_path / "old.jsonl").read_text()
    with make_mem(tmp_path / "b") as b:
        b.import_scope(tmp_path / "old.jsonl")
        b.add_turn(ALICE, "hi", "hello", metadata=turn, unique_on=("_helamem_turn",))
        assert b.stats(ALICE).memories == 2


def test_an_exported_and_imported_turn_keeps_its_key(tmp_path: Path, make_mem: Any) -> None:
    """The key travels in the export (``unique_key``), so a retry after a move between
    stores finds the turn."""
    with make_mem(tmp_path / "a") as a:
        first = a.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))
        a.add_turn(ALICE, "plain", "turn")
        a.export_scope(ALICE, tmp_path / "alice.jsonl")
    lines = (tmp_path / "alice.jsonl").read_text().splitlines()
    assert sum('"unique_key"' in line for line in lines) == 2  # the keyed turn's two memories
    with make_mem(tmp_path / "b") as b:
        b.import_scope(tmp_path / "alice.jsonl")
        again = b.add_turn(ALICE, "hi", "hello", metadata=KEY, unique_on=("request",))
        assert [m.id for m in again] == [m.id for m in first]
        assert b.stats(ALICE).memories == 4

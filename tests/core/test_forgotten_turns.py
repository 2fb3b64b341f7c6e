"""A turn forgotten (its memories deleted by ``delete``, ``delete_scope`` or ``forget``)
is not stored again by a later ``add_turn`` of its ``unique_on`` key, in any process: the
deleting transaction keeps the key (``forgotten_turns``), on both graph stores. The key
is the turn's, not its text: another key, or no ``unique_on``, is stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helamem.core import HelaMemory, MemoryNotFoundError, TurnRecorder

ALICE = ("users", "alice")
KEY = {"request": "r1"}
T0, DAY = 1_600_000_000, 86400


def _again(mem: HelaMemory, scope: tuple[str, ...] = ALICE, key: dict[str, str] = KEY) -> None:
    mem.add_turn(scope, "my PIN is 4711", "noted", metadata=key, unique_on=("request",))


def _texts(mem: HelaMemory, scope: tuple[str, ...] = ALICE) -> list[str]:
    return sorted(h.memory.content for h in mem.search("PIN 4711 noted", scope, k=10).hits)


@pytest.mark.parametrize("how", ["delete_scope", "delete", "forget"])
def test_a_forgotten_turn_is_not_stored_again_by_another_memory(
    tmp_path: Path, make_mem: Callable[..., HelaMemory], how: str
) -> None:
    """Helper 164: the key went with the memories, so a retry or replay of the turn (a
    LangGraph replay, another worker) stored it again: the forgotten text came back."""
    path = tmp_path / "s"
    with make_mem(path) as one, make_mem(path) as two:  # two processes' views of a store
        u, a = one.add_turn(
            ALICE, "my PIN is 4711", "noted", metadata=KEY, unique_on=("request",),
            event_time=T0,
        )  # fmt: skip
        one.add_turn(ALICE, "a later turn", "fine", event_time=T0 + 100 * DAY)
        if how == "delete_scope":
            one.delete_scope(ALICE)
        elif how == "delete":
            one.delete([u.id, a.id])
        else:
            assert one.forget(ALICE, below=1.1, dry_run=False).deleted == 2  # the old turn
        u2, a2 = two.add_turn(
            ALICE, "my PIN is 4711", "noted", metadata=KEY, unique_on=("request",)
        )
        assert (u2.content, a2.content, u2.role, a2.role) == (
            "my PIN is 4711",
            "noted",
            "user",
            "assistant",
        )
        for m in (u2, a2):  # as given, never stored
            with pytest.raises(MemoryNotFoundError):
                two.get(m.id)
        _again(one)
        assert two.find_ids(ALICE, metadata=KEY) == []
        assert "my PIN is 4711" not in _texts(two)


def test_the_same_text_under_another_key_or_scope_or_without_a_key_is_stored(
    mem: HelaMemory,
) -> None:
    """The forgotten key is the turn instance's: the same words in a new turn (another
    key), in another scope (a sub-scope too), or without ``unique_on``, are new."""
    _again(mem)
    mem.delete_scope(ALICE)
    _again(mem)
    assert mem.stats(ALICE).memories == 0
    _again(mem, key={"request": "r2"})
    _again(mem, (*ALICE, "sub"))
    _again(mem, ("users", "bob"))
    mem.add_turn(ALICE, "my PIN is 4711", "noted", metadata=KEY)  # no unique_on
    assert mem.stats(ALICE).memories == 6
    assert len(mem.find_ids(ALICE, metadata={"request": "r2"})) == 2
    assert len(mem.find_ids(("users", "bob"), metadata=KEY)) == 2


def test_the_recorder_drops_a_forgotten_turn_without_a_failure(mem: HelaMemory) -> None:
    """A forgotten turn recorded again is skipped, not a recording failure."""
    with TurnRecorder(mem) as rec:
        rec.record_turn_nowait(
            ALICE, "my PIN is 4711", "noted", metadata=KEY, unique_on=("request",)
        )
        rec.flush_sync()
        mem.delete_scope(ALICE)
        for key in (KEY, {"request": "r2"}):
            rec.record_turn_nowait(
                ALICE, "my PIN is 4711", "noted", metadata=key, unique_on=("request",)
            )
        rec.flush_sync()  # raises TurnRecordingError on a failure
    assert mem.find_ids(ALICE, metadata=KEY) == []
    assert len(mem.find_ids(ALICE, metadata={"request": "r2"})) == 2


def test_an_import_after_delete_scope_gives_the_turns_back(
    tmp_path: Path, make_mem: Callable[..., HelaMemory]
) -> None:
    """Export, ``delete_scope`` and import still give back the same memory, and a retry
    of an imported turn finds it (stored once)."""
    with make_mem(tmp_path / "s") as mem:
        first = mem.add_turn(ALICE, "my PIN is 4711", "noted", metadata=KEY, unique_on=("request",))
        mem.export_scope(ALICE, tmp_path / "alice.jsonl")
        mem.delete_scope(ALICE)
        mem.import_scope(tmp_path / "alice.jsonl")
        again = mem.add_turn(ALICE, "my PIN is 4711", "noted", metadata=KEY, unique_on=("request",))
        assert [m.id for m in again] == [m.id for m in first]
        assert mem.stats(ALICE).memories == 2


def test_revive_stores_a_turn_of_a_forgotten_key_everywhere_it_can_be_asked(
    tmp_path: Path, make_mem: Callable[..., HelaMemory]
) -> None:
    """``revive=True``: the caller knows the turn was just completed (the same words as a
    forgotten conversation, said again), not replayed from a saved history: it is stored
    once, through add_turn, add_turns (NewTurn) and the recorder alike; a non-bool is
    refused (a truthy "no" would store a forgotten turn unasked)."""
    from helamem.core import InvalidInputError, NewTurn

    with make_mem(tmp_path / "s") as mem:
        for i, scope in enumerate([("a",), ("b",), ("c",)]):
            u, a = mem.add_turn(
                scope, "my PIN is 4711", "noted", metadata=KEY, unique_on=("request",)
            )
            mem.delete([u.id, a.id])
            if i == 0:
                mem.add_turn(
                    scope, "my PIN is 4711", "noted", metadata=KEY, unique_on=("request",),
                    revive=True,
                )  # fmt: skip
            elif i == 1:
                mem.add_turns(
                    [NewTurn(scope, "my PIN is 4711", "noted", None, KEY, (), ("request",), True)]
                )
            else:
                rec = TurnRecorder(mem)
                rec.record_turn_sync(
                    scope, "my PIN is 4711", "noted", metadata=KEY, unique_on=("request",),
                    revive=True,
                )  # fmt: skip
                rec.close_sync()
            assert _texts(mem, scope) == ["my PIN is 4711", "noted"], scope
            _again(mem, scope)  # stored now: an ordinary retry is skipped, not doubled
            assert len(mem.find_ids(scope, metadata=KEY)) == 2
        with pytest.raises(InvalidInputError, match="revive must be True or False"):
            mem.add_turn(("d",), "x", "y", metadata=KEY, unique_on=("request",), revive="no")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="revive must be True or False"):
            TurnRecorder(mem).record_turn_sync(("d",), "x", "y", revive=1)  # type: ignore[arg-type]


def test_a_delete_leaves_no_key_value_behind_and_a_dropped_turn_is_logged(
    tmp_path: Path,
    make_mem: Callable[..., HelaMemory],
    store_db: Callable[[Path], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review 168: ``forgotten_turns`` kept the keys' own values ("alice@example.com/42")
    after a ``delete_scope`` documented as removing everything of the scope; and a turn
    written again on purpose with its deleted key was dropped without a word."""
    path = tmp_path / "s"
    personal = {"request": "alice@example.com/42"}
    with make_mem(path) as mem:
        mem.add_turn(ALICE, "my PIN is 4711", "noted", metadata=personal, unique_on=("request",))
        mem.delete_scope(ALICE)
        db = store_db(path)
        try:
            kept = [tuple(map(str, r)) for r in db.execute("SELECT * FROM forgotten_turns")]
        finally:
            db.close()
        assert len(kept) == 1 and not any("alice" in v for v in kept[0]), kept
        with caplog.at_level("WARNING", logger="helamem.core._ingest"):
            mem.add_turn(
                ALICE, "my PIN is 1234", "noted", metadata=personal, unique_on=("request",)
            )
        assert "pass revive=True to store it again" in caplog.text
        assert mem.find_ids(ALICE, metadata=personal) == []


def test_forget_turns_keeps_a_turn_never_stored_forgotten_without_its_text(
    tmp_path: Path, make_mem: Callable[..., HelaMemory], store_db: Callable[[Path], Any]
) -> None:
    """Review 170: AutoGen's clear() stored a turn it had not recorded yet only to
    delete it (so its key was kept): a failed store lost that, and the stored text could
    reach a consolidation first. ``forget_turns`` keeps the key alone."""
    from helamem.core import InvalidInputError

    path = tmp_path / "s"
    with make_mem(path) as mem:
        assert mem.forget_turns(ALICE, [KEY, {"request": "r2"}]) == 2
        assert mem.stats(ALICE).memories == 0  # nothing of it stored, not even for a moment
        _again(mem)  # the turn of that key, from a saved state: not stored
        assert mem.find_ids(ALICE, metadata=KEY) == []
        mem.add_turn(ALICE, "PIN 4711", "noted", metadata=KEY, unique_on=("request",), revive=True)
        assert len(mem.find_ids(ALICE, metadata=KEY)) == 2  # said again, live: stored
        for bad in ([{}], [{"request": 7}], ["request"]):
            with pytest.raises(InvalidInputError):
                mem.forget_turns(ALICE, bad)  # type: ignore[arg-type]

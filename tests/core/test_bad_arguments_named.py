"""Arguments refused with an error naming them (trial 160): an empty store path (it put
the store's files in the working directory), ``forget``'s bounds (a negative age or
limit was accepted silently), ``search``'s ``reference_time`` (its error named
``event_time``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, InvalidInputError

A = ("users", "alice")


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_path_is_refused_and_nothing_lands_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="path is empty"):
        HelaMemConfig(path=empty)
    with pytest.raises(InvalidInputError, match="path is empty"):
        HelaMemory.from_path(empty)
    with pytest.raises(InvalidInputError, match="path is empty"):
        HelaMemory.from_url(empty)
    assert os.listdir(tmp_path) == []
    with HelaMemory.from_path(".", embedder=HashingEmbedder(32)) as mem:  # on purpose: works
        mem.add("hello", A)
    assert (tmp_path / "helamem.sqlite3").exists()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"older_than_s": -1}, "older_than_s"),
        ({"older_than_s": float("nan")}, "older_than_s"),
        ({"older_than_s": True}, "older_than_s"),
        ({"below": float("inf")}, "below"),
        ({"below": -0.1}, "below"),
        ({"limit": -1}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"dry_run": 0}, "dry_run"),
    ],
)
def test_forget_refuses_bad_bounds_naming_them(
    tmp_path: Path, kwargs: dict[str, object], named: str
) -> None:
    with HelaMemory.from_path(tmp_path, embedder=HashingEmbedder(32)) as mem:
        mem.add("an old note", A)
        with pytest.raises(InvalidInputError, match=named):
            mem.forget(A, **kwargs)  # type: ignore[arg-type]
        assert mem.stats(A).memories == 1  # nothing deleted


def test_a_bad_reference_time_is_named_as_such(tmp_path: Path) -> None:
    with HelaMemory.from_path(tmp_path, embedder=HashingEmbedder(32)) as mem:
        mem.add("a note", A)
        with pytest.raises(InvalidInputError, match=r"^reference_time must be a datetime"):
            mem.search("note", A, reference_time="2023-05-09")  # type: ignore[arg-type]

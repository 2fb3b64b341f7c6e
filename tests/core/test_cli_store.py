"""`helamem stats`, `export`, `import` and the errors of every store command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory, InvalidInputError
from helamem.core.cli import main

ALICE = ("users", "alice")
BOB = ("users", "bob")


def _build(path: Path) -> dict[str, list[str]]:
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        a = [m.add(f"alice note {i} about cats", ALICE).id for i in range(5)]
        b = [m.add(f"bob note {i} about dogs", BOB).id for i in range(3)]
        w = [m.add("a/b segment with a slash", ("team", "a/b")).id]
    return {"alice": a, "bob": b, "slash": w}


def test_stats_whole_store_and_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s"
    _build(path)
    assert main(["stats", str(path), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["scope"] is None
    assert (st["memories"], st["episodic"], st["scopes"], st["vectors"]) == (9, 9, 3, 9)
    assert (st["edges"], st["embedder"], st["unindexed"]) == (6, "hashing-64", 0)
    assert main(["stats", str(path), "--scope", "users", "--scope", "alice", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["scope"] == ["users", "alice"]
    assert (st["memories"], st["edges"], st["scopes"]) == (5, 4, 1)
    # a segment may hold any character, '/' included: one --scope per segment
    assert main(["stats", str(path), "--scope", "team", "--scope", "a/b"]) == 0
    text = capsys.readouterr().out
    assert 'scope              ["team", "a/b"]' in text
    assert "memories           1" in text
    # a scope the store never held is a typo, not "no memories" (trial 155)
    assert main(["stats", str(path), "--scope", "nobody", "--json"]) == 1
    assert "no scope" in capsys.readouterr().err


def test_export_then_import_into_a_new_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, other = tmp_path / "s", tmp_path / "t"
    ids = _build(path)
    out = tmp_path / "alice.jsonl"
    argv = ["export", str(path), "--scope", "users", "--scope", "alice", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == (
        f'exported ["users", "alice"]: 5 memories, 4 edges, 1 scopes, 0 clusters to {out}'
    )
    assert out.is_file()
    # a new store: its embedder is chosen on the command line (vectors are then reused)
    argv = ["import", str(other), str(out), "--embedder", "hashing", "--dimension", "64"]
    assert main(argv) == 0
    got = capsys.readouterr()
    assert got.out.strip() == (
        f'imported ["users", "alice"]: 5 memories, 4 edges, 1 scopes, 0 clusters '
        f"(0 vectors recomputed) from {out}"
    )
    assert "re-indexed" not in got.err  # indexing what it imported is no recovery to report
    # the store records its embedder now: later commands find it alone
    argv = ["import", str(other), str(out), "--scope", "archive", "--scope", "alice"]
    assert main(argv) == 1  # the same ids exist: a typed conflict, nothing written
    assert "already exists" in capsys.readouterr().err
    with HelaMemory(HelaMemConfig(path=other), embedder=HashingEmbedder(64)) as m:
        assert [m.get(i).content for i in ids["alice"]] == [
            f"alice note {i} about cats" for i in range(5)
        ]
        assert m.list_scopes() == [ALICE]
    assert main(["check", str(other)]) == 0


@pytest.mark.parametrize(
    "name", ["helamem.sqlite3", "helamem.sqlite3-wal", "checkpoints.sqlite", "chroma", "."]
)
def test_an_export_never_replaces_a_file_of_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Helper 149: ``--out`` naming the store's own database (a typo, a tab completion)
    replaced ``helamem.sqlite3`` with the export: rc 0, and the store was gone. A file
    of the store's directory (its database and sidecars, an index, an adapter's
    checkpoints) is refused now, nothing written; a new file there, or an earlier
    export, is written as anywhere."""
    path = tmp_path / "s"
    ids = _build(path)
    (path / "checkpoints.sqlite").write_bytes(b"SQLite format 3\x00 an adapter's file")
    (path / "chroma").mkdir(exist_ok=True)
    target = path / name
    before = target.read_bytes() if target.is_file() else None
    argv = ["export", str(path), "--scope", "users", "--out", str(target)]
    assert main(argv) == 1
    assert "part of the store at" in capsys.readouterr().err
    assert (target.read_bytes() if target.is_file() else None) == before
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        assert m.get(ids["alice"][0]).content == "alice note 0 about cats"
        for out in (path / "backup.jsonl", path / "backup.jsonl"):  # new, then an export's
            m.export_scope(("users",), out)
            assert out.read_text().startswith('{"type":"header","format":"helamem.scope"')
        with pytest.raises(InvalidInputError, match="Export to a file outside"):
            m.export_scope(("users",), path / "helamem.sqlite3")
    assert main(["check", str(path)]) == 0


def test_import_into_a_new_store_takes_the_files_embedder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, other, third = tmp_path / "s", tmp_path / "t", tmp_path / "u"
    _build(path)
    out = tmp_path / "alice.jsonl"
    assert main(["export", str(path), "--scope", "users", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["import", str(other), str(out)]) == 0  # no --embedder: the file's, not MiniLM
    assert "(0 vectors recomputed)" in capsys.readouterr().out
    assert main(["stats", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedder"] == "hashing-64"
    assert main(["import", str(third), str(out), "--embedder", "hashing", "--dimension", "32"]) == 0
    assert "(8 vectors recomputed)" in capsys.readouterr().out  # --embedder still decides
    assert main(["stats", str(third), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedder"] == "hashing-32"


def test_import_under_another_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s"
    ids = _build(path)
    out = tmp_path / "bob.jsonl"
    assert main(["export", str(path), "--scope", "users", "--scope", "bob", "--out", str(out)]) == 0
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        m.delete_scope(BOB)
    argv = ["import", str(path), str(out), "--scope", "archive", "--scope", "bob"]
    assert main(argv) == 0
    assert 'imported ["archive", "bob"]: 3 memories' in capsys.readouterr().out
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        assert m.get(ids["bob"][0]).scope == ("archive", "bob")


def test_store_errors_exit_1_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    _build(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not an export\n")
    assert main(["import", str(path), str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("helamem import: error: ") and "Traceback" not in err
    # a scope no store takes, inside the file (not on the command line): exit 1 too
    export = tmp_path / "bob.jsonl"
    argv = ["export", str(path), "--scope", "users", "--scope", "bob", "--out", str(export)]
    assert main(argv) == 0
    capsys.readouterr()
    nul = tmp_path / "nul.jsonl"
    nul.write_text(export.read_text().replace('"bob"', '"b\\u0000ob"'))
    assert '"b\\u0000ob"' in nul.read_text()
    assert main(["import", str(tmp_path / "fresh"), str(nul)]) == 1
    assert "NUL" in capsys.readouterr().err
    # another embedder: refused, and the message names the command that switches
    assert main(["stats", str(path), "--embedder", "hashing", "--dimension", "32"]) == 1
    err = capsys.readouterr().err
    assert "built with embedder 'hashing-64'" in err
    assert f"`helamem reindex --reembed --embedder hashing --dimension 32 {path}`" in err


def test_store_of_a_custom_embedder_needs_python(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class MyEF:
        def __call__(self, input: list[str]) -> list[list[float]]:
            return [[1.0, float(len(t))] for t in input]

        @staticmethod
        def name() -> str:
            return "my-ef"

    path = tmp_path / "s"
    with HelaMemory(HelaMemConfig(path=path), embedder=MyEF()) as m:
        m.add("hello there", ALICE)
    assert main(["stats", str(path)]) == 1
    err = capsys.readouterr().err
    assert "'chroma:my-ef'" in err and "not one the command line builds" in err
    assert main(["check", str(path)]) == 0  # check needs no embedder


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stats", "{missing}"], "no HeLa-Mem store at"),
        (["reindex", "{missing}"], "no HeLa-Mem store at"),
        (["export", "{missing}", "--scope", "a", "--out", "x.jsonl"], "no HeLa-Mem store at"),
        (["import", "{store}", "{missing}"], "no such file"),
        (["stats", "{store}", "--scope", ""], "scope segment 0 is empty"),
        (["stats", "{store}", "--embedder", "litellm"], "needs --model and --dimension"),
        (["stats", "{store}", "--model", "m"], "--model and --dimension need --embedder"),
        (["stats", "{store}", "--embedder", "minilm", "--dimension", "64"], "dimension is 384"),
        (["stats", "{store}", "--embedder", "hashing", "--dimension", "4"], "bad embedder"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    store = tmp_path / "s"
    _build(store)
    args = [a.format(missing=tmp_path / "missing", store=store) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"helamem {argv[0]}: error: ") and message in err
    assert not (tmp_path / "missing").exists()  # nothing created


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["check", "--help"], "Read-only integrity check"),
        (["reindex", "--help"], "--reembed"),
        (["stats", "--help"], "--scope SEGMENT"),
        (["export", "--help"], "--out FILE"),
        (["import", "--help"], "FILE"),
        (["--help"], "check"),
    ],
)
def test_every_command_has_help(
    argv: list[str], text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert text in capsys.readouterr().out


def test_argparse_usage_errors_exit_2(tmp_path: Path) -> None:
    for argv in (["export", str(tmp_path), "--out", "x"], ["nonsense"], ["import", str(tmp_path)]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_reindex_replaces_a_foreign_vector_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the database is replaced by another store's: its index no longer matches it
    path, other = tmp_path / "s", tmp_path / "t"
    cfg = HelaMemConfig(path=path, chroma=ChromaConfig(exact_below=0))
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as m:
        m.add("first store's memory", ALICE)
    with HelaMemory(HelaMemConfig(path=other), embedder=HashingEmbedder(64)) as m:
        kept = m.add("second store's memory", ALICE).id
    for side in ("", "-wal", "-shm"):
        (path / f"helamem.sqlite3{side}").unlink(missing_ok=True)
        src = other / f"helamem.sqlite3{side}"
        if src.exists():
            (path / f"helamem.sqlite3{side}").write_bytes(src.read_bytes())
    assert main(["stats", str(path)]) == 1  # refused: the index is another database's
    err = capsys.readouterr().err
    assert "belongs to another database" in err and f"`helamem reindex {path}`" in err
    assert main(["check", str(path), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert {d["kind"] for d in rep["defects"]} == {"index_unavailable"}
    assert main(["reindex", str(path)]) == 0  # the command the message names
    assert "discarding it and rebuilding it" in capsys.readouterr().err
    assert main(["check", str(path)]) == 0
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        assert m.search("second store", ALICE, k=1, learn=False).ids == [kept]


def test_bench_commands_come_from_the_bench_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from helamem.core import cli

    assert "helamem.bench.cli" in {
        ep.value.partition(":")[0] for ep in cli.entry_points(group=cli.COMMANDS_GROUP)
    }
    monkeypatch.setattr(cli, "entry_points", lambda group: [])  # helamem-bench not installed
    assert main(["bench", "locomo", "--data", "x.json"]) == 2
    assert "pip install helamem-bench" in capsys.readouterr().err


def test_delete_scope_dry_run_then_yes_and_the_import_it_unblocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`helamem delete-scope`: without --yes it deletes nothing and prints the count; with
    it the scope and its sub-scopes go, and the import an ImportConflictError named the
    command for then succeeds."""
    path = tmp_path / "s"
    ids = _build(path)
    out = tmp_path / "users.jsonl"
    assert main(["export", str(path), "--scope", "users", "--out", str(out)]) == 0
    assert main(["import", str(path), str(out)]) == 1  # the scope holds memories
    assert "helamem delete-scope" in capsys.readouterr().err
    assert main(["delete-scope", str(path), "--scope", "users"]) == 0
    assert capsys.readouterr().out.strip() == 'would delete ["users"]: 8 memories (pass --yes)'
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        assert m.stats(("users",)).memories == 8
    assert main(["delete-scope", str(path), "--scope", "users", "--yes"]) == 0
    assert capsys.readouterr().out.strip() == 'deleted ["users"]: 8 memories'
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        assert m.list_scopes() == [("team", "a/b")] and m.stats().memories == 1
    assert main(["import", str(path), str(out)]) == 0
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        assert sorted(m.list_scopes()) == [("team", "a/b"), ALICE, BOB]
        assert [m.get(i).content for i in ids["bob"]] == [
            f"bob note {i} about dogs" for i in range(3)
        ]
    assert main(["delete-scope", str(tmp_path / "nowhere"), "--scope", "users"]) == 2


def test_a_misspelt_scope_or_the_database_file_is_refused_and_version_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 152: ``delete-scope --scope users --scope alise --yes`` printed "deleted 0
    memories" with exit status 0 (the user's data still there); the database file given
    for the directory said only "not found"; there was no ``--version``."""
    path = tmp_path / "s"
    _build(path)
    capsys.readouterr()
    for yes in ([], ["--yes"]):
        assert main(["delete-scope", str(path), "--scope", "users", "--scope", "alise", *yes]) == 1
        assert "no scope" in capsys.readouterr().err
    with HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64)) as m:
        assert m.stats(ALICE).memories == 5
    assert main(["stats", str(path / "helamem.sqlite3")]) == 2
    assert f"pass its directory, {path}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("helamem-core ")


@pytest.mark.parametrize("mb", [0, 2047])
def test_store_commands_set_the_memory_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, mb: int
) -> None:
    """``--sqlite-mmap-mb`` reaches the store's connection (0: off, for removable disks)."""
    path = tmp_path / "s"
    _build(path)
    from helamem.core.storage import sqlite_schema

    seen: list[int] = []
    real = sqlite_schema.SQLiteConnection.__init__

    def spy(self: object, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(self._mmap_bytes)  # type: ignore[attr-defined]

    monkeypatch.setattr(sqlite_schema.SQLiteConnection, "__init__", spy)
    assert main(["stats", str(path), "--json", "--sqlite-mmap-mb", str(mb)]) == 0
    assert json.loads(capsys.readouterr().out)["memories"] == 9
    assert seen and set(seen) == {mb * 1024 * 1024}
    seen.clear()
    assert main(["stats", str(path), "--json"]) == 0  # the config's default
    capsys.readouterr()
    assert set(seen) == {HelaMemConfig().sqlite_mmap_mb * 1024 * 1024}


def test_the_memory_map_help_names_the_configs_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["stats", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"default {HelaMemConfig().sqlite_mmap_mb})" in help_text


@pytest.mark.parametrize("bad", ["-1", "2048", "x", "\u00b2", "1.5", "5_0", " 7", "+3", "-0"])
def test_a_bad_memory_map_size_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    path = tmp_path / "s"
    _build(path)
    with pytest.raises(SystemExit) as exc:
        main(["stats", str(path), "--sqlite-mmap-mb", bad])
    assert exc.value.code == 2
    assert "0-2047" in capsys.readouterr().err


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path: Path) -> None:
    """New-user trial: ``helamem stats PATH | head`` ended in a ``BrokenPipeError``
    traceback (the README: errors are one line on stderr, exit status 1). Here the
    reader closes the pipe before the command writes."""
    path = tmp_path / "s"
    _build(path)
    code = "import sys; from helamem.core.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    child = subprocess.Popen(
        [sys.executable, "-c", code, "stats", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader is gone before anything is written
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err

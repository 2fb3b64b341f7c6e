"""The LangGraph adapter's README snippets run, in order, as one user script."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "packages" / "helamem-langgraph" / "README.md"


@pytest.mark.embedder
def test_readme_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README lost its sync and async examples"
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"__name__": "__readme__"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), scope)
    assert (tmp_path / "helamem-data" / "checkpoints.sqlite").is_file()
    from helamem.core import HelaMemory

    with HelaMemory.from_path(tmp_path / "helamem-data") as mem:  # both turns were recorded
        users = mem.search("hi", ("users", "alice"), k=10, learn=False)
        assert {h.memory.content for h in users} >= {"hi", "hi again", "Noted!"}

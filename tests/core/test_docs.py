"""The docs cannot rot: README snippets, the demo and module doctests run here."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from helamem.core import config, context, dynamics, hooks, ids, prompts, retrieval, text, types
from helamem.core.storage import unique

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


@pytest.mark.embedder
def test_readme_python_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks()
    assert blocks, "README lost its usage example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "helamem-data" / "helamem.sqlite3").is_file()


@pytest.mark.parametrize(
    "module", [dynamics, retrieval, text, ids, types, config, context, hooks, prompts, unique]
)
def test_module_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.failed == 0


@pytest.mark.embedder
def test_demo_runs_twice_and_persists(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "examples" / "core_demo.py"), "--path", str(tmp_path / "d")]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    first = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=300)
    assert "First run" in first.stdout
    assert "association" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=300)
    assert "persisted from an earlier run" in second.stdout


def _config_table() -> list[tuple[str, str]]:
    """(dotted name, default) of each row of the README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Configuration", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)`[^|]*\| ([^|]+) \|", section, flags=re.M)
    return [(name, default.strip()) for name, default in rows]


def test_readme_configuration_table_matches_the_code() -> None:
    rows = _config_table()
    assert len(rows) >= 30
    defaults = config.HelaMemConfig()
    for name, written in rows:
        section, field = name.split(".")
        if section == "store":  # a PostgresConfig's (the default store is SQLite: None)
            value = config.PostgresConfig.model_fields[field].default  # KeyError: no such field
        else:
            value = getattr(getattr(defaults, section), field)  # AttributeError: no such field
        if name == "retrieval.association_model":
            assert written == "fitted on LoCoMo dev" and value == config.ASSOCIATION_MODEL
        elif written == "`None`":
            assert value is None, name
        elif written.startswith('`"'):
            assert written.strip('`"') == value, name
        else:
            assert float(written.removesuffix(" s")) == pytest.approx(float(value)), name
    # and it names every section the configuration has
    sections = [
        name
        for name in config.HelaMemConfig.model_fields
        if isinstance(getattr(defaults, name), BaseModel)
    ]
    assert len(sections) >= 6
    intro = (ROOT / "README.md").read_text().split("### Configuration", 1)[1][:400]
    assert all(f"`{s}`" in intro for s in sections), intro

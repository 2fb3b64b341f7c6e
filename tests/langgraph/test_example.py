"""The LangGraph example runs offline (real MiniLM embedder) and thread B recalls thread A."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.embedder
def test_example_runs(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "examples" / "langgraph_agent.py"), "--path", str(tmp_path)]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=300)
    b = out.stdout.split("== thread B")[1]
    assert "bot:  From what you told me: My sister Ana moved to Lisbon" in b
    assert "marine biologist" in b
    assert "turns recorded" in out.stdout
    assert (tmp_path / "checkpoints.sqlite").exists()
    assert (tmp_path / "langgraph-store.sqlite").exists()

"""The AutoGen example runs offline, end to end, as CI runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "autogen_agent.py"


@pytest.mark.embedder
def test_example_runs_offline_with_two_agents(tmp_path: Path) -> None:
    cmd = [sys.executable, str(EXAMPLE), "--path", str(tmp_path / "data")]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=300)
    alice, _, rest = out.stdout.partition("== bob_assistant")
    bob, _, stored = rest.partition("== stored")
    assert "alice_assistant: Your cat is called Miso." in alice
    assert "recalled: I just adopted a cat named Miso." in alice
    assert "Miso" not in bob  # another scope of the same store
    assert "users/alice: 7 episodes" in stored  # 3 turns and the profile fact
    assert "users/bob: 4 episodes" in stored
    assert "reloaded from dump_component(): helamem:users/alice" in stored
    assert (tmp_path / "data").is_dir()

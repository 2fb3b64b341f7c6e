"""The LlamaIndex example runs offline in CI and shows recall of an earlier session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llamaindex_agent.py"


def test_example_recalls_an_earlier_session(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--path", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[session 2] agent: You told me: My daughter Emma just started violin lessons" in out
    assert "[session 3] system message has <helamem>: True" in out
    assert "[session 3] engine: You told me: I'm training for the Berlin marathon" in out
    assert (tmp_path / "data").is_dir()

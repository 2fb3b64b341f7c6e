"""The README's "Several machines" recipe runs: two processes, one PostgreSQL, one Chroma server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chroma_server import chroma_server
from pg_server import PgServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "several_machines.py"


def _run(role: str, dsn: str, port: int) -> str:
    cmd = [sys.executable, str(EXAMPLE), role, "--dsn", dsn, "--chroma-port", str(port)]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run(
        [*cmd, "--embedder", "hashing"], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_a_second_process_sees_the_first_ones_memories_and_edges(
    tmp_path: Path, pg_server: PgServer
) -> None:
    with chroma_server(tmp_path / "chroma") as port:
        wrote = _run("write", pg_server.dsn, port)
        assert wrote.strip() == "wrote 4 memories, 5 edges"
        read = _run("read", pg_server.dsn, port)
    assert "I adopted a cat named Miso" in read
    assert read.strip().endswith("read 4 memories, 5 edges")

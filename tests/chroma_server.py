"""A real Chroma server (``chroma run``) on 127.0.0.1 for tests: a free port, a bounded wait."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CHROMA", "chroma_process", "chroma_server"]

CHROMA = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
STARTUP_S = 60.0


@contextmanager
def chroma_server(data: Path) -> Iterator[int]:
    """Run ``chroma run`` on a free loopback port with its files in ``data``; yields the port.

    Raises:
        RuntimeError: it exited, or did not answer its heartbeat within ``STARTUP_S``.
    """
    with chroma_process(data) as (port, _):
        yield port


@contextmanager
def chroma_process(data: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """:func:`chroma_server`, yielding its port and its process (to signal it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [CHROMA, "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None:
                    raise RuntimeError(f"the Chroma server exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no Chroma server answer within {STARTUP_S} s") from None
                time.sleep(0.2)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

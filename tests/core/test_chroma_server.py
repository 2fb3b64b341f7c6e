"""The vector index on a Chroma server (``chromadb.HttpClient``) through the same config."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory

CHROMA = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not Path(CHROMA).exists():
        pytest.skip("the chroma CLI is not installed")
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    proc = subprocess.Popen(
        [CHROMA, "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded wait for the heartbeat
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the Chroma server did not start within 60 s")
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_http_chroma_is_a_drop_in_vector_index(tmp_path: Path, chroma_port: int) -> None:
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        chroma=ChromaConfig(mode="http", host="127.0.0.1", port=chroma_port, collection="t-http"),
    )
    scope = ("tenants", "acme")
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as mem:
        a = mem.add("the invoice is due on friday", scope).id
        mem.add("lunch with the design team", scope)
        assert mem.search("when is the invoice due", scope, k=1).ids == [a]
        assert mem.stats().vectors == 2
        mem.delete(a)
        assert mem.stats().vectors == 1
    with HelaMemory(cfg, embedder=HashingEmbedder(64)) as again:  # persisted on the server
        assert again.stats().vectors == 1

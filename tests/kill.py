"""A child Python process killed (SIGKILL) once it said it reached a point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence


def killed_at(
    code: str, args: Sequence[str], said: str, check: Callable[[], object] | None = None
) -> None:
    """Run ``code`` (``python -c``) with ``args`` until it prints the line ``said``, run
    ``check`` while it is still alive, then SIGKILL it and wait for it."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == said
        if check is not None:
            check()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

"""The TTL sweeper of :class:`~helamem.langgraph.HelaMemStore`, as ``SqliteStore`` has it.

``start_ttl_sweeper()`` starts one daemon thread that calls ``sweep_ttl()``
every ``sweep_interval_minutes`` (the argument, else the store's
``ttl_config``, else 5 minutes) until ``stop_ttl_sweeper()``; it returns a
``Future`` that completes when the thread ends (cancelling it stops the
thread). Without a ``ttl_config`` it does nothing and returns a finished
future, as ``SqliteStore`` does. ``astart_ttl_sweeper``/``astop_ttl_sweeper``
are the async twins (``AsyncSqliteStore`` names them without the ``a``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import threading

from helamem.core import HelaMemError
from langgraph.store.base import TTLConfig

__all__ = ["TTLSweeper"]

logger = logging.getLogger(__name__)


class TTLSweeper:
    """Mixin: a background thread that sweeps expired items."""

    ttl_config: TTLConfig | None
    _sweeper: threading.Thread | None = None
    _sweeper_stop: threading.Event | None = None

    def _sweep_now(self) -> int:  # provided by the store
        raise NotImplementedError

    def start_ttl_sweeper(
        self, sweep_interval_minutes: float | None = None
    ) -> concurrent.futures.Future[None]:
        """Sweep expired items every ``sweep_interval_minutes`` in a daemon thread.

        Returns:
            A future that completes when the sweeper stops; cancel it to stop it.
        """
        return self._start_sweeper(sweep_interval_minutes)

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the sweeper thread; ``True`` if it stopped (or none was running)."""
        return self._stop_sweeper(timeout)

    async def astart_ttl_sweeper(
        self, sweep_interval_minutes: float | None = None
    ) -> concurrent.futures.Future[None]:
        """Async :meth:`start_ttl_sweeper` (the sweeping runs in its own thread)."""
        return self._start_sweeper(sweep_interval_minutes)

    async def astop_ttl_sweeper(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Async :meth:`stop_ttl_sweeper` (``timeout`` as there): waits off the event loop."""
        return await asyncio.to_thread(self._stop_sweeper, timeout)

    def _start_sweeper(
        self, sweep_interval_minutes: float | None
    ) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not self.ttl_config:
            future.set_result(None)
            return future
        if self._sweeper is not None and self._sweeper.is_alive():
            logger.info("the TTL sweeper is already running")
            stop = self._sweeper_stop
            future.add_done_callback(lambda f: stop.set() if stop and f.cancelled() else None)
            return future
        interval = float(
            sweep_interval_minutes or self.ttl_config.get("sweep_interval_minutes") or 5
        )
        stop_event = threading.Event()

        def loop() -> None:
            while not stop_event.wait(interval * 60):
                try:
                    swept = self._sweep_now()
                except (HelaMemError, OSError, RuntimeError, ValueError, sqlite3.Error) as exc:
                    logger.warning("TTL sweep failed (%s); retrying at the next interval", exc)
                    continue
                if swept:
                    logger.info("swept %d expired store items", swept)
            if not future.done():
                future.set_result(None)

        thread = threading.Thread(target=loop, daemon=True, name="helamem-ttl-sweeper")
        self._sweeper, self._sweeper_stop = thread, stop_event
        future.add_done_callback(lambda f: stop_event.set() if f.cancelled() else None)
        thread.start()
        return future

    def _stop_sweeper(self, timeout: float | None) -> bool:
        thread, stop = self._sweeper, self._sweeper_stop
        if thread is None or stop is None:
            return True
        stop.set()
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._sweeper = self._sweeper_stop = None
        return True

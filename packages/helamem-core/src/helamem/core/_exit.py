"""Work done at interpreter exit: flush turn recorders, then close stores.

Python stops every ``concurrent.futures`` thread pool *before* it runs
:mod:`atexit` handlers (``threading._shutdown`` runs the pools' own exit hook,
then joins non-daemon threads; ``atexit`` comes after). A
:class:`~helamem.core.HelaMemory` embeds a search's query on a one-thread
pool while its owner thread runs the lexical queries, so after that an
``atexit`` handler could no longer search or store
("cannot schedule new futures after interpreter shutdown"). This module
therefore registers one
hook with ``threading._register_atexit`` (the hook the pools themselves use;
hooks run last-registered first, and ``concurrent.futures.thread`` is
imported first so that ours runs before the pools stop). It falls back to
:func:`atexit.register` on a Python without it.

Python also runs these hooks *before* it joins the program's own non-daemon
threads, which may go on calling the store until they end (a worker thread still
recording when the main thread returns). While any such thread runs, the hook
therefore leaves its work to an :mod:`atexit` handler, which Python runs after
it joined them (thread-pool workers are not counted: their pools' hook stops
them); the stores then serve those threads without their thread pools (a
search embeds its query on its own thread). A thread still running
:data:`THREADS_WAIT_S` later (one that waits for the store to close) has the
work done under it, with a warning. A ``multiprocessing`` child ends with
``os._exit`` right after joining its threads, without :mod:`atexit`: there the
hook waits for them (bounded) and then does the work itself.

At exit the hook runs, in the main thread, every live registration of phase
:data:`FLUSH` (turn recorders), then every one of phase :data:`CLOSE`
(stores). Registrations hold weak references: a registered object can still
be garbage-collected, and its registration goes with it. A forked child
starts with no registrations (its parent flushes and closes its own).
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # its exit hook first, so ours runs before it
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

__all__ = ["CLOSE", "FLUSH", "OPEN", "register", "unregister"]

logger = logging.getLogger(__name__)

THREADS_WAIT_S: Final = 30.0
"""Most seconds the exit work waits for the program's own non-daemon threads."""

OPEN: Final = -1  # stores not open yet: opened while thread pools still run (deferred work)
FLUSH: Final = 0  # turn recorders: store what is still queued (bounded)
CLOSE: Final = 1  # stores: release SQLite and the vector index

Hook = Callable[[Any, float], None]
"""``hook(obj, started)``; ``started`` is when the exit work began (``time.monotonic()``)."""

_lock = threading.RLock()  # re-entrant: a weakref callback may fire while it is held
_hooks: dict[int, tuple[int, weakref.ref[Any], Hook]] = {}
_tokens = itertools.count()
_installed = False
_run_lock = threading.Lock()  # the exit work runs once: from the hook, atexit or the watcher
_ran = False


def register(obj: object, hook: Hook, *, phase: int) -> int:
    """Call ``hook(obj, started)`` at interpreter exit while ``obj`` is alive.

    Args:
        obj: Held by weak reference only.
        hook: Must not raise (an exception is logged and the next hook runs).
        phase: :data:`FLUSH` hooks all run before :data:`CLOSE` hooks.

    Returns:
        A token for :func:`unregister`.
    """
    token = next(_tokens)
    ref = weakref.ref(obj, lambda _ref: unregister(token))
    with _lock:
        _install_locked()
        _hooks[token] = (phase, ref, hook)
    return token


def install() -> None:
    """Install the exit hook now (a memory made, nothing registered yet): a
    multiprocessing child whose main thread returns before a thread of its first uses
    the memory still waits for that thread, then does the work (registering after
    Python's shutdown began would be too late: the child ends with ``os._exit``)."""
    with _lock:
        _install_locked()


def unregister(token: int) -> None:
    """Forget a registration (unknown tokens are ignored)."""
    with _lock:
        _hooks.pop(token, None)


def _install_locked() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    at_thread_exit: Callable[[Callable[[], None]], None] | None = getattr(
        threading, "_register_atexit", None
    )
    if at_thread_exit is None:  # not CPython 3.9+: late, but better than never
        atexit.register(_run)
        return
    try:
        at_thread_exit(_run)
    except RuntimeError:  # registered while the interpreter is already shutting down
        atexit.register(_run)


def _program_threads() -> list[threading.Thread]:
    """Live non-daemon threads Python joins after the exit hooks, but for this one, the
    main thread and thread-pool workers (an idle worker ends only at its pool's hook)."""
    workers = set(getattr(concurrent.futures.thread, "_threads_queues", {}))
    here, main = threading.current_thread(), threading.main_thread()
    return [
        t
        for t in threading.enumerate()
        if not t.daemon and t.is_alive() and t not in workers and t is not here and t is not main
    ]


def _run() -> None:
    """The hook Python calls in ``threading._shutdown``: the work now, or, while the
    program's own threads still run, after Python joined them (at most
    :data:`THREADS_WAIT_S` later)."""
    threads = _program_threads()
    mp = sys.modules.get("multiprocessing")
    if threads and mp is not None and mp.parent_process() is not None:
        # a multiprocessing child may end with os._exit right after joining its
        # threads (no atexit): wait for them here, bounded (a memory they start using
        # meanwhile registers its work too), then do the work
        _join(threads, time.monotonic() + THREADS_WAIT_S)
        threads = []
    with _lock:
        registered = bool(_hooks)
    if not threads or not registered:
        _run_now()
        return
    # opening a store imports and starts what needs thread pools: while they still run
    _run_phases((OPEN,), time.monotonic())
    atexit.register(_run_now)
    watcher = threading.Thread(
        target=_watch, args=(threads, THREADS_WAIT_S), name="helamem-exit", daemon=True
    )
    try:
        watcher.start()
    except RuntimeError:  # no new thread at this point of shutdown: atexit alone
        logger.debug("helamem: exit watcher not started")


def _join(threads: list[threading.Thread], deadline: float) -> list[threading.Thread]:
    """Join ``threads`` and any they start meanwhile (Python joins those too) until
    ``deadline``; returns those still alive."""
    while threads and time.monotonic() < deadline:
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        threads = _program_threads()
    return [t for t in threads if t.is_alive()]


def _watch(threads: list[threading.Thread], bound: float) -> None:
    """Run the exit work under the threads still running ``bound`` seconds on (those
    alive at the hook, and any they started since: Python joins those too)."""
    late = [t.name for t in _join(threads, time.monotonic() + bound)]
    with _lock:  # a store or recorder still to flush and close (not all closed already)
        due = any(p != OPEN and ref() is not None for p, ref, _ in _hooks.values())
    if late and due:
        logger.warning(
            "helamem: flushing and closing stores at exit while threads %s still run "
            "(%g s after the main thread ended); their later calls raise StoreClosedError: "
            "join them before the main thread ends",
            late,
            bound,
        )
        _run_now()


def _run_now() -> None:
    global _ran
    with _run_lock:  # a second caller waits for the first to finish, then returns
        if _ran:
            return
        _ran = True
        _run_phases((FLUSH, CLOSE), time.monotonic())


def _run_phases(phases: tuple[int, ...], started: float) -> None:
    for phase in phases:
        with _lock:  # a snapshot per phase: flushing may open (and register) a store
            due = [(ref, hook) for p, ref, hook in _hooks.values() if p == phase]
        for ref, hook in due:
            obj = ref()
            if obj is None:
                continue
            try:
                hook(obj, started)
            # An exception leaving this hook would make Python skip its own exit
            # work (joining thread pools and threads); log it and go on.
            except Exception:
                logger.exception("helamem: exit hook %r failed", hook)


def _forget_all() -> None:
    global _lock, _run_lock, _ran
    _lock = threading.RLock()  # another thread of the parent may have held it at fork
    _run_lock, _ran = threading.Lock(), False
    _hooks.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_all)

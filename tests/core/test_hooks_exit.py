"""Turns still queued at interpreter exit (issue 14, case 10).

Each case runs a child Python process that records turns through a
:class:`TurnRecorder` and exits *without* closing it or its memory; the test
then reopens the store and counts what was stored.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from helamem.core import (
    ChromaConfig,
    HashingEmbedder,
    HelaMemConfig,
    HelaMemory,
    InvalidInputError,
    StoreClosedError,
    _exit,
)
from helamem.core.hooks import TurnRecorder

SCOPE = ("users", "alice")
CHILD_TIMEOUT_S = 60.0  # a hung child fails the test instead of hanging it

CHILD = textwrap.dedent(
    """
    import atexit, json, sys, time
    from pathlib import Path
    from helamem.core import ChromaConfig, HashingEmbedder, HelaMemConfig, HelaMemory
    from helamem.core.hooks import TurnRecorder

    opts = json.loads(sys.argv[1])

    class SlowEmbedder(HashingEmbedder):  # same name and vectors, slower; may refuse a word
        def embed(self, texts):
            time.sleep(opts["sleep_s"])
            if any(opts["poison"] and opts["poison"] in t for t in texts):
                raise ValueError("poisoned text")
            return super().embed(texts)

    config = HelaMemConfig(
        path=Path(opts["path"]), chroma=ChromaConfig(exact_below=opts["exact_below"])
    )
    mem = HelaMemory(config, embedder=SlowEmbedder(64))
    kwargs = {} if opts["exit_timeout"] is None else {"exit_timeout": opts["exit_timeout"]}
    if opts["open_first"]:
        mem.open()
    rec = TurnRecorder(mem, **kwargs)
    for i in range(opts["turns"]):
        word = opts["poison"] if i in opts["poisoned"] else "plain"
        rec.record_turn_sync(("users", "alice"), f"user {i} says {word}", f"answer {i}")
    if opts["close_memory"]:
        mem.close()
    print(json.dumps({"pending": rec.pending, "exiting_at": time.time()}), flush=True)
    if opts["sigterm"]:  # stopped as Kubernetes stops a pod
        import os, signal
        if opts["sigterm"] == "handler":  # the README's advice
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    # atexit handlers run after helamem's exit work: what state did it leave?
    atexit.register(
        lambda: print(json.dumps({"memory_closed": mem.closed, "recorder_closed": rec.closed}))
    )
    # exits here: neither rec.close() nor mem.close()
    """
)


def run_child(tmp_path: Path, **opts: Any) -> tuple[dict[str, Any], float, str]:
    """Run the child; returns (what it printed, seconds from its exit start to its end, stderr)."""
    full = {
        "path": str(tmp_path / "store"),
        "turns": 200,
        "sleep_s": 0.0,
        "exit_timeout": None,
        "poison": "",
        "poisoned": [],
        "close_memory": False,
        "exact_below": 2000,  # ChromaConfig's default; 0: every scope in Chroma's HNSW
        "open_first": False,  # else the store opens in the exit flush (as the first turn's work)
        "sigterm": None,  # "default" or "handler": the child sends itself SIGTERM
    }
    full.update(opts)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(full)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    ended = time.time()
    want = -signal.SIGTERM if full["sigterm"] == "default" else 0
    assert proc.returncode == want, proc.stderr
    printed: dict[str, Any] = {}
    for line in proc.stdout.strip().splitlines():
        printed.update(json.loads(line))
    return printed, ended - printed["exiting_at"], proc.stderr


def stored_turns(tmp_path: Path, exact_below: int = 2000) -> int:
    """Turns in the store (each stores two episodes: the user's and the assistant's)."""
    config = HelaMemConfig(path=tmp_path / "store", chroma=ChromaConfig(exact_below=exact_below))
    with HelaMemory(config, embedder=HashingEmbedder(64)) as mem:
        episodes = mem.stats(SCOPE).episodic
    assert episodes % 2 == 0
    return episodes // 2


def lost_in_warning(stderr: str) -> int:
    found = re.findall(r"turn recorder at interpreter exit: (\d+) turn\(s\) lost", stderr)
    assert len(found) == 1, stderr
    return int(found[0])


@pytest.mark.parametrize("exact_below", [2000, 0], ids=["exact-scan", "chroma-hnsw"])
def test_queued_turns_are_stored_at_exit(tmp_path: Path, exact_below: int) -> None:
    printed, exit_s, stderr = run_child(tmp_path, exact_below=exact_below)
    assert printed["pending"] > 0  # turns really were still queued when the child exited
    assert stored_turns(tmp_path, exact_below) == 200
    assert exit_s < 10.0  # the default exit_timeout
    assert "lost" not in stderr and "Traceback" not in stderr, stderr
    # then the recorder and the memory were closed, before Python's atexit handlers
    assert printed["recorder_closed"] is True and printed["memory_closed"] is True


@pytest.mark.parametrize("how", ["default", "handler"])
def test_sigterm_loses_the_queue_unless_a_handler_exits(tmp_path: Path, how: str) -> None:
    """The README's Reliability advice: SIGTERM's default action runs no exit hook, so
    the queued turns are lost; a handler that calls ``sys.exit`` stores them all."""
    printed, _, _ = run_child(tmp_path, sigterm=how, sleep_s=0.002, open_first=True)
    assert printed["pending"] > 0
    assert (stored_turns(tmp_path) < 200) if how == "default" else stored_turns(tmp_path) == 200


def test_exit_bound_reached_logs_exact_loss(tmp_path: Path) -> None:
    # 0.3 s per embedding call, so 200 turns (7 batches of at most 32) need ~2 s
    printed, exit_s, stderr = run_child(tmp_path, sleep_s=0.3, exit_timeout=0.5, open_first=True)
    stored = stored_turns(tmp_path)
    lost = lost_in_warning(stderr)
    assert printed["pending"] > 0
    assert 0 < lost == 200 - stored
    assert "exit bound (exit_timeout=0.5 s) was reached" in stderr
    # the bound, a batch already being stored (one 0.3 s call), interpreter teardown
    assert exit_s < 0.5 + 2.0


def test_turns_failed_and_never_raised_are_counted_at_exit(tmp_path: Path) -> None:
    poisoned = [3, 50, 51, 120, 199]
    _, _, stderr = run_child(tmp_path, poison="poison", poisoned=poisoned)
    assert stored_turns(tmp_path) == 200 - len(poisoned)
    assert lost_in_warning(stderr) == len(poisoned)
    assert f"{len(poisoned)} failed in the background" in stderr


def test_memory_closed_before_exit_loses_the_queue_loudly(tmp_path: Path) -> None:
    printed, exit_s, stderr = run_child(tmp_path, sleep_s=0.05, close_memory=True)
    stored = stored_turns(tmp_path)
    assert stored < 200
    # closing the memory failed, at once and loudly, every turn it had not stored
    assert printed["pending"] == 0
    assert "the memory was closed before they were stored" in stderr
    assert lost_in_warning(stderr) == 200 - stored
    assert f"{200 - stored} failed in the background" in stderr
    assert exit_s < 10.0


def test_exit_timeout_is_validated() -> None:
    mem = HelaMemory(HelaMemConfig(path=Path("/nonexistent/never-opened")))
    for bad in (-1.0, float("inf"), float("nan"), True, "10"):
        with pytest.raises(InvalidInputError, match="exit_timeout"):
            TurnRecorder(mem, exit_timeout=bad)  # type: ignore[arg-type]
    assert TurnRecorder(mem).exit_timeout == 10.0
    assert TurnRecorder(mem, exit_timeout=0).exit_timeout == 0.0


def test_exit_registrations_follow_lifetimes(tmp_path: Path) -> None:
    mem = HelaMemory(HelaMemConfig(path=tmp_path / "store"), embedder=HashingEmbedder(64))
    assert mem._exit_token is None  # no owner thread before first use
    mem.open()
    rec = TurnRecorder(mem)
    assert rec._exit_token is None  # no thread, no registration before the first turn
    rec.record_turn_sync(SCOPE, "hello there", "hi")
    rec_token, mem_token = rec._exit_token, mem._exit_token
    assert rec_token is not None and mem_token is not None
    assert {rec_token, mem_token} <= set(_exit._hooks)
    rec.close_sync()
    assert rec_token not in _exit._hooks and mem_token in _exit._hooks
    mem.close()
    assert mem_token not in _exit._hooks

    class Owner:
        pass

    owner = Owner()
    token = _exit.register(owner, lambda obj, started: None, phase=_exit.FLUSH)
    assert token in _exit._hooks
    del owner
    gc.collect()
    assert token not in _exit._hooks  # held weakly: collected, and its registration with it


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_flush_its_parents_recorders() -> None:
    class Owner:
        pass

    owner = Owner()
    token = _exit.register(owner, lambda obj, started: None, phase=_exit.FLUSH)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its parent's registrations are the parent's to run
            os._exit(0 if not _exit._hooks else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert token in _exit._hooks  # the parent keeps its own
    finally:
        _exit.unregister(token)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_memory_used_in_a_forked_child_raises_instead_of_hanging(tmp_path: Path) -> None:
    mem = HelaMemory(
        HelaMemConfig(path=tmp_path / "store", chroma=ChromaConfig(exact_below=2000)),
        embedder=HashingEmbedder(64),
    )
    mem.add_turn(SCOPE, "I adopted a cat named Miso", "Congratulations!")
    pid = os.fork()
    if pid == 0:  # the child: the parent's owner thread did not come along
        try:
            mem.stats(SCOPE)
        except StoreClosedError as exc:
            msg = str(exc)
            os._exit(0 if "forked" in msg and "spawn" in msg and "before forking" in msg else 2)
        except BaseException:  # noqa: BLE001 (the child must exit, whatever it raised)
            os._exit(3)
        os._exit(1)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child hung on the parent's memory")
    assert os.waitstatus_to_exitcode(status) == 0
    assert mem.stats(SCOPE).episodic == 2  # the parent's memory is untouched
    mem.close()


WORKER_CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory
    from helamem.core.hooks import TurnRecorder
    from concurrent.futures import ThreadPoolExecutor

    mem = HelaMemory(HelaMemConfig(path=Path(sys.argv[1])), embedder=HashingEmbedder(64))
    mem.open()
    rec = TurnRecorder(mem)
    errors = []
    pool = ThreadPoolExecutor(2)  # an idle pool worker: left to its pool's own exit hook
    pool.submit(lambda: None).result()

    def worker():
        for i in range(15):
            try:
                rec.record_turn_sync(("users", "alice"), f"recorded {i}", "ok")
                mem.add_turn(("users", "alice"), f"direct {i}", "ok")
                # its ANN query runs beside the lexical leg on a pool: stopped at exit
                mem.search(f"recorded {i}", ("users", "alice"), k=2)
            except Exception as exc:  # what the store said, counted by the test
                errors.append(type(exc).__name__)
            time.sleep(0.02)
        print(json.dumps({"errors": errors}), flush=True)

    def watchdog():  # a common pattern: it ends once the main thread has
        while threading.main_thread().is_alive():
            time.sleep(0.05)

    threading.Thread(target=watchdog, name="watchdog").start()
    threading.Thread(target=worker).start()  # non-daemon: Python waits for it
    # the main thread returns while the worker still records and stores
    """
)


def test_a_worker_thread_still_recording_when_the_main_thread_returns_loses_nothing(
    tmp_path: Path,
) -> None:
    """Review: Python runs the exit hook before it joins the program's non-daemon
    threads, so the hook closed the recorder and the store under a worker still
    recording: 12 to 20 of its 60 turns were stored, the rest raised RecorderClosedError
    / StoreClosedError. Now, while such threads run, the work is done after Python
    joined them (a watchdog that waits for the main thread to end, which a hook waiting
    for the threads kept for its whole bound, ends at once; the child's timeout bounds
    the run)."""
    proc = _run_script(tmp_path, "worker_child.py", WORKER_CHILD)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"errors": []}
    assert stored_turns(tmp_path) == 30
    assert "lost" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _run_script(tmp_path: Path, name: str, text: str, *args: str) -> Any:
    """Run ``text`` as ``tmp_path/name`` with the store path and ``args`` (bounded)."""
    script = tmp_path / name
    script.write_text(text)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store"), *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


STORE_BOUND_CHILD = textwrap.dedent(
    """
    import multiprocessing, sys, threading, time
    from pathlib import Path
    from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, _exit
    from helamem.core.hooks import TurnRecorder

    _exit.THREADS_WAIT_S = 1.0  # the bound, short for the test

    def record(path, maintain):
        mem = HelaMemory(HelaMemConfig(path=Path(path)), embedder=HashingEmbedder(64))
        rec = TurnRecorder(mem)

        def write():
            for i in range(40):
                rec.record_turn_sync(("users", "alice"), f"user {i}", f"answer {i}")

        if maintain == "late-writer":  # the turns come from a thread started late
            def starter():
                time.sleep(0.3)
                threading.Thread(target=write, name="writer").start()
            threading.Thread(target=starter, name="starter").start()
            return
        write()
        if maintain:  # a thread that runs until the store closes (the exit work closes it)
            def upkeep():
                while not mem.closed:
                    time.sleep(0.05)
            if maintain == "late":  # started by another thread after the main one ended
                def starter():
                    time.sleep(0.3)
                    threading.Thread(target=upkeep, name="upkeep").start()
                threading.Thread(target=starter, name="starter").start()
            else:
                threading.Thread(target=upkeep, name="upkeep").start()
        else:  # a thread that never touches the store
            threading.Thread(target=time.sleep, args=(1.0,)).start()

    if __name__ == "__main__":
        path, how = sys.argv[1], sys.argv[2]
        if how.startswith("fork-child"):  # multiprocessing ends it with os._exit: no atexit
            late = "late-writer" if how.endswith("late-writer") else False
            child = multiprocessing.get_context("fork").Process(target=record, args=(path, late))
            child.start()
            child.join(60)
            assert child.exitcode == 0, child.exitcode
        else:
            record(path, "late" if how == "late-maintenance-thread" else "now")
    """
)


@pytest.mark.parametrize(
    "how",
    ["fork-child", "fork-child-late-writer", "maintenance-thread", "late-maintenance-thread"],
)
def test_exit_work_runs_in_a_fork_child_and_under_a_thread_that_waits_for_it(
    tmp_path: Path, how: str
) -> None:
    """Review: a multiprocessing fork child ends with ``os._exit`` after joining its
    threads, so exit work left to ``atexit`` never ran (33 of 60 turns stored, no
    warning); a thread that runs until the store closes waited for the exit work,
    which waited for it (a hang), also when another thread started it after the hook
    (review 114). Review 118: the fork child waited only for the threads alive at the
    hook, not for one they started later (2 of 21 writes stored). Now the child does it
    in the hook, and the work runs under a thread still alive ``THREADS_WAIT_S`` later,
    with a warning."""
    proc = _run_script(tmp_path, "bound_child.py", STORE_BOUND_CHILD, how)
    assert proc.returncode == 0, proc.stderr
    assert stored_turns(tmp_path) == 40
    assert ("['upkeep'] still run" in proc.stderr) == how.endswith("maintenance-thread"), (
        proc.stderr
    )


FAILED_OPEN_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from helamem.core import HashingEmbedder, HelaMemConfig, HelaMemory, StorageError

    path = Path(sys.argv[1])
    path.write_text("a file where the store's directory should be")
    mem = HelaMemory(HelaMemConfig(path=path), embedder=HashingEmbedder(64))
    try:
        mem.search("hello", ("users", "alice"))
    except StorageError as exc:
        print("the program's error:", type(exc).__name__, flush=True)
    threading.Thread(target=time.sleep, args=(0.5,)).start()  # alive as the main thread returns
    """
)


def test_a_store_that_failed_to_open_is_not_opened_again_at_exit(tmp_path: Path) -> None:
    """Review: with a thread of the program alive at exit, the exit hook opened every
    store not open yet, including one whose open had already failed (the program caught
    that error): a second traceback at exit, and ``busy_timeout_s`` more for a locked
    store. A failed open is the program's error, reported once."""
    proc = _run_script(tmp_path, "failed_open_child.py", FAILED_OPEN_CHILD)
    assert proc.returncode == 0, proc.stderr
    assert "the program's error:" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr

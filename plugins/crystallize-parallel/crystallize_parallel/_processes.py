"""The process backend: a :class:`~concurrent.futures.ProcessPoolExecutor` the engine can kill and replace.

Each worker receives the replicate function once, through the pool's
initializer: forked workers inherit it, others unpickle it once. Tasks carry
only a range of positions. With a timeout, each worker writes when it starts
a replicate into shared memory, so the clock starts when the replicate does,
never at worker start-up or in a queue.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from crystallize_core import Capabilities
from crystallize_core.engine import Backend, run_span
from crystallize_core.replicate import dumps_replicate_fn

PARENT_CHECK_SECONDS = 0.5

# --- in the worker ---------------------------------------------------------

_replicate_fn: Callable[[int], Any] | None = None
_setup_failure: str | None = None
_starts: Any = None


class WorkerSetupError(RuntimeError):
    """A worker could not unpickle the replicate function."""


def _init_worker(shipped: bytes | Callable[[int], Any], parent: int, starts: Any) -> None:
    global _replicate_fn, _setup_failure, _starts
    # Ctrl-C in a terminal reaches the whole process group; the driver decides
    # what stops, and kills the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _starts = starts
    try:
        _replicate_fn = pickle.loads(shipped) if isinstance(shipped, bytes) else shipped
    except BaseException:  # reported with the first task instead of breaking the pool
        _setup_failure = traceback.format_exc()


def _exit_with_parent(parent: int) -> None:
    # A driver killed with SIGKILL cannot stop its workers; they stop themselves.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _run_span(start: int, stop: int) -> tuple[list, float]:
    if _replicate_fn is None:
        raise WorkerSetupError(f"a worker process could not unpickle the experiment:\n{_setup_failure}")
    if _starts is not None:
        _starts[start] = time.monotonic()
    return run_span(_replicate_fn, start, stop)


# --- in the driver -------------------------------------------------------------


class ProcessBackend(Backend):
    """``workers`` processes from the platform's default start method."""

    capabilities = Capabilities(timeout=True, cancellation=True, retries_dead_workers=True, ships_work=True)
    failure_scope = "pool"
    reports_starts = True

    def __init__(self, workers: int):
        self.workers = workers
        self.context = multiprocessing.get_context()
        self.pool: ProcessPoolExecutor | None = None
        self.starts: Any = None
        self.shipped: Any = None
        #: How the current pool's workers died, once it broke.
        self.loss: str | None = None

    def start(self, run: Any, replicate_fn: Callable[[int], Any]) -> int:
        if self.context.get_start_method() == "fork":
            # Forked workers inherit the replicate function as it is: nothing
            # to copy, however large (the engine has checked it pickles).
            self.shipped = replicate_fn
        else:
            self.shipped = dumps_replicate_fn(replicate_fn)
        if run.timeout is not None:
            self.starts = self.context.Array("d", run.replicates, lock=False)
        self.pool = self._new_pool()
        return self.workers

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self.context,
            initializer=_init_worker,
            initargs=(self.shipped, os.getpid(), self.starts),
        )

    def submit(self, span: range) -> Future:
        assert self.pool is not None
        if self.starts is not None:
            self.starts[span.start] = 0.0
        return self.pool.submit(_run_span, span.start, span.stop)

    def started_at(self, future: Future, span: range) -> float | None:
        return (self.starts[span.start] or None) if self.starts is not None else None

    def worker_lost(self, exc: BaseException) -> str | None:
        if not isinstance(exc, BrokenProcessPool):
            return None
        if self.loss is None:  # every future of a broken pool fails: look once
            workers = _workers(self.pool)
            if self.pool is not None:
                self.pool.shutdown(wait=True)  # the pool's own thread reaps its workers first
            codes = [p.exitcode for p in workers if p.exitcode not in (None, 0, -signal.SIGTERM)]
            self.loss = ", ".join(map(_describe_exit, codes)) or "cause unknown"
        return self.loss

    def stop_all(self) -> None:
        if self.pool is not None:
            _kill_workers(self.pool)

    def restart(self) -> None:
        if self.pool is not None:
            _kill_workers(self.pool)
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.loss = None
        self.pool = self._new_pool()

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            _kill_workers(self.pool)
            self.pool = None


def _workers(pool: ProcessPoolExecutor | None) -> list:
    # concurrent.futures has no public handle on its worker processes before
    # Python 3.14 (terminate_workers/kill_workers); killing a hung or
    # interrupted run's workers needs one.
    return list((getattr(pool, "_processes", None) or {}).values())


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    workers = _workers(pool)
    for process in workers:
        if process.is_alive():
            process.kill()
    for process in workers:
        process.join(timeout=5)


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"

"""The process backend: a [`ProcessPoolExecutor`][] the engine can kill and replace.

Each worker receives the replicate function once, through the pool's
initializer: forked workers inherit it, others unpickle it once. Tasks carry
only a range of positions. With a timeout, each worker writes when it starts
a replicate into shared memory, so the clock starts when the replicate does,
never at worker start-up or in a queue.

Each worker leads a process group of its own, so that a replicate stopped for
its timeout takes the processes it started with it, and stops itself when the
process that started it dies (SIGKILL from the kernel on Linux, which needs no
GIL; a watching thread elsewhere). BLAS and OpenMP thread pools in workers are
capped so that workers times inner threads fit the cores, as loky does.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from crystallize_core import Capabilities, WorkerSetupError
from crystallize_core.engine import Backend, run_span
from crystallize_core.replicate import dumps_replicate_fn

PARENT_CHECK_SECONDS = 0.5
#: How long the survivors of a broken pool get to obey SIGTERM before SIGKILL.
SURVIVOR_GRACE_SECONDS = 3.0
#: The variables native thread pools read when they start; threadpoolctl caps
#: those already started.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# --- in the worker ---------------------------------------------------------

_replicate_fn: Callable[[int], Any] | None = None
_setup_failure: str | None = None
_starts: Any = None
_limits: Any = None
#: The native thread pools the driver found before forking, inherited by its
#: workers: finding them costs milliseconds, calling them microseconds.
_controller: Any = None


def _init_worker(shipped: bytes | Callable[[int], Any], starts: Any, inner_threads: int | None) -> None:
    global _replicate_fn, _setup_failure, _starts
    # Ctrl-C in a terminal reaches the whole process group; the driver decides
    # what stops, and kills the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    _exit_with_parent()
    if inner_threads is not None:
        _limit_inner_threads(inner_threads)
    _starts = starts
    try:
        _replicate_fn = pickle.loads(shipped) if isinstance(shipped, bytes) else shipped
    except BaseException:  # reported with the first task instead of breaking the pool
        _setup_failure = traceback.format_exc()


def _exit_with_parent() -> None:
    """Die with the process that started this worker: the driver, or the fork
    server, which ends when the driver does."""
    # Every child of a fork server (and of a driver that started one) holds a
    # copy of the pipe whose end of file tells the fork server that the driver
    # is gone; so that it can end, and its workers with it, this one lets go.
    server = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        try:
            os.close(alive)
        except OSError:
            pass
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before the request was made
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


#: Modules that load a native thread pool (BLAS, OpenMP) when imported.
NATIVE_POOL_MODULES = ("numpy", "scipy", "torch", "sklearn", "tensorflow", "jax", "mkl")


#: ``len(sys.modules)`` when ``_controller`` looked for native pools.
_controller_modules = 0


def _find_native_pools() -> None:
    """Have ``_controller`` know this process's native thread pools, looking
    again only if modules were imported since (libraries are loaded by imports):
    looking costs a run of tiny replicates milliseconds."""
    global _controller, _controller_modules
    if _controller is None or _controller_modules != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        _controller_modules = len(sys.modules)


def _native_pools_loaded() -> bool:
    return any(name in sys.modules for name in NATIVE_POOL_MODULES)


def _limit_inner_threads(inner_threads: int) -> None:
    global _limits
    # Libraries loaded from now on read these when they start their pools;
    # those already loaded (inherited through fork, or imported by the main
    # module under spawn) are capped through threadpoolctl.
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(inner_threads)
    if _controller is not None:  # found by the driver before forking: only the calls remain
        _limits = _controller.limit(limits=inner_threads)
    elif _native_pools_loaded():
        from threadpoolctl import threadpool_limits

        _limits = threadpool_limits(limits=inner_threads)  # kept: the limits last while it lives


def _run_span(start: int, stop: int) -> tuple[list | bytes, float]:
    if _replicate_fn is None:
        raise WorkerSetupError(_setup_failure or "")
    if _starts is not None:
        _starts[start] = time.monotonic()
    return run_span(_replicate_fn, start, stop, serialize=True)


# --- in the driver -------------------------------------------------------------


def _flush_c_stdio() -> None:
    """Write out what C code left in this process's stdio buffers: forked
    workers inherit the buffers and would write it again when they flush
    theirs (multiprocessing flushes Python's own streams before forking)."""
    if sys.platform == "win32":  # no fork there
        return
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask: nothing of it is buffered
        pass


class ProcessBackend(Backend):
    """``workers`` processes started by ``start_method`` (None: the platform's default),
    each with its native thread pools capped at ``inner_threads`` (None: not capped)."""

    capabilities = Capabilities(timeout=True, cancellation=True, retries_dead_workers=True, ships_work=True)
    failure_scope = "pool"
    reports_starts = True

    def __init__(self, workers: int, start_method: str | None = None, inner_threads: int | None = None):
        self.workers = workers
        self.inner_threads = inner_threads
        self.context = multiprocessing.get_context(start_method)
        self.pool: ProcessPoolExecutor | None = None
        self.starts: Any = None
        self.shipped: Any = None
        #: How the current pool's workers died, once it broke.
        self.loss: str | None = None

    def start(self, run: Any, replicate_fn: Callable[[int], Any]) -> int:
        if self.context.get_start_method() == "fork":
            # Forked workers inherit the replicate function as it is: nothing
            # to copy, however large (the engine has checked it pickles); and
            # the modules their set-up needs, imported here once, not per worker.
            self.shipped = replicate_fn
            if sys.platform.startswith("linux"):
                import ctypes  # noqa: F401
            if self.inner_threads is not None and _native_pools_loaded():
                _find_native_pools()
        else:
            self.shipped = dumps_replicate_fn(replicate_fn)
        if run.timeout is not None:
            self.starts = self.context.Array("d", run.replicates, lock=False)
        self.pool = self._new_pool()
        return self.workers

    def _new_pool(self) -> ProcessPoolExecutor:
        if self.context.get_start_method() == "fork":
            _flush_c_stdio()
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self.context,
            initializer=_init_worker,
            initargs=(self.shipped, self.starts, self.inner_threads),
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
            # The broken pool's own thread sends the survivors SIGTERM and joins
            # them, holding the pool's shutdown lock from Python 3.12 on; one
            # whose code ignores SIGTERM would hold it, and any shutdown() we
            # call, forever. So wait a while, then kill what is left.
            deadline = time.monotonic() + SURVIVOR_GRACE_SECONDS
            for process in workers:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
            _settle_exit_codes(workers)
            stubborn = {p.pid for p in workers if p.exitcode is None}
            _kill_workers(workers)  # the stubborn, and whatever any of them started
            codes = [
                p.exitcode for p in workers if p.pid not in stubborn and p.exitcode not in (None, 0, -signal.SIGTERM)
            ]
            self.loss = ", ".join(map(_describe_exit, codes)) or "cause unknown"
        return self.loss

    def stop_all(self) -> None:
        if self.pool is not None:
            _kill_workers(_workers(self.pool))

    def restart(self) -> None:
        if self.pool is not None:
            _kill_workers(_workers(self.pool))
            # Not cancel_futures: the broken pool fails what was pending itself,
            # and cancelling races with that before Python 3.12.
            self.pool.shutdown(wait=True)
        self.loss = None
        self.pool = self._new_pool()

    def shutdown(self, wait: bool = True) -> None:
        if self.pool is not None:
            workers = _workers(self.pool)  # the pool forgets them on shutdown
            self.pool.shutdown(wait=wait)
            _kill_workers(workers)  # and whatever they started that is still running
            self.pool = None


def _workers(pool: ProcessPoolExecutor | None) -> list:
    # concurrent.futures has no public handle on its worker processes before
    # Python 3.14 (terminate_workers/kill_workers); killing a hung or
    # interrupted run's workers needs one.
    return list((getattr(pool, "_processes", None) or {}).values())


def _settle_exit_codes(workers: list, seconds: float = 1.0) -> None:
    """Wait until every worker that has ended shows its exit code.

    The pool's own thread joins its workers too, and when it reaps one first,
    a join here finds the process gone but no exit code until that thread
    stores the one it read: the worker looks alive for a moment."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        unsettled = [p for p in workers if p.exitcode is None]
        if not unsettled:
            return
        try:
            ended = multiprocessing.connection.wait([p.sentinel for p in unsettled], timeout=0)
        except (OSError, ValueError):  # a sentinel closed meanwhile: the pool is done with it
            return
        if not ended:
            return
        time.sleep(0.001)


def _kill_workers(workers: list) -> None:
    """Kill the workers and what they started: each worker leads its own process
    group, which outlives its leader while anything in it runs."""
    for process in workers:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (AttributeError, OSError):  # no process groups here, the group is gone, or not yet its own
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

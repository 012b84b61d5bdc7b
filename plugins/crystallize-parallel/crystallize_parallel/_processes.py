"""Replicates on a process pool.

Each worker receives the replicate function once, through the pool's
initializer: forked workers inherit it, others unpickle it once. Tasks carry
only a range of replicate indices, batched by :class:`~crystallize_core.batching.BatchSizer`.
Results travel back packed as plain tuples, which pickle far faster.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from crystallize_core import dumps_replicate_fn
from crystallize_core.batching import BatchSizer
from crystallize_core.replicate import check_picklable
from crystallize_core.result import pack_results, unpack_results
from crystallize_parallel._progress import progress_bar

#: Batches in flight per worker: enough to keep every worker busy while
#: results travel back, few enough that memory does not grow with the run.
IN_FLIGHT_PER_WORKER = 2
PARENT_CHECK_SECONDS = 0.5

# --- in the worker ---------------------------------------------------------

_replicate_fn: Callable[[int], Any] | None = None
_setup_failure: str | None = None


class WorkerSetupError(RuntimeError):
    """A worker could not unpickle the replicate function."""


def _init_worker(shipped: bytes | Callable[[int], Any], parent: int) -> None:
    global _replicate_fn, _setup_failure
    # Ctrl-C in a terminal reaches the whole process group; the parent decides
    # what stops, and terminates the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    try:
        _replicate_fn = pickle.loads(shipped) if isinstance(shipped, bytes) else shipped
    except BaseException:  # reported with the first task instead of breaking the pool
        _setup_failure = traceback.format_exc()


def _exit_with_parent(parent: int) -> None:
    # A parent killed with SIGKILL cannot stop its workers; they stop themselves.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _run_span(start: int, stop: int) -> tuple[list, float]:
    if _replicate_fn is None:
        raise WorkerSetupError(f"a worker process could not unpickle the experiment:\n{_setup_failure}")
    began = time.perf_counter()
    replicate_fn = _replicate_fn
    results = pack_results([replicate_fn(replicate) for replicate in range(start, stop)])
    return results, time.perf_counter() - began


# --- in the calling process --------------------------------------------------


def run_on_processes(
    replicate_fn: Callable[[int], Any],
    total: int,
    workers: int,
    progress: bool,
    max_retries: int = 1,
    timeout: float | None = None,
) -> list:
    context = multiprocessing.get_context()
    if context.get_start_method() == "fork":
        # Forked workers inherit the replicate function as it is: nothing to
        # copy, however large. It is still checked, so that what would fail
        # under spawn (macOS, Windows) fails here too, before any work.
        check_picklable(replicate_fn)
        shipped = replicate_fn
    else:
        shipped = dumps_replicate_fn(replicate_fn)  # unpickled once per worker
    return _ProcessRun(replicate_fn, shipped, total, workers, progress, max_retries, timeout, context).run()


class _ProcessRun:
    """One run's scheduling state: what is done, in flight, suspect or still to send.

    When a worker dies, every batch in flight is lost with the pool, and
    which replicate killed it is unknown. The lost replicates become
    *suspects* and are run again one at a time, alone in the pool, so that a
    further death is pinned on exactly one replicate. A replicate whose worker
    has died under it more than ``max_retries`` times is recorded as an error
    and the run goes on; the others lost with it are not blamed.
    """

    def __init__(self, replicate_fn, shipped, total, workers, progress, max_retries, timeout, context):
        self.replicate_fn = replicate_fn
        self.shipped = shipped
        self.context = context
        self.total = total
        self.workers = workers
        self.max_retries = max_retries
        self.timeout = timeout
        self.results: list = [None] * total
        # With a timeout, every replicate needs a clock of its own: one per task.
        self.batches = BatchSizer(total, workers, fixed=1 if timeout is not None else None)
        self.suspects: deque[int] = deque()
        self.retry: deque[int] = deque()  # lost for a known cause (a timeout elsewhere): not suspect
        self.deaths: dict[int, int] = {}
        self.bar = progress_bar(progress, total)

    # scheduling -------------------------------------------------------------

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self.context,
            initializer=_init_worker,
            initargs=(self.shipped, os.getpid()),
        )

    def _next_span(self, in_flight: dict) -> range | None:
        if self.suspects:
            return None if in_flight else range(self.suspects[0], self.suspects[0] + 1)
        if self.retry:
            replicate = self.retry.popleft()
            return range(replicate, replicate + 1)
        return self.batches.next_span()

    def _window(self) -> int:
        # With a timeout, a task's clock starts when it is sent, so only as
        # many tasks as there are workers may be out at once.
        return self.workers if self.timeout is not None else self.workers * IN_FLIGHT_PER_WORKER

    def _fill(self, pool: ProcessPoolExecutor, in_flight: dict) -> None:
        while len(in_flight) < self._window():
            span = self._next_span(in_flight)
            if span is None:
                return
            future = pool.submit(_run_span, span.start, span.stop)
            in_flight[future] = (span, time.monotonic() + self.timeout if self.timeout is not None else None)

    def _store(self, span: range, batch: list, seconds: float) -> None:
        self.results[span.start : span.stop] = unpack_results(batch)
        if self.suspects and self.suspects[0] == span.start and len(span) == 1:
            self.suspects.popleft()
        if self.bar is not None:
            self.bar.update(len(span))
        self.batches.record(len(span), seconds)

    def run(self) -> list:
        pool = self._new_pool()
        in_flight: dict[Future, tuple[range, float | None]] = {}
        try:
            while True:
                self._fill(pool, in_flight)
                if not in_flight:
                    return self.results
                deadline = min((d for _, d in in_flight.values() if d is not None), default=None)
                # Capped: waits longer than the platform's time_t allows overflow.
                wait_for = None if deadline is None else min(max(0.0, deadline - time.monotonic()), 3600.0)
                done, _ = wait(in_flight, timeout=wait_for, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    span, _deadline = in_flight.pop(future)
                    try:
                        batch, seconds = future.result()
                    except BrokenProcessPool:
                        broken = True
                        in_flight[future] = (span, _deadline)  # handled with the rest below
                        continue
                    self._store(span, batch, seconds)
                if broken:
                    pool = self._recover_from_death(pool, in_flight)
                elif deadline is not None and time.monotonic() >= deadline:
                    pool = self._recover_from_timeout(pool, in_flight)
        except KeyboardInterrupt as interrupt:
            self._collect_finished(in_flight)
            _kill_workers(pool)
            interrupt.completed = [r for r in self.results if r is not None]
            raise
        except BaseException:
            _kill_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if self.bar is not None:
                self.bar.close()

    def _collect_finished(self, in_flight: dict) -> None:
        """Store the batches that finished but were not collected yet."""
        for future, (span, _) in in_flight.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                self.results[span.start : span.stop] = unpack_results(future.result()[0])

    # faults -----------------------------------------------------------------

    def _recover_from_death(self, pool: ProcessPoolExecutor, in_flight: dict) -> ProcessPoolExecutor:
        workers = _workers(pool)
        # The pool's own thread reaps its workers; read exit codes only after it has.
        pool.shutdown(wait=True)
        lost = [replicate for span, _ in in_flight.values() for replicate in span]
        in_flight.clear()
        if len(lost) == 1:  # alone in the pool: the death is its own
            (culprit,) = lost
            self.deaths[culprit] = self.deaths.get(culprit, 0) + 1
            if self.deaths[culprit] > self.max_retries:
                if self.suspects and self.suspects[0] == culprit:
                    self.suspects.popleft()
                self._record_error(culprit, "WorkerDied", _death_message(_exit_codes(workers), self.deaths[culprit]))
            elif not self.suspects or self.suspects[0] != culprit:
                self.suspects.appendleft(culprit)
        else:
            known = set(self.suspects)
            self.suspects.extend(r for r in lost if r not in known)
        return self._new_pool()

    def _recover_from_timeout(self, pool: ProcessPoolExecutor, in_flight: dict) -> ProcessPoolExecutor:
        now = time.monotonic()
        _kill_workers(pool)
        for span, deadline in in_flight.values():
            for replicate in span:
                if deadline is not None and deadline <= now:
                    self._record_error(
                        replicate,
                        "ReplicateTimeout",
                        f"replicate {replicate} ran longer than the timeout of {self.timeout} s; "
                        "its worker process was killed and replaced",
                    )
                    if self.suspects and self.suspects[0] == replicate:
                        self.suspects.popleft()
                elif replicate not in self.suspects:
                    self.retry.append(replicate)
        in_flight.clear()
        pool.shutdown(wait=True, cancel_futures=True)
        return self._new_pool()

    def _record_error(self, replicate: int, exc_type: str, message: str) -> None:
        self.results[replicate] = self.replicate_fn.error_result(replicate, exc_type, message)
        if self.bar is not None:
            self.bar.update()


def _workers(pool: ProcessPoolExecutor) -> list:
    # concurrent.futures has no public handle on its worker processes before
    # Python 3.14 (terminate_workers/kill_workers); killing a hung or
    # interrupted run's workers needs one.
    return list((getattr(pool, "_processes", None) or {}).values())


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    for process in _workers(pool):
        if process.is_alive():
            process.kill()
    for process in _workers(pool):
        process.join(timeout=5)


def _exit_codes(workers: list) -> list[int]:
    """Exit codes of workers that died on their own (the pool terminates the rest)."""
    return [p.exitcode for p in workers if p.exitcode not in (None, 0, -signal.SIGTERM)]


def _death_message(exit_codes: list[int], deaths: int) -> str:
    how = ", ".join(map(_describe_exit, exit_codes)) or "cause unknown"
    return (
        f"the worker process running this replicate died ({how}), {deaths} time(s) with the "
        "replicate running alone in the pool. Common causes: running out of memory "
        "(the kernel's OOM killer sends SIGKILL), a crash in native code (SIGSEGV), or os._exit()."
    )


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"

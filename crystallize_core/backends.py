"""The core's own backend: any [`concurrent.futures.Executor`][].

[`ExecutorBackend`][] makes an executor (a thread pool, a process pool,
loky's or mpi4py's) a backend of the dispatch engine, and
[`ExecutorStrategy`][] is the strategy a user gets by passing an executor as
``run(strategy=...)``. Other backends live in the strategy packages
(``crystallize-parallel``, ``-ray``, ``-dask``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial
from threading import Event
from typing import Any

from crystallize_core.dispatch import drive
from crystallize_core.errors import ConfigurationError, WorkerLostError
from crystallize_core.hookspecs import Backend, Capabilities, ReplicateFn, RunView, hookimpl
from crystallize_core.options import check_max_retries, check_progress, strategy_options, whole_number
from crystallize_core.records import ReplicateResult
from crystallize_core.replicate import dumps_replicate_fn, pickle_for_workers
from crystallize_core.seed import warn_if_seeding_globally
from crystallize_core.worker import run_shipped_span, run_span

#: A pickled replicate function up to this size goes with every task: a
#: worker process that lacks it would otherwise cost a round trip to ask for
#: it, at the start of every run on every worker. A larger one goes only to
#: the worker processes that ask for it (the [`NEED_PAYLOAD`][crystallize_core.engine.NEED_PAYLOAD]
#: protocol), or through a store of the backend's, so that it crosses the
#: network once per worker, not once per task.
INLINE_PAYLOAD_BYTES = 64 * 1024


class _TooLarge(Exception):
    pass


class _BoundedBuffer(io.BytesIO):
    def write(self, data: object) -> int:
        if self.tell() + memoryview(data).nbytes > INLINE_PAYLOAD_BYTES:  # type: ignore[arg-type]  # a PickleBuffer has no len()
            raise _TooLarge
        return super().write(data)  # type: ignore[arg-type]


def inline_payload(replicate_fn: Callable[[int], Any]) -> bytes | None:
    """``replicate_fn`` pickled, to send with every task, when it takes at most
    [`INLINE_PAYLOAD_BYTES`][]; else None, found without pickling the rest of
    a large one.

    Most experiments pickle to a few hundred bytes. A backend sends a larger
    one with [`resubmit_with_payload`][crystallize_core.hookspecs.Backend.resubmit_with_payload]
    only to the worker processes that lack it, or puts it in its cluster's
    object store once. Raises [`NotPicklableError`][crystallize_core.errors.NotPicklableError]
    naming the component that cannot be pickled, as
    [`dumps_replicate_fn`][crystallize_core.replicate.dumps_replicate_fn] does.
    """
    buffer = _BoundedBuffer()
    try:
        pickle_for_workers(replicate_fn, buffer)
    except _TooLarge:
        return None
    except Exception:
        dumps_replicate_fn(replicate_fn)  # raises the error that names the component
        raise
    return buffer.getvalue()


class ExecutorBackend(Backend):
    """A backend over any [`concurrent.futures.Executor`][], for one run.

    ``executor`` is an executor, or a callable that returns a new one; only
    with a callable can the engine replace an executor that broke (a worker
    process died), so only then are replicates of a dead worker rerun. The
    executor is shut down at the end of the run only if it was made here.

    With ``ships_work=False`` the replicate function runs as it is (threads
    of this process); otherwise it is pickled once and unpickled once per
    worker process: with every task when small ([`inline_payload`][]), else
    only to the processes that lack it.
    Unless given, ``ships_work`` is False for a
    [`ThreadPoolExecutor`][], its class or a
    ``functools.partial`` of it, and True for any other executor or callable
    (pass ``ships_work=False`` with a factory such as a lambda that makes a
    thread pool). ``workers`` is how many batches run at once
    (default: the executor's ``max_workers`` where it has one, else the CPU
    count).

    An executor cannot stop a running call, so ``timeout`` is refused and
    Ctrl-C waits for running batches (each stops between replicates where it
    runs in this process).
    """

    failure_scope = "pool"

    def __init__(
        self,
        executor: Executor | Callable[[], Executor],
        workers: int | None = None,
        ships_work: bool | None = None,
    ):
        if isinstance(executor, Executor):
            self._factory: Callable[[], Executor] | None = None
            self._executor: Executor | None = executor
        elif callable(executor):
            self._factory, self._executor = executor, None
        else:
            raise ConfigurationError(
                f"an executor backend needs a concurrent.futures.Executor or a callable returning one, got {executor!r}"
            )
        if workers is not None and not whole_number(workers, minimum=1):
            raise ConfigurationError(f"workers must be a positive integer or None, got {workers!r}")
        if ships_work is None:
            ships_work = not _makes_threads(executor)
        self.capabilities = Capabilities(
            ships_work=ships_work, retries_dead_workers=ships_work and self._factory is not None
        )
        self._workers = workers
        # A random key without uuid: importing it (and platform) costs a run milliseconds.
        self._key = os.urandom(16).hex()
        self._payload = b""
        self._inline: bytes | None = None
        self._replicate_fn: ReplicateFn | None = None
        self._stopping = Event()

    def _current(self) -> Executor:
        if self._executor is None:
            assert self._factory is not None
            made = self._factory()
            if not isinstance(made, Executor):
                raise ConfigurationError(f"the executor factory returned {made!r}, not a concurrent.futures.Executor")
            self._executor = made
        return self._executor

    def start(self, run: RunView, replicate_fn: ReplicateFn) -> int:
        executor = self._current()
        self._replicate_fn = replicate_fn
        if self.capabilities.ships_work:
            self._inline = inline_payload(replicate_fn)
            self._payload = self._inline if self._inline is not None else dumps_replicate_fn(replicate_fn)
        # ThreadPoolExecutor and ProcessPoolExecutor keep their size in
        # _max_workers; no public attribute says how wide an executor is.
        size = self._workers or getattr(executor, "_max_workers", None) or os.cpu_count() or 1
        return max(1, int(size))

    def submit(self, span: range) -> Future:
        executor = self._current()
        if not self.capabilities.ships_work:
            assert self._replicate_fn is not None, "start() comes first"
            return executor.submit(run_span, self._replicate_fn, span.start, span.stop, self._stopping)
        return executor.submit(run_shipped_span, self._key, self._inline, span.start, span.stop)

    def resubmit_with_payload(self, span: range) -> Future:
        return self._current().submit(run_shipped_span, self._key, self._payload, span.start, span.stop)

    def restart(self) -> None:
        if self._factory is None:
            raise WorkerLostError("an executor that was passed in cannot be replaced after it broke")
        old, self._executor = self._executor, None
        if old is not None:
            _shut(old, wait=True)

    def request_stop(self) -> None:
        self._stopping.set()

    def shutdown(self, wait: bool = True) -> None:
        self._stopping.set()
        if self._factory is not None and self._executor is not None:
            _shut(self._executor, wait=wait)
            self._executor = None


def _makes_threads(executor: object) -> bool:
    """Whether ``executor`` is, or is a factory of, a thread pool: replicates
    then run in this process and nothing is pickled."""
    if isinstance(executor, ThreadPoolExecutor):
        return True
    factory = executor.func if isinstance(executor, partial) else executor
    return isinstance(factory, type) and issubclass(factory, ThreadPoolExecutor)


def _shut(executor: Executor, wait: bool) -> None:
    """Shut ``executor`` down, cancelling what has not started where it can
    (``cancel_futures`` is Python 3.9's; some executors, such as dask's, lack it)."""
    try:
        executor.shutdown(wait=wait, cancel_futures=True)
    except TypeError:
        executor.shutdown(wait=wait)


@strategy_options
class ExecutorStrategy:
    """A strategy that runs replicates on any [`concurrent.futures.Executor`][].

    ``executor`` is an executor you built — loky's reusable executor,
    ``mpi4py.futures.MPIPoolExecutor``, your own ``ProcessPoolExecutor`` —
    or a callable that makes one for each run (then a pool broken by a dying
    worker is replaced and its replicates rerun). See [`ExecutorBackend`][]
    for what an executor allows and for ``workers`` and ``ships_work``.
    ``max_retries`` and ``progress`` mean what they mean for every strategy
    (see ``docs/strategies.md``). Passing an executor as
    ``run(strategy=...)`` wraps it in this class. For
    Dask, use the ``dask`` strategy: a future of a Dask client's
    ``get_executor()`` can stay pending for ever when a worker dies.
    """

    def __init__(
        self,
        executor: Executor | Callable[[], Executor],
        workers: int | None = None,
        ships_work: bool | None = None,
        max_retries: int = 1,
        progress: bool | None = None,
    ):
        self.executor = executor
        self.workers = workers
        self.max_retries = check_max_retries(max_retries)
        self.progress = check_progress(progress)
        # Built here so that bad arguments fail now, and to read what it can do.
        self.capabilities = ExecutorBackend(executor, workers, ships_work).capabilities

    @hookimpl
    def run_experiment_loop(self, experiment: RunView, replicate_fn: ReplicateFn) -> Sequence[ReplicateResult]:
        if not self.capabilities.ships_work:
            warn_if_seeding_globally(experiment.plugins, "a thread pool")
        backend = ExecutorBackend(self.executor, self.workers, self.capabilities.ships_work)
        return drive(experiment, replicate_fn, backend, max_retries=self.max_retries)

    def __repr__(self) -> str:
        return f"ExecutorStrategy({self.executor!r}, workers={self.workers!r})"

"""The ``parallel`` strategy: replicates on a thread pool or a process pool.

This module stays light: the pools and the process machinery are imported
only when a run starts. The core's dispatch engine drives the replicates;
this package supplies the pools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crystallize_core import Capabilities, ConfigurationError, hookimpl
from crystallize_core.options import (
    check_max_retries,
    check_max_workers,
    check_progress,
    strategy_options,
    whole_number,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crystallize_core import ReplicateFn, ReplicateResult, RunView

__version__ = "0.3.0"
__all__ = ["ParallelExecution", "__version__", "default_max_workers"]

EXECUTOR_TYPES = ("thread", "process")


def default_max_workers(executor_type: str, replicates: int) -> int:
    """The worker count used when ``max_workers`` is None.

    ``"thread"``: ``min(32, cpus + 4, replicates)``, the standard library's
    ``ThreadPoolExecutor`` default (threads mostly wait on I/O), capped by the
    replicate count. ``"process"``: ``min(cpus, replicates)``: CPU-bound work
    gains nothing from more processes than cores. ``cpus`` is the number of
    CPUs this process may run on.
    """
    from crystallize_core.engine import cpu_count

    cpus = cpu_count()
    limit = min(32, cpus + 4) if executor_type == "thread" else cpus
    return max(1, min(limit, replicates))


@strategy_options
class ParallelExecution:
    """Run replicates concurrently with [`concurrent.futures`][].

    ``executor_type="thread"`` shares this process: good for I/O-bound
    replicates or code that releases the GIL, with no start-up or pickling
    cost. ``executor_type="process"`` runs replicates in worker processes:
    good for CPU-bound Python. The replicate function is pickled once and
    unpickled once per worker (forked workers inherit it); workers receive
    only replicate positions, in batches sized automatically. Anything that
    cannot be pickled is reported, by name, before any replicate starts.
    ``max_workers`` (the most replicates running at once) is capped by the
    replicate count. ``progress`` shows a progress bar while several
    replicates run: True shows it also off a terminal (as plain lines), False
    never, None (the default) on a terminal only; a run's own ``progress``
    wins over it.

    Process mode only: ``start_method`` is ``"fork"``, ``"spawn"`` or
    ``"forkserver"`` (None: the platform's default). ``inner_threads`` caps
    the BLAS and OpenMP thread pools of each worker (NumPy, SciPy,
    scikit-learn, PyTorch): ``"auto"`` gives each worker its share of the
    cores, so that two workers on two cores do not run four threads; an
    integer sets the cap; None leaves the libraries' own defaults. A run's
    ``timeout`` is enforced per replicate by
    killing and replacing the workers (the replicate is recorded as timed
    out, the others rerun); a worker that dies (out of memory, a crash,
    ``os._exit``) costs only the replicate that killed it, which is run
    again, alone, and recorded as ``WorkerDied`` once its worker has died
    under it more than ``max_retries`` times; Ctrl-C kills the workers at
    once. Threads cannot be stopped: runs with a timeout pass them over, and
    Ctrl-C waits for the replicates already running.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        executor_type: str = "thread",
        max_retries: int = 1,
        start_method: str | None = None,
        inner_threads: int | str | None = "auto",
        progress: bool | None = None,
    ):
        if executor_type not in EXECUTOR_TYPES:
            raise ConfigurationError(
                f"unknown executor_type {executor_type!r}; valid executor types: {', '.join(EXECUTOR_TYPES)}"
            )
        if start_method is not None:
            import multiprocessing

            methods = multiprocessing.get_all_start_methods()
            if start_method not in methods:
                raise ConfigurationError(
                    f"unknown start_method {start_method!r}; valid start methods here: {', '.join(methods)}"
                )
            if executor_type != "process":
                raise ConfigurationError("start_method applies to executor_type='process' only")
        if inner_threads != "auto" and inner_threads is not None and not whole_number(inner_threads, minimum=1):
            raise ConfigurationError(f"inner_threads must be 'auto', a positive integer or None, got {inner_threads!r}")
        self.max_workers = check_max_workers(max_workers)
        self.executor_type = executor_type
        self.max_retries = check_max_retries(max_retries)
        self.start_method = start_method
        self.inner_threads = inner_threads
        self.progress = check_progress(progress)

    @property
    def capabilities(self) -> Capabilities:
        """Processes can be killed, replaced and rerun; threads can do none of it."""
        if self.executor_type == "process":
            return Capabilities(timeout=True, cancellation=True, retries_dead_workers=True, ships_work=True)
        return Capabilities()

    @hookimpl
    def run_experiment_loop(self, experiment: RunView, replicate_fn: ReplicateFn) -> Sequence[ReplicateResult]:
        from crystallize_core.engine import Backend, ExecutorBackend, drive

        total = experiment.replicates
        workers = min(self.max_workers or default_max_workers(self.executor_type, total), total)
        backend: Backend
        if self.executor_type == "thread":
            from concurrent.futures import ThreadPoolExecutor

            from crystallize_core.seed import warn_if_seeding_globally

            warn_if_seeding_globally(experiment.plugins, "executor_type='thread'", "executor_type='process'")
            backend = ExecutorBackend(
                lambda: ThreadPoolExecutor(workers, thread_name_prefix="crystallize-replicate"),
                workers=workers,
                ships_work=False,
            )
        else:
            from crystallize_parallel._processes import ProcessBackend

            inner = self.inner_threads
            if inner == "auto":  # workers times inner threads fit the cores
                from crystallize_core.engine import cpu_count

                inner = max(1, cpu_count() // workers)
            backend = ProcessBackend(workers, self.start_method, inner)  # type: ignore[arg-type]
        return drive(experiment, replicate_fn, backend, max_retries=self.max_retries)

    def __repr__(self) -> str:
        return (
            f"ParallelExecution(max_workers={self.max_workers!r}, executor_type={self.executor_type!r}, "
            f"max_retries={self.max_retries}, start_method={self.start_method!r}, "
            f"inner_threads={self.inner_threads!r}, progress={self.progress!r})"
        )

"""The ``parallel`` strategy: replicates on a thread pool or a process pool.

This module stays light: the pools, tqdm and the process machinery are
imported only when a run starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from crystallize_core import ConfigurationError, ReproducibilityWarning, hookimpl, warn_at_user_code

__version__ = "0.1.0"
__all__ = ["ParallelExecution", "__version__", "default_max_workers"]

EXECUTOR_TYPES = ("thread", "process")


def _cpu_count() -> int:
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+: honours affinity
    if counter is not None:
        return counter() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_max_workers(executor_type: str, replicates: int) -> int:
    """The worker count used when ``max_workers`` is None.

    ``"thread"``: ``min(32, cpus + 4, replicates)``, the standard library's
    ``ThreadPoolExecutor`` default (threads mostly wait on I/O), capped by the
    replicate count. ``"process"``: ``min(cpus, replicates)``: CPU-bound work
    gains nothing from more processes than cores. ``cpus`` is the number of
    CPUs this process may run on.
    """
    cpus = _cpu_count()
    limit = min(32, cpus + 4) if executor_type == "thread" else cpus
    return max(1, min(limit, replicates))


class ParallelExecution:
    """Run replicates concurrently with :mod:`concurrent.futures`.

    ``executor_type="thread"`` shares this process: good for I/O-bound
    replicates or code that releases the GIL, with no start-up or pickling
    cost. ``executor_type="process"`` runs replicates in worker processes:
    good for CPU-bound Python. The replicate function is pickled once and
    unpickled once per worker; workers receive only replicate indices, in
    batches sized automatically so that tiny replicates are not dominated by
    messaging. Anything that cannot be pickled is reported, by name, before
    any replicate starts.

    Results are returned in replicate order whatever order they finish in.
    With ``progress=True`` a tqdm bar advances as replicates finish. At most
    a small multiple of ``max_workers`` batches are in flight at any time, so
    memory does not grow with the replicate count.

    Process mode only: ``timeout`` (seconds) is enforced per replicate by
    killing and replacing the worker, and the replicate is recorded as timed
    out; a worker that dies (out of memory, a crash, ``os._exit``) costs only
    the replicate that killed it, which is run again, alone, and recorded as an
    error once its worker has died under it more than ``max_retries`` times.
    Threads cannot be stopped, so ``timeout`` with threads is refused.
    """

    name = "parallel"

    def __init__(
        self,
        max_workers: int | None = None,
        executor_type: str = "thread",
        progress: bool = False,
        timeout: float | None = None,
        max_retries: int = 1,
    ):
        if executor_type not in EXECUTOR_TYPES:
            raise ConfigurationError(
                f"unknown executor_type {executor_type!r}; valid executor types: {', '.join(EXECUTOR_TYPES)}"
            )
        if max_workers is not None and not _whole_number(max_workers, minimum=1):
            raise ConfigurationError(f"max_workers must be a positive integer or None, got {max_workers!r}")
        if not isinstance(progress, bool):
            raise ConfigurationError(f"progress must be True or False, got {progress!r}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                raise ConfigurationError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
            if executor_type == "thread":
                raise ConfigurationError(
                    "timeout cannot be enforced with executor_type='thread': a running thread cannot be "
                    "stopped. Use executor_type='process', where a replicate past its timeout is killed."
                )
        if not _whole_number(max_retries, minimum=0):
            raise ConfigurationError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        self.max_workers = max_workers
        self.executor_type = executor_type
        self.progress = progress
        self.timeout = timeout
        self.max_retries = max_retries

    @property
    def ships_work(self) -> bool:
        """Whether replicates run in other processes (and must be picklable)."""
        return self.executor_type == "process"

    @property
    def supports_timeout(self) -> bool:
        """Whether a per-replicate timeout is enforced: only processes can be killed."""
        return self.executor_type == "process"

    @property
    def retries_dead_workers(self) -> bool:
        """Whether a replicate whose worker process died is run again."""
        return self.executor_type == "process"

    @hookimpl
    def run_experiment_loop(self, experiment: Any, replicate_fn: Callable[[int], Any]) -> list:
        total = experiment.replicates
        workers = self.max_workers or default_max_workers(self.executor_type, total)
        if self.executor_type == "thread":
            seeding = [p for p in experiment.plugins if getattr(p, "seeds_global_state", False)]
            if seeding:
                warn_at_user_code(
                    f"{type(seeding[0]).__name__} seeds the global random state, which threads share, so results "
                    "under executor_type='thread' are not reproducible. Draw random numbers from ctx.rng "
                    "(or ctx.numpy_rng) and use SeedPlugin(seed, auto_seed=False) without a seed_fn, "
                    "or use executor_type='process'.",
                    ReproducibilityWarning,
                )
            from crystallize_parallel._threads import run_on_threads

            return run_on_threads(replicate_fn, total, workers, self.progress)
        from crystallize_parallel._processes import run_on_processes

        limits = [t for t in (self.timeout, getattr(experiment, "timeout", None)) if t is not None]
        return run_on_processes(
            replicate_fn, total, workers, self.progress, self.max_retries, min(limits) if limits else None
        )

    def __repr__(self) -> str:
        return (
            f"ParallelExecution(max_workers={self.max_workers!r}, executor_type={self.executor_type!r}, "
            f"progress={self.progress}, timeout={self.timeout!r}, max_retries={self.max_retries})"
        )


def _whole_number(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

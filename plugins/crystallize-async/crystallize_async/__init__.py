"""The ``async`` strategy: replicates as tasks on one event loop.

This module stays light: :mod:`asyncio`, tqdm and the loop machinery are
imported only when a run starts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from crystallize_core import ConfigurationError, ReproducibilityWarning, hookimpl

__version__ = "0.1.0"
__all__ = ["DEFAULT_MAX_CONCURRENCY", "AsyncExecution", "__version__"]

#: Replicates in flight at once unless ``max_concurrency`` says otherwise: the
#: default connection-pool size of aiohttp and httpx, so a run with one shared
#: client neither queues on the pool nor opens more connections than a client
#: would by default.
DEFAULT_MAX_CONCURRENCY = 100


class AsyncExecution:
    """Run replicates concurrently on one :mod:`asyncio` event loop.

    For replicates that wait: on web services, databases, language-model
    APIs. Datasources and steps written as ``async def`` (or objects whose
    ``__call__`` is) are awaited on the loop, so one thread holds thousands
    of waits at no cost of a thread each. Plain steps in such a pipeline run
    on the loop's thread between awaits: keep them short, since while one
    runs no other replicate advances. A replicate whose steps are all plain
    runs in a thread of its own instead, so that it never blocks the loop.

    - ``max_concurrency``: at most this many replicates in flight at once
      (default :data:`DEFAULT_MAX_CONCURRENCY`, 100).
    - ``rate_limit``: at most this many replicate *starts* per second, spaced
      evenly (``1 / rate_limit`` seconds apart), for services that throttle;
      ``None`` for no limit.
    - ``timeout``: seconds a replicate may run (from its start, after any
      wait for the rate limit); past it, its task is cancelled and the
      replicate is recorded as ``ReplicateTimeout``. The run's own timeout
      (``Experiment.run(timeout=...)``) applies too; the smaller one wins.
      Cancellation lands at the replicate's next ``await``; a plain step
      cannot be interrupted, and one that is still running when its replicate
      times out is left to finish in its (daemon) thread, its result unused.
    - ``progress``: a tqdm bar that advances as replicates finish.

    Results come back in replicate order. With ``fail_fast``, the first error
    cancels every other replicate and is raised. Ctrl-C cancels every task at
    once and the finished replicates are kept in the partial result. In both
    cases a replicate running in a thread cannot be cancelled: it finishes
    first and is kept (a second Ctrl-C abandons it).

    Every replicate gets the same seed and ``ctx.rng`` draws as under any
    other strategy. Global random state (``SeedPlugin(auto_seed=True)``) is
    shared by replicates that interleave on the loop, so it is not
    reproducible here: a :class:`~crystallize_core.ReproducibilityWarning`
    says so, and ``ctx.rng`` is the fix.
    """

    #: What this strategy can honour: a per-replicate timeout (by cancelling
    #: the task); replicates run in this process, so nothing is shipped and no
    #: worker can die alone.
    supports_timeout = True
    ships_work = False
    retries_dead_workers = False

    def __init__(
        self,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        rate_limit: float | None = None,
        timeout: float | None = None,
        progress: bool = False,
    ):
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        if rate_limit is not None and not _positive_number(rate_limit):
            raise ConfigurationError(
                f"rate_limit must be a positive number of replicate starts per second or None, got {rate_limit!r}"
            )
        if timeout is not None and not _positive_number(timeout):
            raise ConfigurationError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        if not isinstance(progress, bool):
            raise ConfigurationError(f"progress must be True or False, got {progress!r}")
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.timeout = timeout
        self.progress = progress

    @hookimpl
    def run_experiment_loop(self, experiment: Any, replicate_fn: Callable[[int], Any]) -> list:
        total = experiment.replicates
        if any(getattr(plugin, "seeds_global_state", False) for plugin in getattr(experiment, "plugins", ())):
            warnings.warn(
                "a plugin seeds the global random state, which replicates interleaving on one event loop "
                "share: results under the 'async' strategy are not reproducible. Draw random numbers from "
                "ctx.rng, or use SeedPlugin(auto_seed=False).",
                ReproducibilityWarning,
                stacklevel=2,
            )
        from crystallize_async._core import run_on_event_loop

        limits = [t for t in (self.timeout, getattr(experiment, "timeout", None)) if t is not None]
        return run_on_event_loop(
            replicate_fn,
            total,
            min(self.max_concurrency, total),
            self.rate_limit,
            min(limits) if limits else None,
            self.progress,
        )

    def __repr__(self) -> str:
        return (
            f"AsyncExecution(max_concurrency={self.max_concurrency}, rate_limit={self.rate_limit!r}, "
            f"timeout={self.timeout!r}, progress={self.progress})"
        )


def _positive_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0

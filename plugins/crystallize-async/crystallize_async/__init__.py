"""The ``async`` strategy: replicates as tasks on one event loop.

This module stays light: [`asyncio`][], tqdm and the loop machinery are
imported only when a run starts.
"""

from __future__ import annotations

from crystallize_core import (
    Capabilities,
    ConfigurationError,
    ReplicateFn,
    ReplicateResult,
    RunView,
    StrategyCapabilityError,
    hookimpl,
)
from crystallize_core.errors import warn_at_user_code
from crystallize_core.options import check_max_workers, check_progress, strategy_options
from crystallize_core.seed import warn_if_seeding_globally

__version__ = "0.2.0"
__all__ = ["DEFAULT_MAX_CONCURRENCY", "DEFAULT_MAX_WORKERS", "AsyncExecution", "__version__"]

#: Replicates in flight at once unless ``max_workers`` says otherwise: the
#: default connection-pool size of aiohttp and httpx, so a run with one shared
#: client neither queues on the pool nor opens more connections than a client
#: would by default.
DEFAULT_MAX_WORKERS = 100
#: The former name of ``DEFAULT_MAX_WORKERS``.
DEFAULT_MAX_CONCURRENCY = DEFAULT_MAX_WORKERS


@strategy_options
class AsyncExecution:
    """Run replicates concurrently on one [`asyncio`][] event loop.

    For replicates that wait: on web services, databases, language-model
    APIs. Datasources and steps written as ``async def`` (or objects whose
    ``__call__`` is) are awaited on the loop, so one thread holds thousands
    of waits at no cost of a thread each. Plain steps in such a pipeline run
    on the loop's thread between awaits: keep them short, since while one
    runs no other replicate advances.

    - ``max_workers``: at most this many replicates in flight at once
      (None: ``DEFAULT_MAX_WORKERS``, 100). ``max_concurrency`` is its
      former name, deprecated.
    - ``rate_limit``: at most this many replicate *starts* per second, spaced
      evenly (``1 / rate_limit`` seconds apart), for services that throttle;
      ``None`` for no limit.
    - ``progress``: show a progress bar while several replicates run: True
      also off a terminal (as plain lines), False never, None (the default)
      on a terminal only; a run's own ``progress`` wins over it.

    Results come back in replicate order. The run's ``timeout``
    (``Experiment.run(timeout=...)``) is enforced per replicate by cancelling
    its task, counted from its start (after any wait for the rate limit),
    and the replicate is recorded as ``ReplicateTimeout``. With
    ``fail_fast``, the first error cancels every other replicate and is
    raised. Ctrl-C cancels every task at once and the finished replicates
    are kept in the partial result. Cancelling lands at a replicate's next
    ``await``.

    An experiment with no coroutine step still runs, each replicate in a
    thread of its own so that none blocks the loop; but a running thread
    cannot be cancelled, so such a run refuses a ``timeout``
    ([`StrategyCapabilityError`][]), and on Ctrl-C or
    fail-fast its running replicates finish first (a second Ctrl-C abandons
    them), as under the thread strategy.

    Every replicate gets the same seed and ``ctx.rng`` draws as under any
    other strategy. Global random state (``SeedPlugin(auto_seed=True)``) is
    shared by replicates that interleave on the loop, so it is not
    reproducible here: a [`ReproducibilityWarning`][crystallize_core.ReproducibilityWarning]
    says so, and ``ctx.rng`` is the fix.
    """

    #: A replicate is stopped at its timeout, and Ctrl-C stops every running
    #: replicate at once, by cancelling its task (for coroutine steps; see above).
    capabilities = Capabilities(timeout=True, cancellation=True)

    def __init__(
        self,
        max_workers: int | None = None,
        rate_limit: float | None = None,
        progress: bool | None = None,
        max_concurrency: int | None = None,
    ):
        if max_concurrency is not None:
            if max_workers is not None:
                raise ConfigurationError(
                    "max_concurrency is the former name of max_workers: give max_workers only, "
                    f"not both (got max_workers={max_workers!r}, max_concurrency={max_concurrency!r})"
                )
            warn_at_user_code(
                "AsyncExecution(max_concurrency=...) is deprecated: it is now max_workers, the name every "
                "strategy uses for the most replicates running at once",
                DeprecationWarning,
            )
            try:
                max_workers = check_max_workers(max_concurrency)
            except ConfigurationError:
                raise ConfigurationError(
                    f"max_concurrency (now max_workers) must be a positive integer, got {max_concurrency!r}"
                ) from None
        checked = check_max_workers(max_workers)
        if rate_limit is not None and not _positive_number(rate_limit):
            raise ConfigurationError(
                f"rate_limit must be a positive number of replicate starts per second or None, got {rate_limit!r}"
            )
        if rate_limit is not None and not _spacing_fits(rate_limit):
            raise ConfigurationError(
                f"rate_limit={_shown(rate_limit)} starts per second is beyond what a float can space: give a rate "
                "between 1e-300 and 1e300, or None for no limit"
            )
        self.max_workers: int = DEFAULT_MAX_WORKERS if checked is None else checked
        self.rate_limit = rate_limit
        self.progress = check_progress(progress)

    @hookimpl
    def run_experiment_loop(self, experiment: RunView, replicate_fn: ReplicateFn) -> list[ReplicateResult]:
        awaits = getattr(replicate_fn, "awaits", False)
        if experiment.timeout is not None and not awaits:
            raise StrategyCapabilityError(
                "the 'async' strategy enforces a timeout by cancelling a replicate at an await, but this "
                "experiment's datasource and steps are all plain functions, which run in threads that cannot be "
                "stopped. Write the steps that wait as 'async def', or run without timeout, or use "
                "'parallel' with executor_type='process'."
            )
        warn_if_seeding_globally(experiment.plugins, "the 'async' strategy (they interleave on one event loop)")
        from crystallize_async._core import run_on_event_loop

        return run_on_event_loop(
            replicate_fn,
            experiment.replicates,
            min(self.max_workers, experiment.replicates),
            self.rate_limit,
            experiment.timeout,
            experiment.fail_fast,
        )

    def __repr__(self) -> str:
        return (
            f"AsyncExecution(max_workers={self.max_workers}, rate_limit={self.rate_limit!r}, "
            f"progress={self.progress!r})"
        )


def _positive_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def _spacing_fits(rate: float) -> bool:
    """Whether ``1 / rate`` seconds is a finite float (infinity: no spacing at all)."""
    import math

    try:
        return math.isfinite(1.0 / float(rate)) or math.isinf(rate)
    except OverflowError:  # an int beyond any float
        return False


def _shown(rate: float) -> str:
    """``rate`` for a message: a huge int by its size (its digits could not even be printed past 4,300)."""
    if isinstance(rate, int) and rate.bit_length() > 64:
        return f"<an int of about {int(rate.bit_length() * 0.30103)} digits>"
    return repr(rate)

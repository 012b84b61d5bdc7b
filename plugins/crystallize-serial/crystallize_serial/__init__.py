"""The ``serial`` strategy: replicates one after another in the calling process.

It is the fallback that runs an experiment when no other strategy answers, so
the core depends on this package; it depends on the hook marker only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pluggy

__version__ = "0.4.0"
__all__ = ["SerialExecution", "__version__"]

hookimpl = pluggy.HookimplMarker("crystallize")


try:  # the core's checks, for the same messages as every strategy; not a dependency (the core depends on us)
    from crystallize_core.errors import ConfigurationError
    from crystallize_core.options import check_max_workers, check_progress, strategy_options
except ImportError:  # without the core nothing calls this strategy, so nothing needs checking
    ConfigurationError = ValueError  # type: ignore[misc,assignment]

    def check_progress(value: object) -> Any:  # type: ignore[misc]
        return value

    def check_max_workers(value: object) -> Any:  # type: ignore[misc]
        return value

    def strategy_options(cls: Any) -> Any:  # type: ignore[misc]
        return cls


@strategy_options
class SerialExecution:
    """Run replicates ``0 .. n-1`` in order, in this process and thread.

    ``progress`` shows a progress bar while several replicates run: True
    shows it also where standard error is not a terminal (as plain lines),
    False never, None (the default) on a terminal only. A run's own
    ``progress`` (``Experiment.run(progress=...)``, ``crystallize run
    --progress``) wins over it. ``max_workers``, the option every strategy
    shares, can only be 1 (or None) here: one replicate runs at a time.

    It returns a lazy iterator over the results, which the core consumes, so
    the strategy itself holds none: the core keeps each result, compactly, as
    it finishes. Ctrl-C stops the run between replicates (or inside one) with
    the finished replicates kept. It declares no capabilities: a call running
    in this thread cannot be stopped, so runs with a ``timeout`` pass it over.
    Progress and captured errors are shown by the core as replicates finish.
    """

    def __init__(self, progress: bool | None = None, max_workers: int | None = None) -> None:
        if check_max_workers(max_workers) not in (None, 1):
            raise ConfigurationError(
                f"the serial strategy runs one replicate at a time: max_workers must be 1 or None, got "
                f"{max_workers!r}; choose 'parallel' to run several at once"
            )
        self.progress = check_progress(progress)
        self.max_workers = max_workers

    @hookimpl
    def run_experiment_loop(self, experiment: Any, replicate_fn: Callable[[int], Any]) -> Iterator[Any]:
        return map(replicate_fn, range(experiment.replicates))

    def __repr__(self) -> str:
        return f"SerialExecution(progress={self.progress!r}, max_workers={self.max_workers!r})"

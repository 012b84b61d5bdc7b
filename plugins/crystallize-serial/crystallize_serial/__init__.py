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
    from crystallize_core.options import check_progress, strategy_options
except ImportError:  # without the core nothing calls this strategy, so nothing needs checking

    def check_progress(value: object) -> Any:  # type: ignore[misc]
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
    --progress``) wins over it.

    It returns a lazy iterator over the results, which the core consumes, so
    the strategy itself holds none: the core keeps each result, compactly, as
    it finishes. Ctrl-C stops the run between replicates (or inside one) with
    the finished replicates kept. It declares no capabilities: a call running
    in this thread cannot be stopped, so runs with a ``timeout`` pass it over.
    Progress and captured errors are shown by the core as replicates finish.
    """

    def __init__(self, progress: bool | None = None) -> None:
        self.progress = check_progress(progress)

    @hookimpl
    def run_experiment_loop(self, experiment: Any, replicate_fn: Callable[[int], Any]) -> Iterator[Any]:
        return map(replicate_fn, range(experiment.replicates))

    def __repr__(self) -> str:
        return "SerialExecution()" if self.progress is None else f"SerialExecution(progress={self.progress!r})"

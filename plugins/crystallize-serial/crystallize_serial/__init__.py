"""The ``serial`` strategy: replicates one after another in the calling process.

It is the fallback that runs an experiment when no other strategy answers, so
the core depends on this package; it depends on the hook marker only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pluggy

__version__ = "0.3.0"
__all__ = ["SerialExecution", "__version__"]

hookimpl = pluggy.HookimplMarker("crystallize")


class SerialExecution:
    """Run replicates ``0 .. n-1`` in order, in this process and thread.

    It returns a lazy iterator over the results, which the core consumes, so
    the strategy itself holds none: the core keeps each result, compactly, as
    it finishes. Ctrl-C stops the run between replicates (or inside one) with
    the finished replicates kept. It declares no capabilities: a call running
    in this thread cannot be stopped, so runs with a ``timeout`` pass it over.
    Progress and captured errors are shown by the core as replicates finish.
    """

    @hookimpl
    def run_experiment_loop(self, experiment: Any, replicate_fn: Callable[[int], Any]) -> Iterator[Any]:
        return map(replicate_fn, range(experiment.replicates))

    def __repr__(self) -> str:
        return "SerialExecution()"

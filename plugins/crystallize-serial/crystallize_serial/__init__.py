"""The ``serial`` strategy: replicates one after another in the calling process.

It is the fallback that runs an experiment when no other strategy answers, so
the core depends on this package; it depends on the hook marker only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__version__ = "0.2.0"
__all__ = ["SerialExecution", "__version__"]

hookimpl = pluggy.HookimplMarker("crystallize")


class SerialExecution:
    """Run replicates ``0 .. n-1`` in order, in this process and thread.

    Ctrl-C stops the run between replicates (or inside one) with the finished
    replicates kept. It declares no capabilities: a call running in this
    thread cannot be stopped, so runs with a ``timeout`` pass it over.
    Progress and captured errors are shown by the core as replicates finish.
    """

    @hookimpl
    def run_experiment_loop(self, experiment: Any, replicate_fn: Callable[[int], Any]) -> list:
        results: list = []
        try:
            for replicate in range(experiment.replicates):
                results.append(replicate_fn(replicate))
        except BaseException as stopped:  # Ctrl-C, or fail_fast's ReplicateFailed
            stopped.completed = results  # type: ignore[attr-defined]
            raise
        return results

    def __repr__(self) -> str:
        return "SerialExecution()"

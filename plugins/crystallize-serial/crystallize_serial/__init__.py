"""The ``serial`` strategy: replicates one after another in the calling process.

It is the fallback that runs an experiment when no other strategy answers, so
the core depends on this package; it depends on the hook marker only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__version__ = "0.1.0"
__all__ = ["SerialExecution", "__version__"]

hookimpl = pluggy.HookimplMarker("crystallize")


class SerialExecution:
    """Run replicates ``0 .. n-1`` in order, in this process and thread.

    With ``progress=True`` and more than one replicate, a tqdm bar on standard
    error advances as each replicate finishes. Ctrl-C stops the run between
    replicates (or inside one) with the finished replicates kept.
    """

    name = "serial"
    #: What this strategy can honour: no per-replicate timeout, since a
    #: running call in this thread cannot be stopped.
    supports_timeout = False
    ships_work = False

    def __init__(self, progress: bool = False):
        if not isinstance(progress, bool):
            raise TypeError(f"SerialExecution progress must be True or False, not {progress!r}")
        self.progress = progress

    @hookimpl
    def run_experiment_loop(self, experiment: Any, replicate_fn: Callable[[int], Any]) -> list:
        total = experiment.replicates
        results: list = []
        bar = None
        if self.progress and total > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="replicates", unit="rep")
        try:
            for replicate in range(total):
                results.append(replicate_fn(replicate))
                if bar is not None:
                    bar.update()
        except KeyboardInterrupt as interrupt:
            interrupt.completed = results
            raise
        finally:
            if bar is not None:
                bar.close()
        return results

    def __repr__(self) -> str:
        return f"SerialExecution(progress={self.progress})"

"""The run's result sink: every finished replicate passes here exactly once.

A replicate function called in the driver process (by an in-process strategy,
or on the engine's threads) reports each result itself; results that come
back from other processes or machines are reported by the dispatch engine.
Either way the monitor keeps each result in the run's columns (so that no
strategy needs to keep them), advances progress, logs captured errors
(bounded) and hands results to the checkpoint, in the driver, never in a
worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from crystallize_core._columns import ResultColumns
from crystallize_core.progress import Progress
from crystallize_core.records import ReplicateResult

#: Errors the driver records for faults outside the user's code: a rerun
#: should try these replicates again, so they are never checkpointed.
FAULTS = frozenset({"WorkerDied", "ReplicateTimeout", "UnpicklingError"})


class Monitor:
    """The run's [`ResultSink`][crystallize_core.hookspecs.ResultSink]: receives
    the finished replicates of one run, in the process that drives it."""

    def __init__(
        self, total: int, progress: bool | None = None, checkpoint: Any = None, columns: ResultColumns | None = None
    ):
        #: The driver's process id: a copy of the monitor inherited by a forked
        #: worker must stay silent there.
        self.pid = os.getpid()
        #: The run's own ``progress``, which wins over a strategy's when given.
        self.run_progress = progress
        self.progress = Progress(total, settled=False)
        self.checkpoint = checkpoint
        #: Where the run's results are kept, as they finish, in any order.
        self.columns = columns
        self._quiet = True  # whether a result without errors needs only keeping: see settle_progress

    def settle_progress(self, strategy_progress: bool | None) -> None:
        """Show progress for the strategy about to be asked: as the run's own
        ``progress`` says when given, else as the strategy's, else the default."""
        enabled = self.run_progress if self.run_progress is not None else strategy_progress
        self.progress.settle(enabled)
        self._quiet = not self.progress.shown

    def finished(self, results: Sequence[ReplicateResult]) -> None:
        """Record replicates that finished, from any thread of the driver."""
        if self.columns is not None:
            self.columns.add_many(results)
        progress = self.progress
        progress.advance(len(results))
        for result in results:
            if result.errors:
                progress.errors(result.errors)
        if self.checkpoint is not None:  # a checkpoint Recorder: it commits in batches
            kept = [r for r in results if not any(e.exc_type in FAULTS and e.condition is None for e in r.errors)]
            self.checkpoint.add_many(kept)

    def finished_columns(self, batch: tuple) -> bool:
        """``finished`` for a batch packed column by column (which holds no
        errors); False, having recorded nothing, where rows are needed."""
        if self.checkpoint is not None or self.columns is None or not self.columns.add_columns(batch):
            return False
        self.progress.advance(len(batch[3]))
        return True

    def finished_one(self, result: ReplicateResult) -> None:
        """``finished`` for a single result: the replicate function's hot path."""
        if result[3] or not self._quiet:  # its errors
            self.finished((result,))
            return
        if self.columns is not None:
            self.columns.add(result)
        if self.checkpoint is not None:  # no error, so no fault to leave out
            self.checkpoint.add(result)

    def recorded(self, replicates: Sequence[int]) -> Sequence[ReplicateResult] | None:
        """The results of ``replicates`` read from the columns as they arrive (None without columns)."""
        return self.columns.recorded(replicates) if self.columns is not None else None

    def close(self) -> None:
        """End of the run, finished or not."""
        self.progress.close()

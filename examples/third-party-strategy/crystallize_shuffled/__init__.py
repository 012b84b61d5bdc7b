"""A third-party strategy: replicates in a random order on a thread pool.

Nothing here is special to the project that ships it: it is what anyone
publishing a strategy writes. Running replicates out of order and handing
them back in order shows the contract's order restoration at work.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor, as_completed

from crystallize_core import hookimpl

__version__ = "0.1.0"


class ShuffledExecution:
    """Run replicates in a shuffled order on ``max_workers`` threads.

    Declines (returns ``None``, so the next strategy runs the experiment)
    when there are fewer than ``min_replicates`` replicates.
    """

    def __init__(self, max_workers: int = 2, shuffle_seed: int | None = None, min_replicates: int = 1):
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
        self.max_workers = max_workers
        self.shuffle_seed = shuffle_seed
        self.min_replicates = min_replicates

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        total = experiment.replicates
        if total < self.min_replicates:
            return None
        order = list(range(total))
        random.Random(self.shuffle_seed).shuffle(order)
        results = [None] * total
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = {pool.submit(replicate_fn, i): i for i in order}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
            except BaseException:  # Ctrl-C or fail_fast: start nothing new
                # Every replicate that finished on a thread of this process has
                # reported itself to the run: the partial result has it.
                for future in futures:
                    future.cancel()
                raise
        return results

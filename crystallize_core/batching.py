"""Automatic batching of replicate positions for the dispatch engine.

Shipping one replicate per task lets messaging dominate tiny replicates;
shipping many at once leaves workers idle at the end of a run of long ones.
``BatchSizer`` starts small (one replicate per batch; a few for a large
run) and, as batches come back, sizes the next ones so that each takes about
``target_seconds`` of work, as joblib's automatic batching does: the measured
time per replicate is smoothed over batches; after the first measurement, which sets the size
outright, a new batch is at most ``GROWTH`` times as many replicates as
have been measured so far; and the run is cut into at least
``batches_per_worker`` batches per worker so that no worker idles at the end,
unless what is left would take each worker less than ``target_seconds`` at the
measured rate: then it goes out as one batch per worker.
"""

from __future__ import annotations

#: Weight of the newest measurement in the smoothed time per replicate.
SMOOTHING = 0.3
#: How many times the replicates measured so far a later batch may hold.
GROWTH = 4
#: The first batches hold this fraction of a worker's share of the run, at
#: least one replicate and at most ``FIRST_BATCH_MAX``: a run of
#: thousands of tiny replicates skips most of the ramp, and if its first
#: replicates are slow, workers end unbalanced by at most this fraction of
#: the run, and the first results (progress, Ctrl-C's harvest) come soon.
FIRST_BATCH_FRACTION = 1 / 64
FIRST_BATCH_MAX = 16
#: Replicates measured before a short run may go out in one batch a worker
#: (see ``BatchSizer``): one replicate that happened to be fast is
#: not enough to give up balancing.
SHORT_RUN_EVIDENCE = 8


class BatchSizer:
    """Hands out consecutive ranges of replicate positions, sized by measured speed."""

    def __init__(
        self,
        total: int,
        workers: int,
        target_seconds: float = 0.05,
        batches_per_worker: int = 4,
        max_batch: int = 4096,
        fixed: int | None = None,
    ):
        self.total = total
        self.target_seconds = target_seconds
        self.max_batch = max_batch
        self.fixed = fixed
        self.batches_per_worker = batches_per_worker
        self.workers = max(1, workers)
        self.share = max(1, total // (self.workers * batches_per_worker))
        self.next_index = 0
        self.size = fixed or max(1, min(FIRST_BATCH_MAX, int(total / max(1, workers) * FIRST_BATCH_FRACTION)))
        #: Smoothed seconds per replicate, once a batch has been measured.
        self.per_replicate: float | None = None
        #: Replicates in the batches measured so far.
        self.measured = 0

    def next_span(self) -> range | None:
        """The next batch of fresh positions, or None when all have been handed out."""
        if self.next_index >= self.total:
            return None
        span = range(self.next_index, min(self.next_index + self.size, self.total))
        self.next_index = span.stop
        return span

    def record(self, replicates: int, seconds: float) -> None:
        """A batch of ``replicates`` took ``seconds`` of work where it ran."""
        if self.fixed is not None or replicates <= 0:
            return
        measured = seconds / replicates
        previous = self.per_replicate
        self.per_replicate = measured if previous is None else (1 - SMOOTHING) * previous + SMOOTHING * measured
        self.measured += replicates
        ideal = int(self.target_seconds / self.per_replicate) if self.per_replicate > 0 else self.max_batch
        # The first measurement sets the size outright (within the run's
        # share): every later step of a ramp is a round trip, which on a
        # cluster costs as much as a tiny replicate's whole batch. After it,
        # growth is bounded by what was measured, not by batches handed out
        # since (several in flight must not compound into a leap), and only
        # the measured rate, not that bound, makes batches smaller.
        bound = self.max_batch if previous is None else max(self.size, GROWTH * self.measured)
        self.size = max(1, min(ideal, bound, self._cap(), self.max_batch))

    def _cap(self) -> int:
        """The run's share; or, for what is left of a short run, a worker's part of it.

        The share keeps ``batches_per_worker`` batches a worker so that none
        idles at the end while another finishes a long batch. When each
        worker's part of what is left would take less than ``target_seconds``
        at the measured rate (measured on at least ``SHORT_RUN_EVIDENCE``
        replicates), that wait is shorter than one batch, while every batch
        more costs a round trip, which for tiny replicates on a cluster is
        most of the run: what is left then goes out as one batch a worker.
        """
        assert self.per_replicate is not None
        left = self.total - self.next_index
        part = -(-left // self.workers)
        if self.measured >= SHORT_RUN_EVIDENCE and part * self.per_replicate <= self.target_seconds:
            return max(self.share, part)
        return self.share

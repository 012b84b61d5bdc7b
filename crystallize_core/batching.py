"""Automatic batching of replicate indices, for strategies that ship work elsewhere.

Shipping one replicate per task lets messaging dominate tiny replicates;
shipping many at once leaves workers idle at the end of a run of long ones.
:class:`BatchSizer` starts at one replicate per batch and, as batches come
back, sizes the next ones so that each takes about ``target_seconds`` of
work, in the spirit of joblib's automatic batching, while cutting the run
into at least ``batches_per_worker`` batches per worker.
"""

from __future__ import annotations


class BatchSizer:
    """Hands out consecutive ranges of replicate indices, sized by measured speed."""

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
        self.share = max(1, total // (max(1, workers) * batches_per_worker))
        self.next_index = 0
        self.size = fixed or 1

    def next_span(self) -> range | None:
        """The next batch of fresh replicates, or None when all have been handed out."""
        if self.next_index >= self.total:
            return None
        span = range(self.next_index, min(self.next_index + self.size, self.total))
        self.next_index = span.stop
        return span

    def record(self, replicates: int, seconds: float) -> None:
        """A batch of ``replicates`` took ``seconds`` of work where it ran."""
        if self.fixed is not None or replicates <= 0:
            return
        per_replicate = seconds / replicates
        ideal = int(self.target_seconds / per_replicate) if per_replicate > 0 else self.max_batch
        self.size = max(1, min(ideal, self.share, self.max_batch))

"""What a run produces: one :class:`ReplicateResult` per replicate, gathered
into a :class:`Result`."""

from __future__ import annotations

import math
import traceback as _traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

BASELINE = "baseline"


class ReplicateError(NamedTuple):
    """An exception captured while running one condition of one replicate.

    Only text travels, so an exception class that cannot be pickled still
    reaches the result. ``condition`` is ``None`` when the error belongs to
    the replicate as a whole (a plugin hook, a worker that died).
    """

    replicate: int
    condition: str | None
    exc_type: str
    message: str
    traceback: str

    @classmethod
    def from_exception(cls, replicate: int, condition: str | None, exc: BaseException) -> ReplicateError:
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        try:
            message = str(exc)
        except Exception as str_failed:  # a broken __str__ must not lose the error
            message = f"<str() failed: {str_failed!r}>"
        text = "".join(_traceback.format_exception(kind, exc, exc.__traceback__))
        return cls(replicate, condition, name, message, text)

    def __str__(self) -> str:
        where = f"replicate {self.replicate}" + (f", condition {self.condition!r}" if self.condition else "")
        return f"{where}: {self.exc_type}: {self.message}"


class ReplicateResult(NamedTuple):
    """The outcome of one replicate: its seed, the metrics of each condition
    that finished, and the errors of those that did not."""

    replicate: int
    seed: int
    metrics: dict[str, dict[str, Any]]
    errors: tuple[ReplicateError, ...] = ()


def pack_results(results: Iterable[ReplicateResult]) -> list[tuple]:
    """Replicate results as plain tuples, for sending to another process.

    Plain tuples pickle about three times faster than named tuples; a strategy
    that ships results between processes packs them where replicates run and
    calls :func:`unpack_results` where the run is driven.
    """
    return [tuple(result) for result in results]


def unpack_results(rows: Iterable[tuple]) -> list[ReplicateResult]:
    """The inverse of :func:`pack_results`."""
    make = tuple.__new__
    return [make(ReplicateResult, row) for row in rows]


class MetricSummary(NamedTuple):
    """Count, mean and sample standard deviation of one metric's numeric values."""

    n: int
    mean: float
    std: float


class Result:
    """The result of :meth:`Experiment.run`.

    ``metrics[condition][name]`` lists one value per replicate, in replicate
    order, with ``None`` for a replicate whose condition failed or did not
    record that metric, so that lists of different conditions pair up.
    """

    def __init__(
        self,
        replicates: Sequence[ReplicateResult],
        conditions: Sequence[str],
        strategy: str | None = None,
        strategy_version: str | None = None,
        complete: bool = True,
    ):
        self.replicate_results: list[ReplicateResult] = list(replicates)
        self.conditions: tuple[str, ...] = tuple(conditions)
        #: Name of the strategy that ran the replicates.
        self.strategy = strategy
        #: Version of the distribution that provides the strategy, if known.
        self.strategy_version = strategy_version
        #: False for the partial result carried by :class:`ExperimentInterrupted`.
        self.complete = complete
        self.seeds: list[int] = [r.seed for r in self.replicate_results]
        self.errors: list[ReplicateError] = [e for r in self.replicate_results for e in r.errors]
        self.metrics: dict[str, dict[str, list[Any]]] = _align_metrics(self.replicate_results, self.conditions)

    @property
    def replicates(self) -> int:
        """How many replicates this result holds."""
        return len(self.replicate_results)

    def summary(self) -> dict[str, dict[str, MetricSummary]]:
        """Per condition and numeric metric: count, mean and standard deviation."""
        return {
            condition: {name: _summarize(values) for name, values in by_name.items() if _numeric(values)}
            for condition, by_name in self.metrics.items()
        }

    def format_summary(self) -> str:
        """A plain-text table of :meth:`summary` with each condition's error count."""
        header = ("condition", "metric", "n", "mean", "std")
        rows: list[tuple[str, ...]] = []
        error_counts = {c: 0 for c in self.conditions}
        for error in self.errors:
            for condition in [error.condition] if error.condition else self.conditions:
                error_counts[condition] = error_counts.get(condition, 0) + 1
        summary = self.summary()
        for condition in self.conditions:
            metrics = summary.get(condition, {})
            for name, s in metrics.items():
                rows.append((condition, name, str(s.n), f"{s.mean:.6g}", f"{s.std:.6g}" if s.n > 1 else "-"))
            if not metrics:
                rows.append((condition, "-", "0", "-", "-"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        errors = ", ".join(f"{c}: {error_counts.get(c, 0)}" for c in self.conditions)
        lines.append(f"errors: {errors}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready data (metric values are left as they are)."""
        return {
            "strategy": self.strategy,
            "strategy_version": self.strategy_version,
            "complete": self.complete,
            "replicates": self.replicates,
            "conditions": list(self.conditions),
            "seeds": self.seeds,
            "metrics": self.metrics,
            "summary": {c: {name: s._asdict() for name, s in by_name.items()} for c, by_name in self.summary().items()},
            "errors": [e._asdict() for e in self.errors],
        }

    def __repr__(self) -> str:
        return (
            f"Result(replicates={self.replicates}, conditions={list(self.conditions)}, "
            f"errors={len(self.errors)}, strategy={self.strategy!r})"
        )


def _align_metrics(results: Sequence[ReplicateResult], conditions: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    aligned: dict[str, dict[str, list[Any]]] = {c: {} for c in conditions}
    n = len(results)
    for position, result in enumerate(results):
        for condition, values in result.metrics.items():
            by_name = aligned.setdefault(condition, {})
            for name, value in values.items():
                column = by_name.get(name)
                if column is None:
                    column = by_name[name] = [None] * n
                column[position] = value
    return aligned


def _numeric(values: Iterable[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def _summarize(values: Iterable[Any]) -> MetricSummary:
    present = [float(v) for v in values if v is not None]
    n = len(present)
    mean = math.fsum(present) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in present) / (n - 1)) if n > 1 else 0.0
    return MetricSummary(n, mean, std)


def replicate_results_from(
    completed: Mapping[int, ReplicateResult] | Iterable[ReplicateResult],
) -> list[ReplicateResult]:
    """Sort finished replicate results by replicate index (for partial results)."""
    items = completed.values() if isinstance(completed, Mapping) else completed
    return sorted((r for r in items if r is not None), key=lambda r: r.replicate)

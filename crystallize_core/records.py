"""The records of a run, below everything else: what one replicate produced
([`ReplicateResult`][]) and the errors it captured ([`ReplicateError`][]).

Every layer above reads and writes these; this module imports nothing of
the core, so the contract (``hookspecs``), the replicate runner and the
machinery can all name them without reaching up to [`Result`][].
"""

from __future__ import annotations

import traceback as _traceback
from collections.abc import Iterable
from typing import Any, NamedTuple

#: The name of the condition every treatment is compared with.
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
    that finished, the errors of those that did not, and how long it took
    (seconds where it ran; None when unknown, as for a worker that died)."""

    replicate: int
    seed: int
    metrics: dict[str, dict[str, Any]]
    errors: tuple[ReplicateError, ...] = ()
    duration: float | None = None


def pack_results(results: Iterable[ReplicateResult]) -> list[tuple]:
    """Replicate results as plain tuples, for sending to another process.

    Plain tuples pickle about three times faster than named tuples; a strategy
    that ships results between processes packs them where replicates run and
    calls ``unpack_results`` where the run is driven.
    """
    return [tuple(result) for result in results]


def unpack_results(rows: Iterable[tuple]) -> list[ReplicateResult]:
    """The inverse of ``pack_results``."""
    make = tuple.__new__
    return [make(ReplicateResult, row) for row in rows]

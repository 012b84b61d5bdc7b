"""What [`Result`][crystallize_core.result.Result]'s statistics are made of: a
metric summarised over replicates, and a treatment's paired difference from
the baseline with its confidence interval."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from crystallize_core._values import FINITE, INF, NAN, NON_NUMERIC, classify, mean_and_std, plain, t_quantile


class PairedDifference(NamedTuple):
    """A treatment minus the baseline, replicate by replicate, with a confidence interval.

    Only replicates where both conditions recorded a finite number count
    (``n``). ``low`` and ``high`` bound the mean difference with Student's t
    interval at ``confidence``; they are None below two pairs, and ``mean``
    and ``std`` are None where undefined (no pair; fewer than two pairs).
    """

    n: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    confidence: float = 0.95


class MetricSummary(NamedTuple):
    """One metric of one condition, over the replicates.

    ``n``, ``mean`` and ``std`` (the sample standard deviation) cover the
    finite numbers only: Python and NumPy ints, floats and bools. The rest is
    counted, never averaged: ``nan``, ``inf`` (either sign, or an integer
    beyond a float's range) and ``non_numeric`` (strings, sequences, arrays,
    objects). ``mean`` is None when ``n`` is 0, ``std`` when ``n`` is below 2.
    For a treatment, ``difference`` is its paired difference against the
    baseline (see [`Result.paired_difference`][crystallize_core.result.Result.paired_difference]);
    None for the baseline.
    """

    n: int
    mean: float | None
    std: float | None
    nan: int = 0
    inf: int = 0
    non_numeric: int = 0
    difference: PairedDifference | None = None


def summarize(values: Iterable[Any]) -> MetricSummary:
    finite = array("d")  # 8 bytes a value: a million-replicate column costs no list of float objects
    counts = [0] * 5
    for value in values:
        kind, number = classify(value)
        if kind == FINITE:
            finite.append(number)
        else:
            counts[kind] += 1
    mean, std = mean_and_std(finite)
    return MetricSummary(len(finite), mean, std, counts[NAN], counts[INF], counts[NON_NUMERIC])


def paired(treated: Iterable[Any], reference: Iterable[Any], confidence: float) -> PairedDifference:
    differences = array("d")
    for a, b in zip(treated, reference):
        kind_a, x = classify(a)
        kind_b, y = classify(b)
        if kind_a == FINITE and kind_b == FINITE:
            difference = x - y
            if math.isfinite(difference):
                differences.append(difference)
    n = len(differences)
    mean, std = mean_and_std(differences)
    if n < 2 or mean is None or std is None:
        return PairedDifference(n, mean, std, None, None, confidence)
    half_width = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return PairedDifference(n, mean, std, mean - half_width, mean + half_width, confidence)


def mean_interval(summary: MetricSummary, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """``(low, high)``: Student's t interval of ``summary``'s mean at
    ``confidence``; ``(None, None)`` below two finite values."""
    if summary.n < 2 or summary.mean is None or summary.std is None:
        return None, None
    half_width = t_quantile(0.5 + confidence / 2, summary.n - 1) * summary.std / math.sqrt(summary.n)
    return summary.mean - half_width, summary.mean + half_width


def error_counts(errors: Iterable[Any], conditions: Sequence[str]) -> dict[str, int]:
    """How many errors each condition had; an error of the replicate as a
    whole (no condition) counts for every condition."""
    counts = {c: 0 for c in conditions}
    for error in errors:
        for condition in [error.condition] if error.condition else conditions:
            counts[condition] = counts.get(condition, 0) + 1
    return counts


def number_text(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.6g}" if sign else f"{value:.6g}"


def left_out_text(summary: MetricSummary) -> str:
    parts = [
        f"{count} {label}"
        for count, label in ((summary.nan, "nan"), (summary.inf, "inf"), (summary.non_numeric, "non-numeric"))
        if count
    ]
    return ", ".join(parts) or "-"


def summary_document(summary: MetricSummary) -> dict[str, Any]:
    document = {key: plain(value) for key, value in summary._asdict().items() if key != "difference"}
    difference = summary.difference
    document["difference"] = None if difference is None else {k: plain(v) for k, v in difference._asdict().items()}
    return document

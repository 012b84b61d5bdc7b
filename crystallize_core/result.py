"""What a run produces: one [`ReplicateResult`][] per replicate, gathered
into a [`Result`][]."""

from __future__ import annotations

import json
import math
import os
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any, NamedTuple

from crystallize_core._columns import ResultColumns
from crystallize_core._values import (
    FINITE,
    INF,
    MISSING,
    NAN,
    NON_NUMERIC,
    any_int_digits,
    classify,
    mean_and_std,
    plain,
    t_quantile,
)
from crystallize_core._version import __version__
from crystallize_core.errors import ConfigurationError, logger
from crystallize_core.records import BASELINE, ReplicateError
from crystallize_core.records import ReplicateResult as ReplicateResult  # where it was first defined


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
    baseline (see [`Result.paired_difference`][]); None for the baseline.
    """

    n: int
    mean: float | None
    std: float | None
    nan: int = 0
    inf: int = 0
    non_numeric: int = 0
    difference: PairedDifference | None = None


#: The file formats [`Result.save`][] writes, by file name extension.
OUTPUT_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
#: The columns of [`Result.to_records`][], in order.
RECORD_FIELDS = ("replicate", "seed", "condition", "metric", "value")


def output_format(path: str | os.PathLike) -> str:
    """The format [`Result.save`][] writes to ``path``: ``"json"``, ``"jsonl"`` or ``"csv"``.

    ``"-"`` means JSON on standard output. Raises
    [`ConfigurationError`][] for any other extension.
    """
    if str(path) == "-":
        return "json"
    suffix = os.path.splitext(str(path))[1].lower()
    found = OUTPUT_FORMATS.get(suffix)
    if found is None:
        raise ConfigurationError(
            f"cannot tell the output format of {str(path)!r}: name the file with one of "
            f"{', '.join(OUTPUT_FORMATS)} (JSON, JSON lines, CSV), or '-' for JSON on standard output"
        )
    return found


class Result:
    """The result of [`Experiment.run`][].

    ``metrics[condition][name]`` lists one value per replicate, in replicate
    order, with ``None`` for a replicate whose condition failed or did not
    record that metric, so that lists of different conditions pair up.
    ``replicate_indices`` says which replicate each position holds (all of
    them in order, unless the result is partial).

    What reproduces the run is kept beside it: the base seed, the strategy's
    name, version and options, each treatment's parameters, start and end
    times (seconds since the epoch) and each replicate's duration; with the
    versions of Python and of the Crystallize distributions, all of it is in
    [`to_dict`][].
    """

    def __init__(
        self,
        replicates: Sequence[ReplicateResult],
        conditions: Sequence[str],
        strategy: str | None = None,
        strategy_version: str | None = None,
        complete: bool = True,
        *,
        base_seed: int | None = None,
        strategy_options: Mapping[str, Any] | None = None,
        treatments: Mapping[str, Mapping[str, Any]] | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
        unsaved_replicates: Sequence[int] = (),
        identify_strategy: Callable[[], tuple[str, str | None]] | None = None,
    ):
        if isinstance(replicates, ResultColumns):
            columns = replicates.finish()
        else:
            given = list(replicates)
            columns = ResultColumns.of(given)
            self.replicate_results = given
        self._columns = columns
        self.conditions: tuple[str, ...] = tuple(conditions)
        self._strategy = strategy
        self._strategy_version = strategy_version
        # Finding which entry point names a strategy object reads package
        # metadata, which a run need not wait for: the run may pass
        # ``identify_strategy``, asked for the name and version when first read.
        self._identify_strategy = identify_strategy
        #: The options the strategy was configured with, as far as it tells (see [`to_dict`][]).
        self.strategy_options: dict[str, Any] = dict(strategy_options or {})
        #: False for the partial result carried by [`ExperimentInterrupted`][].
        self.complete = complete
        #: The seed each replicate's seed derives from (``crystallize run --seed`` takes it).
        self.base_seed = base_seed
        #: Per treatment: ``{"overrides": mapping or None, "function": "module.qualname" or None}``.
        self.treatments: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (treatments or {}).items()}
        #: When the run started and ended, in seconds since the epoch (None if unknown).
        self.started_at = started_at
        self.finished_at = finished_at
        #: The replicates a run with ``checkpoint=`` could not save there (a
        #: full disk, an I/O error, a value no row can hold): they are in
        #: this result, and a rerun with the checkpoint runs them again.
        self.unsaved_replicates: list[int] = list(unsaved_replicates)
        self.errors: list[ReplicateError] = columns.errors()

    @cached_property
    def replicate_results(self) -> list[ReplicateResult]:
        """Each replicate's [`ReplicateResult`][], in position order.

        A result built by a run keeps its replicates in columns; this list is
        made on first use (a million replicates take some 400 MB as objects).
        """
        return list(self._columns)

    @cached_property
    def seeds(self) -> list[int]:
        """Each replicate's seed, in position order."""
        return self._columns.seeds()

    @cached_property
    def metrics(self) -> dict[str, dict[str, list[Any]]]:
        """``metrics[condition][name]``: one value per replicate, in position
        order, ``None`` where the replicate's condition failed or did not
        record that metric (made on first use)."""
        columns = self._columns
        aligned: dict[str, dict[str, list[Any]]] = {c: {} for c in self.conditions}
        for condition, by_name in columns.metric_columns().items():
            into = aligned.setdefault(condition, {})
            for name, column in by_name.items():
                into[name] = columns.column_values(column)
        return aligned

    @property
    def strategy(self) -> str | None:
        """Name of the strategy that ran the replicates."""
        self._identified()
        return self._strategy

    @strategy.setter
    def strategy(self, name: str | None) -> None:
        self._identify_strategy = None
        self._strategy = name

    @property
    def strategy_version(self) -> str | None:
        """Version of the distribution that provides the strategy, if known."""
        self._identified()
        return self._strategy_version

    @strategy_version.setter
    def strategy_version(self, version: str | None) -> None:
        self._identified()
        self._strategy_version = version

    def _identified(self) -> None:
        identify = self._identify_strategy
        if identify is not None:
            self._identify_strategy = None
            self._strategy, self._strategy_version = identify()

    def __getstate__(self) -> dict[str, Any]:
        self._identified()
        return self.__dict__

    @property
    def replicates(self) -> int:
        """How many replicates this result holds."""
        return len(self._columns)

    @property
    def replicate_indices(self) -> list[int]:
        """The replicate index at each position of the per-replicate lists."""
        return self._columns.indices()

    @property
    def durations(self) -> list[float | None]:
        """Seconds each replicate took where it ran, in position order (None if unknown)."""
        return self._columns.durations()

    def _metric_values(self) -> dict[str, dict[str, Iterable[Any]]]:
        """[`metrics`][], as lists where they were made, else as views of the columns."""
        made = self.__dict__.get("metrics")
        if made is not None:
            return made
        columns = self._columns
        values: dict[str, dict[str, Iterable[Any]]] = {c: {} for c in self.conditions}
        for condition, by_name in columns.metric_columns().items():
            into = values.setdefault(condition, {})
            for name, column in by_name.items():
                into[name] = _ColumnValues(columns, column)
        return values

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state.setdefault("unsaved_replicates", [])  # pickled before checkpoints said what they could not save
        if "_strategy" not in state:  # pickled before the strategy was named when first asked
            state["_strategy"] = state.pop("strategy", None)
            state["_strategy_version"] = state.pop("strategy_version", None)
            state["_identify_strategy"] = None
        self.__dict__.update(state)
        if "_columns" not in state:  # pickled before results were kept in columns
            self._columns = ResultColumns.of(self.replicate_results)

    # --- statistics -------------------------------------------------------------------

    def summary(self) -> dict[str, dict[str, MetricSummary]]:
        """Per condition and metric: a [`MetricSummary`][], with each
        treatment's paired difference against the baseline at 95%."""
        summaries: dict[str, dict[str, MetricSummary]] = {}
        metrics = self._metric_values()
        reference = metrics.get(BASELINE, {})
        for condition, by_name in metrics.items():
            summaries[condition] = {}
            for name, values in by_name.items():
                summary = _summarize(values)
                if condition != BASELINE and name in reference:
                    summary = summary._replace(difference=_paired(values, reference[name], 0.95))
                summaries[condition][name] = summary
        return summaries

    def paired_difference(
        self, treatment: str, metric: str, baseline: str = BASELINE, confidence: float = 0.95
    ) -> PairedDifference:
        """``treatment`` minus ``baseline`` for ``metric``, replicate by replicate.

        Conditions are paired by replicate: both ran with the replicate's seed.
        The mean difference comes with Student's t interval at ``confidence``
        over the replicates where both recorded a finite number. Raises
        [`KeyError`][] naming what is missing.
        """
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
        return _paired(self._column(treatment, metric), self._column(baseline, metric), confidence)

    def compare(self, baseline: str = BASELINE, confidence: float = 0.95) -> dict[str, dict[str, PairedDifference]]:
        """[`paired_difference`][] of every other condition against ``baseline``,
        for each metric both recorded: ``{treatment: {metric: PairedDifference}}``."""
        metrics = self._metric_values()
        reference = metrics.get(baseline)
        if reference is None:
            raise KeyError(f"no condition named {baseline!r}; conditions: {', '.join(self.conditions)}")
        return {
            condition: {
                name: self.paired_difference(condition, name, baseline, confidence)
                for name in by_name
                if name in reference
            }
            for condition, by_name in metrics.items()
            if condition != baseline
        }

    def _column(self, condition: str, metric: str) -> Iterable[Any]:
        by_name = self._metric_values().get(condition)
        if by_name is None:
            raise KeyError(f"no condition named {condition!r}; conditions: {', '.join(self.conditions)}")
        if metric not in by_name:
            known = ", ".join(map(repr, by_name)) or "none"
            raise KeyError(f"condition {condition!r} recorded no metric {metric!r} (metrics: {known})")
        return by_name[metric]

    def format_summary(self) -> str:
        """A plain-text table of [`summary`][]: n, mean and std per condition and
        metric, each treatment's paired difference against the baseline with its
        95% interval, the values left out of the statistics, and the error counts."""
        header = ("condition", "metric", "n", "mean", "std", "diff vs baseline", "95% CI", "not counted")
        rows: list[tuple[str, ...]] = []
        error_counts = {c: 0 for c in self.conditions}
        for error in self.errors:
            for condition in [error.condition] if error.condition else self.conditions:
                error_counts[condition] = error_counts.get(condition, 0) + 1
        summary = self.summary()
        for condition in self.conditions:
            metrics = summary.get(condition, {})
            for name, s in metrics.items():
                d = s.difference
                rows.append(
                    (
                        condition,
                        name,
                        str(s.n),
                        _number(s.mean),
                        _number(s.std),
                        "-" if d is None else _number(d.mean, sign=True),
                        "-" if d is None or d.low is None else f"[{_number(d.low)}, {_number(d.high)}]",
                        _left_out(s),
                    )
                )
            if not metrics:
                rows.append((condition, "-", "0", "-", "-", "-", "-", "-"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        errors = ", ".join(f"{c}: {error_counts.get(c, 0)}" for c in self.conditions)
        lines.append(f"errors: {errors}")
        return "\n".join(lines)

    # --- output -------------------------------------------------------------------------

    def to_records(self) -> list[dict[str, Any]]:
        """The metrics as a tidy table: one row per replicate, condition and metric.

        Each row is ``{"replicate", "seed", "condition", "metric", "value"}``
        with the value as recorded. Conditions that failed have no rows.
        """
        rows = []
        for result in self._columns:
            for condition, values in result.metrics.items():
                for name, value in values.items():
                    rows.append(
                        {
                            "replicate": result.replicate,
                            "seed": result.seed,
                            "condition": condition,
                            "metric": name,
                            "value": value,
                        }
                    )
        return rows

    def to_pandas(self) -> Any:
        """[`to_records`][] as a ``pandas.DataFrame`` with those five columns.

        Needs pandas: ``pip install 'crystallize-core[pandas]'``.
        """
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "Result.to_pandas() needs pandas, which is not installed: "
                "pip install 'crystallize-core[pandas]' (or pip install pandas)"
            ) from None
        return pandas.DataFrame.from_records(self.to_records(), columns=list(RECORD_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        """The whole result and what reproduces it, as data that is strict JSON.

        Metric values are made JSON as ``crystallize_core._values.plain``
        says: NaN and the infinities become the strings ``"NaN"``,
        ``"Infinity"`` and ``"-Infinity"``, NumPy values Python numbers and
        lists, other objects their ``repr``. Times are ISO 8601 in UTC.
        """
        from crystallize_core._secrets import masked  # only a run that saves reads secrets' names

        summary = {
            condition: {name: _summary_dict(s) for name, s in by_name.items()}
            for condition, by_name in self.summary().items()
        }
        return {
            "complete": self.complete,
            "replicates": self.replicates,
            "replicate_indices": self.replicate_indices,
            "conditions": list(self.conditions),
            "treatments": plain(self.treatments),
            "base_seed": self.base_seed,
            "strategy": self.strategy,
            "strategy_version": self.strategy_version,
            "strategy_options": masked(plain(self.strategy_options)),  # reprs of objects may show secrets
            "crystallize_core_version": __version__,
            "versions": installed_versions(),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "seeds": self.seeds,
            "durations": self.durations,
            "metrics": self._plain_metrics(),
            "summary": summary,
            "errors": [e._asdict() for e in self.errors],
            "unsaved_replicates": list(self.unsaved_replicates),
        }

    def _plain_metrics(self) -> dict[str, dict[str, list[Any]]]:
        unwritable = _Unwritable()
        indices = self.replicate_indices
        metrics = {
            str(condition): {
                str(name): [
                    unwritable.convert(plain, value, indices[position], condition, name)
                    for position, value in enumerate(values)
                ]
                for name, values in by_name.items()
            }
            for condition, by_name in self._metric_values().items()
        }
        unwritable.report()
        return metrics

    def to_json(self, indent: int | None = 2) -> str:
        """[`to_dict`][] as strict JSON text (never a bare ``NaN`` or ``Infinity``).

        An int of any length is written exactly, also beyond Python's limit on
        converting ints to text (``sys.get_int_max_str_digits()``); reading
        such a number back with [`json.loads`][] needs that limit lifted
        (``sys.set_int_max_str_digits(0)``).
        """
        document = self.to_dict()
        with any_int_digits:
            return json.dumps(document, indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the result to ``path`` in the format its extension names.

        ``.json``: [`to_json`][], everything. ``.jsonl`` (or ``.ndjson``):
        one JSON object per line, the rows of [`to_records`][]. ``.csv``: the
        same rows as CSV with a header; non-finite floats are written ``nan``,
        ``inf`` and ``-inf``, sequences and mappings as JSON, None as an empty
        field, and text that a spreadsheet would run as a formula with a
        quote in front (see ``csv_text_cell``).
        Ints of any length are written exactly. ``"-"`` writes JSON to
        standard output. Any other extension is a [`ConfigurationError`][],
        raised before writing.
        """
        chosen = output_format(path)
        if str(path) == "-":
            sys.stdout.write(self.to_json() + "\n")
            sys.stdout.flush()
            return
        if chosen == "json":
            text = self.to_json() + "\n"
        else:
            records = self.to_records()
            with any_int_digits:
                if chosen == "jsonl":
                    text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in _plain_rows(records))
                else:
                    text = _csv_text(records)
        try:  # a file name Python decoded with surrogateescape goes back to its bytes
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # another lone surrogate: written as its escape, never losing the output
            data = text.encode("utf-8", "backslashreplace")
        with open(path, "wb") as file:
            file.write(data)

    def __repr__(self) -> str:
        return (
            f"Result(replicates={self.replicates}, conditions={list(self.conditions)}, "
            f"errors={len(self.errors)}, strategy={self.strategy!r})"
        )


class _ColumnValues:
    """One metric's values, read from the columns each time it is iterated
    (None where a replicate recorded none), so statistics need no list."""

    __slots__ = ("column", "columns")

    def __init__(self, columns: Any, column: Any):
        self.columns = columns
        self.column = column

    def __iter__(self) -> Iterator[Any]:
        return self.columns.iterate_values(self.column)

    def __len__(self) -> int:
        return len(self.columns)


def _summarize(values: Iterable[Any]) -> MetricSummary:
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


def _paired(treated: Iterable[Any], reference: Iterable[Any], confidence: float) -> PairedDifference:
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


def _number(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.6g}" if sign else f"{value:.6g}"


def _left_out(summary: MetricSummary) -> str:
    parts = [
        f"{count} {label}"
        for count, label in ((summary.nan, "nan"), (summary.inf, "inf"), (summary.non_numeric, "non-numeric"))
        if count
    ]
    return ", ".join(parts) or "-"


def _summary_dict(summary: MetricSummary) -> dict[str, Any]:
    document = {key: plain(value) for key, value in summary._asdict().items() if key != "difference"}
    difference = summary.difference
    document["difference"] = None if difference is None else {k: plain(v) for k, v in difference._asdict().items()}
    return document


def _csv_text(records: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The writer quotes a cell holding "\n" but not one holding a lone "\r",
    # which readers take for the end of a line: such rows are quoted whole.
    quoting_all = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(RECORD_FIELDS)
    unwritable = _Unwritable()
    for row in records:
        cells = [
            row["replicate"],
            row["seed"],
            csv_text_cell(str(row["condition"])),
            csv_text_cell(str(row["metric"])),
            unwritable.convert(_csv_value, row["value"], row["replicate"], row["condition"], row["metric"]),
        ]
        (quoting_all if any("\r" in str(cell) for cell in cells[2:]) else writer).writerow(cells)
    unwritable.report()
    return buffer.getvalue()


def _plain_rows(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    unwritable = _Unwritable()
    for row in records:
        value = unwritable.convert(plain, row["value"], row["replicate"], row["condition"], row["metric"])
        yield {**{key: plain(item) for key, item in row.items() if key != "value"}, "value": value}
    unwritable.report()


class _Unwritable:
    """Metric values that cannot be written (a ``repr`` that raises, a list
    holding itself): each costs only itself, written as null, and one warning
    names them, rather than the whole output failing."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def convert(self, convert: Callable[[Any], Any], value: Any, replicate: int, condition: str, name: str) -> Any:
        try:
            return convert(value)
        except Exception as exc:  # RecursionError and MemoryError included: the value, not the run
            self.failures.append(
                f"metric {name!r} of replicate {replicate}, condition {condition!r} ({type(exc).__name__}: {exc})"
            )
            return None

    def report(self) -> None:
        failures = self.failures
        if failures:
            shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
            logger().warning(
                "%d metric value(s) cannot be written and are left out (empty) of the output: %s", len(failures), shown
            )
            self.failures = []


#: What a spreadsheet may read as the start of a formula (OWASP's list), and
#: the quote that neutralises it, which is itself escaped so that it reads back.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_text_cell(text: str) -> str:
    """``text`` as a CSV cell that no spreadsheet runs as a formula.

    Text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
    gets a single quote in front, as OWASP recommends against CSV injection;
    so does text starting with a quote, so that dropping the first character
    of any text cell starting with ``'`` gives back what was recorded. Numbers
    are never passed here: ``-1.5`` stays a number.
    """
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_value(value: Any) -> str:
    kind, _ = classify(value)
    if kind == MISSING:
        return ""
    made = plain(value)
    if kind == NAN:
        return "nan"
    if kind == INF and isinstance(made, str):  # a float infinity, not a huge integer
        return "-inf" if made.startswith("-") else "inf"
    if kind != NON_NUMERIC:  # a number, written as one
        return str(made)
    if isinstance(made, (list, dict)):
        return json.dumps(made, allow_nan=False)
    return csv_text_cell(str(made))


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    import datetime

    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).isoformat()


def installed_versions() -> dict[str, str]:
    """The versions of Python and of every installed Crystallize distribution
    (the core and each distribution that provides a strategy)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "crystallize-core": __version__}
    for entry_point in metadata.entry_points(group="crystallize.strategies"):
        distribution = getattr(entry_point, "dist", None)
        if distribution is not None:
            versions.setdefault(distribution.metadata["Name"], distribution.version)
    return versions

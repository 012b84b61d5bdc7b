"""What a run produces: one [`ReplicateResult`][] per replicate, gathered
into a [`Result`][]."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

from crystallize_core._columns import ResultColumns
from crystallize_core._export import (
    DOCUMENT_FORMAT,
    DOCUMENT_VERSION,
    RECORD_FIELDS,
    Unwritable,
    csv_text,
    installed_versions,
    iso_time,
    plain_rows,
)
from crystallize_core._export import OUTPUT_FORMATS as OUTPUT_FORMATS
from crystallize_core._export import csv_text_cell as csv_text_cell
from crystallize_core._export import output_format as output_format
from crystallize_core._values import INF, INF_JSON, NAN, NAN_JSON, NEG_INF_JSON, any_int_digits, classify, plain
from crystallize_core._version import __version__
from crystallize_core.records import BASELINE, ReplicateError
from crystallize_core.records import ReplicateResult as ReplicateResult  # where it was first defined
from crystallize_core.summaries import (  # MetricSummary and PairedDifference: where they were first defined
    MetricSummary,
    PairedDifference,
    error_counts,
    left_out_text,
    number_text,
    paired,
    summarize,
    summary_document,
)


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
        #: ``(crystallize_core_version, versions)`` as a loaded file recorded
        #: them: saving it again keeps what the run ran with, not what reads it.
        self._saved_versions: tuple[Any, Any] | None = None

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
        state.setdefault("_saved_versions", None)  # pickled before results were read back from files
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
                summary = summarize(values)
                if condition != BASELINE and name in reference:
                    summary = summary._replace(difference=paired(values, reference[name], 0.95))
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
        return paired(self._column(treatment, metric), self._column(baseline, metric), confidence)

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

    def format_summary(self, metrics: Iterable[str] | None = None) -> str:
        """A plain-text table of [`summary`][]: n, mean and std per condition and
        metric, each treatment's paired difference against the baseline with its
        95% interval, the values left out of the statistics, and the error counts.

        ``metrics`` names the metrics to show (default: all).
        """
        header = ("condition", "metric", "n", "mean", "std", "diff vs baseline", "95% CI", "not counted")
        rows: list[tuple[str, ...]] = []
        counts = error_counts(self.errors, self.conditions)
        chosen = None if metrics is None else set(metrics)
        summary = self.summary()
        for condition in self.conditions:
            metrics_of = summary.get(condition, {})
            shown = [(name, s) for name, s in metrics_of.items() if chosen is None or name in chosen]
            for name, s in shown:
                d = s.difference
                rows.append(
                    (
                        condition,
                        name,
                        str(s.n),
                        number_text(s.mean),
                        number_text(s.std),
                        "-" if d is None else number_text(d.mean, sign=True),
                        "-" if d is None or d.low is None else f"[{number_text(d.low)}, {number_text(d.high)}]",
                        left_out_text(s),
                    )
                )
            if not shown:
                rows.append((condition, "-", "0", "-", "-", "-", "-", "-"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        errors = ", ".join(f"{c}: {counts.get(c, 0)}" for c in self.conditions)
        lines.append(f"errors: {errors}")
        return "\n".join(lines)

    # --- display ------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        """The summary as an HTML table, which Jupyter shows for a result: per
        condition and metric n, mean and its 95% interval, each treatment's
        paired difference from the baseline with its interval, the values not
        counted, and each condition's errors. Every name is escaped."""
        from crystallize_core._display import html_table  # loaded when a result is shown: a run needs none of it

        return html_table(self)

    def plot(
        self,
        metrics: str | Iterable[str] | None = None,
        *,
        conditions: Iterable[str] | None = None,
        baseline: str = BASELINE,
        confidence: float = 0.95,
    ) -> Any:
        """Draw, per metric, each condition's mean with its interval and each
        treatment's paired difference from ``baseline`` with its interval,
        labelled with the conditions' names; return the ``matplotlib.figure.Figure``.

        One row of axes per metric: the means on the left, the differences on
        the right (with a line at zero). ``metrics`` names the metrics to draw
        (default: every metric with a finite number); ``conditions`` the
        conditions (default: all; the baseline is always drawn). Intervals are
        Student's t at ``confidence``; a condition with fewer than two finite
        values is drawn as a point without one. The figure is made without
        pyplot: in a notebook it shows as a cell's value, and
        ``result.plot().savefig("result.png")`` writes it.

        Needs matplotlib: ``pip install 'crystallize-core[plot]'``.
        """
        from crystallize_core._display import plot  # loaded when a result is plotted: a run needs none of it

        return plot(self, metrics, conditions, baseline, confidence)

    def summary_frame(self, baseline: str = BASELINE, confidence: float = 0.95) -> Any:
        """[`summary`][] as a ``pandas.DataFrame``, one row per condition and metric.

        Columns: ``condition``, ``metric``, ``n``, ``mean``, ``std``, ``low``
        and ``high`` (the mean's interval at ``confidence``), ``nan``, ``inf``,
        ``non_numeric`` (the values not counted), and for a treatment its
        paired difference from ``baseline``: ``pairs``, ``difference``,
        ``difference_low``, ``difference_high``. What is undefined is NaN.

        Needs pandas: ``pip install 'crystallize-core[pandas]'``.
        """
        from crystallize_core._display import summary_frame  # loaded when asked: a run needs no pandas

        return summary_frame(self, baseline, confidence)

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
        records = self.to_records()
        columns = {}
        for field in RECORD_FIELDS:
            values = [record[field] for record in records]
            try:
                columns[field] = pandas.Series(values)
            except OverflowError:  # pandas 2 infers floats for ints beyond a float's range, and fails
                columns[field] = pandas.Series(values, dtype=object)
        return pandas.DataFrame(columns)

    def to_dict(self) -> dict[str, Any]:
        """The whole result and what reproduces it, as data that is strict JSON.

        Metric values are made JSON as ``crystallize_core._values.plain``
        says: NaN and the infinities become the strings ``"NaN"``,
        ``"Infinity"`` and ``"-Infinity"``, NumPy values Python numbers and
        lists, other objects their ``repr``. Times are ISO 8601 in UTC.

        What [`load`][] needs beyond the aligned metric lists is kept too:
        ``layouts`` and ``layout_of`` say which conditions each replicate
        finished and which metrics each recorded, in order (a failed condition
        and a metric recorded as None both read None in ``metrics``);
        ``literal_text`` lists the positions whose value is the text
        ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` itself, not a float.
        ``format`` and ``format_version`` say what the document is.
        """
        from crystallize_core._secrets import masked  # only a run that saves reads secrets' names

        summary = {
            condition: {name: summary_document(s) for name, s in by_name.items()}
            for condition, by_name in self.summary().items()
        }
        metrics, literal_text = self._plain_metrics()
        layouts, layout_of = self._columns.layouts()
        if self._saved_versions is None:
            core_version, versions = __version__, installed_versions()
        else:
            core_version, versions = self._saved_versions
        return {
            "format": DOCUMENT_FORMAT,
            "format_version": DOCUMENT_VERSION,
            "complete": self.complete,
            "replicates": self.replicates,
            "replicate_indices": self.replicate_indices,
            "conditions": list(self.conditions),
            "treatments": plain(self.treatments),
            "base_seed": self.base_seed,
            "strategy": self.strategy,
            "strategy_version": self.strategy_version,
            "strategy_options": masked(plain(self.strategy_options)),  # reprs of objects may show secrets
            "crystallize_core_version": core_version,
            "versions": versions,
            "started_at": iso_time(self.started_at),
            "finished_at": iso_time(self.finished_at),
            "seeds": self.seeds,
            "durations": self.durations,
            "metrics": metrics,
            "literal_text": literal_text,
            "layouts": [[[condition, list(names)] for condition, names in layout] for layout in layouts],
            "layout_of": layout_of,
            "summary": summary,
            "errors": [e._asdict() for e in self.errors],
            "unsaved_replicates": list(self.unsaved_replicates),
        }

    def _plain_metrics(self) -> tuple[dict[str, dict[str, list[Any]]], dict[str, dict[str, list[int]]]]:
        """The metrics made JSON, and where a value is text spelt as JSON
        spells a non-finite float (``"NaN"``), which reads back as text."""
        unwritable = Unwritable()
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
        literal_text: dict[str, dict[str, list[int]]] = {}
        for condition, by_name in metrics.items():
            for name, made in by_name.items():
                if not any(spelt in made for spelt in _FLOAT_SPELLINGS):  # most columns: scanned in C
                    continue
                positions = {p for p, value in enumerate(made) if type(value) is str and value in _FLOAT_SPELLINGS}
                if positions:  # rare: only then are the recorded values read again
                    recorded = self._column(condition, name)
                    kept = [p for p, value in enumerate(recorded) if p in positions and _not_a_float(value)]
                    if kept:
                        literal_text.setdefault(condition, {})[name] = kept
        return metrics, literal_text

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
                    text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in plain_rows(records))
                else:
                    text = csv_text(records)
        try:  # a file name Python decoded with surrogateescape goes back to its bytes
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # another lone surrogate: written as its escape, never losing the output
            data = text.encode("utf-8", "backslashreplace")
        with open(path, "wb") as file:
            file.write(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        """The result that [`save`][] wrote to ``path``, in the format its extension names.

        ``.json`` gives the result in full: the conditions in order, each
        replicate's seed, metrics, errors and duration, which conditions
        finished and which metrics each recorded, each treatment's parameters,
        and the run's record (strategy, options, base seed, times, versions).
        Values read back as the JSON holds them: NumPy numbers as Python
        numbers, arrays and tuples as lists, other objects as their ``repr``,
        so that the statistics are those of the original.

        ``.jsonl`` and ``.csv`` hold the tidy rows only: replicates, seeds,
        conditions and metric values. Left out: errors, durations, treatment
        parameters, the run's record, a condition or replicate that recorded
        no metric at all (the baseline is always a condition), and whether
        the run was complete. They cannot tell text spelt as a non-finite
        float (``"NaN"``; in CSV ``nan``, ``inf``) from the float, and in CSV
        text that reads as a number (``"1.5"``, ``"True"``) from the number,
        nor an empty text from None. Text cells that ``csv_text_cell``
        quoted read back as recorded.

        ``"-"`` reads JSON from standard input. A file that cannot be read
        (empty, truncated, corrupt, another program's, written by a newer
        Crystallize) raises [`ResultFileError`][crystallize_core.errors.ResultFileError],
        an unknown extension too.
        """
        from crystallize_core._load import load  # reading files back: a run never needs it

        return load(path, cls)

    def __repr__(self) -> str:
        return (
            f"Result(replicates={self.replicates}, conditions={list(self.conditions)}, "
            f"errors={len(self.errors)}, strategy={self.strategy!r})"
        )


_FLOAT_SPELLINGS = frozenset((NAN_JSON, INF_JSON, NEG_INF_JSON))


def _not_a_float(value: Any) -> bool:
    return classify(value)[0] not in (NAN, INF)


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

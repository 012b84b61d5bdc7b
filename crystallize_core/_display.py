"""How a [`Result`][crystallize_core.result.Result] is shown: an HTML table for
notebooks, a matplotlib figure of means and paired differences, and the
summary as a pandas DataFrame.

matplotlib and pandas are imported by the function that needs them, never by
this module: a run, and ``import crystallize_core``, load neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from html import escape
from typing import Any

from crystallize_core.records import BASELINE
from crystallize_core.summaries import error_counts, left_out_text, mean_interval, number_text

#: What to install for each optional feature, for the error that says so.
_PLOT_NEEDS = (
    "Result.plot() needs matplotlib, which is not installed: "
    "pip install 'crystallize-core[plot]' (or pip install matplotlib)"
)
_FRAME_NEEDS = (
    "Result.summary_frame() needs pandas, which is not installed: "
    "pip install 'crystallize-core[pandas]' (or pip install pandas)"
)


# --- HTML --------------------------------------------------------------------------------------


def html_table(result: Any) -> str:
    """The summary of ``result`` as an HTML table; every user string escaped."""
    summary = result.summary()
    conditions = list(result.conditions)
    counts = error_counts(result.errors, conditions)
    strategy = result.strategy
    facts = [f"{result.replicates} replicate{'s' if result.replicates != 1 else ''}"]
    if strategy:
        facts.append(f"strategy {strategy} {result.strategy_version or ''}".rstrip())
    if not result.complete:
        facts.append("partial: the run was stopped")
    errors = len(result.errors)
    facts.append(f"{errors} error{'s' if errors != 1 else ''}")
    header = (
        "condition",
        "metric",
        "n",
        "mean",
        "95% interval",
        f"difference from {BASELINE}",
        "95% interval",
        "not counted",
        "errors",
    )
    parts = [
        '<div class="crystallize-result">',
        f"<p><strong>Result</strong>: {escape(', '.join(facts))}</p>",
        "<table>",
        "<thead><tr>" + "".join(f"<th>{escape(cell)}</th>" for cell in header) + "</tr></thead>",
        "<tbody>",
    ]
    for condition in conditions:
        by_name = list(summary.get(condition, {}).items())
        span = max(len(by_name), 1)
        spanned = f' rowspan="{span}"' if span > 1 else ""
        name_cell = f'<th{spanned} style="text-align:left">{escape(condition)}</th>'
        errors_cell = f"<td{spanned}>{counts.get(condition, 0)}</td>"
        if not by_name:
            parts.append(f"<tr>{name_cell}<td>-</td><td>0</td>" + "<td>-</td>" * 5 + f"{errors_cell}</tr>")
            continue
        for row, (name, s) in enumerate(by_name):
            low, high = mean_interval(s)
            d = s.difference
            cells = [
                escape(name),
                str(s.n),
                number_text(s.mean),
                _interval_text(low, high),
                "-" if d is None else number_text(d.mean, sign=True),
                "-" if d is None else _interval_text(d.low, d.high),
                escape(left_out_text(s)),
            ]
            first = name_cell if row == 0 else ""
            last = errors_cell if row == 0 else ""
            parts.append(f"<tr>{first}" + "".join(f"<td>{cell}</td>" for cell in cells) + f"{last}</tr>")
    parts += ["</tbody>", "</table>"]
    if result.errors:
        shown = result.errors[:5]
        more = f"<li>... and {errors - len(shown)} more</li>" if errors > len(shown) else ""
        items = "".join(f"<li><code>{escape(str(error))}</code></li>" for error in shown)
        parts.append(f"<details><summary>errors</summary><ul>{items}{more}</ul></details>")
    parts.append("</div>")
    return "\n".join(parts)


def _interval_text(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{number_text(low)}, {number_text(high)}]"


# --- the summary as a DataFrame --------------------------------------------------------------------

_FRAME_COLUMNS = (
    "condition",
    "metric",
    "n",
    "mean",
    "std",
    "low",
    "high",
    "nan",
    "inf",
    "non_numeric",
    "pairs",
    "difference",
    "difference_low",
    "difference_high",
)
_FLOAT_COLUMNS = ("mean", "std", "low", "high", "difference", "difference_low", "difference_high")


def summary_frame(result: Any, baseline: str, confidence: float) -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError(_FRAME_NEEDS) from None
    rows = []
    for condition, metric, s, d in _statistics(result, None, None, baseline, confidence):
        low, high = mean_interval(s, confidence)
        rows.append(
            (
                condition,
                metric,
                s.n,
                s.mean,
                s.std,
                low,
                high,
                s.nan,
                s.inf,
                s.non_numeric,
                None if d is None else d.n,
                None if d is None else d.mean,
                None if d is None else d.low,
                None if d is None else d.high,
            )
        )
    frame = pandas.DataFrame(rows, columns=list(_FRAME_COLUMNS))
    frame = frame.astype({name: float for name in _FLOAT_COLUMNS})
    return frame.astype({"pairs": "Int64"})


def _statistics(
    result: Any, metrics: list[str] | None, conditions: list[str] | None, baseline: str, confidence: float
) -> Iterable[tuple[str, str, Any, Any]]:
    """``(condition, metric, summary, difference or None)`` in the result's
    order of conditions and metrics, the difference against ``baseline``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    summary = result.summary()
    reference = summary.get(baseline, {})
    for condition in result.conditions:
        if conditions is not None and condition not in conditions and condition != baseline:
            continue
        for metric, s in summary.get(condition, {}).items():
            if metrics is not None and metric not in metrics:
                continue
            d = None
            if condition != baseline and metric in reference:
                d = result.paired_difference(condition, metric, baseline, confidence)
            yield condition, metric, s, d


# --- the plot ----------------------------------------------------------------------------------------


def plot(
    result: Any,
    metrics: str | Iterable[str] | None,
    conditions: Iterable[str] | None,
    baseline: str,
    confidence: float,
) -> Any:
    figure_type = _figure_type()
    recorded = _metric_names(result)
    chosen_conditions = None if conditions is None else _known(list(conditions), list(result.conditions), "condition")
    if baseline not in result.conditions:
        known = ", ".join(map(repr, result.conditions))
        raise KeyError(f"no condition named {baseline!r} to compare with; conditions: {known}")
    if metrics is None:
        names = [name for name, numbers in recorded.items() if numbers]
        if not names:
            raise ValueError("nothing to plot: no metric of this result recorded a finite number")
    else:
        names = _known([metrics] if isinstance(metrics, str) else list(metrics), list(recorded), "metric")
    statistics = list(_statistics(result, names, chosen_conditions, baseline, confidence))
    differences = any(d is not None for *_, d in statistics)
    shown = [c for c in result.conditions if chosen_conditions is None or c in chosen_conditions or c == baseline]
    height = max(1.6, 0.45 * len(shown) + 1.0)  # room for every condition's name
    figure = figure_type(figsize=(10.0 if differences else 5.5, height * len(names)), layout="constrained")
    grid = figure.subplots(len(names), 2 if differences else 1, squeeze=False)
    level = f"{confidence:.0%}" if round(confidence * 100, 6) == round(confidence * 100) else f"{confidence:.1%}"
    for axes, metric in zip(grid, names):
        rows = [(c, s, d) for c, m, s, d in statistics if m == metric]
        means = [(c, s.mean, *mean_interval(s, confidence)) for c, s, _ in rows]
        _draw_intervals(axes[0], means, f"{metric}: mean", f"mean ({level} interval)")
        if differences:
            paired = [(c, d.mean, d.low, d.high) for c, _, d in rows if d is not None]
            _draw_intervals(
                axes[1], paired, f"{metric}: difference from {baseline}", f"paired difference ({level} interval)"
            )
            axes[1].axvline(0.0, color="0.5", linewidth=1, linestyle="--")
    return figure


@lru_cache(maxsize=1)
def _figure_type() -> Any:
    """A matplotlib ``Figure`` that shows itself as a PNG in a notebook.

    The figure is made without pyplot, so no global figure is left behind and
    no window opens; but IPython shows a Figure as an image only where
    pyplot's inline backend was loaded. ``_repr_png_`` makes it show whatever
    the user imported.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(_PLOT_NEEDS) from None

    class ResultFigure(Figure):
        def _repr_png_(self) -> bytes:
            import io

            buffer = io.BytesIO()
            self.savefig(buffer, format="png")
            return buffer.getvalue()

    return ResultFigure


def _draw_intervals(ax: Any, points: list[tuple[str, Any, Any, Any]], title: str, label: str) -> None:
    """One row per ``(name, value, low, high)``, top to bottom, the names as tick labels."""
    positions = list(range(len(points)))
    values = [_number(value) for _, value, _, _ in points]
    below = [_spread(value, low, value) for _, value, low, _ in points]
    above = [_spread(value, value, high) for _, value, _, high in points]
    if points:
        ax.errorbar(values, positions, xerr=[below, above], fmt="o", capsize=4)
    # Names are shown as given: a "$" in a name is not the start of TeX.
    ax.set_yticks(positions, [name for name, *_ in points], parse_math=False)
    ax.set_ylim(len(points) - 0.5, -0.5)
    ax.set_title(title, parse_math=False)
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _spread(value: Any, low: Any, high: Any) -> float:
    """The length of one arm of an error bar: 0 where the interval is unknown or unbounded."""
    if value is None or low is None or high is None:
        return 0.0
    spread = float(high) - float(low)
    return spread if math.isfinite(spread) else 0.0


def _metric_names(result: Any) -> dict[str, bool]:
    """Every metric of the result, in order, and whether some condition recorded a finite number of it."""
    names: dict[str, bool] = {}
    for by_name in result.summary().values():
        for name, s in by_name.items():
            names[name] = names.get(name, False) or s.n > 0
    return names


def _known(given: list[str], known: list[str], what: str) -> list[str]:
    for name in given:
        if name not in known:
            listed = ", ".join(map(repr, known)) or "none"
            raise KeyError(f"no {what} named {name!r}; {what}s: {listed}")
    return given

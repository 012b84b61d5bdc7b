"""A result you can see: an HTML table in a notebook, a matplotlib figure of means and paired
differences, and the summary as a DataFrame; none of them costs a run an import."""

import io
import math
import subprocess
import sys
import textwrap
from html.parser import HTMLParser

import pytest

from crystallize_core import ReplicateError, ReplicateResult, Result
from crystallize_core._values import t_quantile

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

EVIL = "<script>alert('x')</script>"
DOLLAR = "cost $x$ & $\\frac{a}{"  # TeX that would not parse, if read as TeX


def example(n=6):
    """Replicate i: the baseline records x = i, a treatment named EVIL records x = 2 i + 1;
    DOLLAR records x = i + 0.5 only on even replicates; a metric named EVIL holds only text."""
    replicates = []
    for i in range(n):
        metrics = {"baseline": {"x": float(i), EVIL: "text"}, EVIL: {"x": 2.0 * i + 1, EVIL: "text"}}
        errors = ()
        if i % 2 == 0:
            metrics[DOLLAR] = {"x": i + 0.5}
        else:
            errors = (ReplicateError(i, DOLLAR, "ValueError", f"<img src=x onerror=alert({i})>", "Traceback ..."),)
        replicates.append(ReplicateResult(i, 100 + i, metrics, errors, 0.1))
    return Result(replicates, ["baseline", EVIL, DOLLAR], "serial", "1.0")


class Cells(HTMLParser):
    """The text of each cell, and every tag, of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags, self.rows, self.row, self.text = [], [], None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.text = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None:
            self.row.append(self.text)
            self.text = None
        elif tag == "tr":
            self.rows.append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.text is not None:
            self.text += data


def cells(html):
    parser = Cells()
    parser.feed(html)
    return parser


def test_the_html_table_shows_each_condition_and_metric_with_its_interval_and_difference():
    result = example()
    page = cells(result._repr_html_())
    header, *rows = page.rows
    assert header == [
        "condition",
        "metric",
        "n",
        "mean",
        "95% interval",
        "difference from baseline",
        "95% interval",
        "not counted",
        "errors",
    ]
    half = t_quantile(0.975, 5) * math.sqrt(3.5) / math.sqrt(6)  # x = 0..5: mean 2.5, variance 3.5
    assert rows[0] == ["baseline", "x", "6", "2.5", f"[{2.5 - half:.6g}, {2.5 + half:.6g}]", "-", "-", "-", "0"]
    assert rows[1] == [EVIL, "0", "-", "-", "-", "-", "6 non-numeric"]  # the condition and errors cells span rows
    treated = rows[2]
    assert treated[:4] == [EVIL, "x", "6", "6"] and treated[5] == "+3.5" and treated[-1] == "0"
    assert rows[4][:4] == [DOLLAR, "x", "3", "2.5"] and rows[4][-1] == "3"
    assert "3 errors" in result._repr_html_()


def test_every_user_string_in_the_html_is_escaped():
    html = example()._repr_html_()
    tags = set(cells(html).tags)
    allowed = {"div", "p", "strong", "table", "thead", "tbody", "tr", "th", "td", "details", "summary", "ul", "li"}
    assert tags <= allowed | {"code"}
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html


def test_an_empty_result_displays():
    html = Result([], ["baseline", "t"], complete=False)._repr_html_()
    rows = cells(html).rows
    assert rows[1][:3] == ["baseline", "-", "0"] and rows[2][:3] == ["t", "-", "0"]
    assert "0 replicates" in html and "partial" in html


def bars(ax):
    """Per row of ``ax`` from the top: (tick label, marker x, (low, high) of its error bar)."""
    (container,) = ax.containers
    line, _, (segments,) = container
    ends = [tuple(sorted((a[0], b[0]))) for a, b in segments.get_segments()]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    return list(zip(labels, list(line.get_xdata()), ends))


def test_the_plot_draws_means_and_paired_differences_labelled_with_the_conditions():
    result = example()
    figure = result.plot()
    assert isinstance(figure, matplotlib.figure.Figure)
    means, differences = figure.axes  # one metric holds numbers: EVIL holds only text
    assert means.get_title() == "x: mean" and differences.get_title() == "x: difference from baseline"
    summary = result.summary()
    drawn = bars(means)
    assert [label for label, *_ in drawn] == ["baseline", EVIL, DOLLAR]
    for (_, x, (low, high)), condition in zip(drawn, result.conditions):
        s = summary[condition]["x"]
        half = t_quantile(0.975, s.n - 1) * s.std / math.sqrt(s.n)
        assert x == pytest.approx(s.mean) and (low, high) == pytest.approx((s.mean - half, s.mean + half))
    drawn = bars(differences)
    assert [label for label, *_ in drawn] == [EVIL, DOLLAR]
    for label, x, (low, high) in drawn:
        d = result.paired_difference(label, "x")
        assert (x, low, high) == pytest.approx((d.mean, d.low, d.high))
    zero = [line for line in differences.lines if list(line.get_xdata()) == [0, 0]]
    assert len(zero) == 1, "a line at no difference"
    # The names are text as given, not TeX: the figure draws, though DOLLAR would not parse as TeX.
    assert all(not t.get_parse_math() for t in means.get_yticklabels())
    figure.savefig(io.BytesIO(), format="png")
    # In a notebook, whether or not pyplot's inline backend was loaded, it shows as an image.
    assert figure._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")
    assert "matplotlib.pyplot" not in sys.modules or not matplotlib.pyplot.get_fignums(), "no pyplot figure is left"


def test_the_plot_draws_the_metrics_and_conditions_asked_for():
    result = example()
    figure = result.plot("x", conditions=[DOLLAR], confidence=0.8)
    means, differences = figure.axes
    assert [label for label, *_ in bars(means)] == ["baseline", DOLLAR]
    ((label, _, (low, high)),) = bars(differences)
    d = result.paired_difference(DOLLAR, "x", confidence=0.8)
    assert label == DOLLAR and (low, high) == pytest.approx((d.low, d.high)) and "80%" in differences.get_xlabel()
    with pytest.raises(KeyError, match="no metric named"):
        result.plot(["x", "y"])
    with pytest.raises(KeyError, match=r"no condition named ..nope"):
        result.plot(conditions=["nope"])


def test_a_result_without_numbers_or_treatments_plots_what_it_can():
    with pytest.raises(ValueError, match="nothing to plot"):
        Result([], ["baseline"]).plot()
    single = Result([ReplicateResult(0, 1, {"baseline": {"x": 1.0}})], ["baseline"])
    (means,) = single.plot().axes  # no treatment: no differences to draw
    ((label, x, (low, high)),) = bars(means)
    assert (label, x, low, high) == ("baseline", 1.0, 1.0, 1.0)  # one value: a point, no interval


def test_the_summary_frame_holds_the_summary():
    pandas = pytest.importorskip("pandas")
    result = example()
    frame = result.summary_frame()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns[:4]) == ["condition", "metric", "n", "mean"]
    assert list(zip(frame.condition, frame.metric)) == [
        (c, m) for c, by_name in result.summary().items() for m in by_name
    ]
    row = frame[(frame.condition == EVIL) & (frame.metric == "x")].iloc[0]
    d = result.paired_difference(EVIL, "x")
    assert (row.pairs, row.difference, row.difference_low) == (6, d.mean, d.low)
    baseline = frame.iloc[0]
    assert math.isnan(baseline.difference) and baseline.pairs is pandas.NA
    text_only = frame[frame.metric == EVIL].iloc[0]
    assert text_only.n == 0 and math.isnan(text_only["mean"]) and text_only.non_numeric == 6


def run_python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_a_missing_matplotlib_is_named_with_the_extra_to_install():
    done = run_python(
        """
        import sys
        sys.modules["matplotlib"] = None  # what Python does for a module that cannot be imported
        from crystallize_core import ReplicateResult, Result
        try:
            Result([ReplicateResult(0, 1, {"baseline": {"x": 1}})], ["baseline"]).plot()
        except ImportError as exc:
            print(exc)
        """
    )
    assert "pip install 'crystallize-core[plot]'" in done.stdout, done.stderr


def test_a_run_its_summary_html_and_saved_files_import_neither_matplotlib_nor_pandas(tmp_path):
    done = run_python(
        f"""
        import sys
        import crystallize_core
        from crystallize_core import Experiment, Result, Treatment
        def measure(data, ctx):
            ctx.metrics.add("x", ctx.replicate)
            return data
        result = Experiment(lambda ctx: None, [measure], treatments=[Treatment("t", {{}})]).run(replicates=3)
        result.format_summary(); result._repr_html_(); result.compare()
        for name in ("r.json", "r.csv", "r.jsonl"):
            result.save({str(tmp_path)!r} + "/" + name)
            Result.load({str(tmp_path)!r} + "/" + name).format_summary()
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("matplotlib", "pandas", "numpy")))
        """
    )
    assert done.stdout.strip() == "[]", done.stderr

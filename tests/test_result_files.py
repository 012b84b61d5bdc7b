"""A saved result reads back: `Result.load` for each format `save` writes, with statistics equal
to the original's, clear errors for files it cannot read, and `crystallize show`."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from crystallize_core import (
    Experiment,
    ReplicateError,
    ReplicateResult,
    Result,
    ResultFileError,
    SeedPlugin,
    Treatment,
)
from crystallize_core._export import DOCUMENT_VERSION, csv_text_cell
from crystallize_core._values import any_int_digits

FORMATS = ["json", "jsonl", "csv"]
HUGE = 10**5000  # past Python's limit on turning an int into text


def triple(ctx):
    ctx.add("k", 3)


def source(ctx):
    return ctx.replicate


#: Per replicate, a value of every kind a metric may hold; JSON-exact ones in EXACT.
EXACT = [float("nan"), float("inf"), float("-inf"), None, HUGE, -(2**70), 1.5, True, "=1+1", "'quoted", "-x", "@a,b"]
ODD = [*EXACT, "NaN", "Infinity", [1, float("nan")], np.float32(0.25), np.int64(7), object(), (1, 2)]


def measure(data, ctx):
    k = ctx.get("k", 1)
    ctx.metrics.add("score", data * k + ctx.rng.random())
    ctx.metrics.add("odd", ODD[data % len(ODD)])
    if data % 3 == 0:
        ctx.metrics.add("sometimes", data * k)
    if k == 3 and data % 4 == 1:
        raise ValueError("<script>alert(1)</script> on replicate " + str(data))
    return data


def study(values=ODD):
    return Experiment(
        source,
        [measure if values is ODD else exact],
        plugins=[SeedPlugin(seed=11)],
        treatments=[Treatment("<b>t</b>=1,\r\n", {"k": 2, "name": ("a", 1)}), Treatment("called", triple)],
    )


def exact(data, ctx):
    """Only values that JSON lines and CSV hold exactly (and no errors)."""
    k = ctx.get("k", 1)
    ctx.metrics.add("score", data * k + ctx.rng.random())
    ctx.metrics.add("=odd", EXACT[data % len(EXACT)])
    if data % 3 == 0:
        ctx.metrics.add("sometimes", None if data % 2 else data * k)
    return data


def statistics(result):
    comparisons = {
        (treatment, metric, confidence): result.paired_difference(treatment, metric, confidence=confidence)
        for treatment in result.conditions[1:]
        for metric in result.metrics[treatment]
        if metric in result.metrics["baseline"]
        for confidence in (0.9, 0.99)
    }
    return result.summary(), result.compare(), result.compare(confidence=0.8), comparisons


def same(a, b):
    """Equal, NaN equal to NaN (statistics hold NaN nowhere, but values may)."""
    with any_int_digits:
        return json.dumps(a, default=repr) == json.dumps(b, default=repr)


@pytest.fixture(scope="module")
def odd_result():
    return study().run(replicates=len(ODD) + 3)


@pytest.fixture(scope="module")
def exact_result():
    return study(EXACT).run(replicates=len(EXACT) + 2)


def test_json_reads_back_in_full(odd_result, tmp_path):
    odd_result.save(tmp_path / "r.json")
    back = Result.load(tmp_path / "r.json")
    assert statistics(back) == statistics(odd_result)
    assert back.format_summary() == odd_result.format_summary()
    assert back.conditions == odd_result.conditions
    assert back.errors == odd_result.errors and len(back.errors) == 6
    assert back.seeds == odd_result.seeds and back.durations == odd_result.durations
    assert back.treatments == {
        "<b>t</b>=1,\r\n": {"overrides": {"k": 2, "name": ["a", 1]}, "function": None},
        "called": {"overrides": None, "function": f"{__name__}.triple"},
    }
    assert (back.base_seed, back.strategy, back.strategy_version) == (11, "serial", odd_result.strategy_version)
    assert back.strategy_options == odd_result.strategy_options
    assert back.complete and back.unsaved_replicates == []
    assert abs(back.started_at - odd_result.started_at) < 1e-5
    # Everything the document says, the versions of the run included, is said again.
    assert back.to_dict() == odd_result.to_dict()


def test_json_keeps_text_spelt_like_a_float_and_a_none_that_was_recorded(odd_result, tmp_path):
    odd_result.save(tmp_path / "r.json")
    back = Result.load(tmp_path / "r.json")
    column = back.metrics["baseline"]["odd"]
    assert column[ODD.index("NaN")] == "NaN" and column[ODD.index("Infinity")] == "Infinity"
    assert math.isnan(column[0]) and column[1] == math.inf and column[4] == HUGE
    assert column[ODD.index(None)] is None
    recorded = [row for row in back.to_records() if row["metric"] == "odd" and row["replicate"] == 3]
    assert len(recorded) == 3 and all(row["value"] is None for row in recorded)
    # A metric some replicates did not record has no row there; nor has a condition that failed.
    assert [row["replicate"] for row in back.to_records() if row["metric"] == "sometimes"][:3] == [0, 0, 0]
    assert not any(row["replicate"] == 1 and row["condition"] == "called" for row in back.to_records())


def test_json_to_pandas_is_the_originals_for_values_json_holds(exact_result, tmp_path):
    exact_result.save(tmp_path / "r.json")
    back = Result.load(tmp_path / "r.json")
    pd.testing.assert_frame_equal(back.to_pandas(), exact_result.to_pandas())


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_tidy_rows_read_back_with_equal_statistics(exact_result, tmp_path, kind):
    exact_result.save(tmp_path / f"r.{kind}")
    back = Result.load(tmp_path / f"r.{kind}")
    assert back.conditions == exact_result.conditions
    assert back.seeds == exact_result.seeds and back.replicate_indices == exact_result.replicate_indices
    assert statistics(back) == statistics(exact_result)
    assert back.format_summary() == exact_result.format_summary()
    pd.testing.assert_frame_equal(back.to_pandas(), exact_result.to_pandas())
    column = back.metrics["baseline"]["=odd"]
    assert column[EXACT.index(HUGE)] == HUGE
    assert column[EXACT.index("=1+1")] == "=1+1" and column[EXACT.index("'quoted")] == "'quoted"


def test_csv_cells_neutralised_against_formulas_read_back_as_recorded(tmp_path):
    names = ['=HYPERLINK("x")', "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'q", "''", "plain", "a,b\nc"]
    replicates = [
        ReplicateResult(i, i, {"baseline": {name: name for name in names}, name: {name: i}})
        for i, name in enumerate(names)
    ]
    result = Result(replicates, ["baseline", *names])
    result.save(tmp_path / "r.csv")
    text = (tmp_path / "r.csv").read_text()
    assert "\n=" not in text and ",=" not in text and ",+" not in text  # what a spreadsheet would run
    back = Result.load(tmp_path / "r.csv")
    assert back.to_records() == result.to_records()
    assert back.conditions == result.conditions
    assert all(csv_text_cell(name) in text for name in ["+1", "-2", "@SUM(A1)", "'q", "''", "plain"])


def test_odd_values_give_the_same_statistics_from_csv(odd_result, tmp_path):
    """CSV writes a non-finite float as nan/inf and quotes nothing it reads as one: text
    spelt "NaN" stays text. Other objects are their repr, counted as before."""
    odd_result.save(tmp_path / "r.csv")
    back = Result.load(tmp_path / "r.csv")
    assert back.summary() == odd_result.summary() and back.compare() == odd_result.compare()


def test_json_lines_read_a_float_spelling_as_the_float_as_documented(odd_result, tmp_path):
    odd_result.save(tmp_path / "r.jsonl")
    back = Result.load(tmp_path / "r.jsonl")
    before, after = odd_result.summary()["baseline"]["odd"], back.summary()["baseline"]["odd"]
    assert (after.nan, after.inf) == (before.nan + 1, before.inf + 1)
    assert after.non_numeric == before.non_numeric - 2


def test_a_partial_result_with_an_error_of_the_whole_replicate_reads_back(tmp_path):
    whole = ReplicateError(1, None, "crystallize_core.errors.WorkerLostError", "worker died", "Traceback ...")
    replicates = [
        ReplicateResult(0, 5, {"baseline": {"x": 1.0}, "t": {"x": 2.0}}, (), 0.5),
        ReplicateResult(1, 6, {}, (whole,), None),
        ReplicateResult(3, 8, {"baseline": {"x": 3.0}, "t": {"x": 5.0}}, (), 0.25),
    ]
    result = Result(replicates, ["baseline", "t"], "serial", "1.0", complete=False, base_seed=4)
    result.save(tmp_path / "r.json")
    back = Result.load(tmp_path / "r.json")
    assert not back.complete and back.replicate_indices == [0, 1, 3]
    assert list(back.replicate_results) == replicates
    assert back.format_summary() == result.format_summary() and "errors: baseline: 1, t: 1" in back.format_summary()


@pytest.mark.parametrize("kind", FORMATS)
def test_a_result_with_no_finished_replicate_reads_back(tmp_path, kind):
    result = Result([], ["baseline", "t"], complete=False)
    result.save(tmp_path / f"r.{kind}")
    back = Result.load(tmp_path / f"r.{kind}")
    assert back.replicates == 0 and back.summary() == {c: {} for c in back.conditions}
    assert back.format_summary().splitlines()[1].split() == ["baseline", "-", "0", "-", "-", "-", "-", "-"]
    if kind == "json":
        assert back.conditions == ("baseline", "t") and not back.complete


def test_a_document_saved_before_format_versions_reads_back(exact_result, tmp_path):
    """Version 1 had no layouts: a None it holds reads as not recorded, which
    the statistics never count either."""
    document = exact_result.to_dict()
    for key in ("format", "format_version", "layouts", "layout_of", "literal_text"):
        del document[key]
    with any_int_digits:
        (tmp_path / "old.json").write_text(json.dumps(document))
    back = Result.load(tmp_path / "old.json")
    assert statistics(back) == statistics(exact_result)
    assert back.format_summary() == exact_result.format_summary()
    assert back.conditions == exact_result.conditions and back.durations == exact_result.durations
    records = [row for row in exact_result.to_records() if row["value"] is not None]
    assert same(back.to_records(), records)


def test_a_file_from_a_newer_crystallize_is_refused_in_one_line(odd_result, tmp_path):
    document = odd_result.to_dict()
    document["format_version"] = DOCUMENT_VERSION + 1
    with any_int_digits:
        (tmp_path / "new.json").write_text(json.dumps(document))
    with pytest.raises(ResultFileError, match=r"newer Crystallize .*version 3.*upgrade crystallize-core") as caught:
        Result.load(tmp_path / "new.json")
    assert "\n" not in str(caught.value)


def _corrupt(tmp_path, odd_result):
    odd_result.save(tmp_path / "r.json")
    odd_result.save(tmp_path / "r.jsonl")
    odd_result.save(tmp_path / "r.csv")
    full = {kind: (tmp_path / f"r.{kind}").read_text() for kind in FORMATS}
    with any_int_digits:
        return _corrupt_files(full, json.loads(full["json"]))


def _corrupt_files(full, document):
    shortened = dict(document, seeds=document["seeds"][:-1])
    return {
        "truncated.json": (full["json"][: len(full["json"]) // 2], "not a whole JSON document"),
        "truncated.jsonl": (full["jsonl"][: len(full["jsonl"]) // 2], "line [0-9]+ is not a JSON object"),
        "truncated.csv": (full["csv"][: full["csv"].index("'quoted") - 3], "line [0-9]+ has [0-4] fields, not 5"),
        "open-quote.csv": ('replicate,seed,condition,metric,value\n0,1,baseline,x,"abc\n', "is not CSV"),
        "empty.json": ("", "it is empty"),
        "blank.csv": ("\n\n", "it is empty"),
        "list.json": ("[1, 2]", "the JSON is list, not an object"),
        "other.json": ('{"name": "a package.json"}', "no 'conditions', no 'seeds', no 'metrics'"),
        "short.json": (json.dumps(shortened), "seeds holds 21 values for 22 replicates"),
        "header.csv": ("a,b\n1,2\n", "first line is not the header"),
        "keys.jsonl": ('{"replicate": 0}\n', "line 1 is not a row with the keys"),
        "text-seed.csv": ("replicate,seed,condition,metric,value\n0,x,baseline,m,1\n", "must be integers"),
        "two-seeds.jsonl": (
            '{"replicate": 0, "seed": 1, "condition": "baseline", "metric": "m", "value": 1}\n'
            '{"replicate": 0, "seed": 2, "condition": "baseline", "metric": "n", "value": 1}\n',
            "line 2: replicate 0 has seed 2 here and 1 above",
        ),
        "other-format.json": ('{"format": "something-else"}', "its format is 'something-else'"),
        "bad-errors.json": (json.dumps(dict(document, errors=[{"replicate": 0}])), r"errors\[0\] is not an error"),
        "bad-layout.json": (json.dumps(dict(document, layout_of=[99] * len(document["seeds"]))), "names a layout"),
    }


def test_files_that_cannot_be_read_are_refused_in_one_line_each(odd_result, tmp_path):
    for name, (text, message) in _corrupt(tmp_path, odd_result).items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ResultFileError, match=message) as caught:
            Result.load(tmp_path / name)
        said = str(caught.value)
        assert "\n" not in said and name in said, (name, said)


def test_an_unknown_extension_is_refused_naming_the_ones_read(tmp_path):
    (tmp_path / "r.txt").write_text("{}")
    with pytest.raises(ResultFileError, match=r"\.json, \.jsonl, \.ndjson, \.csv"):
        Result.load(tmp_path / "r.txt")
    with pytest.raises(FileNotFoundError):
        Result.load(tmp_path / "missing.json")


def test_a_saved_result_plots_as_the_original_does(odd_result, tmp_path):
    pytest.importorskip("matplotlib")
    odd_result.save(tmp_path / "r.json")
    back = Result.load(tmp_path / "r.json")
    ours, theirs = odd_result.plot(), back.plot()
    for a, b in zip(ours.axes, theirs.axes, strict=True):
        assert a.get_title() == b.get_title()
        assert [t.get_text() for t in a.get_yticklabels()] == [t.get_text() for t in b.get_yticklabels()]
        assert [list(line.get_xdata()) for line in a.lines] == [list(line.get_xdata()) for line in b.lines]


# --- crystallize show ---------------------------------------------------------------------------

STUDY = textwrap.dedent(
    """
    from crystallize_core import Experiment, Treatment

    def measure(data, ctx):
        ctx.metrics.add("score", ctx.replicate * ctx.get("k", 1))
        ctx.metrics.add("other", 1.0)
        return data

    def build():
        return Experiment(lambda ctx: None, [measure], treatments=[Treatment("big", {"k": 3}), Treatment("same", {})])
    """
)


def crystallize(folder, *args):
    return subprocess.run(
        [sys.executable, "-m", "crystallize_core", *args], capture_output=True, text=True, cwd=folder, timeout=120
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("show")
    (folder / "study.py").write_text(STUDY)
    done = crystallize(folder, "run", "study.py:build", "-n", "4", "--no-progress", "--output", "r.json")
    assert done.returncode == 0, done.stderr
    Result.load(folder / "r.json").save(folder / "r.csv")
    return folder


@pytest.mark.parametrize("name", ["r.json", "r.csv"])
def test_show_prints_the_summary_and_each_comparison(saved, name):
    done = crystallize(saved, "show", name)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert Result.load(saved / name).format_summary() in out
    comparisons = out[out.index("treatment  metric") :].splitlines()
    header = ["treatment", "metric", "pairs", "difference", "from", "baseline"]
    assert comparisons[0].split() == [*header, "95%", "interval"]
    assert comparisons[1].split()[:4] == ["big", "score", "4", "+3"] and len(comparisons) == 5
    assert ("strategy: serial" in out) == name.endswith(".json")
    assert ("hold no errors" in out) == name.endswith(".csv")


def test_show_chooses_metrics_treatments_baseline_and_confidence(saved):
    done = crystallize(saved, "show", "r.json", "--metric", "score", "--compare", "big", "--confidence", "0.9")
    assert done.returncode == 0, done.stderr
    comparisons = done.stdout[done.stdout.index("treatment  metric") :].splitlines()
    assert "90% interval" in comparisons[0] and len(comparisons) == 2 and comparisons[1].startswith("big ")
    assert "other" not in done.stdout
    done = crystallize(saved, "show", "r.json", "--baseline", "big", "-m", "score")
    assert "difference from big" in done.stdout
    assert ["baseline", "score", "4", "-3"] in [line.split()[:4] for line in done.stdout.splitlines()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "nope"], "--metric 'nope': the result has no metric of that name (metrics: 'score', 'other')"),
        (["--compare", "<b>"], "--compare '<b>': the result has no condition"),
        (["--confidence", "95"], "--confidence must be between 0 and 1"),
        (["--plot", "plot.nope"], "--plot 'plot.nope': name the image with one of"),
    ],
)
def test_show_refuses_what_the_result_does_not_hold_in_one_line(saved, args, message):
    done = crystallize(saved, "show", "r.json", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_show_of_a_file_it_cannot_read_is_a_usage_error(saved):
    (saved / "broken.json").write_text('{"conditions": [')
    for name, message in [("broken.json", "not a whole JSON document"), ("gone.json", "No such file")]:
        done = crystallize(saved, "show", name)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_show_and_run_write_the_plot(saved):
    pytest.importorskip("matplotlib")
    done = crystallize(saved, "show", "r.json", "--plot", "shown.png", "--compare", "big")
    assert done.returncode == 0, done.stderr
    assert (saved / "shown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plot written to shown.png" in done.stdout
    done = crystallize(saved, "run", "study.py:build", "-n", "3", "--no-progress", "--plot", "run.svg")
    assert done.returncode == 0, done.stderr
    assert b"<svg" in (saved / "run.svg").read_bytes()


def test_run_refuses_a_plot_it_could_not_write_before_any_replicate(saved):
    done = crystallize(saved, "run", "study.py:build", "--no-progress", "--plot", "missing/plot.png")
    assert done.returncode == 2 and "--plot folder 'missing' does not exist" in done.stderr
    assert "replicates:" not in done.stdout


def test_show_reads_json_from_standard_input(saved):
    done = subprocess.run(
        [sys.executable, "-m", "crystallize_core", "show", "-"],
        input=(saved / "r.json").read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "result: standard input" in done.stdout, done.stderr

"""What a run produces: summaries of any metric value, paired comparisons, tidy output and
a record that reproduces the run — through the API and through `crystallize run`."""

import csv
import datetime
import inspect
import json
import math
import random
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

import crystallize_core
from crystallize_core import (
    Experiment,
    MetricSummary,
    PairedDifference,
    ReplicateResult,
    Result,
    SeedPlugin,
    Treatment,
    derive_seed,
)
from crystallize_core._values import t_quantile
from crystallize_core.records import pack_results, unpack_results


def strict_json(text):
    """json.loads that refuses the bare NaN and Infinity tokens Python would accept."""

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def result_of(columns, conditions=("baseline",)):
    """A Result whose replicate i recorded columns[condition][metric][i]."""
    n = len(next(iter(next(iter(columns.values())).values())))
    replicates = []
    for i in range(n):
        metrics = {c: {m: values[i] for m, values in by_metric.items()} for c, by_metric in columns.items()}
        replicates.append(ReplicateResult(i, 100 + i, metrics, (), 0.01))
    return Result(replicates, conditions)


# --- 1. any metric value ---------------------------------------------------------------------


ODD_VALUES = [
    1.5,
    np.int64(3),
    np.float32(0.5),
    True,
    float("inf"),
    float("-inf"),
    float("nan"),
    10**400,
    "text",
    [1, 2],
    np.arange(3),
    Fraction(1, 2),
    None,
]


def test_the_summary_counts_what_is_not_a_finite_number():
    result = result_of({"baseline": {"odd": ODD_VALUES}})
    summary = result.summary()["baseline"]["odd"]
    finite = [1.5, 3.0, 0.5, 1.0, 0.5]  # NumPy scalars, a bool and a Fraction are numbers
    assert summary.n == 5
    assert summary.mean == pytest.approx(sum(finite) / 5)
    assert summary.std == pytest.approx(np.std(finite, ddof=1))
    assert (summary.nan, summary.inf, summary.non_numeric) == (1, 3, 3)  # 10**400 is beyond a float
    text = result.format_summary()
    assert "1 nan, 3 inf, 3 non-numeric" in text


def test_values_near_the_float_range_do_not_overflow():
    summary = result_of({"baseline": {"big": [1e308, 1e308, -1e308]}}).summary()["baseline"]["big"]
    assert summary.n == 3 and summary.mean == pytest.approx(1e308 / 3)
    assert math.isfinite(summary.std) and summary.std == pytest.approx(1.1547005383792515e308)
    one = result_of({"baseline": {"x": [2.0]}}).summary()["baseline"]["x"]
    assert (one.n, one.mean, one.std) == (1, 2.0, None)
    none = result_of({"baseline": {"x": ["a", "b"]}}).summary()["baseline"]["x"]
    assert (none.n, none.mean, none.std, none.non_numeric) == (0, None, None, 2)


def test_the_json_is_strict_with_a_documented_encoding():
    document = strict_json(result_of({"baseline": {"odd": ODD_VALUES}}).to_json())
    assert document["metrics"]["baseline"]["odd"] == [
        1.5,
        3,
        0.5,
        True,
        "Infinity",
        "-Infinity",
        "NaN",
        10**400,
        "text",
        [1, 2],
        [0, 1, 2],
        0.5,
        None,
    ]
    assert document["summary"]["baseline"]["odd"]["inf"] == 3


def test_an_experiment_recording_odd_values_summarises_and_serialises():
    def odd(data, ctx):
        for position, value in enumerate(ODD_VALUES):
            ctx.metrics.add(f"m{position}", value)
        return data

    result = Experiment(lambda ctx: None, [odd]).run(replicates=2)
    assert not result.errors
    assert result.summary()["baseline"]["m1"] == MetricSummary(2, 3.0, 0.0)
    assert "m12" in result.format_summary()
    strict_json(result.to_json())


def test_numpy_is_not_imported_to_summarise_plain_values():
    code = textwrap.dedent(
        """
        import sys
        from crystallize_core import Experiment

        def measure(data, ctx):
            ctx.metrics.add("x", float("inf") if ctx.replicate else 1.0)
            return data

        result = Experiment(lambda ctx: None, [measure]).run(replicates=3)
        result.format_summary(); result.to_json(); result.to_records()
        assert "numpy" not in sys.modules, "numpy was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("name", [3, None, b"bytes", ("a",)])
def test_a_metric_name_that_is_not_a_string_is_refused_when_recorded(name):
    def measure(data, ctx):
        ctx.metrics.add(name, 1.0)
        return data

    result = Experiment(lambda ctx: None, [measure]).run(replicates=1)
    (error,) = result.errors
    assert error.exc_type == "TypeError" and "metric names must be strings" in error.message
    assert result.summary()["baseline"] == {}
    result.format_summary()


# --- 2. paired comparisons ------------------------------------------------------------------


def draw_global(ctx):
    return [random.random(), float(np.random.random())]


def record_draws(data, ctx):
    ctx.metrics.add("python", data[0])
    ctx.metrics.add("numpy", data[1])
    ctx.metrics.add("own", ctx.rng.random())
    return data


@pytest.mark.parametrize("strategy", ["serial", "parallel:executor_type=process,max_workers=2"])
def test_global_random_state_is_seeded_before_each_condition(strategy):
    experiment = Experiment(
        draw_global, [record_draws], plugins=[SeedPlugin(seed=11)], treatments=[Treatment("same"), Treatment("also")]
    )
    result = experiment.run(replicates=4, strategy=strategy)
    for metric in ("python", "numpy", "own"):
        baseline = result.metrics["baseline"][metric]
        assert result.metrics["same"][metric] == baseline == result.metrics["also"][metric], metric
        assert len(set(baseline)) == 4, "replicates drew the same numbers"
    difference = result.paired_difference("same", "python")
    assert (difference.n, difference.mean, difference.std, difference.low, difference.high) == (4, 0.0, 0.0, 0.0, 0.0)


async def draw_global_awaited(ctx):
    return [random.random(), float(np.random.random())]


def test_conditions_are_paired_when_the_datasource_is_a_coroutine():
    experiment = Experiment(
        draw_global_awaited, [record_draws], plugins=[SeedPlugin(seed=4)], treatments=[Treatment("t")]
    )
    result = experiment.run(replicates=3)
    assert result.metrics["t"] == result.metrics["baseline"]
    assert all(d is not None and d >= 0 for d in result.durations)


def test_seed_fn_is_called_before_each_condition_with_the_replicate_seed():
    seen = []
    Experiment(
        lambda ctx: None,
        [lambda data, ctx: data],
        plugins=[SeedPlugin(seed=5, seed_fn=seen.append)],
        treatments=[Treatment("t")],
    ).run(replicates=2)
    assert seen == [derive_seed(5, 0), derive_seed(5, 0), derive_seed(5, 1), derive_seed(5, 1)]


def test_a_failing_before_condition_hook_costs_only_its_condition():
    class Picky:
        @crystallize_core.hookimpl
        def before_condition(self, replicate, condition, seed):
            if condition == "t" and replicate == 1:
                raise RuntimeError("not this one")

    def measure(data, ctx):
        ctx.metrics.add("x", 1.0)
        return data

    result = Experiment(lambda ctx: None, [measure], plugins=[Picky()], treatments=[Treatment("t")]).run(replicates=2)
    (error,) = result.errors
    assert (error.replicate, error.condition, error.message) == (1, "t", "not this one")
    assert result.metrics["t"]["x"] == [1.0, None] and result.metrics["baseline"]["x"] == [1.0, 1.0]


# Student's t quantiles from SciPy 1.17 (scipy.stats.t.ppf), for checking ours without SciPy.
SCIPY_T = {
    (0.975, 1): 12.706204736174694,
    (0.975, 2): 4.302652729749462,
    (0.975, 4): 2.7764451051977934,
    (0.975, 9): 2.262157162798205,
    (0.975, 30): 2.0422724563012378,
    (0.975, 200): 1.9718962236339088,
    (0.975, 201): 1.971836506779859,
    (0.975, 1000): 1.9623390808264083,
    (0.975, 1000000): 1.959966356814107,
    (0.995, 5): 4.032142983555228,
    (0.995, 250): 2.5956376304661806,
}


@pytest.mark.parametrize(("probability", "df"), list(SCIPY_T))
def test_the_t_quantile_matches_scipy(probability, df):
    assert t_quantile(probability, df) == pytest.approx(SCIPY_T[probability, df], rel=1e-10)
    assert t_quantile(1 - probability, df) == pytest.approx(-SCIPY_T[probability, df], rel=1e-10)


def test_the_paired_difference_uses_replicates_where_both_values_are_finite():
    result = result_of(
        {
            "baseline": {"score": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, float("nan"), 1.0]},
            "t": {"score": [2.0, 4.0, 6.0, 8.0, 10.0, None, 5.0, "n/a"]},
        },
        conditions=("baseline", "t"),
    )
    difference = result.paired_difference("t", "score")
    half = SCIPY_T[0.975, 4] * math.sqrt(2.5) / math.sqrt(5)  # differences 1..5: mean 3, sample variance 2.5
    assert difference == pytest.approx(PairedDifference(5, 3.0, math.sqrt(2.5), 3.0 - half, 3.0 + half, 0.95))
    assert result.summary()["t"]["score"].difference == difference
    assert result.summary()["baseline"]["score"].difference is None
    assert result.compare() == {"t": {"score": difference}}
    wider = result.paired_difference("t", "score", confidence=0.99)
    assert wider.low < difference.low and wider.high > difference.high
    text = result.format_summary()
    assert "+3  " in text and f"[{difference.low:.6g}, {difference.high:.6g}]" in text
    with pytest.raises(KeyError, match="condition 't' recorded no metric 'nope'"):
        result.paired_difference("t", "nope")
    with pytest.raises(KeyError, match="no condition named 'u'"):
        result.paired_difference("u", "score")


def test_a_paired_comparison_of_a_real_study():
    def source(ctx):
        return [ctx.rng.gauss(0, 1) for _ in range(20)]

    def measure(data, ctx):
        ctx.metrics.add("mean", sum(data) / len(data) + ctx.get("shift", 0.0))
        return data

    experiment = Experiment(source, [measure], plugins=[SeedPlugin(seed=1)], treatments=[Treatment("up", {"shift": 1})])
    difference = experiment.run(replicates=10).compare()["up"]["mean"]
    # Paired on the same draws, the difference is exactly the shift: no noise at all.
    assert difference.n == 10 and difference.mean == pytest.approx(1.0)
    assert difference.high - difference.low == pytest.approx(0.0, abs=1e-12)


# --- 3. tidy output -----------------------------------------------------------------------------


def tidy_study():
    def measure(data, ctx):
        ctx.metrics.add("score", ctx.replicate * ctx.get("k", 1))
        ctx.metrics.add("label", f"r{ctx.replicate}")
        if ctx.replicate == 1 and ctx.condition == "t":
            raise ValueError("fails")
        return data

    return Experiment(lambda ctx: None, [measure], plugins=[SeedPlugin(seed=2)], treatments=[Treatment("t", {"k": 2})])


def test_records_have_one_row_per_replicate_condition_and_metric():
    result = tidy_study().run(replicates=2)
    seeds = [derive_seed(2, 0), derive_seed(2, 1)]
    assert result.to_records() == [
        {"replicate": 0, "seed": seeds[0], "condition": "baseline", "metric": "score", "value": 0},
        {"replicate": 0, "seed": seeds[0], "condition": "baseline", "metric": "label", "value": "r0"},
        {"replicate": 0, "seed": seeds[0], "condition": "t", "metric": "score", "value": 0},
        {"replicate": 0, "seed": seeds[0], "condition": "t", "metric": "label", "value": "r0"},
        {"replicate": 1, "seed": seeds[1], "condition": "baseline", "metric": "score", "value": 1},
        {"replicate": 1, "seed": seeds[1], "condition": "baseline", "metric": "label", "value": "r1"},
    ]
    frame = result.to_pandas()
    assert list(frame.columns) == ["replicate", "seed", "condition", "metric", "value"]
    assert len(frame) == 6
    scores = frame[frame.metric == "score"].pivot(index="replicate", columns="condition", values="value")
    assert scores.loc[0, "t"] == 0 and scores.loc[1, "baseline"] == 1


def test_to_pandas_without_pandas_says_how_to_install_it():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pandas"] = None  # what Python does for a module that cannot be imported
        from crystallize_core import Experiment
        result = Experiment(lambda ctx: None, [lambda d, c: d]).run(replicates=1)
        try:
            result.to_pandas()
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'crystallize-core[pandas]'" in done.stdout


def test_save_writes_json_lines_and_csv_by_extension(tmp_path):
    def measure(data, ctx):
        ctx.metrics.add("x", [float("inf"), 1.5, float("nan"), "a,b", [1, 2], None, np.float32(0.25)][ctx.replicate])
        return data

    result = Experiment(lambda ctx: None, [measure]).run(replicates=7)
    result.save(tmp_path / "out.jsonl")
    lines = [strict_json(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["value"] for line in lines] == ["Infinity", 1.5, "NaN", "a,b", [1, 2], None, 0.25]
    result.save(tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["value"] for row in rows] == ["inf", "1.5", "nan", "a,b", "[1, 2]", "", "0.25"]
    frame = pd.read_csv(tmp_path / "out.csv")
    assert math.isinf(float(frame.value[0])) and math.isnan(float(frame.value[2]))
    with pytest.raises(crystallize_core.ConfigurationError, match=r"\.json, \.jsonl, \.ndjson, \.csv"):
        result.save(tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


# --- 4. a record that reproduces the run -------------------------------------------------------------


def double(ctx):
    ctx.add("k", 2)


def test_the_record_reproduces_the_run():
    experiment = Experiment(
        draw_global,
        [record_draws],
        treatments=[Treatment("mapped", {"k": 3, "name": "x"}), Treatment("called", double)],
    )
    before = datetime.datetime.now(datetime.timezone.utc)
    result = experiment.run(replicates=3, strategy="parallel:executor_type=process,max_workers=2")
    document = strict_json(result.to_json())
    assert document["replicate_indices"] == [0, 1, 2]
    assert document["strategy"] == "parallel" and document["strategy_version"]
    options = document["strategy_options"]
    assert (options["max_workers"], options["executor_type"], options["max_retries"]) == (2, "process", 1)
    from crystallize_parallel import ParallelExecution

    assert set(options) == set(inspect.signature(ParallelExecution).parameters), "an option is missing"
    assert document["treatments"] == {
        "mapped": {"overrides": {"k": 3, "name": "x"}, "function": None},
        "called": {"overrides": None, "function": f"{__name__}.double"},
    }
    versions = document["versions"]
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["crystallize-core"] == crystallize_core.__version__
    assert versions["crystallize-serial"] and versions["crystallize-parallel"]
    started = datetime.datetime.fromisoformat(document["started_at"])
    finished = datetime.datetime.fromisoformat(document["finished_at"])
    assert before - datetime.timedelta(seconds=1) <= started <= finished <= datetime.datetime.now(datetime.timezone.utc)
    assert len(document["durations"]) == 3 and all(d >= 0 for d in document["durations"])
    # The base seed alone gives the run again.
    again = Experiment(
        draw_global, [record_draws], plugins=[SeedPlugin(seed=document["base_seed"], auto_seed=False)]
    ).run(replicates=3)
    assert again.seeds == result.seeds and again.metrics["baseline"]["own"] == result.metrics["baseline"]["own"]


def test_durations_travel_between_processes():
    result = Experiment(draw_global, [record_draws]).run(replicates=4, strategy="parallel:executor_type=process")
    assert all(isinstance(d, float) and d >= 0 for d in result.durations)
    original = ReplicateResult(3, 7, {"baseline": {"x": 1}}, (), 0.5)
    (back,) = unpack_results(pack_results([original]))
    assert back == original and back.duration == 0.5


# --- the command line ---------------------------------------------------------------------------------------

STUDY = textwrap.dedent(
    """
    import os
    from crystallize_core import Experiment, Treatment

    def source(ctx):
        with open(os.environ["STUDY_LOG"], "a") as log:
            log.write(f"{ctx.replicate}\\n")
        return ctx.replicate

    def measure(data, ctx):
        ctx.metrics.add("odd", [float("inf"), float("nan"), 10**400, 1e308][data % 4])
        ctx.metrics.add("plain", data * ctx.get("k", 1))
        return data

    def build():
        return Experiment(source, [measure], treatments=[Treatment("t", {"k": 2})], replicates=4)
    """
)


@pytest.fixture
def study(tmp_path):
    (tmp_path / "study.py").write_text(STUDY)
    return tmp_path


def crystallize(study, *args):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CRYSTALLIZE_")}
    env["STUDY_LOG"] = str(study / "log.txt")
    return subprocess.run(
        [sys.executable, "-m", "crystallize_core", "run", f"{study / 'study.py'}:build", "--no-progress", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("name", ["out.json", "out.jsonl", "out.ndjson", "out.csv"])
def test_the_command_line_writes_each_format_despite_odd_values(study, name):
    done = crystallize(study, "--seed", "3", "--output", str(study / name))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "1 nan, 2 inf" in done.stdout
    text = (study / name).read_text()
    if name.endswith(".json"):
        document = strict_json(text)
        assert document["metrics"]["baseline"]["odd"] == ["Infinity", "NaN", 10**400, 1e308]
        assert document["base_seed"] == 3 and document["seeds"] == [derive_seed(3, i) for i in range(4)]
    elif name.endswith(("jsonl", "ndjson")):
        rows = [strict_json(line) for line in text.splitlines()]
        assert len(rows) == 4 * 2 * 2 and rows[0]["value"] == "Infinity"
    else:
        assert text.splitlines()[0] == "replicate,seed,condition,metric,value"
        assert text.splitlines()[1].endswith(",baseline,odd,inf")


def test_output_dash_writes_json_to_standard_output(study):
    done = crystallize(study, "--output", "-")
    assert done.returncode == 0, done.stderr
    document = strict_json(done.stdout)
    assert document["replicates"] == 4 and document["complete"] is True
    assert "errors: baseline: 0, t: 0" in done.stderr
    assert not (study / "-").exists()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("result.txt", "cannot tell the output format of"),
        ("missing/result.json", "folder"),
        ("folder.json", "is a directory"),
    ],
)
def test_a_bad_output_path_is_refused_before_any_replicate_runs(study, output, message):
    (study / "folder.json").mkdir()
    done = crystallize(study, "--output", str(study / output))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (study / "log.txt").exists(), "replicates ran before the output was checked"


def test_the_paired_comparison_in_getting_started_runs_as_shown():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "index.md").read_text()
    section = page[page.index("## Comparing a treatment with the baseline") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python\n") + 10)]
    shown = section[section.index("```text\n") + 8 : section.index("```\n", section.index("```text\n") + 8)]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == shown

"""Results kept in columns: every value reads back as recorded, in any order of arrival,
whoever hands it over, and a large run stays small.

The core keeps each finished replicate in columns as the driver sees it, and a strategy may
return an iterator instead of a list; these tests hold the columns to the objects they replace
and the iterator contract to what the list contract promised."""

import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from crystallize_core import (
    Experiment,
    ExperimentInterrupted,
    ReplicateFailed,
    ReplicateResult,
    Result,
    SeedPlugin,
    StrategyContractError,
    Treatment,
    hookimpl,
)
from crystallize_core.testing import FailOn, InterruptAfter, numbers, record

N = 12


# --- strategies -------------------------------------------------------------------------------


class KeepsWhatItReturns:
    """Runs replicates in order and keeps the very objects replicate_fn returned: the reference
    the columns must reproduce."""

    def __init__(self):
        self.kept: list = []

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        self.kept = [replicate_fn(i) for i in range(experiment.replicates)]
        return self.kept


class Backwards:
    """Runs the last replicate first (so the monitor sees them in reverse) and each one twice,
    returning the second results in order."""

    def __init__(self):
        self.returned: list = []

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        positions = range(experiment.replicates - 1, -1, -1)
        for position in positions:
            replicate_fn(position)
        self.returned = [replicate_fn(position) for position in positions][::-1]
        return self.returned


class Lazy:
    """Returns a generator: replicates run as the core consumes it."""

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        return (replicate_fn(i) for i in range(experiment.replicates))


class OwnProcesses:
    """Ships replicate_fn to a process pool by itself (no engine, no ``record``): the driver's
    monitor never sees a result, so the core must take them all from the answer."""

    def __init__(self, as_iterator: bool):
        self.as_iterator = as_iterator

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        with ProcessPoolExecutor(2) as pool:
            results = pool.map(replicate_fn, range(experiment.replicates))
            return results if self.as_iterator else list(results)


class Counts:
    """Yields ``count`` results, whatever the run asked for."""

    def __init__(self, count: int):
        self.count = count

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        return (replicate_fn(i) for i in range(self.count))


# --- exact values -----------------------------------------------------------------------------


def odd_values(data, ctx):
    """Records, in each replicate, values of every kind a column must keep exactly."""
    i = ctx.replicate
    m = ctx.metrics
    m.add("float", 0.5 + i)
    m.add("int", [-(2**63), 2**63 - 1, 0][i % 3] + (0 if i % 3 else i))
    m.add("bool", i % 2 == 0)
    m.add("np_float64", np.float64(i) / 3)
    m.add("np_int64", np.int64(i) * 1_000_000_007)
    m.add("np_float32", np.float32(i) / 7)
    m.add("str", f"s{i}")
    m.add("list", [i, [i]])
    m.add("none", None)
    m.add("nan", float("nan") if i % 2 else float("-inf"))
    m.add("huge", 2**70 + i)  # beyond 64 bits from the first row
    m.add("late_huge", 2**64 if i == N - 2 else i)  # an int column that turns into a list late
    m.add("mixed", i if i % 2 else float(i))  # two types: kept as a list
    m.add("negative_zero", -0.0)
    if i % 3 == 0:
        m.add("sometimes", float(i))  # missing in two replicates of three
    if i == 4:  # the same names, recorded in another order
        m.add("second", 2)
        m.add("first", 1)
    else:
        m.add("first", 1)
        m.add("second", 2)
    return data


def same(a, b) -> bool:
    """Equal and of the same type, all the way down (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (float, np.floating)) and math.isnan(a):
        return math.isnan(b) and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, float) and a == 0:
        return b == 0 and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def odd_experiment(**kwargs):
    return Experiment(
        numbers,
        [odd_values, FailOn(frozenset({2, 7}))],  # the treatment fails twice: a condition missing
        treatments=[Treatment("treated", {"factor": 2}), Treatment("silent", lambda ctx: None)],
        **kwargs,
    )


def test_every_value_reads_back_as_recorded_type_included():
    keeper = KeepsWhatItReturns()
    result = odd_experiment(plugins=[keeper, SeedPlugin(seed=5)]).run(replicates=N)
    assert len(keeper.kept) == N
    for got, kept in zip(result.replicate_results, keeper.kept):
        assert got is not kept  # rebuilt from the columns, not kept alive
        assert same(tuple(got), tuple(kept)), (got, kept)
    assert list(result.replicate_results[4].metrics["baseline"])[-2:] == ["second", "first"]
    assert [r.replicate for r in result.replicate_results] == list(range(N))
    assert result.seeds == [r.seed for r in keeper.kept]
    assert result.durations == [r.duration for r in keeper.kept]
    assert [e.replicate for e in result.errors] == [2, 7]


def test_metric_lists_pair_up_with_none_where_nothing_was_recorded():
    keeper = KeepsWhatItReturns()
    result = odd_experiment(plugins=[keeper]).run(replicates=N)
    for condition in ("baseline", "treated", "silent"):
        for name in ("float", "huge", "late_huge", "mixed", "np_float32", "nan", "sometimes", "none"):
            expected = [r.metrics[condition].get(name) if condition in r.metrics else None for r in keeper.kept]
            assert same(result.metrics[condition][name], expected), (condition, name)
    assert result.metrics["treated"]["float"][2] is None and result.metrics["treated"]["float"][3] == 3.5
    assert result.metrics["baseline"]["sometimes"][:4] == [0.0, None, None, 3.0]
    assert list(result.metrics["baseline"])[-2:] == ["first", "second"]  # the order replicate 0 recorded
    summary = result.summary()["baseline"]
    assert (summary["huge"].n, summary["huge"].mean) == (N, 2.0**70 + (N - 1) / 2)  # past 64 bits, a float still
    assert (summary["sometimes"].n, summary["sometimes"].mean) == (4, 4.5)
    assert (summary["str"].non_numeric, summary["nan"].nan, summary["nan"].inf) == (N, N // 2, N // 2)


def test_the_summary_and_json_are_those_of_a_result_built_from_the_objects():
    keeper = KeepsWhatItReturns()
    result = odd_experiment(plugins=[keeper]).run(replicates=N)
    rebuilt = Result(keeper.kept, result.conditions)
    assert result.summary() == rebuilt.summary()
    assert result.compare() == rebuilt.compare()
    ours, theirs = result.to_dict(), rebuilt.to_dict()
    for key in ("metrics", "summary", "seeds", "durations", "replicate_indices", "errors"):
        assert json.dumps(ours[key]) == json.dumps(theirs[key]), key
    assert json.dumps(result.to_records(), default=repr) == json.dumps(rebuilt.to_records(), default=repr)


def test_a_result_pickles_and_so_does_one_pickled_before_columns():
    keeper = KeepsWhatItReturns()
    result = odd_experiment(plugins=[keeper]).run(replicates=N)
    restored = pickle.loads(pickle.dumps(result))
    assert same([tuple(r) for r in restored.replicate_results], [tuple(r) for r in keeper.kept])
    assert restored.summary() == result.summary()
    # What pickle restores for a Result saved by the version that kept plain lists.
    old = Result.__new__(Result)
    old.__setstate__(
        {
            "replicate_results": list(keeper.kept),
            "conditions": result.conditions,
            "seeds": [r.seed for r in keeper.kept],
            "errors": list(result.errors),
            "metrics": result.metrics,
            "complete": True,
        }
    )
    assert old.replicate_indices == list(range(N)) and old.durations == result.durations
    assert old.summary() == result.summary()


def test_a_result_built_from_objects_keeps_those_objects():
    given = [ReplicateResult(i, 7, {"baseline": {"x": i}}, (), 0.5) for i in (3, 1)]
    result = Result(given, ["baseline"])
    assert all(a is b for a, b in zip(result.replicate_results, given))
    assert result.replicate_indices == [3, 1] and result.metrics == {"baseline": {"x": [3, 1]}}


# --- who hands results over, and in what order ------------------------------------------------


def test_results_arriving_backwards_and_twice_come_out_in_order():
    backwards = Backwards()
    result = Experiment(numbers, [record], plugins=[backwards, SeedPlugin(seed=9)]).run(replicates=N)
    reference = Experiment(numbers, [record], plugins=[SeedPlugin(seed=9)]).run(replicates=N)
    assert result.replicate_indices == list(range(N))
    assert result.metrics == reference.metrics and result.seeds == reference.seeds
    assert [r.duration for r in backwards.returned] == result.durations  # the later run of each replicate


def first_in_replicate_zero(data, ctx):
    if ctx.replicate == 0:
        ctx.metrics.add("z", 1.0)
    ctx.metrics.add("a", float(ctx.replicate))
    return data


def test_metric_order_follows_the_replicates_not_the_arrival():
    result = Experiment(numbers, [first_in_replicate_zero], plugins=[Backwards()]).run(replicates=5)
    assert list(result.metrics["baseline"]) == ["z", "a"]
    assert result.metrics["baseline"]["z"] == [1.0, None, None, None, None]
    assert list(result.replicate_results[0].metrics["baseline"]) == ["z", "a"]


def shifting_types(data, ctx):
    """Columns that change type at different replicates, and shapes that change."""
    i = ctx.replicate
    for j in range(100):  # column k<j> turns from floats into a list at replicate 20 * j + 7
        ctx.metrics.add(f"k{j}", i if i == 20 * j + 7 else float(i))
    ctx.metrics.add("b", i if i < 1500 else 2**64 + i)  # an int column that overflows late
    if i % 13 == 0:
        ctx.metrics.add("c", "x")  # another shape now and then
    return data


def test_threads_reporting_at_once_lose_nothing_while_columns_change_type():
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between almost every bytecode
    try:
        threaded = Experiment(numbers, [shifting_types], plugins=[SeedPlugin(seed=6, auto_seed=False)]).run(
            replicates=3000, strategy=ThreadPoolExecutor(4)
        )
    finally:
        sys.setswitchinterval(switch)
    serial = Experiment(numbers, [shifting_types], plugins=[SeedPlugin(seed=6, auto_seed=False)]).run(
        replicates=3000, strategy="serial"
    )
    assert threaded.strategy == "ExecutorStrategy" and threaded.replicate_indices == list(range(3000))
    for ours, reference in zip(threaded.replicate_results, serial.replicate_results):
        assert same(tuple(ours[:4]), tuple(reference[:4])), (ours, reference)
    assert same(threaded.metrics, serial.metrics)


@pytest.mark.parametrize("as_iterator", [False, True], ids=["list", "iterator"])
def test_results_the_driver_never_saw_are_taken_from_the_answer(as_iterator):
    strategy = OwnProcesses(as_iterator)
    result = Experiment(numbers, [record], plugins=[strategy, SeedPlugin(seed=4)]).run(replicates=N)
    reference = Experiment(numbers, [record], plugins=[SeedPlugin(seed=4)]).run(replicates=N)
    assert result.replicate_indices == list(range(N)) and result.strategy == "OwnProcesses"
    assert result.metrics == reference.metrics and result.seeds == reference.seeds


@pytest.mark.parametrize(
    "count, message",
    [(N - 1, f"returned {N - 1} results for {N} replicates"), (N + 1, f"returned more than {N} results")],
)
def test_an_iterator_with_the_wrong_count_names_the_strategy(count, message):
    with pytest.raises(StrategyContractError, match=rf"'Counts' \(.*{message}"):
        Experiment(numbers, [record], plugins=[Counts(count)]).run(replicates=N)


# --- stopping a lazy strategy -----------------------------------------------------------------


def test_ctrl_c_while_the_core_consumes_an_iterator_keeps_the_partial_result(tmp_path):
    marker = str(tmp_path / "interrupted")
    steps = [record, InterruptAfter(5, os.getpid(), marker, last_condition="baseline")]
    experiment = Experiment(numbers, steps, plugins=[Lazy(), SeedPlugin(seed=3)])
    with pytest.raises(ExperimentInterrupted) as stopped:
        experiment.run(replicates=40)
    partial = stopped.value.partial_result
    assert isinstance(partial, Result) and not partial.complete and partial.strategy == "Lazy"
    assert 0 < partial.replicates < 40
    assert partial.replicate_indices == list(range(partial.replicates))
    reference = Experiment(numbers, [record], plugins=[SeedPlugin(seed=3)]).run(replicates=partial.replicates)
    assert partial.metrics == reference.metrics


def test_a_lazy_run_interrupted_then_resumed_from_its_checkpoint_equals_one_run(tmp_path):
    checkpoint = tmp_path / "run.db"
    marker = str(tmp_path / "interrupted")
    steps = [record, InterruptAfter(7, os.getpid(), marker, last_condition="baseline")]
    with pytest.raises(ExperimentInterrupted) as stopped:
        Experiment(numbers, steps, plugins=[Lazy(), SeedPlugin(seed=8)]).run(replicates=30, checkpoint=checkpoint)
    assert 0 < stopped.value.partial_result.replicates < 30
    resumed = Experiment(numbers, steps, plugins=[Lazy(), SeedPlugin(seed=8)]).run(replicates=30, checkpoint=checkpoint)
    reference = Experiment(numbers, [record], plugins=[SeedPlugin(seed=8)]).run(replicates=30)
    assert resumed.complete and resumed.replicate_indices == list(range(30))
    assert resumed.metrics == reference.metrics and resumed.seeds == reference.seeds


def test_fail_fast_while_the_core_consumes_an_iterator_names_the_strategy():
    experiment = Experiment(numbers, [record, FailOn(frozenset({3}))], treatments=[Treatment("treated")])
    with pytest.raises(ReplicateFailed) as failed:
        experiment.run(replicates=10, strategy=Lazy(), fail_fast=True)
    partial = failed.value.partial_result
    assert partial.strategy == "Lazy" and partial.replicate_indices == [0, 1, 2]


# --- memory -----------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from concurrent.futures import ThreadPoolExecutor
    from crystallize_core import Experiment
    from crystallize_core.testing import peak_memory_mb


    def nothing(ctx):
        return None

    def one_float(data, ctx):
        ctx.metrics.add("x", 0.5)
        return data

    if __name__ == "__main__":
        strategy = ThreadPoolExecutor(2) if sys.argv[1] == "threads" else sys.argv[1]
        result = Experiment(nothing, [one_float]).run(replicates=int(sys.argv[2]), strategy=strategy)
        print(json.dumps({
            "replicates": result.replicates,
            "n": result.summary()["baseline"]["x"].n,
            "last": result.metrics["baseline"]["x"][-1],
            "peak_mb": peak_memory_mb(),
        }))
    """
)


@pytest.mark.scale
@pytest.mark.parametrize("strategy", ["serial", "threads"])
def test_two_hundred_thousand_replicates_stay_small(tmp_path, strategy):
    # Kept as objects, these results took 135 MB at peak; in columns about 32 MB, most of it the
    # interpreter. The ceiling is generous, yet far below what the objects took.
    script = tmp_path / "many.py"
    script.write_text(MEMORY_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), strategy, "200000"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["replicates"], report["n"], report["last"]) == (200_000, 200_000, 0.5)
    assert report["peak_mb"] < 90, report


# --- batches packed column by column (what a worker process sends) -----------------------------


def _batch(start, count, metrics=lambda i: {"baseline": {"x": i * 0.5, "n": i, "ok": i % 2 == 0}}, timed=True):
    return [
        ReplicateResult(i, 1000 + i, metrics(i), (), 0.001 * i if timed else None) for i in range(start, start + count)
    ]


@pytest.mark.parametrize("timed", [True, False])
def test_a_column_packed_batch_reads_back_as_its_rows_with_their_types(timed):
    from crystallize_core._columns import ResultColumns, pack_columns, unpack_columns
    from crystallize_core.records import pack_results

    rows = _batch(3, 5, timed=timed)
    batch = pickle.loads(pickle.dumps(pack_columns(rows)))
    assert unpack_columns(batch) == pack_results(rows)
    columns = ResultColumns(10)
    columns.add(ReplicateResult(0, 7, {"baseline": {"x": 1.5, "n": 1, "ok": True}}, (), 0.5))
    assert columns.add_columns(batch)
    assert columns.missing() == [1, 2, 8, 9]
    kept = [columns.result(i) for i in range(3, 8)]
    assert kept == rows
    assert [[type(v) for v in r.metrics["baseline"].values()] for r in kept] == [[float, int, bool]] * 5
    assert [type(r.seed) for r in kept] == [int] * 5


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(_batch(0, 1), id="one result"),
        pytest.param([*_batch(0, 2), *_batch(3, 1)], id="not consecutive"),
        pytest.param(_batch(0, 2, metrics=lambda i: {"baseline": {"x": [0.5, 1][i]}}), id="a metric of two types"),
        pytest.param(_batch(0, 2, metrics=lambda i: {"baseline": {"x": 1.0} if i else {"y": 1.0}}), id="two shapes"),
        pytest.param(_batch(0, 2, metrics=lambda i: {"baseline": {"s": "text"}}), id="a string metric"),
        pytest.param(_batch(0, 2, metrics=lambda i: {"baseline": {"v": np.float64(i)}}), id="a numpy scalar"),
        pytest.param(
            [*_batch(0, 2), _batch(2, 1, timed=False)[0]],
            id="an untimed row among timed ones",
        ),
        pytest.param([r._replace(seed=np.int64(r.seed)) for r in _batch(0, 2)], id="a numpy seed"),
    ],
)
def test_only_uniform_batches_of_plain_numbers_are_packed_in_columns(rows):
    from crystallize_core._columns import pack_columns

    assert pack_columns(rows) is None


def test_a_batch_with_an_error_is_sent_as_rows():
    from crystallize_core._columns import pack_columns
    from crystallize_core.records import ReplicateError

    rows = _batch(0, 3)
    rows[1] = rows[1]._replace(errors=(ReplicateError(1, "baseline", "ValueError", "no", ""),))
    assert pack_columns(rows) is None


def test_a_column_packed_batch_over_a_row_already_kept_is_refused_whole():
    from crystallize_core._columns import ResultColumns, pack_columns

    columns = ResultColumns(6)
    first = ReplicateResult(2, 9, {"baseline": {"x": 9.0, "n": 9, "ok": False}}, (), 0.1)
    columns.add(first)
    assert not columns.add_columns(pack_columns(_batch(0, 4)))
    assert columns.missing() == [0, 1, 3, 4, 5] and columns.result(2) == first


def test_an_int_past_64_bits_in_a_column_packed_batch_is_kept_exactly():
    from crystallize_core._columns import ResultColumns, pack_columns

    rows = _batch(0, 3, metrics=lambda i: {"baseline": {"n": 2**70 + i}})
    columns = ResultColumns(3)
    assert columns.add_columns(pack_columns(rows))
    assert [columns.result(i).metrics["baseline"]["n"] for i in range(3)] == [2**70, 2**70 + 1, 2**70 + 2]
    columns.add(ReplicateResult(0, 1, {"baseline": {"n": 5}}, (), 0.0))  # the row path after the batch path
    assert columns.result(0).metrics["baseline"]["n"] == 5


def test_process_results_arrive_in_columns_and_equal_serials():
    # Workers send uniform batches in columns; a run with errors sends those batches as rows.
    experiment = Experiment(numbers, [FailOn({7, 300}), record], plugins=[SeedPlugin(seed=3, auto_seed=False)])
    with ProcessPoolExecutor(2) as pool:
        result = experiment.run(replicates=600, strategy=pool)
    expected = experiment.run(replicates=600)
    assert result.metrics == expected.metrics and result.seeds == expected.seeds
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(e.replicate, e.exc_type) for e in expected.errors]


def test_a_column_packed_batch_of_the_256th_shape_widens_the_row_shapes():
    from crystallize_core._columns import ResultColumns, pack_columns

    columns = ResultColumns(300)
    for row in range(255):  # 255 shapes, each a metric of its own name
        columns.add(ReplicateResult(row, row, {"baseline": {f"m{row}": 1.0}}, (), 0.1))
    assert columns.add_columns(pack_columns(_batch(260, 4)))
    assert [columns.result(row) for row in range(260, 264)] == _batch(260, 4)
    assert columns.result(254).metrics == {"baseline": {"m254": 1.0}}

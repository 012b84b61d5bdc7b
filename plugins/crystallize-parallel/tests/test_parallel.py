import os
import pickle
import warnings

import pytest

from crystallize_core import (
    ConfigurationError,
    Experiment,
    NotPicklableError,
    ReproducibilityWarning,
    SeedPlugin,
)
from crystallize_core.testing import KillWorkerOn, StrategyConformance, assert_discoverable, numbers, record
from crystallize_parallel import ParallelExecution, default_max_workers


class TestThreadConformance(StrategyConformance):
    strategy_name = "parallel"

    def make_strategy(self):
        return ParallelExecution(executor_type="thread", max_workers=4)


def test_discovery():
    strategy = assert_discoverable(
        "parallel", ParallelExecution, distribution="crystallize-parallel", executor_type="process", max_workers=3
    )
    assert (strategy.executor_type, strategy.max_workers) == ("process", 3)


@pytest.mark.parametrize("bad", ["fork", "threads", "", None])
def test_unknown_executor_type_lists_the_valid_ones(bad):
    with pytest.raises(ConfigurationError, match="valid executor types: thread, process"):
        ParallelExecution(executor_type=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_max_workers_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigurationError, match="max_workers must be a positive integer"):
        ParallelExecution(max_workers=bad)


def test_default_worker_counts_follow_the_documented_formula():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_max_workers("thread", 1000) == min(32, cpus + 4)
    assert default_max_workers("process", 1000) == cpus
    assert default_max_workers("process", 1) == 1
    assert default_max_workers("thread", 2) == min(2, cpus + 4)


def test_threads_with_global_seeding_warn():
    experiment = Experiment(numbers, [record], plugins=[SeedPlugin(seed=1), ParallelExecution()])
    with pytest.warns(ReproducibilityWarning, match="ctx.rng"):
        experiment.run(replicates=2)


def test_threads_without_global_seeding_do_not_warn():
    experiment = Experiment(numbers, [record], plugins=[SeedPlugin(seed=1, auto_seed=False), ParallelExecution()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        experiment.run(replicates=2)


def test_same_seed_same_metrics_under_serial_threads_and_processes():
    def run(strategy):
        experiment = Experiment(numbers, [record], plugins=[SeedPlugin(seed=99, auto_seed=False)])
        return experiment.run(replicates=30, strategy=strategy).metrics

    serial = run("serial")
    assert run(ParallelExecution(executor_type="thread", max_workers=3)) == serial
    assert run(ParallelExecution(executor_type="process", max_workers=2)) == serial


def test_process_mode_names_an_unpicklable_datasource():
    experiment = Experiment(lambda ctx: [1], [record], plugins=[ParallelExecution(executor_type="process")])
    with pytest.raises(NotPicklableError, match="datasource cannot be pickled"):
        experiment.run(replicates=2)


def test_process_mode_names_an_unpicklable_treatment():
    from crystallize_core import Treatment

    experiment = Experiment(
        numbers,
        [record],
        plugins=[ParallelExecution(executor_type="process")],
        treatments=[Treatment("odd", lambda ctx: ctx.add("factor", 3))],
    )
    with pytest.raises(NotPicklableError, match="treatment 'odd'"):
        experiment.run(replicates=2)


@pytest.mark.parametrize("executor_type", ["thread", "process"])
def test_progress_advances_to_the_total(capsys, executor_type):
    experiment = Experiment(numbers, [record], plugins=[ParallelExecution(executor_type=executor_type)])
    experiment.run(replicates=9, progress=True)
    assert "replicates: 9/9 (100%)" in capsys.readouterr().err


def test_a_timeout_passes_threads_over_for_a_strategy_that_can_enforce_it():
    threads = ParallelExecution(executor_type="thread")
    processes = ParallelExecution(executor_type="process", max_workers=2)
    result = Experiment(numbers, [record], plugins=[threads, processes]).run(replicates=3, timeout=30)
    assert result.strategy == "parallel" and result.errors == []


def test_any_executor_can_run_the_replicates():
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    serial = Experiment(numbers, [record], plugins=[SeedPlugin(seed=4, auto_seed=False)]).run(replicates=20).metrics
    for executor in (ThreadPoolExecutor(3), ProcessPoolExecutor(2)):
        with executor:
            experiment = Experiment(numbers, [record], plugins=[SeedPlugin(seed=4, auto_seed=False)])
            result = experiment.run(replicates=20, strategy=executor)
        assert result.strategy == "ExecutorStrategy" and result.metrics == serial


def test_strategy_object_is_small_and_picklable():
    strategy = ParallelExecution(executor_type="process", max_workers=2)
    assert pickle.loads(pickle.dumps(strategy)).max_workers == 2


def test_a_dead_worker_is_reported_with_its_exit_code_or_signal_and_the_likely_cause(tmp_path):
    killer = KillWorkerOn({1: "exit", 4: "kill"})
    strategy = ParallelExecution(executor_type="process", max_workers=2, max_retries=0)
    result = Experiment(numbers, [killer, record], plugins=[strategy]).run(replicates=6)
    died = {e.replicate: e.message for e in result.errors}
    assert sorted(died) == [1, 4]
    assert "exit code 1" in died[1] and "killed by signal SIGKILL" in died[4]
    assert all("out of memory" in message for message in died.values())
    assert result.metrics["baseline"]["replicate"] == [0, None, 2, 3, None, 5]

"""One path for results: every finished replicate reaches the run's sink once,
and a stopped run's partial result is what the sink holds."""

import pickle

import pytest

from crystallize_core import Experiment, ExperimentInterrupted, SeedPlugin, Treatment, hookimpl
from crystallize_core.testing import numbers, record


def _experiment() -> Experiment:
    return Experiment(numbers, [record], plugins=[SeedPlugin(seed=7)], treatments=[Treatment("double", {"factor": 2})])


def _elsewhere(replicate_fn):
    """A copy of the replicate function as a worker process gets it: it reports to no sink."""
    return pickle.loads(pickle.dumps(replicate_fn))


class ShipsAndReports:
    """Runs replicates on a copy (as if in another process), reports the first
    ``reported`` of them as they come back, then is interrupted."""

    def __init__(self, reported: int):
        self.reported = reported

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        worker = _elsewhere(replicate_fn)
        finished = [worker(i) for i in range(experiment.replicates - 1)]
        replicate_fn.record(finished[: self.reported])
        interrupt = KeyboardInterrupt()
        interrupt.completed = finished  # handed over, never reported: not a path into the result
        raise interrupt


def test_a_stopped_runs_partial_result_holds_what_was_reported_and_only_that():
    with pytest.raises(ExperimentInterrupted) as stopped:
        _experiment().run(replicates=5, strategy=ShipsAndReports(reported=2))
    partial = stopped.value.partial_result
    assert partial.complete is False
    assert [r.replicate for r in partial.replicate_results] == [0, 1]
    whole = _experiment().run(replicates=5)
    assert partial.replicate_results[1].metrics == whole.replicate_results[1].metrics


class HalfHereHalfElsewhere:
    """Runs even replicates here (they report themselves) and odd ones on a
    copy (reported by nobody), and returns them all."""

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        worker = _elsewhere(replicate_fn)
        return [(replicate_fn if i % 2 == 0 else worker)(i) for i in range(experiment.replicates)]


def test_an_answer_supplies_only_what_the_sink_lacks_and_nothing_twice():
    result = _experiment().run(replicates=6, strategy=HalfHereHalfElsewhere())
    whole = _experiment().run(replicates=6)
    assert [r.replicate for r in result.replicate_results] == list(range(6))
    assert result.metrics == whole.metrics


class ReportsAndReturns:
    """Reports every result from elsewhere and also returns it: the sink keeps each once."""

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        worker = _elsewhere(replicate_fn)
        results = [worker(i) for i in range(experiment.replicates)]
        replicate_fn.record(results)
        return results


def test_a_result_reported_and_returned_is_kept_once():
    result = _experiment().run(replicates=4, strategy=ReportsAndReturns())
    assert [r.replicate for r in result.replicate_results] == [0, 1, 2, 3]
    assert result.metrics == _experiment().run(replicates=4).metrics

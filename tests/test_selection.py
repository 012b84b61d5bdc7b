"""First implementer wins: the order strategies are asked in, and the checks on the winner's answer."""

import pytest

from crystallize_core import ConfigurationError, Experiment, StrategyContractError, hookimpl
from crystallize_core.testing import Decliner, Recorder, numbers, record


class Named(Recorder):
    def __init__(self, name):
        super().__init__()
        self.name = name


class Answers:
    """A strategy returning whatever it is told to."""

    def __init__(self, make_answer):
        self.make_answer = make_answer

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        return self.make_answer([replicate_fn(i) for i in range(experiment.replicates)])


def run(*plugins, strategy=None, replicates=3):
    return Experiment(numbers, [record], plugins=list(plugins)).run(replicates=replicates, strategy=strategy)


def test_experiment_plugins_are_asked_in_list_order():
    first, second = Named("first"), Named("second")
    assert run(first, second).strategy == "first"
    assert (first.asked, second.asked) == (1, 0)


def test_declining_passes_to_the_next_plugin():
    decliner, second = Decliner(), Named("second")
    assert run(decliner, second).strategy == "second"
    assert decliner.asked == 1


def test_experiment_plugins_come_before_the_named_strategy():
    named = Named("named")
    assert run(Named("own"), strategy=named).strategy == "own"
    assert named.asked == 0


def test_the_named_strategy_comes_before_the_fallback():
    assert run(Decliner(), strategy=Named("named")).strategy == "named"


def test_the_fallback_runs_when_everyone_declines():
    assert run(Decliner(), strategy=Decliner()).strategy == "serial"


def test_tryfirst_is_respected_as_pluggy_orders_it():
    class Eager(Named):
        @hookimpl(tryfirst=True)
        def run_experiment_loop(self, experiment, replicate_fn):
            return super().run_experiment_loop(experiment, replicate_fn)

    assert run(Named("first"), Eager("eager")).strategy == "eager"


@pytest.mark.parametrize(
    "make_answer, message",
    [
        (tuple, r"returned tuple from run_experiment_loop; expected a list of 3"),
        (lambda results: results[:-1], r"returned 2 results for 3 replicates"),
        (lambda results: results[::-1], r"returned replicate 2 at position 0; results must be in replicate order"),
        (lambda results: [r.metrics for r in results], r"returned dict at position 0"),
    ],
)
def test_a_broken_answer_names_the_strategy(make_answer, message):
    with pytest.raises(StrategyContractError, match=message) as caught:
        run(Answers(make_answer))
    assert "'Answers' (" in str(caught.value)


def test_a_hook_with_a_misspelled_name_is_refused_before_work():
    class Typo:
        @hookimpl
        def run_experiment_lop(self, experiment, replicate_fn):
            return []

    with pytest.raises(ConfigurationError, match=r"Typo' \(.*implements a hook Crystallize does not define"):
        run(Typo())


def test_a_hook_with_a_wrong_argument_is_refused_before_work():
    class WrongArgs:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_function):
            return []

    with pytest.raises(ConfigurationError, match=r"(?s)WrongArgs' \(.*cannot be registered.*replicate_function"):
        run(WrongArgs())


def test_a_wrapper_around_the_strategy_hook_is_refused():
    class Wrapper:
        @hookimpl(wrapper=True)
        def run_experiment_loop(self, experiment, replicate_fn):
            return (yield)

    with pytest.raises(ConfigurationError, match="wraps run_experiment_loop"):
        run(Wrapper())


def test_the_same_plugin_object_twice_is_refused():
    plugin = Named("twice")
    with pytest.raises(ConfigurationError, match="cannot be registered"):
        run(plugin, plugin)

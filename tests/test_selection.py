"""First implementer wins: the order strategies are asked in, and the checks on the winner's answer."""

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from crystallize_core import (
    Capabilities,
    ConfigurationError,
    Experiment,
    SeedPlugin,
    StrategyCapabilityError,
    StrategyContractError,
    Treatment,
    hookimpl,
)
from crystallize_core.testing import Decliner, LoopStrategy, RecordRuns, SleepEach, numbers, record


class First(LoopStrategy):
    pass


class Second(LoopStrategy):
    pass


class Chosen(LoopStrategy):
    pass


class Answers:
    """A strategy returning whatever it is told to."""

    def __init__(self, make_answer):
        self.make_answer = make_answer

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        return self.make_answer([replicate_fn(i) for i in range(experiment.replicates)])


def run(*plugins, strategy=None, replicates=3, **options):
    return Experiment(numbers, [record], plugins=list(plugins)).run(replicates=replicates, strategy=strategy, **options)


def test_experiment_plugins_are_asked_in_list_order():
    first, second = First(), Second()
    assert run(first, second).strategy == "First"
    assert (first.asked, second.asked) == (1, 0)


def test_declining_passes_to_the_next_plugin():
    decliner, second = Decliner(), Second()
    assert run(decliner, second).strategy == "Second"
    assert decliner.asked == 1


def test_the_strategy_chosen_for_the_run_comes_before_the_experiments_plugins(caplog):
    own, chosen = First(), Chosen()
    with caplog.at_level("INFO", logger="crystallize"):
        assert run(own, strategy=chosen).strategy == "Chosen"
    assert own.asked == 0
    assert "'First' (" in caplog.text and "was passed over: 'Chosen' was chosen for this run" in caplog.text


def test_the_strategy_chosen_by_the_environment_comes_first(monkeypatch):
    monkeypatch.setenv("CRYSTALLIZE_STRATEGY", "serial")
    own = First()
    assert run(own).strategy == "serial"
    assert own.asked == 0


def test_a_declining_chosen_strategy_passes_to_the_experiments_plugins():
    assert run(First(), strategy=Decliner()).strategy == "First"


def test_the_fallback_runs_when_everyone_declines():
    assert run(Decliner(), strategy=Decliner()).strategy == "serial"


def test_tryfirst_is_respected_as_pluggy_orders_it():
    class Eager(LoopStrategy):
        @hookimpl(tryfirst=True)
        def run_experiment_loop(self, experiment, replicate_fn):
            return super().run_experiment_loop(experiment, replicate_fn)

    assert run(First(), Eager()).strategy.endswith("Eager")


def test_capabilities_are_checked_after_declining():
    """A plugin that cannot honour the timeout is passed over, not a reason to refuse the run."""

    class Timed(LoopStrategy):
        capabilities = Capabilities(timeout=True)

    decliner, timed = Decliner(), Timed()
    result = Experiment(numbers, [record], plugins=[decliner, timed]).run(replicates=2, timeout=5)
    assert result.strategy.endswith("Timed") and timed.asked == 1
    assert decliner.asked == 0  # it cannot enforce a timeout, so it is not asked


def test_a_timeout_nobody_can_enforce_is_refused_naming_who_was_passed_over():
    with pytest.raises(StrategyCapabilityError, match=r"(?s)Passed over: 'First' .*cannot enforce a per-replicate"):
        run(First(), replicates=2, timeout=5)


def test_two_strategies_of_one_class_are_told_apart():
    first, again = First(), First()
    assert run(Decliner(), first, again).strategy == "First"
    assert (first.asked, again.asked) == (1, 0)


def test_a_misspelt_capability_is_an_error():
    with pytest.raises(TypeError, match="timeuot"):
        Capabilities(timeuot=True)

    class Loose(LoopStrategy):
        capabilities = {"timeout": True}

    with pytest.raises(TypeError, match=r"must be a crystallize_core\.Capabilities"):
        run(Loose(), timeout=1)


@pytest.mark.parametrize(
    "strategy, message",
    [
        (123, "strategy must be a name"),
        (["serial"], "strategy must be a name"),
        (LoopStrategy, r"not the class LoopStrategy: pass LoopStrategy\(\) instead"),
        (SeedPlugin(seed=1), "implements no run_experiment_loop hook"),
    ],
)
def test_a_bad_strategy_is_refused_before_work(strategy, message, tmp_path):
    log = tmp_path / "runs.txt"
    experiment = Experiment(numbers, [RecordRuns(str(log)), record])
    with pytest.raises(ConfigurationError, match=message):
        experiment.run(replicates=2, strategy=strategy)
    assert not log.exists()


def test_a_run_leaves_the_experiment_unchanged_and_runs_at_once_do_not_interfere():
    experiment = Experiment(numbers, [SleepEach(0.01), record], plugins=[SeedPlugin(seed=2, auto_seed=False)])
    seen = []

    class Looks(LoopStrategy):
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            seen.append((experiment.replicates, experiment.timeout, experiment.fail_fast))
            return super().run_experiment_loop(experiment, replicate_fn)

    experiment.plugins.append(Looks())
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(experiment.run, replicates=n) for n in (3, 7)]
        results = [f.result() for f in futures]
    assert [r.replicates for r in results] == [3, 7]
    assert results[1].seeds[:3] == results[0].seeds
    assert sorted(seen) == [(3, None, False), (7, None, False)]
    assert experiment.replicates == 1 and not hasattr(experiment, "timeout")


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
    plugin = First()
    with pytest.raises(ConfigurationError, match="cannot be registered"):
        run(plugin, plugin)


def test_a_strategy_chosen_for_the_run_comes_first_even_if_it_is_also_an_experiment_plugin():
    own, chosen = First(), Chosen()
    assert run(own, chosen, strategy=chosen).strategy == "Chosen"
    assert own.asked == 0


class KeepsTheView:
    def __init__(self):
        self.views = []

    @hookimpl
    def before_run(self, experiment):
        self.views.append(experiment)


def test_the_run_view_copies_and_pickles_like_a_plain_object():
    import copy
    import pickle

    keep = KeepsTheView()
    Experiment(numbers, [record], plugins=[keep]).run(replicates=3)
    (view,) = keep.views
    assert copy.copy(view).replicates == 3
    again = pickle.loads(pickle.dumps(view))
    assert (again.replicates, again.conditions) == (3, ("baseline",))


class SeesTheRun(LoopStrategy):
    """A strategy and a run hook at once: what each of them is shown."""

    def __init__(self):
        super().__init__()
        self.shown = {}

    @hookimpl
    def before_run(self, experiment):
        self.shown["before_run"] = experiment

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        self.shown["strategy"] = experiment
        return super().run_experiment_loop(experiment, replicate_fn)


def test_a_strategy_and_a_before_run_plugin_see_the_runs_own_treatments_not_the_experiments():
    spy = SeesTheRun()
    experiment = Experiment(numbers, [record], plugins=[spy], treatments=[Treatment("default_t", {"x": 1})])
    chosen = Treatment("chosen", {"x": 2})
    experiment.run(treatments=[chosen], replicates=2, fail_fast=True, progress=False)
    for who, view in spy.shown.items():
        assert [t.name for t in view.treatments] == ["chosen"], who
        assert tuple(view.conditions) == ("baseline", "chosen"), who
        assert (view.replicates, view.fail_fast, view.progress, view.timeout) == (2, True, False, None), who
        assert view.datasource is numbers and list(view.pipeline) == [record], who
        assert view.plugins == (spy,), who


def test_the_run_view_forwards_nothing_and_cannot_be_changed():
    spy = SeesTheRun()
    Experiment(numbers, [record], plugins=[spy]).run(replicates=2)
    view = spy.shown["strategy"]
    for name in ("experiment", "run", "arun", "replicates_default", "__dict__"):
        assert not hasattr(view, name), f"the run view answers {name!r}"
    with pytest.raises(AttributeError, match="cannot be changed"):
        view.replicates = 5
    with pytest.raises(AttributeError, match="cannot be changed"):
        view.treatments = ()


def test_a_run_hook_cannot_change_the_experiments_treatments_or_steps_through_the_view():
    spy = SeesTheRun()
    treatment = Treatment("t", {"a": 1})
    experiment = Experiment(numbers, [record], plugins=[spy], treatments=[treatment])
    experiment.run(replicates=1)
    view = spy.shown["before_run"]
    with pytest.raises(TypeError):
        view.treatments[0].overrides["a"] = 1000
    with pytest.raises(AttributeError, match="cannot be changed"):
        view.treatments[0].name = "renamed"
    with pytest.raises(AttributeError):
        view.pipeline.steps = ()
    assert (treatment.name, treatment.overrides) == ("t", {"a": 1})
    assert experiment.pipeline.steps == (record,)


class ChosenDecliner(Decliner):
    pass


def test_a_run_that_falls_through_after_the_chosen_strategy_declined_says_so_at_warning(caplog):
    with caplog.at_level(logging.INFO, logger="crystallize"):
        result = Experiment(numbers, [record]).run(replicates=2, strategy=ChosenDecliner())
    assert result.strategy == "serial"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "ChosenDecliner" in warning.getMessage() and "declined" in warning.getMessage()
    assert "'serial' ran it instead" in warning.getMessage() and "run(strategy=...)" in warning.getMessage()


def test_an_experiment_plugin_that_declines_is_no_warning(caplog):
    with caplog.at_level(logging.INFO, logger="crystallize"):
        assert run(Decliner()).strategy == "serial"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

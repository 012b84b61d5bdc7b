"""Mistakes users make, caught before any work and named at the user's own code."""

import functools
import logging
import re
import subprocess
import sys
import textwrap

import pytest

from crystallize_core import ConfigurationError, ExecutorStrategy, Experiment, Pipeline, StrategyOptionError, Treatment
from crystallize_core.testing import numbers, record
from crystallize_parallel import ParallelExecution
from crystallize_serial import SerialExecution

HERE = re.escape(__file__.rsplit("/", 1)[-1])


class CountingSource:
    def __init__(self):
        self.calls = 0

    def __call__(self, ctx):
        self.calls += 1
        return [1.0, 2.0]


def normalise(data):  # forgot ctx
    return data


def test_a_step_without_ctx_is_refused_before_the_datasource_is_ever_called():
    source = CountingSource()
    with pytest.raises(ConfigurationError) as refused:
        Experiment(source, [record, normalise]).run(replicates=200)
    message = str(refused.value)
    assert "\n" not in message
    assert re.search(rf"pipeline step 1 'normalise' \(.*{HERE}:\d+\) takes \(data\)", message), message
    assert "step(data, ctx)" in message
    assert source.calls == 0


def test_a_datasource_with_the_wrong_signature_is_refused_naming_it():
    def load(path, ctx):
        return []

    with pytest.raises(
        ConfigurationError, match=rf"datasource '.*load' \(.*{HERE}:\d+\) takes \(path, ctx\).*datasource\(ctx\)"
    ):
        Experiment(load, [record])


def test_treatment_overrides_with_the_wrong_signature_are_refused_naming_them():
    def boost():
        pass

    with pytest.raises(ConfigurationError, match=r"treatment 'boosted': overrides '.*boost' .* overrides\(ctx\)"):
        Treatment("boosted", boost)


def test_a_pipeline_built_alone_is_checked_too():
    with pytest.raises(ConfigurationError, match="pipeline step 0 'normalise'"):
        Pipeline([normalise])


class Step:
    def __call__(self, data, ctx):
        return data


async def awaiting_step(data, ctx):
    return data


def flexible(*args, **kwargs):
    return args[0]


def with_defaults(data, ctx, scale=2):
    return data


def adapted(function):
    """A decorator that turns ``f(data)`` into a step, keeping ``f``'s name (and ``__wrapped__``)."""

    @functools.wraps(function)
    def step(data, ctx):
        return function(data)

    return step


@adapted
def doubled(data):
    return [x * 2 for x in data]


class StaticCall:
    @staticmethod
    def __call__(data, ctx):
        return data


@pytest.mark.parametrize(
    "step",
    [
        Step(),
        awaiting_step,
        flexible,
        with_defaults,
        functools.partial(with_defaults, scale=3),
        lambda data, ctx: data,
        doubled,
        StaticCall(),
    ],
)
def test_every_callable_that_takes_data_and_ctx_is_accepted(step):
    Experiment(numbers, [step])


def test_a_decorated_step_runs_as_its_wrapper_takes_it():
    result = Experiment(numbers, [doubled, StaticCall(), record]).run(replicates=1)
    assert not result.errors


def test_a_builtin_without_a_signature_is_left_to_answer_when_called():
    Experiment(numbers, [record, max])  # max(data, ctx) fails when run, as a captured error


def returns_nothing(data, ctx):
    ctx.metrics.add("n", len(data))


def scale(data, ctx):
    return [x * 2 for x in data]


def test_a_step_that_returned_none_is_named_in_the_next_steps_error(caplog):
    with caplog.at_level(logging.WARNING, logger="crystallize"):
        result = Experiment(numbers, [returns_nothing, scale]).run(replicates=2)
    (error, _) = result.errors
    assert error.exc_type == "TypeError"
    assert re.search(rf"step 'returns_nothing' \(.*{HERE}:\d+\) returned None", error.message), error.message
    assert re.search(rf"step 'scale' \(.*{HERE}:\d+\) was given", error.message), error.message
    logged = [r.getMessage() for r in caplog.records if "returned None" in r.getMessage()]
    assert logged and all(re.search(rf"\((.*/)?{HERE}:\d+\)$", line) for line in logged), logged


def test_a_datasource_that_returned_none_is_named():
    def nothing(ctx):
        return None

    (error,) = Experiment(nothing, [scale]).run(replicates=1).errors
    assert "datasource '" in error.message and "nothing' (" in error.message and "returned None" in error.message


def test_a_step_given_none_on_purpose_that_fails_for_its_own_reason_is_not_blamed_on_the_none():
    def setup(ctx):
        return None

    def build(data, ctx):
        raise KeyError("missing_column")

    (error,) = Experiment(setup, [build]).run(replicates=1).errors
    assert error.message == "'missing_column'"


def test_errors_that_have_nothing_to_do_with_none_are_left_as_they_are():
    def broken(data, ctx):
        raise ValueError("broken")

    (error,) = Experiment(numbers, [broken]).run(replicates=1).errors
    assert error.message == "broken"


def test_a_coroutine_step_that_returned_none_is_named_too():
    async def forgets(data, ctx):
        ctx.metrics.add("n", 1)

    (error,) = Experiment(numbers, [forgets, scale]).run(replicates=1).errors
    assert "forgets' (" in error.message and "returned None" in error.message


@pytest.mark.parametrize(
    "make, meant",
    [
        (lambda: SerialExecution(progres=True), "progress"),
        (lambda: ParallelExecution(max_worker=2), "max_workers"),
        (lambda: ParallelExecution(executor="process"), "executor_type"),
        (lambda: ExecutorStrategy(None, worker=2), "workers"),
    ],
)
def test_a_misspelt_keyword_on_a_strategy_constructor_says_did_you_mean(make, meant):
    with pytest.raises(StrategyOptionError, match=rf"did you mean '{meant}'\?.*valid options: ") as refused:
        make()
    assert isinstance(refused.value, TypeError)


def test_an_error_raised_inside_a_constructor_is_not_taken_for_a_misspelling():
    with pytest.raises(ConfigurationError, match="unknown executor_type"):
        ParallelExecution(executor_type="fibers")


def test_a_subclass_is_named_as_the_user_wrote_it():
    class MyPool(ParallelExecution):
        pass

    with pytest.raises(StrategyOptionError, match=r"^MyPool\(\) has no option 'max_worker'"):
        MyPool(max_worker=2)


def test_the_constructors_signature_is_kept_for_documentation_and_the_name_form():
    import inspect

    assert list(inspect.signature(ParallelExecution).parameters)[:2] == ["max_workers", "executor_type"]


def test_a_misspelt_option_by_name_says_did_you_mean_too():
    from crystallize_core import load_strategy

    with pytest.raises(StrategyOptionError, match=r"'max_worker' \(did you mean 'max_workers'\?\)"):
        load_strategy("parallel", max_worker=2)


def test_the_command_line_refuses_a_wrong_signature_in_one_line(tmp_path):
    study = tmp_path / "study.py"
    study.write_text(
        textwrap.dedent(
            """
            from crystallize_core import Experiment

            def source(ctx):
                raise AssertionError("never called")

            def normalise(data):
                return data

            def build():
                return Experiment(source, [normalise])
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "crystallize_core", "run", f"{study}:build"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "normalise' (" in done.stderr and "study.py:7) takes (data)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "never called" not in done.stderr

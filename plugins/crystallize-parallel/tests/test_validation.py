"""Property-based: every invalid option combination gets a clear error, every valid one runs."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crystallize_core import ConfigurationError, Experiment
from crystallize_core.testing import numbers, record
from crystallize_parallel import ParallelExecution

anything = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=True))
options = st.fixed_dictionaries(
    {},
    optional={
        "max_workers": st.one_of(st.integers(-2, 4), anything),
        "executor_type": st.one_of(st.sampled_from(["thread", "process"]), anything),
        "max_retries": st.one_of(st.integers(-2, 3), anything),
    },
)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def problems(given_options):
    """The options that are invalid, by the documented rules."""
    executor_type = given_options.get("executor_type", "thread")
    wrong = []
    if executor_type not in ("thread", "process"):
        wrong.append("executor_type")
    max_workers = given_options.get("max_workers")
    if max_workers is not None and not (is_int(max_workers) and max_workers >= 1):
        wrong.append("max_workers")
    max_retries = given_options.get("max_retries", 1)
    if not (is_int(max_retries) and max_retries >= 0):
        wrong.append("max_retries")
    return wrong


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options)
def test_options_are_validated_when_built_and_valid_ones_run(given_options):
    wrong = problems(given_options)
    try:
        strategy = ParallelExecution(**given_options)
    except ConfigurationError as error:
        assert wrong, f"valid options {given_options} were refused: {error}"
        assert any(name in str(error) for name in wrong), f"{error} names none of {wrong}"
        return
    assert not wrong, f"invalid options {given_options} were accepted ({wrong})"
    result = Experiment(numbers, [record], plugins=[strategy]).run(replicates=3)
    assert result.strategy == "parallel"
    assert result.metrics["baseline"]["replicate"] == [0, 1, 2]


@settings(max_examples=60, deadline=None)
@given(
    replicates=st.one_of(st.integers(-2, 5), anything),
    timeout=st.one_of(st.none(), st.floats(-1, 30), anything),
    fail_fast=st.one_of(st.booleans(), anything),
)
def test_run_options_are_validated_before_any_work(replicates, timeout, fail_fast):
    valid_replicates = replicates is None or (is_int(replicates) and replicates >= 1)
    valid_timeout = timeout is None or (
        isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout == timeout and timeout > 0
    )
    valid_fail_fast = fail_fast is None or isinstance(fail_fast, bool)
    experiment = Experiment(numbers, [record], plugins=[ParallelExecution(executor_type="process", max_workers=2)])
    try:
        result = experiment.run(replicates=replicates, timeout=timeout, fail_fast=fail_fast)
    except ConfigurationError as error:
        assert not (valid_replicates and valid_timeout and valid_fail_fast), f"refused valid input: {error}"
        named = [
            n
            for n, ok in (("replicates", valid_replicates), ("timeout", valid_timeout), ("fail_fast", valid_fail_fast))
            if not ok
        ]
        assert any(name in str(error) for name in named), f"{error} names none of {named}"
        return
    assert valid_replicates and valid_timeout and valid_fail_fast
    assert result.replicates == (1 if replicates is None else replicates)

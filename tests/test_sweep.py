"""Treatments from a grid of parameter values."""

import pytest

from crystallize_core import ConfigurationError, Experiment, SeedPlugin, Treatment, treatment_grid


def source(ctx):
    return ctx.get("C", 1.0)


def measure(value, ctx):
    ctx.metrics.add("score", value * (2 if ctx.get("kernel") == "rbf" else 1))
    return value


def test_the_grid_is_every_combination_named_from_its_values_last_varying_fastest():
    grid = treatment_grid(C=[0.01, 1], kernel=["rbf", "linear"])
    assert all(isinstance(t, Treatment) for t in grid)
    assert [t.name for t in grid] == [
        "C=0.01,kernel=rbf",
        "C=0.01,kernel=linear",
        "C=1,kernel=rbf",
        "C=1,kernel=linear",
    ]
    assert [t.overrides for t in grid] == [
        {"C": 0.01, "kernel": "rbf"},
        {"C": 0.01, "kernel": "linear"},
        {"C": 1, "kernel": "rbf"},
        {"C": 1, "kernel": "linear"},
    ]


def test_a_mapping_takes_keys_that_are_not_python_names_and_values_show_as_repr():
    grid = treatment_grid({"learning-rate": [1e-3]}, layers=[(32, 32), None, True])
    assert [t.name for t in grid] == [
        "learning-rate=0.001,layers=(32, 32)",
        "learning-rate=0.001,layers=None",
        "learning-rate=0.001,layers=True",
    ]


def test_the_grid_runs_as_treatments_with_their_values_in_the_context():
    experiment = Experiment(source, [measure], plugins=[SeedPlugin(seed=1, auto_seed=False)])
    result = experiment.run(treatments=treatment_grid(C=[0.5, 3], kernel=["rbf"]), replicates=2)
    assert result.conditions == ("baseline", "C=0.5,kernel=rbf", "C=3,kernel=rbf")
    assert result.metrics["C=3,kernel=rbf"]["score"] == [6, 6]
    assert result.metrics["baseline"]["score"] == [1.0, 1.0]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: treatment_grid(), "needs at least one parameter"),
        (lambda: treatment_grid(C=[]), "parameter 'C' has no values"),
        (lambda: treatment_grid(C=0.1), r"needs a list of values, got 0.1; for a single value write C=\[0.1\]"),
        (lambda: treatment_grid(kernel="rbf"), "needs a list of values, got 'rbf'"),
        (lambda: treatment_grid({"C": [1]}, C=[2]), "parameter 'C' is given twice"),
        (lambda: treatment_grid({"": [1]}), "must be non-empty strings"),
        (lambda: treatment_grid(C=[1, "1"]), "would both be named 'C=1'"),
        (lambda: treatment_grid([("C", [1])]), "takes a mapping"),
    ],
)
def test_malformed_grids_are_refused_with_the_fix(call, message):
    with pytest.raises(ConfigurationError, match=message):
        call()

"""The experiment model: contexts, treatments, seeds, captured errors, results."""

import random

import pytest

from crystallize_core import (
    ConfigurationError,
    Context,
    ContextKeyError,
    Experiment,
    Pipeline,
    ReplicateError,
    SeedPlugin,
    Treatment,
    derive_seed,
)


def source(ctx):
    return [1.0, 2.0, 3.0]


def scale(data, ctx):
    return [x * ctx.get("factor", 1) for x in data]


def measure(data, ctx):
    ctx.metrics.add("total", sum(data))
    ctx.metrics.add("draw", ctx.rng.random())
    return data


def test_the_documented_example_runs_serially():
    experiment = Experiment(datasource=source, pipeline=Pipeline([scale, measure]), plugins=[SeedPlugin(seed=7)])
    result = experiment.run(treatments=[Treatment("double", {"factor": 2})], replicates=10)
    assert result.metrics["baseline"]["total"] == [6.0] * 10
    assert result.metrics["double"]["total"] == [12.0] * 10
    assert result.seeds == [derive_seed(7, i) for i in range(10)]
    assert result.errors == []
    assert result.strategy == "serial"
    assert result.conditions == ("baseline", "double")


def test_a_plain_list_of_steps_is_a_pipeline():
    result = Experiment(source, [scale, measure]).run(replicates=2)
    assert result.metrics["baseline"]["total"] == [6.0, 6.0]


def test_baseline_and_treatments_share_the_replicate_seed_and_rng_stream():
    result = Experiment(source, [measure], plugins=[SeedPlugin(seed=3)]).run(
        treatments=[Treatment("a", {"factor": 2}), Treatment("b", {})], replicates=4
    )
    draws = result.metrics["baseline"]["draw"]
    assert result.metrics["a"]["draw"] == draws == result.metrics["b"]["draw"]
    assert draws == [random.Random(derive_seed(3, i)).random() for i in range(4)]
    assert len(set(draws)) == 4


def test_seed_depends_on_base_seed_and_index_only():
    assert derive_seed(7, 3) == derive_seed(7, 3)
    assert derive_seed(7, 3) != derive_seed(8, 3)
    assert len({derive_seed(7, i) for i in range(1000)}) == 1000
    assert all(0 <= derive_seed(-5, i) < 2**32 for i in range(10))


def test_seed_plugin_seeds_global_random_where_the_replicate_runs():
    def draw_global(data, ctx):
        ctx.metrics.add("global", random.random())
        return data

    result = Experiment(source, [draw_global], plugins=[SeedPlugin(seed=11)]).run(replicates=3)
    assert result.metrics["baseline"]["global"] == [random.Random(derive_seed(11, i)).random() for i in range(3)]


def test_seed_plugin_calls_seed_fn_instead_of_seeding_globals():
    seen = []
    Experiment(source, [measure], plugins=[SeedPlugin(seed=5, seed_fn=seen.append)]).run(replicates=3)
    assert seen == [derive_seed(5, i) for i in range(3)]


def test_seed_plugin_without_a_seed_draws_and_keeps_one():
    plugin = SeedPlugin()
    assert isinstance(plugin.seed, int)
    result = Experiment(source, [measure], plugins=[plugin]).run(replicates=2)
    assert result.seeds == [derive_seed(plugin.seed, 0), derive_seed(plugin.seed, 1)]


@pytest.mark.parametrize("bad", ["7", 1.5, True])
def test_seed_plugin_rejects_a_seed_that_is_not_an_int(bad):
    with pytest.raises(ConfigurationError, match="seed must be an int"):
        SeedPlugin(seed=bad)


def test_treatment_may_be_a_callable():
    def treat(ctx):
        ctx.add("factor", 10)

    result = Experiment(source, [scale, measure]).run(treatments=[Treatment("ten", treat)], replicates=1)
    assert result.metrics["ten"]["total"] == [60.0]


def test_steps_cannot_overwrite_context_keys():
    def overwrite(data, ctx):
        ctx.add("factor", 3)
        return data

    result = Experiment(source, [overwrite]).run(treatments=[Treatment("t", {"factor": 2})], replicates=1)
    (error,) = result.errors
    assert error.condition == "t"
    assert error.exc_type == "crystallize_core.context.ContextKeyError"
    assert "'factor' already exists" in error.message


def test_context_reads():
    ctx = Context({"a": 1}, replicate=2, condition="c", seed=9)
    assert (ctx["a"], ctx.get("b", 5), ctx.replicate, ctx.condition, ctx.seed) == (1, 5, 2, "c", 9)
    assert ctx.rng.random() == random.Random(9).random()
    with pytest.raises(ContextKeyError, match="has no key 'b'"):
        ctx["b"]


def test_a_metric_recorded_twice_is_an_error():
    def twice(data, ctx):
        ctx.metrics.add("m", 1)
        ctx.metrics.add("m", 2)

    (error,) = Experiment(source, [twice]).run(replicates=1).errors
    assert "metric 'm' was already recorded" in error.message


def test_an_error_loses_only_its_replicate_and_condition():
    def fail_on_two(data, ctx):
        if ctx.replicate == 2 and ctx.condition == "t":
            raise RuntimeError("bad luck")
        return data

    result = Experiment(source, [scale, fail_on_two, measure]).run(
        treatments=[Treatment("t", {"factor": 2})], replicates=4
    )
    assert result.metrics["baseline"]["total"] == [6.0] * 4
    assert result.metrics["t"]["total"] == [12.0, 12.0, None, 12.0]
    (error,) = result.errors
    assert isinstance(error, ReplicateError)
    assert (error.replicate, error.condition, error.exc_type, error.message) == (2, "t", "RuntimeError", "bad luck")
    assert "fail_on_two" in error.traceback and "Traceback" in error.traceback


def test_datasource_errors_are_captured_too():
    def broken_source(ctx):
        raise OSError("disk gone")

    result = Experiment(broken_source, [measure]).run(replicates=2)
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(0, "OSError"), (1, "OSError")]


def test_replicates_is_set_during_run_and_restored_after():
    seen = []

    class Spy:
        from crystallize_core import hookimpl

        @hookimpl
        def before_run(self, experiment):
            seen.append(experiment.replicates)

    experiment = Experiment(source, [measure], plugins=[Spy()], replicates=2)
    experiment.run(replicates=5)
    assert seen == [5] and experiment.replicates == 2


def test_lifecycle_hooks_run_in_order():
    from crystallize_core import hookimpl

    calls = []

    class Lifecycle:
        @hookimpl
        def before_run(self, experiment):
            calls.append("before_run")

        @hookimpl
        def before_replicate(self, replicate, seed):
            calls.append(f"before {replicate}")

        @hookimpl
        def after_replicate(self, replicate, result):
            calls.append(f"after {result.replicate}")

        @hookimpl
        def after_run(self, experiment, result):
            calls.append(f"after_run {result.replicates}")

    Experiment(source, [measure], plugins=[Lifecycle()]).run(replicates=2)
    assert calls == ["before_run", "before 0", "after 0", "before 1", "after 1", "after_run 2"]


def test_a_failing_replicate_hook_is_recorded_not_raised():
    from crystallize_core import hookimpl

    class Broken:
        @hookimpl
        def before_replicate(self, replicate):
            if replicate == 1:
                raise RuntimeError("hook broke")

    result = Experiment(source, [measure], plugins=[Broken()]).run(replicates=3)
    (error,) = result.errors
    assert (error.replicate, error.condition, error.message) == (1, None, "hook broke")
    assert result.metrics["baseline"]["total"] == [6.0, None, 6.0]


def test_replicate_hooks_are_called_as_pluggy_would_call_them():
    """Resolved once per run to plain calls, the replicate hooks keep pluggy's
    order (last registered first, tryfirst and trylast honoured), pass each
    implementation only the arguments it names, and stop replicate_seed at
    the first answer."""
    from crystallize_core import hookimpl

    calls = []

    class Named:
        def __init__(self, name, seed=None):
            self.name, self.answer = name, seed

        @hookimpl
        def replicate_seed(self, replicate):
            calls.append(f"{self.name} seed {replicate}")
            return self.answer

        @hookimpl
        def before_condition(self, condition):
            calls.append(f"{self.name} {condition}")

    class First:
        @hookimpl(tryfirst=True)
        def before_condition(self, seed, replicate, condition):
            calls.append(f"first {condition} {replicate} {seed}")

    class Last:
        @hookimpl(trylast=True)
        def replicate_seed(self):
            calls.append("last seed")
            return 99

    plugins = [Last(), First(), Named("a"), Named("b", seed=7)]
    result = Experiment(source, [measure], plugins=plugins, treatments=[Treatment("t", {"factor": 2})]).run(
        replicates=1
    )
    assert result.seeds == [7]
    assert calls == [
        *("a seed 0", "b seed 0"),
        *("first baseline 0 7", "a baseline", "b baseline"),
        *("first t 0 7", "a t", "b t"),
    ]


def test_hooks_an_instance_holds_itself_are_found_on_that_instance_only():
    """What pluggy finds on a class is remembered between runs; what an
    instance holds itself is looked for on each instance."""
    from crystallize_core import hookimpl

    calls = []

    class Plugin:
        def __init__(self, label, hooked):
            if hooked:

                @hookimpl
                def before_replicate(replicate):
                    calls.append(f"{label} {replicate}")

                self.before_replicate = before_replicate

    for label, hooked in [("plain", False), ("hooked", True), ("plain again", False)]:
        Experiment(source, [measure], plugins=[Plugin(label, hooked)]).run(replicates=1)
    assert calls == ["hooked 0"]


def test_a_plugin_wrapping_a_replicate_hook_is_still_called_through_pluggy():
    from crystallize_core import hookimpl

    calls = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def before_replicate(self, replicate):
            calls.append(f"enter {replicate}")
            outcome = yield
            calls.append(f"leave {replicate}")
            return outcome

    class Plain:
        @hookimpl
        def before_replicate(self, replicate, seed):
            calls.append(f"plain {replicate}")

    Experiment(source, [measure], plugins=[Plain(), Wrapper()]).run(replicates=2)
    assert calls == ["enter 0", "plain 0", "leave 0", "enter 1", "plain 1", "leave 1"]


@pytest.mark.parametrize("bad", [0, -3, 2.0, "5", True, None])
def test_replicates_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigurationError, match="replicates must be a positive integer"):
        Experiment(source, [measure]).run(replicates=bad) if bad is not None else Experiment(
            source, [measure], replicates=bad
        )


def test_bad_components_are_refused_when_built():
    with pytest.raises(ConfigurationError, match="datasource must be a callable"):
        Experiment([1, 2], [measure])
    with pytest.raises(ConfigurationError, match="pipeline step 1"):
        Experiment(source, [measure, "scale"])
    with pytest.raises(ConfigurationError, match="'baseline' names the untreated condition"):
        Treatment("baseline", {})
    with pytest.raises(ConfigurationError, match="overrides must be a mapping or a callable"):
        Treatment("t", 3)
    with pytest.raises(ConfigurationError, match="two treatments are named 't'"):
        Experiment(source, [measure], treatments=[Treatment("t"), Treatment("t")])
    with pytest.raises(ConfigurationError, match="plugins must be plugin objects"):
        Experiment(source, [measure], plugins=["parallel"])


def test_summary_and_dict():
    result = Experiment(source, [scale, measure]).run(treatments=[Treatment("d", {"factor": 2})], replicates=3)
    summary = result.summary()
    assert summary["d"]["total"].n == 3 and summary["d"]["total"].mean == 12.0 and summary["d"]["total"].std == 0.0
    text = result.format_summary()
    assert "baseline" in text and "errors: baseline: 0, d: 0" in text
    document = result.to_dict()
    assert document["metrics"]["d"]["total"] == [12.0] * 3
    assert document["strategy"] == "serial" and document["replicates"] == 3


def test_seed_plugin_leaves_global_random_state_as_random_seed_would():
    """SeedPlugin seeds the random module's generator directly where that is
    the same as random.seed: the state, the waiting normal deviate included."""
    from crystallize_core.seed import _random_seeder

    seeder = _random_seeder()
    for seed in (0, 1, 2**31 - 1, 2**32 + 5, -7, "a str seed from a plugin", 2.5):
        random.gauss(0.0, 1.0)
        seeder(seed)
        ours = random.getstate()
        random.gauss(0.0, 1.0)
        random.seed(seed)
        assert ours == random.getstate()

"""Warnings point at the user's line, not at Crystallize's, and say the fix."""

import sys
import textwrap
import warnings

import pluggy
import pytest

from crystallize_core import Experiment, ReproducibilityWarning, SeedPlugin, warn_at_user_code


def numbers(ctx):
    return ctx.rng.random()


def record(data, ctx):
    ctx.metrics.add("x", data)
    return data


@pytest.fixture
def own_plugin_module(tmp_path, monkeypatch):
    """A module named like a Crystallize plugin, whose hook warns through pluggy."""
    (tmp_path / "crystallize_warner.py").write_text(
        textwrap.dedent(
            """
            import pluggy
            from crystallize_core import warn_at_user_code

            hookimpl = pluggy.HookimplMarker("warner")

            def deep():
                warn_at_user_code("something is off", UserWarning)

            class Warner:
                @hookimpl
                def act(self):
                    deep()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__("crystallize_warner")
    sys.modules.pop("crystallize_warner", None)


def test_a_warning_from_a_plugin_called_through_pluggy_names_the_users_line(own_plugin_module):
    spec = pluggy.HookspecMarker("warner")

    class Spec:
        @spec
        def act(self): ...

    manager = pluggy.PluginManager("warner")
    manager.add_hookspecs(Spec)
    manager.register(own_plugin_module.Warner())
    with pytest.warns(UserWarning, match="something is off") as caught:
        line = sys._getframe().f_lineno + 1
        manager.hook.act()
    (warning,) = caught
    assert warning.filename == __file__ and warning.lineno == line


def test_a_direct_call_from_user_code_names_that_line():
    with pytest.warns(ReproducibilityWarning) as caught:
        line = sys._getframe().f_lineno + 1
        warn_at_user_code("direct")
    assert caught[0].filename == __file__ and caught[0].lineno == line


def test_the_thread_warning_names_the_run_call_and_says_the_fix():
    experiment = Experiment(numbers, [record], plugins=[SeedPlugin(seed=1)])
    with pytest.warns(ReproducibilityWarning) as caught:
        line = sys._getframe().f_lineno + 1
        experiment.run(replicates=2, strategy="parallel:executor_type=thread")
    (warning,) = caught
    assert warning.filename == __file__ and warning.lineno == line
    message = str(warning.message)
    assert "SeedPlugin(seed, auto_seed=False)" in message and "ctx.rng" in message
    assert "executor_type='process'" in message


def test_the_fix_the_warning_names_silences_it():
    experiment = Experiment(numbers, [record], plugins=[SeedPlugin(seed=1, auto_seed=False)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = experiment.run(replicates=2, strategy="parallel:executor_type=thread")
    assert len(result.metrics["baseline"]["x"]) == 2

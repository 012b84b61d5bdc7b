"""ctx.numpy_rng: a seeded NumPy generator per replicate and condition, imported only when used."""

import ast
import subprocess
import sys
import textwrap

import numpy
import pytest

from crystallize_core import Experiment, SeedPlugin, Treatment, derive_seed, hookimpl
from crystallize_core.testing import numbers


def draws(ctx):
    return ctx.numpy_rng.normal(size=3)


def record(values, ctx):
    ctx.metrics.add("draws", [float(v) for v in values])
    ctx.metrics.add("same_object", ctx.numpy_rng is ctx.numpy_rng)
    return values


@pytest.mark.parametrize(
    "strategy", ["serial", "parallel:executor_type=thread,max_workers=3", "parallel:executor_type=process"]
)
def test_the_generator_is_seeded_from_the_replicate_seed_under_every_strategy(strategy):
    experiment = Experiment(draws, [record], plugins=[SeedPlugin(seed=11, auto_seed=False)])
    result = experiment.run(treatments=[Treatment("t", {})], replicates=6, strategy=strategy)
    expected = [list(numpy.random.default_rng(derive_seed(11, i)).normal(size=3)) for i in range(6)]
    assert result.metrics["baseline"]["draws"] == expected
    assert result.metrics["t"]["draws"] == expected, "baseline and treatment share the replicate's stream"
    assert all(result.metrics["baseline"]["same_object"])


def test_numpy_is_imported_neither_by_the_package_nor_by_a_run_that_does_not_use_it(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        import crystallize_core
        assert "numpy" not in sys.modules, "import crystallize_core imported numpy"
        from crystallize_core import Experiment, SeedPlugin

        def source(ctx):
            return ctx.rng.random()

        def record(x, ctx):
            ctx.metrics.add("x", x)
            return x

        if __name__ == "__main__":
            for strategy in ("serial", "parallel:executor_type=thread", "parallel:executor_type=process"):
                Experiment(source, [record], plugins=[SeedPlugin(seed=1, auto_seed=False)]).run(
                    replicates=3, strategy=strategy
                )
            print(sorted(m for m in sys.modules if m.split(".")[0] == "numpy"))
        """
    )
    script = tmp_path / "no_numpy_used.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_numpy_the_error_says_what_to_install(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numpy"] = None  # as if NumPy were not installed
        from crystallize_core import Experiment

        def source(ctx):
            return ctx.numpy_rng.random()

        result = Experiment(source, []).run(replicates=1)
        (error,) = result.errors
        print(error.exc_type, "|", error.message)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ModuleNotFoundError | ctx.numpy_rng needs NumPy")
    assert "pip install numpy" in done.stdout and "ctx.rng" in done.stdout


class NumpySeeds:
    """A plugin that answers replicate_seed with a NumPy integer, or with ``answer`` if given."""

    def __init__(self, answer=None):
        self.answer = answer

    @hookimpl
    def replicate_seed(self, replicate):
        return numpy.int64(1000 + replicate) if self.answer is None else self.answer


def draw(data, ctx):
    ctx.metrics.add("draw", ctx.rng.random())
    return data


def test_a_numpy_integer_seed_from_a_plugin_becomes_an_int():
    result = Experiment(numbers, [draw], plugins=[NumpySeeds()]).run(replicates=3)
    assert result.errors == [] and result.seeds == [1000, 1001, 1002]
    assert all(type(seed) is int for seed in result.seeds)


def test_a_seed_that_is_not_an_integer_is_an_error_naming_the_plugin():
    result = Experiment(numbers, [draw], plugins=[NumpySeeds(answer="seven")]).run(replicates=2)
    expected = "NumpySeeds.replicate_seed returned str 'seven'; a seed must be an int"
    assert [e.message for e in result.errors] == [expected] * 2


def test_a_structured_array_with_an_object_field_is_checked_like_any_object():
    import threading

    def record_struct(data, ctx):
        value = numpy.zeros(1, dtype=[("n", "i8"), ("o", "O")])
        value[0]["o"] = threading.Lock()
        ctx.metrics.add("struct", value)
        return data

    result = Experiment(numbers, [record_struct]).run(replicates=1)
    assert [e.exc_type for e in result.errors] == ["crystallize_core.errors.NotPicklableError"]


LAZY_NUMPY = """
import sys
sys.path.insert(0, {folder!r})
if {numpy_first}:
    import numpy
from crystallize_core import Experiment, SeedPlugin, Treatment
from crystallize_core.testing import numbers
from lazy_step import draw

experiment = Experiment(numbers, [draw], treatments=[Treatment("same", {{}})], plugins=[SeedPlugin(seed=3)])
print(experiment.run(replicates=4, strategy={strategy!r}).metrics)
"""


@pytest.mark.parametrize("strategy", ["serial", "parallel:executor_type=process,max_workers=2"])
def test_seedplugin_seeds_numpy_that_a_step_imports_itself(tmp_path, strategy):
    # A step that imports NumPy itself, in a process where nothing imported it
    # before: its first condition must draw what it would have drawn had NumPy
    # been imported first, or the baseline and treatment are no longer paired.
    (tmp_path / "lazy_step.py").write_text(
        "def draw(data, ctx):\n"
        "    import numpy\n"
        "    ctx.metrics.add('x', float(numpy.random.random()))\n"
        "    return data\n"
    )

    def metrics(numpy_first):
        code = LAZY_NUMPY.format(folder=str(tmp_path), numpy_first=numpy_first, strategy=strategy)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    lazily = metrics(numpy_first=False)
    assert lazily == metrics(numpy_first=True)
    values = ast.literal_eval(lazily)
    assert values["baseline"]["x"] == values["same"]["x"]

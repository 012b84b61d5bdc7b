"""ctx.numpy_rng: a seeded NumPy generator per replicate and condition, imported only when used."""

import subprocess
import sys
import textwrap

import numpy
import pytest

from crystallize_core import Experiment, SeedPlugin, Treatment, derive_seed


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

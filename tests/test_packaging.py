"""What users get: wheels built with `python -m build`, installed into a fresh virtual environment.

Everything here runs inside that environment, never against this checkout.
"""

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from installed import source_version

#: Building wheels and a fresh environment takes half a minute and does not
#: depend on the interpreter: CI runs these once (see pyproject's markers).
pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = {
    "crystallize-core": ROOT,
    "crystallize-serial": ROOT / "plugins" / "crystallize-serial",
    "crystallize-parallel": ROOT / "plugins" / "crystallize-parallel",
    "crystallize-shuffled": ROOT / "examples" / "third-party-strategy",
    "crystallize-ray": ROOT / "plugins" / "crystallize-ray",
    "crystallize-dask": ROOT / "plugins" / "crystallize-dask",
    "crystallize-async": ROOT / "plugins" / "crystallize-async",
}

THROWAWAY_PYPROJECT = """
[build-system]
requires = ["hatchling>=1.18"]
build-backend = "hatchling.build"

[project]
name = "evens-only"
version = "3.1.4"
dependencies = ["crystallize-core"]

[project.entry-points."crystallize.strategies"]
evens = "evens_only:EvensOnly"

[tool.hatch.build.targets.wheel]
packages = ["evens_only"]
"""

THROWAWAY_MODULE = """
from crystallize_core import hookimpl


class EvensOnly:
    '''Runs experiments with an even replicate count, declines the others.'''

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        if experiment.replicates % 2:
            return None
        return [replicate_fn(i) for i in range(experiment.replicates)]
"""

STUDY = """
import json, sys
from crystallize_core import Experiment, SeedPlugin, Treatment

def source(ctx):
    return [ctx.rng.gauss(0, 1) for _ in range(5)]

def measure(data, ctx):
    ctx.metrics.add("mean", sum(data) / len(data) + ctx.get("shift", 0))
    return data

def build():
    return Experiment(source, [measure], plugins=[SeedPlugin(seed=42, auto_seed=False)],
                      treatments=[Treatment("shifted", {"shift": 1})], replicates=6)

if __name__ == "__main__":
    strategy, replicates = sys.argv[1], int(sys.argv[2])
    result = build().run(strategy=None if strategy == "-" else strategy, replicates=replicates)
    print(json.dumps({"strategy": result.strategy, "version": result.strategy_version, "metrics": result.metrics}))
"""


def build_wheel(source: Path, outdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"building {source} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


@pytest.fixture(scope="session")
def wheels(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("wheels")
    throwaway = tmp_path_factory.mktemp("evens-only")
    (throwaway / "pyproject.toml").write_text(THROWAWAY_PYPROJECT)
    (throwaway / "evens_only").mkdir()
    (throwaway / "evens_only" / "__init__.py").write_text(THROWAWAY_MODULE)
    for source in [*DISTRIBUTIONS.values(), throwaway]:
        build_wheel(source, outdir)
    built = sorted(p.name for p in outdir.glob("*.whl"))
    assert len(built) == 8, built
    return outdir


@pytest.fixture(scope="session")
def env(wheels, tmp_path_factory):
    """A fresh virtual environment with every wheel installed from the wheel files."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(home)
    python = home / "bin" / "python"
    engines = [next(wheels.glob(f"crystallize_{name}-*.whl")) for name in ("ray", "dask")]
    others = [str(p) for p in wheels.glob("*.whl") if p not in engines]
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *others], check=True, timeout=600)
    # crystallize-ray and crystallize-dask without Ray or dask: what a user with a broken install sees.
    subprocess.run([*pip, "--no-deps", *map(str, engines)], check=True, timeout=600)
    study = tmp_path_factory.mktemp("study") / "study.py"
    study.write_text(STUDY)
    return home, study


def run_in(env, *args, extra_env=None, **kwargs):
    home, _ = env
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CRYSTALLIZE_", "PYTHON", "VIRTUAL_ENV"))}
    environment.update(extra_env or {})
    environment["PATH"] = f"{home / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
    return subprocess.run(args, capture_output=True, text=True, env=environment, timeout=300, cwd=home, **kwargs)


def study(env, strategy="-", replicates=6, extra_env=None):
    done = run_in(env, "python", str(env[1]), strategy, str(replicates), extra_env=extra_env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_environment_uses_the_wheels_not_this_checkout(env):
    done = run_in(
        env, "python", "-c", "import crystallize_core, crystallize_parallel; print(crystallize_core.__file__)"
    )
    assert "site-packages" in done.stdout and str(ROOT) not in done.stdout


def test_every_strategy_is_discovered_with_its_version(env):
    done = run_in(env, "crystallize", "strategies", "--json")
    assert done.returncode == 0, done.stderr
    found = {r["name"]: (r["distribution"], r["version"], r["status"]) for r in json.loads(done.stdout)["strategies"]}
    missing_ray = "broken: ImportError: crystallize-ray needs Ray, which is not installed: pip install 'ray'"
    missing_dask = (
        "broken: ImportError: crystallize-dask needs dask.distributed, which is not installed: "
        "pip install 'distributed'"
    )
    assert found == {
        "async": ("crystallize-async", source_version("crystallize-async"), "ok"),
        "dask": ("crystallize-dask", source_version("crystallize-dask"), missing_dask),
        "evens": ("evens-only", "3.1.4", "ok"),
        "parallel": ("crystallize-parallel", source_version("crystallize-parallel"), "ok"),
        "ray": ("crystallize-ray", source_version("crystallize-ray"), missing_ray),
        "serial": ("crystallize-serial", source_version("crystallize-serial"), "ok"),
        "shuffled": ("crystallize-shuffled", "0.1.0", "ok"),
    }


def test_a_strategy_whose_engine_is_missing_says_what_to_install(env):
    done = run_in(env, "crystallize", "run", f"{env[1]}:build", "--strategy", "ray")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'ray' from crystallize-ray" in done.stderr and "pip install 'ray'" in done.stderr
    assert study(env)["strategy"] == "serial", "one broken strategy must not break the others"


def test_the_fallback_is_serial(env):
    assert study(env)["strategy"] == "serial"


def test_a_third_party_strategy_is_selected_by_name_and_wins(env):
    assert study(env, "evens", replicates=4)["strategy"] == "evens"
    assert study(env, replicates=4, extra_env={"CRYSTALLIZE_STRATEGY": "evens"})["strategy"] == "evens"


def test_a_third_party_strategy_that_declines_passes_to_the_fallback(env):
    assert study(env, "evens", replicates=5)["strategy"] == "serial"


def test_same_seed_same_metrics_under_every_installed_strategy(env):
    baseline = study(env, "serial")
    for strategy in [
        "parallel:executor_type='thread'",
        "parallel:executor_type='process',max_workers=2",
        "async:max_workers=3",
        "shuffled",
        "evens",
    ]:
        result = study(env, strategy)
        assert result["metrics"] == baseline["metrics"], strategy
        assert result["strategy"] == strategy.partition(":")[0]


def test_crystallize_run_uses_the_example_third_party_strategy(env):
    done = run_in(env, "crystallize", "run", f"{env[1]}:build", "--strategy", "shuffled", "-o", "max_workers=3")
    assert done.returncode == 0, done.stderr
    assert "strategy: shuffled 0.1.0" in done.stdout


def test_blocking_and_disabling_autoload_in_the_installed_environment(env):
    done = run_in(env, "crystallize", "strategies", extra_env={"CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    rows = {
        line.split()[0]: line.split()[-1]
        for line in done.stdout.splitlines()[1:]
        if line and not line.startswith("steered")
    }
    assert rows == {
        "async": "blocked",
        "dask": "blocked",
        "evens": "blocked",
        "parallel": "blocked",
        "ray": "blocked",
        "serial": "ok",
        "shuffled": "blocked",
    }
    done = run_in(
        env,
        "crystallize",
        "run",
        f"{env[1]}:build",
        "--strategy",
        "shuffled",
        extra_env={"CRYSTALLIZE_BLOCK_STRATEGIES": "shuffled"},
    )
    assert done.returncode == 2 and "'shuffled' is blocked" in done.stderr


def test_the_example_third_party_package_passes_the_conformance_kit(env, wheels):
    # Its test extra brings the kit's own extra, crystallize-core[testing], as an author's CI would.
    done = run_in(
        env, "python", "-m", "pip", "install", "--quiet", "--find-links", str(wheels), "crystallize-shuffled[test]"
    )
    assert done.returncode == 0, done.stderr
    tests = DISTRIBUTIONS["crystallize-shuffled"] / "tests"
    done = run_in(env, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tests))
    assert done.returncode == 0, done.stdout[-3000:]
    assert "18 passed, 8 skipped" in done.stdout, done.stdout[-3000:]


def test_listing_imports_no_strategy(env):
    code = textwrap.dedent(
        """
        import sys
        from crystallize_core import available_strategies
        names = [i.name for i in available_strategies()]
        strategies = ("crystallize_serial", "crystallize_parallel", "crystallize_shuffled", "crystallize_ray",
                      "crystallize_dask", "crystallize_async", "tqdm", "asyncio")
        loaded = [m for m in sys.modules if m.startswith(strategies)]
        print(sorted(names), loaded)
        """
    )
    done = run_in(env, "python", "-c", code)
    assert done.stdout.strip() == "['async', 'dask', 'evens', 'parallel', 'ray', 'serial', 'shuffled'] []", done.stderr

"""The crystallize command line, run as users run it: in a subprocess."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import crystallize_core

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"


def crystallize(*args, cwd=None, env=None):
    import os

    environment = {**os.environ, **(env or {})}
    for name in ("CRYSTALLIZE_STRATEGY", "CRYSTALLIZE_BLOCK_STRATEGIES", "CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD"):
        if name not in (env or {}):
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "crystallize_core", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=300,
    )


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "study.py"
    path.write_text(
        textwrap.dedent(
            """
            from crystallize_core import Experiment, Treatment

            def source(ctx):
                return [ctx.rng.random() for _ in range(4)]

            def measure(data, ctx):
                ctx.metrics.add("mean", sum(data) / len(data) * ctx.get("factor", 1))
                if ctx.replicate == 1 and ctx.condition == "double":
                    raise ValueError("replicate one fails")
                return data

            experiment = Experiment(source, [measure], treatments=[Treatment("double", {"factor": 2})], replicates=3)

            def build():
                return experiment

            not_an_experiment = 42

            def needs_args(x):
                return experiment
            """
        )
    )
    return path


def test_version_lists_core_and_strategies():
    out = crystallize("--version").stdout
    assert f"crystallize-core {crystallize_core.__version__}" in out
    assert "serial: crystallize-serial" in out and "parallel: crystallize-parallel" in out


def test_strategies_table_and_json():
    table = crystallize("strategies").stdout
    assert "serial (fallback)" in table and "crystallize-parallel" in table and " ok" in table
    document = json.loads(crystallize("strategies", "--json", "--no-load").stdout)
    records = {r["name"]: r for r in document["strategies"]}
    assert document["fallback"] == "serial" and records["serial"]["fallback"] is True
    assert records["parallel"]["status"] == "not loaded"


def test_strategies_shows_blocked_names():
    out = crystallize("strategies", env={"CRYSTALLIZE_BLOCK_STRATEGIES": "parallel"}).stdout
    assert any(line.startswith("parallel") and line.rstrip().endswith("blocked") for line in out.splitlines()), out
    assert "steered by CRYSTALLIZE_BLOCK_STRATEGIES=parallel" in out


@pytest.mark.parametrize("name", ["experiment", "build"])
def test_run_summarises_and_writes_json(target, tmp_path, name):
    output = tmp_path / "result.json"
    done = crystallize("run", f"{target}:{name}", "--seed", "5", "--replicates", "4", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert "strategy: serial" in done.stdout and "errors: baseline: 0, double: 1" in done.stdout
    assert "4/4" in done.stderr, "no progress bar"
    document = json.loads(output.read_text())
    assert document["replicates"] == 4 and document["strategy"] == "serial"
    assert document["strategy_version"] and document["crystallize_core_version"] == crystallize_core.__version__
    assert len(document["metrics"]["double"]["mean"]) == 4 and document["metrics"]["double"]["mean"][1] is None
    (error,) = document["errors"]
    assert error["exc_type"] == "ValueError" and "Traceback" in error["traceback"]
    assert document["seeds"] == [crystallize_core.derive_seed(5, i) for i in range(4)]


def test_run_with_a_strategy_and_options(target):
    done = crystallize(
        "run", f"{target}:experiment", "--strategy", "parallel", "-o", "executor_type=process", "-o", "max_workers=2"
    )
    assert done.returncode == 0, done.stderr
    assert "strategy: parallel" in done.stdout


def test_run_the_quickstart_with_processes():
    done = crystallize(
        "run", f"{QUICKSTART}:build_experiment", "--strategy", "parallel", "-o", "executor_type=process", "-n", "6"
    )
    assert done.returncode == 0, done.stderr
    assert "replicates: 6" in done.stdout and "half" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.py:x"], "no such file: missing.py"),
        (["run", "{target}:nothing"], "has no attribute 'nothing'"),
        (["run", "{target}:not_an_experiment"], "is a int, not an Experiment"),
        (["run", "{target}:needs_args"], "must be an Experiment or a function taking no arguments"),
        (["run", "{target}"], "must look like path/to/file.py:NAME"),
        (["run", "no_such_package.module:x"], "no module named 'no_such_package'"),
        (["run", "{target}:experiment", "--strategy", "nope"], "no strategy named 'nope'"),
        (["run", "{target}:experiment", "--strategy", "parallel", "-o", "workers=2"], "valid options: max_workers"),
        (["run", "{target}:experiment", "--strategy", "parallel", "-o", "executor_type=fork"], "unknown executor_type"),
        (["run", "{target}:experiment", "-o", "oops"], "malformed option 'oops'"),
        (["run", "{target}:experiment", "--replicates", "0"], "replicates must be a positive integer"),
    ],
)
def test_user_mistakes_get_one_line_and_a_nonzero_exit(target, args, message):
    done = crystallize(*[a.format(target=target) for a in args])
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_syntax_error_names_file_and_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\ndef (:\n")
    done = crystallize("run", f"{broken}:x")
    assert done.returncode == 2 and f"{broken}:2: syntax error" in done.stderr


def test_malformed_environment_strategy(target):
    done = crystallize("run", f"{target}:experiment", env={"CRYSTALLIZE_STRATEGY": "parallel:max_workers"})
    assert done.returncode == 2 and "CRYSTALLIZE_STRATEGY: malformed option 'max_workers'" in done.stderr


def test_environment_strategy_is_used_by_run(target):
    done = crystallize("run", f"{target}:experiment", env={"CRYSTALLIZE_STRATEGY": "parallel:executor_type='thread'"})
    assert done.returncode == 0, done.stderr
    assert "strategy: parallel" in done.stdout


def test_run_a_target_named_by_module(target):
    done = crystallize("run", "study:build", "-n", "2", env={"PYTHONPATH": str(target.parent)})
    assert done.returncode == 0, done.stderr
    assert "replicates: 2" in done.stdout and "double" in done.stdout

"""The crystallize command line, run as users run it: in a subprocess."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import crystallize_core

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"
ASYNC_QUICKSTART = ROOT / "examples" / "async_quickstart.py"


def crystallize(*args, cwd=None, env=None):
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
    done = crystallize(
        "run", f"{target}:{name}", "--seed", "5", "--replicates", "4", "--output", str(output), "--progress"
    )
    assert done.returncode == 0, done.stderr
    assert "strategy: serial" in done.stdout and "errors: baseline: 0, double: 1" in done.stdout
    assert "4/4" in done.stderr, "no progress bar"
    assert "study.py:10)" in done.stderr, "the logged error does not point at the user's line"
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


def test_run_the_async_quickstart_with_the_async_strategy(tmp_path):
    output = tmp_path / "result.json"
    target = f"{ASYNC_QUICKSTART}:build_experiment"
    done = crystallize(
        "run", target, "--strategy", "async", "-o", "rate_limit=500", "-o", "progress=true", "--output", str(output)
    )
    assert done.returncode == 0, done.stderr
    assert "strategy: async" in done.stdout and "replicates: 200" in done.stdout and "boosted" in done.stdout
    assert "errors: baseline: 0, boosted: 0" in done.stdout
    assert "200/200" in done.stderr, "no progress bar"
    three = tmp_path / "three.json"
    serial = crystallize("run", target, "--strategy", "serial", "-n", "3", "--no-progress", "--output", str(three))
    assert serial.returncode == 0, serial.stderr
    first_three = json.loads(three.read_text())["metrics"]["boosted"]["mean"]
    assert json.loads(output.read_text())["metrics"]["boosted"]["mean"][:3] == first_three


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


# --- names: did you mean, and where the name came from ------------------------------


def test_a_mistyped_strategy_flag_gets_did_you_mean_and_no_package_to_install(target):
    done = crystallize("run", f"{target}:experiment", "--strategy", "paralel")
    assert done.returncode == 2
    assert "--strategy: no strategy named 'paralel' is installed; did you mean 'parallel'?" in done.stderr
    assert "pip install" not in done.stderr and "Traceback" not in done.stderr


def test_a_mistyped_environment_strategy_says_it_came_from_the_environment(target):
    done = crystallize("run", f"{target}:experiment", env={"CRYSTALLIZE_STRATEGY": "paralel:max_workers=2"})
    assert done.returncode == 2
    assert "CRYSTALLIZE_STRATEGY: no strategy named 'paralel' is installed; did you mean 'parallel'?" in done.stderr


# --- one line naming the user's file and line; the whole story with --traceback ------------


@pytest.fixture
def faulty(tmp_path):
    """Studies that fail while being imported or built, each in its own folder."""

    def write(files):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(textwrap.dedent(text).lstrip())
        return folder

    return write


def line_of(path, fragment):
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if fragment in line)


def assert_one_line(done, status=2):
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_exception_in_a_module_the_target_imports_names_that_file_and_line(faulty):
    folder = faulty(
        {
            "helper.py": """
                def load():
                    raise RuntimeError("data folder is missing")

                TABLE = load()
            """,
            "study.py": """
                import helper
                from crystallize_core import Experiment
                experiment = Experiment(lambda ctx: 1, [])
            """,
        }
    )
    done = crystallize("run", "study.py:experiment", cwd=folder)
    assert_one_line(done)
    line = line_of(folder / "helper.py", "raise RuntimeError")
    assert f"importing study.py failed: helper.py:{line}: RuntimeError: data folder is missing" in done.stderr
    assert "--traceback" in done.stderr


def test_traceback_flag_prints_the_whole_traceback(faulty):
    folder = faulty({"study.py": "x = 1 / 0\n"})
    done = crystallize("run", "study.py:x", "--traceback", cwd=folder)
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr and "ZeroDivisionError" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "crystallize: error: importing study.py failed: study.py:1: ZeroDivisionError: division by zero"
    )
    anywhere = crystallize("--traceback", "run", "study.py:x", cwd=folder)
    assert "Traceback (most recent call last)" in anywhere.stderr


def test_an_exception_while_building_the_experiment_is_one_line_naming_the_users_line(faulty):
    folder = faulty(
        {
            "study.py": """
                import json

                def build():
                    settings = json.loads("{not json")
                    return settings
            """
        }
    )
    done = crystallize("run", "study.py:build", cwd=folder)
    assert_one_line(done)
    line = line_of(folder / "study.py", "json.loads")
    assert f"building the experiment with study.py:build failed: study.py:{line}: JSONDecodeError:" in done.stderr


def test_a_bad_strategy_option_in_the_users_code_names_the_users_line(faulty):
    folder = faulty(
        {
            "study.py": """
                from crystallize_core import Experiment
                from crystallize_parallel import ParallelExecution

                def build():
                    return Experiment(lambda ctx: 1, [], plugins=[ParallelExecution(max_workers=0)])
            """
        }
    )
    done = crystallize("run", "study.py:build", cwd=folder)
    assert_one_line(done)
    line = line_of(folder / "study.py", "ParallelExecution(max_workers=0)")
    assert f"study.py:{line}: ConfigurationError: max_workers must be" in done.stderr


def test_a_bad_strategy_option_on_the_command_line_is_one_line(target):
    done = crystallize("run", f"{target}:experiment", "--strategy", "parallel", "-o", "max_workers=0")
    assert_one_line(done)
    assert "max_workers" in done.stderr


def test_fail_fast_is_one_line_naming_the_step_and_traceback_shows_it(target):
    done = crystallize("run", f"{target}:experiment", "--fail-fast", "--no-progress")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    # The captured error is logged as it happens; the command's own verdict is one line.
    assert len([line for line in done.stderr.splitlines() if line.startswith("crystallize: error:")]) == 1
    line = line_of(target, 'raise ValueError("replicate one fails")')
    assert "stopped by --fail-fast: replicate 1, condition 'double': ValueError: replicate one fails" in done.stderr
    assert f"study.py:{line})" in done.stderr
    whole = crystallize("run", f"{target}:experiment", "--fail-fast", "--no-progress", "--traceback")
    assert whole.returncode == 1 and "Traceback (most recent call last)" in whole.stderr


def test_a_plugin_that_breaks_during_the_run_is_a_run_failure_in_one_line(faulty):
    folder = faulty(
        {
            "study.py": """
                from crystallize_core import Experiment, hookimpl

                class Report:
                    @hookimpl
                    def after_run(self, experiment, result):
                        raise OSError("disk full")

                experiment = Experiment(lambda ctx: 1, [], plugins=[Report()])
            """
        }
    )
    done = crystallize("run", "study.py:experiment", "--no-progress", cwd=folder)
    assert_one_line(done, status=1)
    line = line_of(folder / "study.py", "raise OSError")
    assert f"study.py:{line}: OSError: disk full" in done.stderr


def test_help_documents_the_exit_statuses():
    out = crystallize("run", "--help").stdout
    for status in ("0 ", "1 ", "2 ", "130 ", "141 "):
        assert f"\n  {status}" in out, out


# --- pipes and the current directory -----------------------------------------------


def test_a_closed_pipe_ends_quietly(target):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as when `head` has had enough
    try:
        for args in (["strategies"], ["run", f"{target}:experiment", "--no-progress"]):
            done = subprocess.run(
                [sys.executable, "-m", "crystallize_core", *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
            )
            assert done.returncode == 141, done.stderr
            for noise in ("Traceback", "BrokenPipeError", "Exception ignored", "crystallize: error"):
                assert noise not in done.stderr, done.stderr
    finally:
        os.close(write_end)


def test_a_module_target_is_found_in_the_current_directory_by_the_installed_script(target):
    script = Path(sys.executable).with_name("crystallize")
    assert script.exists(), f"the crystallize script is not installed beside {sys.executable}"
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("CRYSTALLIZE_")}
    done = subprocess.run(
        [str(script), "run", "study:build", "-n", "2", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=target.parent,
        env=environment,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "replicates: 2" in done.stdout


# --- sweeps and treatments from the command line -----------------------------------------


@pytest.fixture
def linear(tmp_path):
    path = tmp_path / "linear.py"
    path.write_text(
        textwrap.dedent(
            """
            from crystallize_core import Experiment, Treatment

            def source(ctx):
                return ctx.get("a", 1) * 10 + ctx.get("b", 0)

            def measure(value, ctx):
                ctx.metrics.add("value", value)
                kernel = ctx.get("kernel")
                if kernel is not None:
                    ctx.metrics.add("kernel", kernel)
                return value

            experiment = Experiment(source, [measure], treatments=[Treatment("big", {"a": 100})], replicates=2)
            """
        )
    )
    return path


def run_json(linear, tmp_path, *args):
    output = tmp_path / "out.json"
    done = crystallize("run", f"{linear}:experiment", "--no-progress", "--output", str(output), *args)
    assert done.returncode == 0, done.stderr
    return done, json.loads(output.read_text())


def test_sweeps_add_the_grid_of_every_combination(linear, tmp_path):
    done, document = run_json(linear, tmp_path, "--sweep", "a=1,2", "--sweep", "b=0.5,7")
    conditions = document["conditions"]
    assert conditions == ["baseline", "big", "a=1,b=0.5", "a=1,b=7", "a=2,b=0.5", "a=2,b=7"]
    assert document["metrics"]["a=2,b=7"]["value"] == [27, 27]
    assert document["metrics"]["a=1,b=0.5"]["value"] == [10.5, 10.5]
    assert "a=2,b=7" in done.stdout


def test_sweep_values_keep_brackets_and_quotes_together(linear, tmp_path):
    _, document = run_json(linear, tmp_path, "--sweep", "kernel='rbf,poly',linear,[1,2]")
    assert document["conditions"][2:] == ["kernel=rbf,poly", "kernel=linear", "kernel=[1, 2]"]
    assert document["metrics"]["kernel=[1, 2]"]["kernel"] == [[1, 2], [1, 2]]


def test_a_treatment_option_adds_one_or_replaces_the_experiments(linear, tmp_path):
    _, document = run_json(linear, tmp_path, "--treatment", "small:a=2,b=1", "--treatment", "big:a=3")
    assert document["conditions"] == ["baseline", "small", "big"]
    assert document["metrics"]["small"]["value"] == [21, 21]
    assert document["metrics"]["big"]["value"] == [30, 30]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sweep", "a"], "malformed --sweep 'a': expected KEY=VALUE,VALUE"),
        (["--sweep", "a="], "malformed --sweep 'a='"),
        (["--sweep", "=1,2"], "malformed --sweep '=1,2'"),
        (["--sweep", "a=1,,2"], "malformed --sweep 'a=1,,2': a value is empty"),
        (["--sweep", "a=1,2,"], "a value is empty"),
        (["--sweep", "a=1", "--sweep", "a=2"], "--sweep a=... is given twice"),
        (["--sweep", "a=1,'1'"], "would both be named 'a=1'"),
        (["--treatment", "a=1"], "malformed --treatment 'a=1': expected NAME:KEY=VALUE"),
        (["--treatment", "big"], "malformed --treatment 'big'"),
        (["--treatment", "big:"], "malformed --treatment 'big:'"),
        (["--treatment", "big:a"], "'a' is not KEY=VALUE"),
        (["--treatment", "baseline:a=1"], "'baseline' names the untreated condition"),
        (["--treatment", "x:a=1", "--treatment", "x:a=2"], "two treatments given on the command line are named 'x'"),
        (["--sweep", "a=1", "--treatment", "a=1:b=2"], "malformed --treatment"),
    ],
)
def test_malformed_sweeps_and_treatments_are_one_line_before_any_import(tmp_path, args, message):
    never = tmp_path / "never.py"
    never.write_text("raise SystemExit('imported')\n")
    done = crystallize("run", f"{never}:x", *args)
    assert_one_line(done)
    assert message in done.stderr


def test_run_help_shows_the_sweep_and_treatment_options():
    out = crystallize("run", "--help").stdout
    assert "--sweep KEY=V1,V2,..." in out and "--treatment NAME:KEY=VALUE,..." in out
    assert "--traceback" in out and "crystallize run study.py:build --sweep C=0.01,0.1,1" in out
